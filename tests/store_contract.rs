//! The store contract: every store operation, run against SQLite and against PostgreSQL, must behave the same.
//!
//! Each case runs twice: `sqlite` (a temporary file) and `postgres` (a database of its
//! own on the server at `FUNKREC_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, created for the test and dropped
//! afterwards). When that server does not answer, the PostgreSQL cases print
//! `skipped: ...` and return, unless `FUNKREC_TEST_PG_REQUIRED=1` (CI sets it), which
//! makes them fail instead.

use funkrec::config::Settings;
use funkrec::domain::{ItemId, NewRating, RatingValue, UserId};
use funkrec::rated::RecentWrites;
use funkrec::store::{
    ClusterCounters, FetchError, ImportRow, ModelRow, Store, StoreError, Writer, WriterTask,
    CHUNK_BYTES, MODEL_REJECTED, MODEL_SERVING, MODEL_SUPERSEDED, TRAIN_CHANNEL,
};
use funkrec_engine::Scale;
use sqlx::Connection;
use std::sync::Arc;

#[path = "common/pg.rs"]
mod pg;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, migrated store of one backend and what must be removed afterwards.
struct TestDb {
    backend: Backend,
    settings: Settings,
    store: Store,
    _dir: tempfile::TempDir,
    /// The test's own PostgreSQL database.
    pg: Option<pg::PgDb>,
}

impl TestDb {
    async fn open(backend: Backend, test: &str) -> Option<TestDb> {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.storage.data_dir = dir.path().to_path_buf();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let db = pg::PgDb::create(test).await?;
                settings.storage.database_url = db.url.clone();
                Some(db)
            }
        };
        let store = Store::connect(&settings).await.unwrap();
        assert_eq!(
            store.backend_name(),
            match backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            }
        );
        Some(TestDb {
            backend,
            settings,
            store,
            _dir: dir,
            pg,
        })
    }

    fn writer(&self) -> (Writer, WriterTask) {
        Writer::start(&self.store, Arc::new(RecentWrites::new())).unwrap()
    }

    /// Raw SQL on the test's database, outside the store (to inject faults).
    async fn execute(&self, sql: &str) {
        let url = self.settings.database_url();
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    /// Makes the database refuse any rating of 2.5 with the message "boom".
    async fn refuse_2_5(&self) {
        match self.backend {
            Backend::Sqlite => {
                self.execute(
                    "CREATE TRIGGER boom BEFORE INSERT ON ratings_delta WHEN NEW.rating = 2.5 \
                     BEGIN SELECT RAISE(ABORT, 'boom'); END",
                )
                .await
            }
            Backend::Postgres => {
                self.execute(
                    "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                     IF NEW.rating = 2.5 THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$; \
                     CREATE TRIGGER boom BEFORE INSERT ON ratings FOR EACH ROW EXECUTE FUNCTION boom();",
                )
                .await
            }
        }
    }

    async fn close(mut self) {
        self.store.close().await;
        if let Some(db) = self.pg.take() {
            db.drop_now().await;
        }
    }
}

/// Runs one contract case on both backends (two tests: `NAME::sqlite`, `NAME::postgres`).
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::TestDb::open(super::Backend::Sqlite, stringify!($name))
                    .await
                    .unwrap();
                super::$name(&db).await;
                db.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) =
                    super::TestDb::open(super::Backend::Postgres, stringify!($name)).await
                else {
                    return;
                };
                super::$name(&db).await;
                db.close().await;
            }
        }
    };
}

