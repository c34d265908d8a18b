//! `funkrec import` into PostgreSQL: rows streamed by binary `COPY .. FROM STDIN` over [`STREAMS`] connections at once (users partitioned by hash), each into a staging table merged into `ratings` a million rows at a time.
//!
//! One PostgreSQL backend merging a million rows keeps one core busy while the client
//! waits, so the input is split by a hash of the user id into [`STREAMS`] streams,
//! each on its own connection: all rows of a pair go to one stream, in input order, so
//! the later-row-wins rule holds, and the streams' transactions touch disjoint users.
//! Items are shared by every stream, so they are not inserted there: the reading side
//! inserts the items it has not sent before (in order of first appearance) on a
//! connection of its own, committed before any row that names them is sent. (A stream
//! inserting a new item would make the other stream's insert of the same item wait
//! for its whole transaction.) Each stream transaction copies up to
//! [`ROWS_PER_TRANSACTION`] rows (with their input position) into a temporary table,
//! inserts the users it has not seen (in order of first appearance), inserts the
//! ratings (plainly for the users it created, whose ratings cannot exist yet; an
//! upsert for the others), a later row of a pair replacing an earlier one, and last adds its count to
//! the shared retrain counter (one row: taken just before the commit, it serialises
//! only the commits). An error leaves the transactions committed so far in place, as
//! on SQLite (and the items inserted so far). The service may keep running meanwhile
//! (PostgreSQL needs no store lock).

use crate::store::{ImportRow, ImportStats};
use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres};
use tokio::sync::mpsc;

/// Connections (and transactions) importing at once.
pub const STREAMS: usize = 2;
/// Ratings per transaction (of one stream).
const ROWS_PER_TRANSACTION: u64 = 1_000_000;
/// COPY data sent per message.
const SEND_BYTES: usize = 1 << 20;
/// Messages queued per stream: a stream that merges lets the other keep copying.
const QUEUE: usize = 16;
/// Memory for the sorts and hashes of one import transaction (`SET LOCAL`: this
/// transaction only).
const WORK_MEM: &str = "SET LOCAL work_mem = '256MB'";
/// Progress is reported every this many rows.
const PROGRESS_ROWS: u64 = 1 << 16;

const STAGE: &str = "CREATE TEMPORARY TABLE import_stage \
     (n int8 NOT NULL, u text NOT NULL, i text NOT NULL, rating float8 NOT NULL, ts int8 NOT NULL) \
     ON COMMIT DROP";
/// Holds the keys of the users this transaction creates: their ratings cannot exist
/// yet (nobody else can see the keys before the commit), so they are inserted without
/// `ON CONFLICT`, which costs about half as much a row.
const NEW_USER_KEYS: &str =
    "CREATE TEMPORARY TABLE import_new_users (id int8 NOT NULL) ON COMMIT DROP";
const NEW_USERS: &str = "WITH ins AS (INSERT INTO users (ext_id) \
     SELECT u FROM import_stage GROUP BY u ORDER BY min(n) \
     ON CONFLICT (ext_id) DO NOTHING RETURNING id) \
     INSERT INTO import_new_users SELECT id FROM ins";
/// The staged rows of one side with their keys, the later row of a pair first.
macro_rules! staged {
    ($side:literal) => {
        concat!(
            "INSERT INTO ratings (user_id, item_id, rating, ts) ",
            "SELECT DISTINCT ON (us.id, it.id) us.id, it.id, s.rating, s.ts ",
            "FROM import_stage s JOIN users us ON us.ext_id = s.u ",
            "JOIN items it ON it.ext_id = s.i WHERE ",
            $side,
            " EXISTS (SELECT 1 FROM import_new_users n WHERE n.id = us.id) ",
            "ORDER BY us.id, it.id, s.n DESC"
        )
    };
}
/// The ratings of the users new in this transaction: a plain insert.
const MERGE_NEW: &str = staged!("");
/// The ratings of the users the table had: an upsert.
const MERGE_KNOWN: &str = concat!(
    staged!("NOT"),
    " ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts"
);

