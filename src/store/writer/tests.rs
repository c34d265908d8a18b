//! Tests of the writer: group commit with per-request savepoints, the delta under every read path, idle folding, import after service writes.

use super::*;
use crate::config::Settings;
use crate::domain::RatingValue;
use fold::fold_chunk;
use funkrec_engine::Scale;

/// A writer that folds only past `FOLD_AT` (never when idle) and starts at once.
fn no_idle_fold() -> Tuning {
    Tuning {
        idle_fold: None,
        folded_when_idle: None,
        gate: None,
    }
}

impl Writer {
    /// Queues a job without waiting (the queue has room); its answer comes on the
    /// returned receiver.
    fn enqueue(&self, op: Op) -> oneshot::Receiver<Result<bool, StoreError>> {
        let (reply, answer) = oneshot::channel();
        assert!(self.tx.try_send(Msg::Job(Job { op, reply })).is_ok());
        answer
    }
}

/// A migrated store in a fresh directory (kept while the `TempDir` lives).
async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.storage.data_dir = dir.path().to_path_buf();
    let store = Store::connect(&settings).await.unwrap();
    (dir, store)
}

fn rating(user: &str, item: &str, value: f32) -> NewRating {
    NewRating {
        user: UserId::parse(user).unwrap(),
        item: ItemId::parse(item).unwrap(),
        value: RatingValue::parse(value as f64, &Scale { min: 1.0, max: 5.0 }).unwrap(),
        timestamp: 1,
    }
}

/// Jobs queued together share one transaction; one that fails inside the database
/// (here: a trigger refuses the rating 2.5) is rolled back alone.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_request_does_not_fail_the_others_in_its_group() {
    let (_dir, store) = temp_store().await;
    sqlx::query(
        "CREATE TRIGGER boom BEFORE INSERT ON ratings_delta WHEN NEW.rating = 2.5 \
         BEGIN SELECT RAISE(ABORT, 'boom'); END",
    )
    .execute(store.sqlite().unwrap())
    .await
    .unwrap();
    let recent = Arc::new(RecentWrites::new());
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let tuning = Tuning {
        gate: Some(gate),
        ..no_idle_fold()
    };
    let (writer, task) = Writer::start_with(&store, recent.clone(), tuning).unwrap();
    // the writer thread waits at the gate: all three jobs are queued before it takes
    // the first, so they are one group (the group is everything queued)
    let a = writer.enqueue(Op::Upsert(vec![rating("u", "a", 4.0)]));
    let bad = writer.enqueue(Op::Upsert(vec![
        rating("u", "x", 3.0),
        rating("u", "b", 2.5),
    ]));
    let c = writer.enqueue(Op::Upsert(vec![rating("v", "c", 5.0)]));
    drop(open);
    let (a, bad, c) = (a.await.unwrap(), bad.await.unwrap(), c.await.unwrap());
    assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
    assert!(bad.unwrap_err().to_string().contains("boom"));
    assert_eq!(
        store.count_ratings().await.unwrap(),
        2,
        "u/x was rolled back with u/b"
    );
    assert_eq!(recent.seq(), 2, "only the committed requests are recorded");
    assert!(writer
        .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
        .await
        .unwrap());
    assert!(!writer
        .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
        .await
        .unwrap());
    drop(writer);
    task.finish().await;
    assert_eq!(store.count_ratings().await.unwrap(), 1);
}

/// The delta and its folding are invisible to readers: after a random mix of
/// writes, re-writes and deletes, with folds of random sizes in between, every read
/// path (count, a user's page, rated items, the training scan) agrees with a plain
/// map of the operations, and folding everything empties the delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_the_delta_over_the_table_across_folds() {
    use std::collections::BTreeMap;
    let (_dir, store) = temp_store().await;
    let recent = Arc::new(RecentWrites::new());
    let (writer, task) = Writer::start_with(&store, recent.clone(), no_idle_fold()).unwrap();
    let mut folder = Connection::open(store.path().unwrap()).unwrap();
    folder.busy_timeout(Duration::from_secs(10)).unwrap();

    let mut model: BTreeMap<(String, String), f32> = BTreeMap::new();
    let mut state: u64 = 0x5eed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for step in 0..400 {
        let (u, i) = (format!("u{}", next(6)), format!("i{}", next(8)));
        match next(10) {
            0..=5 => {
                let v = 1 + next(5) as u32;
                writer.upsert(vec![rating(&u, &i, v as f32)]).await.unwrap();
                model.insert((u, i), v as f32);
            }
            6..=8 => {
                let existed = writer
                    .delete(UserId::parse(&u).unwrap(), ItemId::parse(&i).unwrap())
                    .await
                    .unwrap();
                assert_eq!(existed, model.remove(&(u, i)).is_some(), "step {step}");
            }
            _ => {
                let limit = 1 + next(12) as usize;
                tokio::task::block_in_place(|| fold_chunk(&mut folder, limit)).unwrap();
            }
        }
        if step % 50 == 49 {
            check(&store, &model).await;
        }
    }
    check(&store, &model).await;
    tokio::task::block_in_place(|| while fold_chunk(&mut folder, 7).unwrap() > 0 {});
    let left: i64 = folder
        .query_row("SELECT COUNT(*) FROM ratings_delta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    check(&store, &model).await;
    drop(writer);
    task.finish().await;

    async fn check(store: &Store, model: &BTreeMap<(String, String), f32>) {
        assert_eq!(store.count_ratings().await.unwrap(), model.len() as u64);
        for u in 0..6 {
            let user = UserId::parse(&format!("u{u}")).unwrap();
            let want: Vec<(String, f32)> = model
                .iter()
                .filter(|((mu, _), _)| mu == user.as_str())
                .map(|((_, i), v)| (i.clone(), *v))
                .collect();
            let (page, total) = store.list_ratings(&user, 100, 0).await.unwrap();
            assert_eq!(total, want.len() as u64);
            let mut got: Vec<(String, f32)> =
                page.into_iter().map(|r| (r.item, r.rating)).collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "{user:?}");
            let mut rated = store.rated_items(&user).await.unwrap();
            rated.sort();
            let want_items: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
            assert_eq!(rated, want_items);
        }
        let rows = store.load_training_rows().await.unwrap();
        let name = |pairs: &[(i64, String)], k: u32| {
            pairs.iter().find(|p| p.0 == k as i64).unwrap().1.clone()
        };
        assert!(rows
            .ratings
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        let scanned: BTreeMap<(String, String), f32> = rows
            .ratings
            .iter()
            .map(|&(u, i, v)| ((name(&rows.users, u), name(&rows.items, i)), v))
            .collect();
        assert_eq!(&scanned, model);
    }
}