fn rating(user: &str, item: &str, value: f32, ts: i64) -> NewRating {
    NewRating {
        user: UserId::parse(user).unwrap(),
        item: ItemId::parse(item).unwrap(),
        value: RatingValue::parse(value as f64, &Scale { min: 1.0, max: 5.0 }).unwrap(),
        timestamp: ts,
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn iid(s: &str) -> ItemId {
    ItemId::parse(s).unwrap()
}

/// (item, rating, timestamp) of all of a user's ratings.
async fn all_of(store: &Store, user: &str) -> Vec<(String, f32, i64)> {
    let (rows, total) = store.list_ratings(&uid(user), 1000, 0).await.unwrap();
    assert_eq!(rows.len() as u64, total);
    rows.into_iter()
        .map(|r| (r.item, r.rating, r.timestamp))
        .collect()
}

fn triples(v: &[(&str, f32, i64)]) -> Vec<(String, f32, i64)> {
    v.iter().map(|&(i, r, t)| (i.to_owned(), r, t)).collect()
}

contract!(writes_rewrites_and_counts);
async fn writes_rewrites_and_counts(db: &TestDb) {
    let store = &db.store;
    assert!(!store.has_ratings().await.unwrap());
    assert_eq!(store.count_ratings().await.unwrap(), 0);
    assert_eq!(
        store.list_ratings(&uid("nobody"), 10, 0).await.unwrap(),
        (vec![], 0)
    );
    let (w, task) = db.writer();
    w.upsert(vec![
        rating("u1", "b", 4.0, 10),
        rating("u1", "a", 3.0, 11),
        rating("u2", "a", 5.0, 12),
    ])
    .await
    .unwrap();
    assert!(store.has_ratings().await.unwrap());
    assert_eq!(store.count_ratings().await.unwrap(), 3);
    // ordered by item key: "b" was written first
    assert_eq!(
        all_of(store, "u1").await,
        triples(&[("b", 4.0, 10), ("a", 3.0, 11)])
    );
    // a re-write replaces; within a batch the later rating of a pair wins
    w.upsert(vec![rating("u1", "b", 1.0, 20), rating("u1", "b", 2.0, 21)])
        .await
        .unwrap();
    assert_eq!(
        all_of(store, "u1").await,
        triples(&[("b", 2.0, 21), ("a", 3.0, 11)])
    );
    assert_eq!(store.count_ratings().await.unwrap(), 3);
    task.finish().await;
}

contract!(deletes);
async fn deletes(db: &TestDb) {
    let store = &db.store;
    let (w, task) = db.writer();
    w.upsert(vec![rating("u", "a", 4.0, 1), rating("u", "b", 3.0, 1)])
        .await
        .unwrap();
    assert!(w.delete(uid("u"), iid("a")).await.unwrap());
    assert!(!w.delete(uid("u"), iid("a")).await.unwrap(), "already gone");
    assert!(
        !w.delete(uid("ghost"), iid("a")).await.unwrap(),
        "unknown user"
    );
    assert!(
        !w.delete(uid("u"), iid("ghost")).await.unwrap(),
        "unknown item"
    );
    assert_eq!(all_of(store, "u").await, triples(&[("b", 3.0, 1)]));
    assert_eq!(store.count_ratings().await.unwrap(), 1);
    assert_eq!(
        store.rated_items(&uid("u")).await.unwrap(),
        vec!["b".to_owned()]
    );
    // deleted, then written again
    w.upsert(vec![rating("u", "a", 5.0, 2)]).await.unwrap();
    assert_eq!(
        all_of(store, "u").await,
        triples(&[("a", 5.0, 2), ("b", 3.0, 1)])
    );
    // the last rating deleted: nothing left
    assert!(w.delete(uid("u"), iid("a")).await.unwrap());
    assert!(w.delete(uid("u"), iid("b")).await.unwrap());
    assert!(!store.has_ratings().await.unwrap());
    assert_eq!(
        store.list_ratings(&uid("u"), 10, 0).await.unwrap(),
        (vec![], 0)
    );
    task.finish().await;
}

contract!(batches_are_all_or_nothing);
async fn batches_are_all_or_nothing(db: &TestDb) {
    let store = &db.store;
    db.refuse_2_5().await;
    let (w, task) = db.writer();
    // sent together, so they may share a group: the failing batch fails alone
    let (a, bad, c) = tokio::join!(
        w.upsert(vec![rating("u", "a", 4.0, 1)]),
        w.upsert(vec![rating("v", "x", 3.0, 1), rating("v", "y", 2.5, 1)]),
        w.upsert(vec![rating("w", "c", 5.0, 1)]),
    );
    assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
    let err = bad.unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(
        store.count_ratings().await.unwrap(),
        2,
        "v/x rolled back with v/y"
    );
    assert_eq!(
        store.list_ratings(&uid("v"), 10, 0).await.unwrap(),
        (vec![], 0)
    );
    // the writer keeps working, and the user the failed batch created is usable
    w.upsert(vec![rating("v", "x", 3.0, 2)]).await.unwrap();
    assert_eq!(all_of(store, "v").await, triples(&[("x", 3.0, 2)]));
    let rows = store.load_training_rows().await.unwrap();
    assert_eq!(rows.ratings.len(), 3);
    task.finish().await;
}

contract!(concurrent_batches_with_shared_new_ids);
/// Batches sent at once that name the same new users and items in different orders
/// (on PostgreSQL two group transactions run at once and insert new ids in order of
/// first appearance): every batch is acknowledged, every pair is stored once, and
/// each stored rating is whole, its value and timestamp from the same batch.
async fn concurrent_batches_with_shared_new_ids(db: &TestDb) {
    let store = &db.store;
    let (w, task) = db.writer();
    let (batches, users, items) = (12i64, 40usize, 30usize);
    let mut sent = Vec::new();
    for t in 0..batches {
        let batch: Vec<NewRating> = (0..users)
            .map(|k| (k + 3 * t as usize) % users) // each batch starts at another user
            .map(|u| {
                let item = format!("item{}", (u + t as usize) % items);
                rating(&format!("user{u}"), &item, 1.0 + (t % 5) as f32, t)
            })
            .collect();
        let w = w.clone();
        // staggered, so that batches queue while earlier groups commit
        let wait = std::time::Duration::from_millis(2 * t as u64);
        sent.push(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            w.upsert(batch).await
        }));
    }
    for s in sent {
        s.await.unwrap().expect("every batch is acknowledged");
    }
    task.finish().await;
    // pair (user u, item i) was written by the batches t with (u + t) % items == i
    let mut pairs = std::collections::HashSet::new();
    for u in 0..users {
        let got = all_of(store, &format!("user{u}")).await;
        for (item, value, ts) in &got {
            let i: usize = item.trim_start_matches("item").parse().unwrap();
            assert_eq!(
                (u + *ts as usize) % items,
                i,
                "user{u} {item} from batch {ts}"
            );
            assert_eq!(*value, 1.0 + (ts % 5) as f32, "user{u} {item}: a whole row");
            pairs.insert((u, i));
        }
        assert_eq!(got.len(), pairs.iter().filter(|p| p.0 == u).count());
    }
    let want: std::collections::HashSet<(usize, usize)> = (0..batches as usize)
        .flat_map(|t| (0..users).map(move |u| (u, (u + t) % items)))
        .collect();
    assert_eq!(pairs, want);
    assert_eq!(store.count_ratings().await.unwrap(), want.len() as u64);
    let scan = store.load_training_rows().await.unwrap();
    assert_eq!((scan.users.len(), scan.items.len()), (users, items));
}