/// The items of `$1` not in the table yet, in the array's order.
const NEW_ITEMS: &str = "INSERT INTO items (ext_id) \
     SELECT i FROM unnest($1::text[]) WITH ORDINALITY AS t(i, n) ORDER BY n \
     ON CONFLICT (ext_id) DO NOTHING";
/// The imported users changed (read-your-writes across replicas: `writer.rs`).
const USER_CHANGES: &str = "INSERT INTO user_changes (ext_id, xid) \
     SELECT u, pg_current_xact_id() FROM import_stage GROUP BY u ORDER BY u \
     ON CONFLICT (ext_id) DO UPDATE SET xid = excluded.xid";

/// Appends one row in binary COPY format.
fn encode(buf: &mut Vec<u8>, n: i64, row: &ImportRow) {
    buf.extend_from_slice(&5i16.to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&n.to_be_bytes());
    for text in [row.user.as_bytes(), row.item.as_bytes()] {
        buf.extend_from_slice(&(text.len() as i32).to_be_bytes());
        buf.extend_from_slice(text);
    }
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&(row.rating as f64).to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&row.timestamp.to_be_bytes());
}

/// The binary COPY header (signature, flags, no extension).
fn header() -> Vec<u8> {
    let mut buf = b"PGCOPY\n\xff\r\n\0".to_vec();
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf
}

/// The stream of a user: FNV-1a of the id (fixed, so a re-import splits alike).
fn stream_of(user: &str, streams: usize) -> usize {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (h % streams as u64) as usize
}

/// What the reading side sends a stream.
enum Msg {
    /// COPY rows (`rows` of them); `last` ends the transaction after them.
    Rows {
        bytes: Vec<u8>,
        rows: u64,
        last: bool,
    },
    /// The input failed: roll back the open transaction and stop.
    Abort,
}

/// What one stream committed.
#[derive(Default)]
struct Part {
    rows: u64,
    new_users: u64,
}