/// Writes go to the delta first; a writer that receives nothing for its idle interval
/// folds the delta into `ratings` by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_folds_the_delta() {
    let (_dir, store) = temp_store().await;
    let conn = Connection::open(store.path().unwrap()).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let recent = Arc::new(RecentWrites::new());
    let (writer, task) = Writer::start_with(&store, recent.clone(), no_idle_fold()).unwrap();
    let batch = (0..30)
        .map(|k| rating(&format!("u{k}"), "i", 3.0))
        .collect();
    writer.upsert(batch).await.unwrap();
    drop(writer);
    task.finish().await;
    assert_eq!(count("ratings_delta"), 30, "written to the delta first");
    assert_eq!(count("ratings"), 0);

    // a writer on the same store, idle from the start, folds the 30 rows it finds
    let (folded, told) = std::sync::mpsc::channel();
    let tuning = Tuning {
        idle_fold: Some(Duration::from_millis(1)),
        folded_when_idle: Some(folded),
        gate: None,
    };
    let (writer, task) = Writer::start_with(&store, recent, tuning).unwrap();
    tokio::task::block_in_place(|| told.recv_timeout(Duration::from_secs(60)))
        .expect("the idle writer folds the delta");
    assert_eq!(count("ratings_delta"), 0);
    assert_eq!(count("ratings"), 30);
    assert_eq!(store.count_ratings().await.unwrap(), 30);
    drop(writer);
    task.finish().await;
}

/// `funkrec import` folds the delta first, so what it writes replaces what the
/// service wrote before (and a deletion in the delta is applied, not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_after_service_writes_wins_over_the_delta() {
    use crate::store::ImportRow;
    let (_dir, store) = temp_store().await;
    let row = |user: &str, item: &str, rating: f32| {
        Ok(ImportRow {
            user: user.into(),
            item: item.into(),
            rating,
            timestamp: 1,
        })
    };
    let import = |rows: Vec<anyhow::Result<ImportRow>>| {
        let store = store.clone();
        async move {
            store
                .bulk_import(rows.into_iter(), &mut |_| {})
                .await
                .unwrap()
        }
    };
    import(vec![row("u", "b", 4.0)]).await;
    let (writer, task) =
        Writer::start_with(&store, Arc::new(RecentWrites::new()), no_idle_fold()).unwrap();
    writer.upsert(vec![rating("u", "a", 2.0)]).await.unwrap();
    assert!(writer
        .delete(UserId::parse("u").unwrap(), ItemId::parse("b").unwrap())
        .await
        .unwrap());
    drop(writer);
    task.finish().await;
    let conn = Connection::open(store.path().unwrap()).unwrap();
    let delta: i64 = conn
        .query_row("SELECT COUNT(*) FROM ratings_delta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(delta, 2, "the write and the deletion wait in the delta");
    import(vec![row("u", "a", 5.0)]).await;
    let (page, total) = store
        .list_ratings(&UserId::parse("u").unwrap(), 10, 0)
        .await
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!((page[0].item.as_str(), page[0].rating), ("a", 5.0));
}

/// The per-user reads filter `ratings_now` on a bound user key; the bundled SQLite
/// must push that filter into both halves of the view (a search on the key), or every
/// user's page would scan all ratings (the plan would say `SCAN r` inside the union).
#[tokio::test]
async fn per_user_reads_of_the_view_search_both_tables_by_key() {
    let (_dir, store) = temp_store().await;
    let conn = Connection::open(store.path().unwrap()).unwrap();
    for sql in [
        "SELECT COUNT(*) FROM ratings_now WHERE user_id = ?1",
        "SELECT i.ext_id, r.rating, r.ts FROM ratings_now r JOIN items i ON i.id = r.item_id \
         WHERE r.user_id = ?1 ORDER BY r.item_id LIMIT 10 OFFSET 0",
    ] {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map([1], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let has = |needle: &str| plan.iter().any(|p| p.contains(needle));
        assert!(
            has("SEARCH ratings_delta USING PRIMARY KEY (user_id=?)"),
            "{plan:?}"
        );
        assert!(has("SEARCH r USING PRIMARY KEY (user_id=?)"), "{plan:?}");
    }
}