contract!(paging);
async fn paging(db: &TestDb) {
    let store = &db.store;
    let (w, task) = db.writer();
    let batch: Vec<NewRating> = (0..25)
        .map(|k| rating("u", &format!("item{:02}", 24 - k), 1.0 + (k % 5) as f32, k))
        .collect();
    w.upsert(batch).await.unwrap();
    let mut seen = Vec::new();
    for offset in [0u64, 10, 20] {
        let (page, total) = store.list_ratings(&uid("u"), 10, offset).await.unwrap();
        assert_eq!(total, 25);
        assert_eq!(page.len(), if offset == 20 { 5 } else { 10 });
        seen.extend(page.into_iter().map(|r| r.item));
    }
    let want: Vec<String> = (0..25).map(|k| format!("item{:02}", 24 - k)).collect();
    assert_eq!(seen, want, "item key order = order of first write");
    let (page, total) = store.list_ratings(&uid("u"), 10, 1000).await.unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 25);
    let (page, _) = store.list_ratings(&uid("u"), 3, u64::MAX).await.unwrap();
    assert!(
        page.is_empty(),
        "a huge offset is an empty page, not an error"
    );
    task.finish().await;
}

contract!(rated_sets_and_popular);
async fn rated_sets_and_popular(db: &TestDb) {
    let store = &db.store;
    assert!(store.popular(5, None, None).await.unwrap().is_empty());
    let (w, task) = db.writer();
    let mut batch = Vec::new();
    // item "top": 5s from 4 users; "mid": 3s; "low": 1s; "solo": one 5
    for u in ["u1", "u2", "u3", "u4"] {
        batch.push(rating(u, "top", 5.0, 1));
        batch.push(rating(u, "mid", 3.0, 1));
        batch.push(rating(u, "low", 1.0, 1));
    }
    batch.push(rating("u5", "solo", 5.0, 1));
    w.upsert(batch).await.unwrap();
    let mut rated = store.rated_items(&uid("u1")).await.unwrap();
    rated.sort();
    assert_eq!(rated, vec!["low", "mid", "top"]);
    assert!(store.rated_items(&uid("nobody")).await.unwrap().is_empty());

    let names = |v: Vec<(String, f32)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    let all = store.popular(10, None, None).await.unwrap();
    // mean μ = (20 + 12 + 4 + 5) / 13; damped: top (20+10μ)/14, solo (5+10μ)/11, ...
    let mu = 41.0 / 13.0;
    let top = (20.0 + 10.0 * mu) / 14.0;
    assert!((all[0].1 - top as f32).abs() < 1e-4, "{all:?}");
    assert_eq!(names(all), vec!["top", "solo", "mid", "low"]);
    assert_eq!(
        names(store.popular(10, Some(&uid("u5")), None).await.unwrap()),
        vec!["top", "mid", "low"],
        "u5's items are left out"
    );
    assert_eq!(
        names(
            store
                .popular(2, Some(&uid("u1")), Some(&iid("top")))
                .await
                .unwrap()
        ),
        vec!["solo"]
    );
    assert_eq!(
        names(
            store
                .popular(2, Some(&uid("nobody")), Some(&iid("top")))
                .await
                .unwrap()
        ),
        vec!["solo", "mid"]
    );
    task.finish().await;
}

contract!(user_ratings_and_damped_mean);
async fn user_ratings_and_damped_mean(db: &TestDb) {
    let store = &db.store;
    assert_eq!(
        store.damped_mean(&iid("a")).await.unwrap(),
        None,
        "no ratings yet"
    );
    let (w, task) = db.writer();
    w.upsert(vec![
        rating("u1", "a", 5.0, 1),
        rating("u1", "b", 1.0, 1),
        rating("u2", "a", 4.0, 1),
    ])
    .await
    .unwrap();
    w.upsert(vec![rating("u1", "b", 2.0, 2)]).await.unwrap();
    let mut mine = store.user_ratings(&uid("u1")).await.unwrap();
    mine.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(mine, vec![("a".to_owned(), 5.0), ("b".to_owned(), 2.0)]);
    assert!(store.user_ratings(&uid("nobody")).await.unwrap().is_empty());
    // μ = 11/3; a: (9 + 10μ)/12; an unrated item gets μ
    let mu = 11.0f64 / 3.0;
    let a = store.damped_mean(&iid("a")).await.unwrap().unwrap();
    assert!((a as f64 - (9.0 + 10.0 * mu) / 12.0).abs() < 1e-5, "{a}");
    let unseen = store.damped_mean(&iid("zzz")).await.unwrap().unwrap();
    assert!((unseen as f64 - mu).abs() < 1e-5, "{unseen}");
    task.finish().await;
}

