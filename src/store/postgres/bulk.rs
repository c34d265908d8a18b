//! `funkrec import` into PostgreSQL: keys resolved by the client, rows deduplicated and sorted by key in memory, then written by binary `COPY .. FROM STDIN` straight into `ratings` over [`STREAMS`] connections at once (users partitioned by hash).
//!
//! The database's work per row is then the heap insert and the primary-key insert,
//! nothing else (no staging table, no join on text ids, no sort, no `ON CONFLICT`
//! check), except for the rows of users the table had before the transaction, which
//! go through a staging table and an upsert. The input is split by a hash of the user
//! id into [`STREAMS`] streams, each on its own connection: all rows of a pair go to
//! one stream, in input order, so the later-row-wins rule holds, and the streams'
//! transactions touch disjoint users. Items are shared by every stream, so the reading
//! side inserts the items it has not sent before (in order of first appearance) on a
//! connection of its own, committed before any row that names them is sent (a stream
//! inserting a new item would make the other stream's insert of the same item wait for
//! its whole transaction), and sends rows with item keys. Each stream transaction takes
//! up to [`ROWS_PER_TRANSACTION`] rows: it inserts the users it has not seen (in order
//! of first appearance; the keys it gets back are new, so no rating of them can exist
//! and theirs are copied into `ratings` directly), looks up the others, keeps the
//! later row of each pair, writes the rows in key order, records the changed users
//! (read-your-writes across replicas) and last adds its count to the shared retrain
//! counter (one row: taken just before the commit, it serialises only the commits). An
//! error leaves the transactions committed so far in place, as on SQLite (and the
//! items inserted so far). The service may keep running meanwhile (PostgreSQL needs
//! no store lock).

use super::writer::{COUNT_CHANGES, COUNT_SLOTS, LOG_CHANGES};
use crate::store::{ImportRow, ImportStats};
use anyhow::Context;
use foldhash::HashMap;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;

/// Connections (and transactions) importing at once.
pub const STREAMS: usize = 2;
/// Ratings per transaction (of one stream).
const ROWS_PER_TRANSACTION: usize = 1_000_000;
/// Rows per message to a stream.
const CHUNK_ROWS: usize = 1 << 15;
/// Messages queued per stream: about one transaction's worth, so that the reading
/// side fills the next transaction of a stream while it writes.
const QUEUE: usize = ROWS_PER_TRANSACTION / CHUNK_ROWS;
/// COPY data sent per message.
const SEND_BYTES: usize = 1 << 20;
/// Progress is reported every this many rows.
const PROGRESS_ROWS: u64 = 1 << 16;

/// The keys of `$1` (in the array's order), inserted when the table does not have
/// them: `(ext_id, id, new)`. The second part reads the statement's snapshot, which
/// does not hold the rows the first inserts, so a key comes back once; a key another
/// transaction committed after that snapshot comes back from neither (looked up
/// again by [`lookup`]).
macro_rules! keys {
    ($table:literal) => {
        concat!(
            "WITH ins AS (INSERT INTO ",
            $table,
            " (ext_id) SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS t(x, n) ",
            "ORDER BY n ON CONFLICT (ext_id) DO NOTHING RETURNING ext_id, id) ",
            "SELECT ext_id, id, true FROM ins UNION ALL ",
            "SELECT ext_id, id, false FROM ",
            $table,
            " WHERE ext_id = ANY($1::text[])"
        )
    };
}
const ITEM_KEYS: &str = keys!("items");
const USER_KEYS: &str = keys!("users");
const ITEM_LOOKUP: &str = "SELECT ext_id, id, false FROM items WHERE ext_id = ANY($1::text[])";
const USER_LOOKUP: &str = "SELECT ext_id, id, false FROM users WHERE ext_id = ANY($1::text[])";

const COPY_NEW: &str = "COPY ratings (user_id, item_id, rating, ts) FROM STDIN (FORMAT binary)";
const STAGE: &str = "CREATE TEMPORARY TABLE import_stage \
     (user_id int8 NOT NULL, item_id int8 NOT NULL, rating float8 NOT NULL, ts int8 NOT NULL) \
     ON COMMIT DROP";
