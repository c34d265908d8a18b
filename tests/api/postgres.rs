//! The whole service on PostgreSQL (`storage.database_url = postgres://…`): ingest, list, delete, train, recommend, restart.

use crate::helpers::*;
use serde_json::json;
use std::sync::Arc;

#[path = "../common/pg.rs"]
pub mod pg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_postgres() {
    let Some(db) = pg::PgDb::create("api_service").await else {
        return;
    };
    let url = db.url.clone();
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    // only the train request below trains: a trainer elected after the ratings arrive
    // would otherwise also train at the start of its term, and the version served at
    // the restart would be whichever of the two runs published last
    let on_pg = |s: &mut funkrec::config::Settings| {
        s.storage.database_url = url.clone();
        s.training.train_on_start = false;
    };
    let app = spawn_app_in(tmp.clone(), on_pg).await;
    let (s, v) = app.get_json("/readyz").await;
    assert_eq!((s, &v["database"]), (200, &json!("ok")), "{v}");
    assert!(
        !tmp.path().join("funkrec.db").exists(),
        "no SQLite file on PostgreSQL"
    );

    app.post_ratings(&planted()).await;
    let (s, v) = app.get_json("/v1/users/u0/ratings?limit=5").await;
    assert_eq!(s, 200, "{v}");
    let total = v["total"].as_u64().unwrap();
    assert_eq!(v["ratings"].as_array().unwrap().len(), 5);
    // delete one rating of u0: gone from the listing
    let first = v["ratings"][0]["item"].as_str().unwrap().to_owned();
    let status = app.delete(&format!("/v1/users/u0/ratings/{first}")).await;
    assert!((200..300).contains(&status), "{status}");
    let (_, v) = app.get_json("/v1/users/u0/ratings?limit=100").await;
    assert_eq!(v["total"].as_u64().unwrap(), total - 1);

    let version = app.train().await;
    let (s, v) = app.get_json("/v1/users/u0/recommendations?n=3").await;
    assert_eq!(s, 200, "{v}");
    let recs: Vec<(usize, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_str().unwrap().to_owned())
        .map(|i| (i[1..].parse().unwrap(), i))
        .collect();
    assert!(!recs.is_empty());
    // u0 has 5 unrated items (and the deleted one): the top 3 are ones u0 likes
    for (i, id) in &recs {
        assert!(is_unrated(0, *i) || *id == first, "u0 had rated {id}");
        assert!(liked(0, *i), "u0 should like what is recommended, got {id}");
    }
    app.stop().await;

    // a restart on the same database serves the same model without retraining
    let app = spawn_app_in(tmp, on_pg).await;
    assert_eq!(app.model_version().await, Some(version));
    app.stop().await;
    db.drop_now().await;
}

/// A model in the database that fails its checksum is skipped by the replicas: the
/// served model stays, a log line and `funkrec_model_checksum_failures_total` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shared_model_is_skipped() {
    let Some(db) = pg::PgDb::create("api_corrupt_model").await else {
        return;
    };
    let url = db.url.clone();
    // only the train request below trains (a trainer elected after the ratings arrive
    // would otherwise train at the start of its term too, and publish a version after
    // the corrupt one)
    let app = spawn_app_with(|s| {
        s.storage.database_url = url.clone();
        s.training.train_on_start = false;
    })
    .await;
    let (s, v) = app.get_json("/readyz").await;
    // (the trainer lock is taken in the background, a moment after start)
    assert_eq!((s, &v["role"]), (200, &json!("all")), "{v}");
    app.post_ratings(&planted()).await;
    let version = app.train().await;
    // version + 1: a copy of the served model with one byte flipped, made the serving
    // version and announced as usual
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let next = version as i64 + 1;
    sqlx::raw_sql(&format!(
        "UPDATE model SET state = 'superseded' WHERE version = {version}; \
         INSERT INTO model SELECT {next}, file, trained_at, trainer, n_users, n_items, n_ratings, \
         n_holdout, train_rmse, holdout_rmse, train_secs, 'serving', NULL \
         FROM model WHERE version = {version}; \
         INSERT INTO model_chunk SELECT {next}, chunk, \
         CASE WHEN chunk = 0 THEN set_byte(data, 100, get_byte(data, 100) # 1) ELSE data END \
         FROM model_chunk WHERE version = {version}; \
         INSERT INTO model_blob SELECT {next}, bytes, checksum, chunks FROM model_blob \
         WHERE version = {version}; \
         NOTIFY funkrec_model, '{next}';"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    let mut skipped = false;
    for _ in 0..100 {
        let text = app.get("/metrics").await.text().await.unwrap();
        if text.contains("funkrec_model_checksum_failures_total 1\n") {
            skipped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(skipped, "the corrupt model was not noticed within 5 s");
    assert_eq!(
        app.model_version().await,
        Some(version),
        "the old model still serves"
    );
    let (s, _) = app.get_json("/v1/users/u0/recommendations?n=3").await;
    assert_eq!(s, 200);
    app.stop().await;
    db.drop_now().await;
}