contract!(training_scan);
async fn training_scan(db: &TestDb) {
    let store = &db.store;
    let empty = store.load_training_rows().await.unwrap();
    assert!(empty.users.is_empty() && empty.items.is_empty() && empty.ratings.is_empty());
    let (w, task) = db.writer();
    w.upsert(vec![
        rating("v", "b", 2.0, 1),
        rating("u", "a", 4.0, 1),
        rating("v", "a", 5.0, 1),
    ])
    .await
    .unwrap();
    w.upsert(vec![rating("u", "b", 3.5, 2)]).await.unwrap();
    assert!(w.delete(uid("v"), iid("b")).await.unwrap());
    let rows = store.load_training_rows().await.unwrap();
    let ids = |v: &[(i64, String)]| v.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&rows.users), vec!["v", "u"], "key order");
    assert_eq!(ids(&rows.items), vec!["b", "a"]);
    let key = |v: &[(i64, String)], s: &str| v.iter().find(|(_, x)| x == s).unwrap().0 as u32;
    let (v, u) = (key(&rows.users, "v"), key(&rows.users, "u"));
    let (b, a) = (key(&rows.items, "b"), key(&rows.items, "a"));
    assert!(v < u && b < a, "keys follow the order of first write");
    assert_eq!(rows.ratings, vec![(v, a, 5.0), (u, b, 3.5), (u, a, 4.0)]);
    task.finish().await;
}

/// A `model` row of `version` in `state`.
fn model_row(version: i64, holdout: Option<f64>, state: &str) -> ModelRow {
    ModelRow {
        version,
        file: format!("model-{version}.bin"),
        trained_at: "2026-11-30T05:00:00Z".into(),
        trainer: "sgd".into(),
        n_users: 10,
        n_items: 20,
        n_ratings: 300,
        n_holdout: 6,
        train_rmse: Some(0.75),
        holdout_rmse: holdout,
        train_secs: 1.5,
        state: state.into(),
        reason: (state == MODEL_REJECTED).then(|| "worse".to_owned()),
    }
}

contract!(model_rows);
async fn model_rows(db: &TestDb) {
    let store = &db.store;
    assert!(store.model_rows().await.unwrap().is_empty());
    assert_eq!(store.serving_version().await.unwrap(), None);
    let row = |v, h| model_row(v, h, MODEL_SERVING);
    store.insert_model_row(&row(1, Some(0.9))).await.unwrap();
    store.insert_model_row(&row(2, None)).await.unwrap();
    // the second serving row superseded the first, in the same transaction
    let superseded = ModelRow {
        state: MODEL_SUPERSEDED.into(),
        ..row(1, Some(0.9))
    };
    assert_eq!(
        store.model_rows().await.unwrap(),
        vec![row(2, None), superseded]
    );
    assert_eq!(store.serving_version().await.unwrap(), Some(2));
    let dup = store.insert_model_row(&row(2, None)).await.unwrap_err();
    assert!(
        !dup.is_unavailable(),
        "a duplicate version is not a 503: {dup:?}"
    );
    assert_eq!(
        store.serving_version().await.unwrap(),
        Some(2),
        "the failed insert changed nothing"
    );
}

contract!(model_states);
async fn model_states(db: &TestDb) {
    let store = &db.store;
    assert!(!store.set_serving(1).await.unwrap(), "no such version");
    store
        .insert_model_row(&model_row(1, Some(0.9), MODEL_SERVING))
        .await
        .unwrap();
    store
        .insert_model_row(&model_row(2, Some(0.95), MODEL_REJECTED))
        .await
        .unwrap();
    // a rejected row changes nothing about serving
    assert_eq!(store.serving_version().await.unwrap(), Some(1));
    store
        .insert_model_row(&model_row(3, Some(0.88), MODEL_SERVING))
        .await
        .unwrap();
    assert_eq!(store.serving_version().await.unwrap(), Some(3));
    // rollback to 1: 3 becomes superseded, in one transaction
    assert!(store.set_serving(1).await.unwrap());
    assert_eq!(store.serving_version().await.unwrap(), Some(1));
    let states: Vec<(i64, String, Option<String>)> = store
        .model_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.version, r.state, r.reason))
        .collect();
    assert_eq!(
        states,
        vec![
            (3, MODEL_SUPERSEDED.into(), None),
            (2, MODEL_REJECTED.into(), Some("worse".into())),
            (1, MODEL_SERVING.into(), None),
        ]
    );
    // idempotent, and an unknown version changes nothing
    assert!(store.set_serving(1).await.unwrap());
    assert!(!store.set_serving(99).await.unwrap());
    assert_eq!(store.serving_version().await.unwrap(), Some(1));
    // a second store on the same database (a restart) sees the same states
    let again = Store::connect(&db.settings).await.unwrap();
    assert_eq!(again.serving_version().await.unwrap(), Some(1));
    again.close().await;
}