const COPY_STAGE: &str =
    "COPY import_stage (user_id, item_id, rating, ts) FROM STDIN (FORMAT binary)";
/// The staged rows (one per pair, in key order) of the users the table had.
const MERGE_KNOWN: &str = "INSERT INTO ratings (user_id, item_id, rating, ts) \
     SELECT user_id, item_id, rating, ts FROM import_stage ORDER BY user_id, item_id \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";
/// Rows for a stream (or of one stream transaction), their users by index into
/// `users`. Sent with their items' keys; while read, the item is the import's index of
/// it ([`Waiting`]).
#[derive(Default)]
struct Chunk {
    users: Vec<String>,
    user_index: HashMap<String, u32>,
    /// (user index, item, input position, rating, timestamp)
    rows: Vec<(u32, i64, u64, f32, i64)>,
}

/// Interns `name` into `users`/`index`, the same name as the last one first (the rows
/// of a user often come together).
fn intern(users: &mut Vec<String>, index: &mut HashMap<String, u32>, name: String) -> u32 {
    if let Some(last) = users.last() {
        if *last == name {
            return users.len() as u32 - 1;
        }
    }
    match index.get(&name) {
        Some(&u) => u,
        None => {
            let u = users.len() as u32;
            users.push(name.clone());
            index.insert(name, u);
            u
        }
    }
}

/// What the reading side sends a stream.
enum Msg {
    Rows(Chunk),
    /// The input failed: drop the open transaction's rows and stop.
    Abort,
}

/// What one stream committed.
#[derive(Default)]
struct Part {
    rows: u64,
    new_users: u64,
    /// The stream's `change_counts` slot.
    slot: usize,
}

/// The stream of a user: FNV-1a of the id (fixed, so a re-import splits alike).
fn stream_of(user: &str, streams: usize) -> usize {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (h % streams as u64) as usize
}