pub(super) async fn import<I>(
    pool: &PgPool,
    rows: I,
    on_progress: &mut dyn FnMut(u64),
) -> anyhow::Result<ImportStats>
where
    I: Iterator<Item = anyhow::Result<ImportRow>>,
{
    let mut senders = Vec::with_capacity(STREAMS);
    let mut tasks = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let (tx, rx) = mpsc::channel(QUEUE);
        let conn = pool.acquire().await?;
        senders.push(tx);
        tasks.push(tokio::spawn(stream(conn, rx)));
    }
    // the items of every row read (those of rows sent are committed in the table), and
    // those of the rows not sent yet that are new
    let mut items_conn = pool.acquire().await?;
    let mut items_seen: std::collections::HashSet<String> = Default::default();
    let mut items_new: Vec<String> = Vec::new();
    let mut stats = ImportStats::default();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); STREAMS];
    let mut pending = [0u64; STREAMS];
    let mut in_tx = [0u64; STREAMS];
    let mut read = 0u64;
    let mut failed = None;
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                failed = Some(e.context("reading the input"));
                break;
            }
        };
        if !items_seen.contains(&row.item) {
            items_seen.insert(row.item.clone());
            items_new.push(row.item.clone());
        }
        let s = stream_of(&row.user, STREAMS);
        encode(&mut bufs[s], read as i64, &row);
        read += 1;
        pending[s] += 1;
        in_tx[s] += 1;
        let last = in_tx[s] == ROWS_PER_TRANSACTION;
        if last || bufs[s].len() >= SEND_BYTES {
            let msg = Msg::Rows {
                bytes: std::mem::take(&mut bufs[s]),
                rows: std::mem::take(&mut pending[s]),
                last,
            };
            if last {
                in_tx[s] = 0;
            }
            if !items_new.is_empty() {
                match insert_items(&mut items_conn, &mut items_new).await {
                    Ok(n) => stats.new_items += n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // a stream that stopped has an error to report: collected below
            if senders[s].send(msg).await.is_err() {
                break;
            }
        }
        if read % PROGRESS_ROWS == 0 {
            on_progress(read);
        }
    }
    if failed.is_none() && !items_new.is_empty() {
        match insert_items(&mut items_conn, &mut items_new).await {
            Ok(n) => stats.new_items += n,
            Err(e) => failed = Some(e),
        }
    }
    drop(items_conn);
    for (s, sender) in senders.into_iter().enumerate() {
        let msg = match failed.is_some() {
            true => Msg::Abort,
            false => Msg::Rows {
                bytes: std::mem::take(&mut bufs[s]),
                rows: pending[s],
                last: true,
            },
        };
        sender.send(msg).await.ok();
    }
    let mut first_error = None;
    for task in tasks {
        match task.await.context("import stream")? {
            Ok(part) => {
                stats.rows += part.rows;
                stats.new_users += part.new_users;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed.or(first_error) {
        return Err(e);
    }
    let mut conn = pool.acquire().await?;
    sqlx::query("ANALYZE ratings").execute(&mut *conn).await?;
    on_progress(stats.rows);
    Ok(stats)
}

/// Inserts (and commits) `items`, in order, skipping those the table has; empties
/// `items` and returns how many were new.
async fn insert_items(
    conn: &mut PoolConnection<Postgres>,
    items: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let n = sqlx::query(NEW_ITEMS)
        .bind(&*items)
        .execute(&mut **conn)
        .await
        .context("inserting new items")?
        .rows_affected();
    items.clear();
    Ok(n)
}

/// One stream: a transaction per [`ROWS_PER_TRANSACTION`] rows it receives, until its
/// channel closes (or an abort, which rolls the open transaction back).
async fn stream(
    mut conn: PoolConnection<Postgres>,
    mut rx: mpsc::Receiver<Msg>,
) -> anyhow::Result<Part> {
    let mut part = Part::default();
    while let Some(msg) = rx.recv().await {
        let Msg::Rows {
            mut bytes,
            mut rows,
            mut last,
        } = msg
        else {
            break;
        };
        if rows == 0 && last {
            continue;
        }
        let mut tx = conn.begin().await?;
        // the merge sorts a million rows and the id inserts group them: in memory, not in
        // temporary files (the default work_mem is 4 MB)
        sqlx::query(WORK_MEM).execute(&mut *tx).await?;
        sqlx::query(STAGE).execute(&mut *tx).await?;
        sqlx::query(NEW_USER_KEYS).execute(&mut *tx).await?;
        let mut copy = tx
            .copy_in_raw("COPY import_stage FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(header()).await?;
        let mut in_tx = 0u64;
        loop {
            if !bytes.is_empty() {
                copy.send(bytes).await?;
            }
            in_tx += rows;
            if last {
                break;
            }
            match rx.recv().await {
                Some(Msg::Rows {
                    bytes: b,
                    rows: r,
                    last: l,
                }) => (bytes, rows, last) = (b, r, l),
                Some(Msg::Abort) => {
                    copy.abort("input error").await.ok();
                    return Ok(part);
                }
                None => break,
            }
        }
        copy.send((-1i16).to_be_bytes().as_slice()).await?;
        copy.finish().await.context("copying rows")?;
        sqlx::query("ANALYZE import_stage")
            .execute(&mut *tx)
            .await?;
        part.new_users += sqlx::query(NEW_USERS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(MERGE_NEW).execute(&mut *tx).await?;
        sqlx::query(MERGE_KNOWN).execute(&mut *tx).await?;
        sqlx::query(USER_CHANGES).execute(&mut *tx).await?;
        // the shared retrain counter (cluster_state, migration 0004) counts them as
        // changes; last, so its row lock is held only through the commit
        sqlx::query("UPDATE cluster_state SET changes = changes + $1 WHERE id = 1")
            .bind(in_tx as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        part.rows += in_tx;
    }
    Ok(part)
}