contract!(change_log_pruned_on_publication);
/// Publishing a model to serve drops the change log's rows below the oldest transaction
/// running at the publication before it (every replica serving either model scanned
/// after that). A question about a scan older than what was dropped gets "changed" for
/// every user, never a wrong "unchanged". SQLite scans record no snapshot.
async fn change_log_pruned_on_publication(db: &TestDb) {
    let store = &db.store;
    let (w, task) = db.writer();
    w.upsert(vec![rating("old", "a", 3.0, 1)]).await.unwrap();
    let Some(first) = store.load_training_rows().await.unwrap().snapshot else {
        assert_eq!(db.backend, Backend::Sqlite);
        task.finish().await;
        return;
    };
    w.upsert(vec![rating("mid", "a", 3.0, 2)]).await.unwrap();
    let file = db._dir.path().join("model.fkm");
    std::fs::write(&file, b"a model").unwrap();
    let serving = |v| model_row(v, None, MODEL_SERVING);
    store.publish_model(&serving(1), &file).await.unwrap();
    w.upsert(vec![rating("new", "a", 3.0, 3)]).await.unwrap();
    store.publish_model(&serving(2), &file).await.unwrap();
    let mut c = sqlx::PgConnection::connect(&db.settings.database_url())
        .await
        .unwrap();
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT unnest(users) AS u FROM change_log ORDER BY u")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(logged, vec!["new".to_owned()], "older rows dropped");
    // a scan after both: nobody changed since
    let later = store.load_training_rows().await.unwrap().snapshot.unwrap();
    for u in ["old", "mid", "new", "never"] {
        assert_eq!(
            store.changed_since(&uid(u), &later).await.unwrap(),
            None,
            "{u}"
        );
    }
    // the first scan: "mid" changed after it, but its row is gone, so every user counts
    // as changed (served folded from the database)
    for u in ["old", "mid", "new", "never"] {
        assert!(
            store
                .changed_since(&uid(u), &first)
                .await
                .unwrap()
                .is_some(),
            "{u}"
        );
    }
    task.finish().await;
}

contract!(published_models);
async fn published_models(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.serving_version().await.unwrap(), None);
    let row = |version: i64| ModelRow {
        version,
        file: format!("model-{version}.fkm"),
        trained_at: "2026-11-30T05:00:00Z".into(),
        trainer: "sgd".into(),
        n_users: 10,
        n_items: 20,
        n_ratings: 300,
        n_holdout: 0,
        train_rmse: Some(0.75),
        holdout_rmse: None,
        train_secs: 1.5,
        state: MODEL_SERVING.into(),
        reason: None,
    };
    // two and a half chunks of bytes that are not all alike
    let bytes: Vec<u8> = (0..CHUNK_BYTES * 5 / 2)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = db._dir.path().join("model.fkm");
    std::fs::write(&file, &bytes).unwrap();
    store.publish_model(&row(3), &file).await.unwrap();
    store.publish_model(&row(4), &file).await.unwrap();
    let superseded = ModelRow {
        state: MODEL_SUPERSEDED.into(),
        ..row(3)
    };
    assert_eq!(store.model_rows().await.unwrap(), vec![row(4), superseded]);
    assert_eq!(store.serving_version().await.unwrap(), Some(4));
    // a version published twice is refused and stores nothing more
    assert!(store.publish_model(&row(4), &file).await.is_err());
    match db.backend {
        Backend::Sqlite => {
            // the files are the models: nothing is stored in the database
            assert!(matches!(
                store.fetch_model(4).await,
                Err(FetchError::Missing(4))
            ));
        }
        Backend::Postgres => {
            assert!(store.fetch_model(4).await.unwrap() == bytes);
            assert!(matches!(
                store.fetch_model(9).await,
                Err(FetchError::Missing(9))
            ));
            // one flipped byte, a lost chunk: both refused by the checksum
            db.execute(
                "UPDATE model_chunk SET data = set_byte(data, 7, get_byte(data, 7) # 1) \
                 WHERE version = 4 AND chunk = 1",
            )
            .await;
            let e = store.fetch_model(4).await.unwrap_err();
            assert!(matches!(e, FetchError::Corrupt { version: 4, .. }), "{e}");
            assert!(e.to_string().contains("SHA-256"), "{e}");
            db.execute("DELETE FROM model_chunk WHERE version = 3 AND chunk = 2")
                .await;
            let e = store.fetch_model(3).await.unwrap_err();
            assert!(matches!(e, FetchError::Corrupt { version: 3, .. }), "{e}");
        }
    }
}