/// A stream's rows read, their items by index into the import's item names (whose
/// keys may not be resolved yet).
type Waiting = Chunk;

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
    for n in 0..STREAMS {
        let (tx, rx) = mpsc::channel(QUEUE);
        let conn = pool.acquire().await?;
        senders.push(tx);
        tasks.push(tokio::spawn(stream(conn, rx, n)));
    }
    let mut items = Items {
        conn: pool.acquire().await?,
        index: HashMap::default(),
        names: Vec::new(),
        keys: Vec::new(),
        unresolved: Vec::new(),
        new: 0,
    };
    let mut chunks: Vec<Waiting> = (0..STREAMS).map(|_| Chunk::default()).collect();
    let mut read = 0u64;
    let mut failed = None;
    let mut stopped = false;
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                failed = Some(e.context("reading the input"));
                break;
            }
        };
        let item = items.index_of(row.item);
        let s = stream_of(&row.user, STREAMS);
        let c = &mut chunks[s];
        let u = intern(&mut c.users, &mut c.user_index, row.user);
        c.rows
            .push((u, i64::from(item), read, row.rating, row.timestamp));
        read += 1;
        if c.rows.len() >= CHUNK_ROWS {
            if let Err(e) = items.resolve().await {
                failed = Some(e);
                break;
            }
            let msg = Msg::Rows(items.with_keys(std::mem::take(&mut chunks[s])));
            // a stream that stopped has an error to report: collected below
            if senders[s].send(msg).await.is_err() {
                stopped = true;
                break;
            }
        }
        if read % PROGRESS_ROWS == 0 {
            on_progress(read);
        }
    }
    if failed.is_none() && !stopped {
        match items.resolve().await {
            Ok(()) => {
                for (s, chunk) in chunks.into_iter().enumerate() {
                    if !chunk.rows.is_empty() {
                        let msg = Msg::Rows(items.with_keys(chunk));
                        senders[s].send(msg).await.ok();
                    }
                }
            }
            Err(e) => failed = Some(e),
        }
    }
    let mut stats = ImportStats {
        new_items: items.new,
        ..ImportStats::default()
    };
    drop(items);
    for sender in senders {
        if failed.is_some() {
            sender.send(Msg::Abort).await.ok();
        }
        // dropping the sender ends the stream: it commits what it holds
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

/// The items the import has read: their keys are resolved (inserted when new, on a
/// connection of their own, and committed) before any row naming them is sent.
struct Items {
    conn: PoolConnection<Postgres>,
    index: HashMap<String, u32>,
    names: Vec<String>,
    /// By index; 0 until resolved.
    keys: Vec<i64>,
    /// Indices read but not resolved yet.
    unresolved: Vec<u32>,
    /// Items the import inserted.
    new: u64,
}

impl Items {
    /// The import's index of item `name`.
    fn index_of(&mut self, name: String) -> u32 {
        match self.index.get(&name) {
            Some(&i) => i,
            None => {
                let i = self.names.len() as u32;
                self.index.insert(name.clone(), i);
                self.names.push(name);
                self.keys.push(0);
                self.unresolved.push(i);
                i
            }
        }
    }

    /// Inserts (and commits) the unresolved items, in order, skipping those the table
    /// has, and fills in their keys.
    async fn resolve(&mut self) -> anyhow::Result<()> {
        if self.unresolved.is_empty() {
            return Ok(());
        }
        let names = &self.names;
        let wanted: Vec<&str> = self
            .unresolved
            .iter()
            .map(|&i| names[i as usize].as_str())
            .collect();
        let found = resolve_keys(&mut self.conn, ITEM_KEYS, ITEM_LOOKUP, &wanted)
            .await
            .context("inserting new items")?;
        for (&i, (id, new)) in self.unresolved.iter().zip(found) {
            self.keys[i as usize] = id;
            self.new += u64::from(new);
        }
        self.unresolved.clear();
        Ok(())
    }

    /// The rows of a chunk with their items' keys (all resolved) for their indices.
    fn with_keys(&self, mut chunk: Waiting) -> Chunk {
        for r in &mut chunk.rows {
            r.1 = self.keys[r.1 as usize];
        }
        chunk.user_index = HashMap::default();
        chunk
    }
}

/// The keys of `names` (in their order, each with whether this statement inserted
/// it), by `insert` ([`keys!`]) and, for a name another transaction committed
/// meanwhile, by `lookup`.
async fn resolve_keys(
    conn: &mut PgConnection,
    insert: &str,
    lookup: &str,
    names: &[&str],
) -> anyhow::Result<Vec<(i64, bool)>> {
    let rows: Vec<(String, i64, bool)> = sqlx::query_as(insert)
        .bind(names)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_name: HashMap<String, (i64, bool)> = rows
        .into_iter()
        .map(|(n, id, new)| (n, (id, new)))
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !by_name.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(lookup)
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
        by_name.extend(rows.into_iter().map(|(n, id, new)| (n, (id, new))));
    }
    names
        .iter()
        .map(|n| {
            by_name
                .get(*n)
                .copied()
                .with_context(|| format!("no key for {n:?}"))
        })
        .collect()
}

/// One stream: a transaction per [`ROWS_PER_TRANSACTION`] rows it receives, and one
/// for the rest when its channel closes (an abort drops the open transaction's rows).
async fn stream(
    mut conn: PoolConnection<Postgres>,
    mut rx: mpsc::Receiver<Msg>,
    n: usize,
) -> anyhow::Result<Part> {
    let mut part = Part {
        slot: n % COUNT_SLOTS,
        ..Part::default()
    };
    let mut batch = Chunk::default();
    while let Some(msg) = rx.recv().await {
        let Msg::Rows(chunk) = msg else {
            return Ok(part);
        };
        // the chunk's users' indices in the batch (again after each batch written)
        let mut to_batch: Vec<u32> = vec![u32::MAX; chunk.users.len()];
        for (u, i, n, r, t) in chunk.rows {
            let b = &mut to_batch[u as usize];
            if *b == u32::MAX {
                let name = chunk.users[u as usize].clone();
                *b = intern(&mut batch.users, &mut batch.user_index, name);
            }
            batch.rows.push((*b, i, n, r, t));
            if batch.rows.len() >= ROWS_PER_TRANSACTION {
                write(&mut conn, std::mem::take(&mut batch), &mut part).await?;
                to_batch.fill(u32::MAX);
            }
        }
    }
    if !batch.rows.is_empty() {
        write(&mut conn, batch, &mut part).await?;
    }
    Ok(part)
}