contract!(shared_counters);
async fn shared_counters(db: &TestDb) {
    let store = &db.store;
    if db.backend == Backend::Sqlite {
        // one process owns an SQLite store: nothing is shared
        assert!(store.cluster_counters().await.is_err());
        assert!(store.request_train().await.is_err());
        return;
    }
    let mut train = store.listen(&[TRAIN_CHANNEL]).await.unwrap();
    assert_eq!(
        store.cluster_counters().await.unwrap(),
        ClusterCounters::default()
    );
    let (w, task) = db.writer();
    w.upsert(vec![rating("u1", "a", 4.0, 1), rating("u1", "b", 3.0, 2)])
        .await
        .unwrap();
    w.upsert(vec![rating("u1", "a", 5.0, 3)]).await.unwrap();
    assert!(w.delete(uid("u1"), iid("b")).await.unwrap());
    assert!(
        !w.delete(uid("u1"), iid("b")).await.unwrap(),
        "nothing to delete"
    );
    task.finish().await;
    let c = store.cluster_counters().await.unwrap();
    assert_eq!((c.changes, c.pending(), c.requested()), (4, 4, false));
    store.request_train().await.unwrap();
    let (channel, _) = tokio::time::timeout(std::time::Duration::from_secs(5), train.recv())
        .await
        .expect("a train notification")
        .unwrap();
    assert_eq!(channel, TRAIN_CHANNEL);
    let at_start = store.cluster_counters().await.unwrap();
    assert!(at_start.requested() && at_start.secs_since_run.is_none());
    // a run that started from `at_start` covers it; a change after it stays pending
    let (w, task) = db.writer();
    w.upsert(vec![rating("u2", "a", 1.0, 4)]).await.unwrap();
    task.finish().await;
    store.consume_counters(&at_start).await.unwrap();
    let c = store.cluster_counters().await.unwrap();
    assert_eq!((c.pending(), c.requested()), (1, false));
    assert!(c.secs_since_run.is_some_and(|s| (0.0..60.0).contains(&s)));
    // an import counts as changes too
    store
        .bulk_import(
            vec![import_row("u3", "a", 2.0, 5), import_row("u3", "b", 2.0, 6)].into_iter(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(store.cluster_counters().await.unwrap().pending(), 3);
}

fn import_row(user: &str, item: &str, rating: f32, timestamp: i64) -> anyhow::Result<ImportRow> {
    Ok(ImportRow {
        user: user.into(),
        item: item.into(),
        rating,
        timestamp,
    })
}

contract!(import);
async fn import(db: &TestDb) {
    let store = &db.store;
    // service writes first (the writer is stopped before the import: SQLite's import
    // needs the store to itself)
    let (w, task) = db.writer();
    w.upsert(vec![rating("old", "a", 1.0, 1), rating("u1", "a", 1.0, 1)])
        .await
        .unwrap();
    assert!(w.delete(uid("old"), iid("a")).await.unwrap());
    task.finish().await;
    let rows = vec![
        import_row("u1", "a", 4.0, 10),
        import_row("u2", "a", 3.0, 11),
        import_row("u2", "b", 2.0, 12),
        import_row("u2", "b", 5.0, 13),
    ];
    let mut progress = Vec::new();
    let stats = store
        .bulk_import(rows.into_iter(), &mut |n| progress.push(n))
        .await
        .unwrap();
    assert_eq!((stats.rows, stats.new_users, stats.new_items), (4, 1, 1));
    assert_eq!(progress.last(), Some(&4));
    assert_eq!(
        all_of(store, "u1").await,
        triples(&[("a", 4.0, 10)]),
        "import replaces"
    );
    assert_eq!(
        all_of(store, "u2").await,
        triples(&[("a", 3.0, 11), ("b", 5.0, 13)]),
        "later row wins"
    );
    assert!(all_of(store, "old").await.is_empty(), "the deletion stays");
    assert_eq!(store.count_ratings().await.unwrap(), 3);
    // the service's writes after the import replace the import's
    let (w, task) = db.writer();
    w.upsert(vec![rating("u2", "b", 1.0, 20)]).await.unwrap();
    assert_eq!(
        all_of(store, "u2").await,
        triples(&[("a", 3.0, 11), ("b", 1.0, 20)])
    );
    task.finish().await;
    let scan = store.load_training_rows().await.unwrap();
    assert_eq!(scan.ratings.len(), 3);
}

contract!(import_many_users_and_shared_new_items);
/// Many users (on PostgreSQL spread over the import's parallel streams), each rating
/// the same new items in its own order, with repeated pairs: every stream inserts
/// the shared items without a deadlock, the later row of a pair wins, and every
/// user's ratings and the counts come out as on one stream.
async fn import_many_users_and_shared_new_items(db: &TestDb) {
    let store = &db.store;
    let (users, items) = (60usize, 12usize);
    let mut rows = Vec::new();
    for u in 0..users {
        for k in 0..items {
            let i = (k * 7 + u) % items; // a different item order per user
            rows.push((format!("user{u}"), format!("item{i}"), 1.0, 1));
        }
        // a second row for one pair of each user: the later one wins
        rows.push((format!("user{u}"), format!("item{}", u % items), 5.0, 2));
    }
    let n = rows.len() as u64;
    let stats = store
        .bulk_import(
            rows.iter()
                .map(|(u, i, r, t)| import_row(u, i, *r, *t))
                .collect::<Vec<_>>()
                .into_iter(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        (stats.rows, stats.new_users, stats.new_items),
        (n, users as u64, items as u64)
    );
    assert_eq!(store.count_ratings().await.unwrap(), (users * items) as u64);
    for u in [0, 1, users / 2, users - 1] {
        let got = all_of(store, &format!("user{u}")).await;
        assert_eq!(got.len(), items, "user{u}");
        for (item, rating, ts) in got {
            let later = item == format!("item{}", u % items);
            assert_eq!(
                (rating, ts),
                if later { (5.0, 2) } else { (1.0, 1) },
                "user{u} {item}"
            );
        }
    }
    let scan = store.load_training_rows().await.unwrap();
    assert_eq!(scan.ratings.len(), users * items);
    assert_eq!((scan.users.len(), scan.items.len()), (users, items));
    // again, every user known now: the later import replaces, nothing is added
    let again = (0..users).map(|u| import_row(&format!("user{u}"), "item0", 3.0, 9));
    let stats = store.bulk_import(again, &mut |_| {}).await.unwrap();
    assert_eq!(
        (stats.rows, stats.new_users, stats.new_items),
        (users as u64, 0, 0)
    );
    assert_eq!(store.count_ratings().await.unwrap(), (users * items) as u64);
    let got = all_of(store, "user7").await;
    assert!(got.contains(&("item0".to_owned(), 3.0, 9)), "{got:?}");
}

contract!(import_input_error_keeps_nothing_of_its_transaction);
async fn import_input_error_keeps_nothing_of_its_transaction(db: &TestDb) {
    let store = &db.store;
    let rows = vec![
        import_row("u1", "a", 4.0, 10),
        Err(anyhow::anyhow!("line 2: bad rating")),
        import_row("u2", "a", 3.0, 11),
    ];
    let err = store
        .bulk_import(rows.into_iter(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("line 2: bad rating"), "{err:#}");
    assert_eq!(store.count_ratings().await.unwrap(), 0);
    // a good import afterwards works
    let stats = store
        .bulk_import(
            vec![import_row("u1", "a", 4.0, 10)].into_iter(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(stats.rows, 1);
    assert_eq!(store.count_ratings().await.unwrap(), 1);
}

/// A wrong scheme and an unreachable server are clear errors at start, and neither
/// shows the URL's password.
#[tokio::test]
async fn bad_database_urls_are_refused_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.storage.data_dir = dir.path().to_path_buf();
    settings.storage.database_url = "mysql://app:hunter2@127.0.0.1/funkrec".into();
    let err = format!("{:#}", Store::connect(&settings).await.unwrap_err());
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(err.contains("mysql://app:***@127.0.0.1/funkrec"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // port 1 on loopback: nothing listens there
    settings.storage.database_url = "postgres://app:hunter2@127.0.0.1:1/funkrec".into();
    let err = format!("{:#}", Store::connect(&settings).await.unwrap_err());
    assert!(
        err.contains("opening database postgres://app:***@127.0.0.1:1/funkrec"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

contract!(forget_and_retire);
async fn forget_and_retire(db: &TestDb) {
    let store = &db.store;
    let recent = Arc::new(RecentWrites::new());
    let (w, task) = Writer::start(store, recent.clone()).unwrap();
    w.upsert(vec![
        rating("u", "a", 4.0, 1),
        rating("u", "b", 3.0, 1),
        rating("v", "a", 5.0, 1),
        rating("v", "c", 2.0, 1),
    ])
    .await
    .unwrap();
    assert!(store.forgotten_users().await.unwrap().is_empty());
    assert!(store.retired_items().await.unwrap().is_empty());
    let since = recent.seq();

    // forgetting a user deletes every rating of theirs and writes the row
    assert!(w.forget_user(uid("u"), 7).await.unwrap());
    assert_eq!(all_of(store, "u").await, vec![]);
    assert_eq!(all_of(store, "v").await.len(), 2, "others untouched");
    assert_eq!(store.count_ratings().await.unwrap(), 2);
    assert_eq!(
        store.forgotten_users().await.unwrap(),
        vec![("u".to_owned(), 7)]
    );
    // the deleted pairs are recorded (serving folds the user in from nothing)
    let mut gone = Vec::new();
    assert!(recent.changes_since("u", since, |i, rated| gone.push((i.to_owned(), rated))));
    gone.sort();
    assert_eq!(gone, [("a".to_owned(), false), ("b".to_owned(), false)]);
    // again: a new tag; an unknown user: false
    assert!(w.forget_user(uid("u"), 8).await.unwrap());
    assert!(!w.forget_user(uid("ghost"), 9).await.unwrap());
    assert_eq!(
        store.forgotten_users().await.unwrap(),
        vec![("u".to_owned(), 8)]
    );
    // clearing with an old tag keeps the row, with the current one removes it
    store.clear_forgotten(&[("u".into(), 7)]).await.unwrap();
    assert_eq!(store.forgotten_users().await.unwrap().len(), 1);
    store.clear_forgotten(&[("u".into(), 8)]).await.unwrap();
    assert!(store.forgotten_users().await.unwrap().is_empty());

    // retiring an item deletes its ratings and writes the row
    w.upsert(vec![rating("u", "a", 1.0, 2)]).await.unwrap();
    assert!(w.retire_item(iid("a"), 100).await.unwrap());
    assert!(w.retire_item(iid("a"), 200).await.unwrap(), "idempotent");
    assert!(!w.retire_item(iid("ghost"), 100).await.unwrap());
    assert_eq!(store.retired_items().await.unwrap(), vec!["a".to_owned()]);
    assert_eq!(all_of(store, "v").await, triples(&[("c", 2.0, 1)]));
    assert_eq!(all_of(store, "u").await, vec![]);
    // a rating of it that got in anyway is left out of training
    w.upsert(vec![rating("v", "a", 3.0, 3)]).await.unwrap();
    let rows = store.load_training_rows().await.unwrap();
    let items: Vec<&str> = rows.items.iter().map(|(_, s)| s.as_str()).collect();
    assert!(!items.contains(&"a"), "{items:?}");
    assert_eq!(rows.ratings.len(), 1, "only v's rating of c");
    task.finish().await;
}

contract!(change_checks);
/// Read-your-writes across replicas: which users changed after a training scan. Only
/// PostgreSQL scans record a snapshot (SQLite: one process, its own record of the
/// writes is exact), so on SQLite the scan has none and there is nothing to ask.
async fn change_checks(db: &TestDb) {
    let store = &db.store;
    let (w, task) = db.writer();
    let users: Vec<String> = (0..60).map(|u| format!("u{u}")).collect();
    let first: Vec<NewRating> = users.iter().map(|u| rating(u, "a", 3.0, 1)).collect();
    w.upsert(first).await.unwrap();
    let rows = store.load_training_rows().await.unwrap();
    let Some(snapshot) = rows.snapshot else {
        assert_eq!(
            db.backend,
            Backend::Sqlite,
            "a PostgreSQL scan records its snapshot"
        );
        task.finish().await;
        return;
    };
    assert_eq!(db.backend, Backend::Postgres);
    // after the scan: the even users rate again, u1 loses its rating, u3 rates in a
    // transaction that is rolled back (a batch with a bad rating: nothing commits)
    let again: Vec<NewRating> = users
        .iter()
        .step_by(2)
        .map(|u| rating(u, "b", 4.0, 2))
        .collect();
    w.upsert(again).await.unwrap();
    assert!(w.delete(uid("u1"), iid("a")).await.unwrap());
    db.refuse_2_5().await;
    assert!(w
        .upsert(vec![rating("u3", "c", 1.0, 3), rating("u3", "d", 2.5, 3)])
        .await
        .is_err());
    // asked all at once: the questions share queries, each gets its own answer
    let answers = futures_util::future::join_all(
        users
            .iter()
            .map(|u| async { store.changed_since(&uid(u), &snapshot).await.unwrap() }),
    )
    .await;
    for (n, (u, answer)) in users.iter().zip(&answers).enumerate() {
        let changed = n % 2 == 0 || n == 1;
        assert_eq!(answer.is_some(), changed, "{u}: {answer:?}");
    }
    // one transaction wrote every even user: one transaction id
    let evens: std::collections::HashSet<_> = answers.iter().step_by(2).collect();
    assert_eq!(evens.len(), 1, "{evens:?}");
    assert_ne!(answers[1], answers[0], "the delete is a later transaction");
    // a later scan covers them all
    let rows = store.load_training_rows().await.unwrap();
    let later = rows.snapshot.unwrap();
    for u in &users {
        assert_eq!(
            store.changed_since(&uid(u), &later).await.unwrap(),
            None,
            "{u}"
        );
    }
    // a transaction that got its id before a later one but commits after it (as a
    // writer of another replica may): found once it commits
    let mut early = sqlx::PgConnection::connect(&db.settings.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut early).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO change_log (xid, users) \
         VALUES (pg_current_xact_id()::text::int8, ARRAY['late'])",
    )
    .execute(&mut early)
    .await
    .unwrap();
    w.upsert(vec![rating("u0", "z", 5.0, 4)]).await.unwrap();
    assert!(store
        .changed_since(&uid("u0"), &later)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.changed_since(&uid("late"), &later).await.unwrap(),
        None,
        "not committed yet"
    );
    sqlx::raw_sql("COMMIT").execute(&mut early).await.unwrap();
    assert!(store
        .changed_since(&uid("late"), &later)
        .await
        .unwrap()
        .is_some());
    task.finish().await;
}