/// Writes one transaction's rows and commits.
async fn write(conn: &mut PgConnection, batch: Chunk, part: &mut Part) -> anyhow::Result<()> {
    let Chunk {
        mut users, rows, ..
    } = batch;
    let received = rows.len() as u64;
    let mut tx = conn.begin().await?;
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let keys = resolve_keys(&mut tx, USER_KEYS, USER_LOOKUP, &names)
        .await
        .context("inserting new users")?;
    part.new_users += keys.iter().filter(|k| k.1).count() as u64;
    // (user key, item key, position) order: the later row of a pair last
    let mut keyed: Vec<(i64, i64, u64, f32, i64, bool)> = rows
        .into_iter()
        .map(|(u, i, n, r, t)| {
            let (id, new) = keys[u as usize];
            (id, i, n, r, t, new)
        })
        .collect();
    keyed.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    let mut fresh = Vec::with_capacity(keyed.len() * 38);
    let mut known = Vec::new();
    let (mut n_fresh, mut n_known) = (0usize, 0usize);
    for (j, r) in keyed.iter().enumerate() {
        if keyed
            .get(j + 1)
            .is_some_and(|next| (next.0, next.1) == (r.0, r.1))
        {
            continue;
        }
        match r.5 {
            true => {
                encode(&mut fresh, r.0, r.1, r.3, r.4);
                n_fresh += 1;
            }
            false => {
                encode(&mut known, r.0, r.1, r.3, r.4);
                n_known += 1;
            }
        }
    }
    drop(keyed);
    if n_fresh > 0 {
        copy(&mut tx, COPY_NEW, fresh)
            .await
            .context("copying rows")?;
    }
    if n_known > 0 {
        sqlx::query(STAGE).execute(&mut *tx).await?;
        copy(&mut tx, COPY_STAGE, known)
            .await
            .context("copying rows")?;
        sqlx::query(MERGE_KNOWN).execute(&mut *tx).await?;
    }
    // the imported users changed (read-your-writes across replicas: `writer.rs`)
    users.sort_unstable();
    sqlx::query(LOG_CHANGES)
        .bind(&users)
        .execute(&mut *tx)
        .await?;
    // the shared retrain counter counts them as changes (the stream's own slot)
    sqlx::query(COUNT_CHANGES)
        .bind(received as i64)
        .bind(part.slot as i16)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    part.rows += received;
    Ok(())
}

/// Sends `rows` (binary COPY rows) to `statement`, with the header and trailer.
async fn copy(conn: &mut PgConnection, statement: &str, rows: Vec<u8>) -> anyhow::Result<()> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(header()).await?;
    for piece in rows.chunks(SEND_BYTES) {
        copy.send(piece).await?;
    }
    copy.send((-1i16).to_be_bytes().as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

/// Appends one `ratings` row in binary COPY format.
fn encode(buf: &mut Vec<u8>, user: i64, item: i64, rating: f32, ts: i64) {
    buf.extend_from_slice(&4i16.to_be_bytes());
    for v in [user, item] {
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&v.to_be_bytes());
    }
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&(rating as f64).to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
}

/// The binary COPY header (signature, flags, no extension).
fn header() -> Vec<u8> {
    let mut buf = b"PGCOPY\n\xff\r\n\0".to_vec();
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf
}
