//! Health, restarts, corrupt snapshots, retraining under traffic, run coalescing, shutdown.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use funkrec::startup::Application;
use funkrec::worker::Wake;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let (s, v) = app.get_json("/healthz").await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let (s, v) = app.get_json("/readyz").await;
    assert_eq!(s, 200);
    assert_eq!(v["database"], "ok");
    assert_eq!(v["model_loaded"], false);
    app.post_ratings(&planted()).await;
    let version = app.train().await;
    let (_, v) = app.get_json("/readyz").await;
    assert_eq!(v["model_loaded"], true);
    assert_eq!(v["model_version"], version);
    assert!(app.data_dir.join("funkrec.db").exists());
    assert!(app
        .data_dir
        .join("models")
        .join("model-0000000001.fkm")
        .exists());

    // and the container healthcheck probe agrees
    let url = app.url("/healthz");
    tokio::task::spawn_blocking(move || funkrec::commands::healthcheck_command(Some(url), None))
        .await
        .unwrap()
        .unwrap();
    let url = app.url("/nope");
    assert!(tokio::task::spawn_blocking(move || {
        funkrec::commands::healthcheck_command(Some(url), None)
    })
    .await
    .unwrap()
    .is_err());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_same_model_without_retraining() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    app.train().await;
    let v2 = app.train().await;
    assert_eq!(v2, 2);
    let (_, before) = app.get_json("/v1/users/u3/predictions/i5").await;
    let (_, model_before) = app.get_json("/v1/model").await;
    let tmp = app.tmp.clone();
    app.stop().await;

    // train_on_start is on, but a valid snapshot exists: serve it, no retrain
    let app = spawn_app_in(tmp, |_| {}).await;
    let (_, m) = app.get_json("/v1/model").await;
    assert_eq!(m["version"], 2, "{m}");
    assert_eq!(m["trained_at"], model_before["trained_at"]);
    assert_eq!(m["holdout_rmse"], model_before["holdout_rmse"]);
    assert_eq!(m["epochs"], model_before["epochs"]);
    let (_, after) = app.get_json("/v1/users/u3/predictions/i5").await;
    assert_eq!(before, after);
    // The start decided: nothing queued or running, and no wake-up would start a run
    // (no interval, no threshold), so none can follow.
    let s = app.worker.status();
    assert!(!s.running && !s.queued && s.runs == 0, "{s:?}");
    for wake in [Wake::Requested, Wake::Changes, Wake::Interval] {
        assert!(!app.worker.wants_run(wake), "{wake:?} would retrain");
    }
    let m = app.wait_idle().await;
    assert_eq!(m["version"], 2);
    assert_eq!(m["training"]["runs"], 0);
    // the next version continues the sequence
    assert_eq!(app.train().await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_skipped_at_start() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    assert_eq!(app.train().await, 1);
    assert_eq!(app.train().await, 2);
    let tmp = app.tmp.clone();
    let models = app.data_dir.join("models");
    app.stop().await;

    // truncate the newest snapshot: version 1 is served instead
    let newest = models.join("model-0000000002.fkm");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let app = spawn_app_in(tmp.clone(), |_| {}).await;
    assert_eq!(app.model_version().await, Some(1));
    let (s, v) = app.get_json("/v1/users/u0/recommendations").await;
    assert_eq!((s, &v["fallback"]), (200, &json!(false)));
    app.stop().await;

    // bit-flip the other one too: no usable snapshot, so it retrains at start
    let oldest = models.join("model-0000000001.fkm");
    let mut bytes = std::fs::read(&oldest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&oldest, &bytes).unwrap();
    let app = spawn_app_in(tmp, |_| {}).await;
    let (s, _) = app.get_json("/v1/users/u0/recommendations").await;
    assert_eq!(s, 200, "serves (fallback) while retraining");
    let v = app.wait_for_version_after(None).await;
    assert_eq!(v, 3, "new versions never reuse a number");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_succeeding_while_snapshots_swap() {
    let app = Arc::new(spawn_app().await);
    app.post_ratings(&planted()).await;
    let first = app.train().await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4usize {
        let (app, stop, ok) = (app.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let u = (n + c) % 20;
                let path = match n % 4 {
                    0 => format!("/v1/users/u{u}/recommendations?n=5"),
                    1 => format!("/v1/users/u{u}/predictions/i{}", n % 20),
                    2 => format!("/v1/items/i{}/similar?n=3", n % 20),
                    _ => "/v1/model".to_string(),
                };
                let r = app.get(&path).await;
                if r.status().is_success() {
                    let v: Value = r.json().await.unwrap();
                    assert!(v.is_object());
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((path, r.status().as_u16()));
                }
                n += 1;
            }
            failures
        }));
    }
    // a writer adds new users and items while runs load the store
    let writer = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"ratings": [
                    {"user": format!("w{n}"), "item": format!("new{n}"), "rating": 4},
                    {"user": format!("w{n}"), "item": "i1", "rating": 2},
                ]});
                let (s, v) = app.post_json("/v1/ratings", &body).await;
                assert_eq!(s, 201, "{v}");
                n += 1;
            }
            n
        })
    };
    // three retrains swap the snapshot under the traffic
    let mut last = first;
    for _ in 0..3 {
        let v = app.train().await;
        assert!(v > last);
        last = v;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during swaps: {failures:?}"
        );
    }
    assert!(ok.load(Ordering::Relaxed) > 20, "traffic actually flowed");
    assert!(writer.await.unwrap() > 0);
    let m = app.wait_idle().await;
    assert_eq!(m["training"]["failures"], 0, "{m}");
    Arc::into_inner(app).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_during_a_run_queue_exactly_one_more() {
    // slow enough that all triggers land during the first run
    let app = spawn_app_with(|s| s.model.epochs = 40_000).await;
    app.post_ratings(&planted()).await;
    let (s, v) = app.post_json("/v1/model/train", &json!({})).await;
    assert_eq!(s, 202);
    assert_eq!(v["job"]["queued"], true, "{v}");
    // wait until the run has started, then trigger five more times
    let mut status = app.worker.subscribe();
    drop(hang_guard(status.wait_for(|s| s.running), &app.worker).await);
    for _ in 0..5 {
        let (s, v) = app.post_json("/v1/model/train", &json!({})).await;
        assert_eq!(s, 202);
        assert_eq!(v["job"]["running"], true, "first run still going: {v}");
        assert_eq!(v["job"]["queued"], true);
    }
    let m = app.wait_idle().await;
    assert_eq!(
        m["training"]["runs"], 2,
        "one run + exactly one queued: {m}"
    );
    assert_eq!(m["version"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_training_is_prompt_and_publishes_nothing() {
    let app = spawn_app_with(|s| s.model.epochs = 100_000).await;
    app.post_ratings(&planted()).await;
    app.post_json("/v1/model/train", &json!({})).await;
    let mut status = app.worker.subscribe();
    let started = status.wait_for(|s| s.epoch.is_some_and(|e| e > 0));
    drop(hang_guard(started, &app.worker).await);
    let dir = app.data_dir.clone();
    let _keep = app.tmp.clone();
    let worker = app.worker.clone();
    app.stop().await;
    // the run stopped at an epoch boundary long before its end, and counted as no run
    let s = worker.status();
    assert!(!s.running, "{s:?}");
    assert!(
        s.epoch.unwrap() < 100_000,
        "the run went on to its end: {s:?}"
    );
    assert_eq!((s.runs, s.failures), (0, 0), "{s:?}");
    let files: Vec<_> = std::fs::read_dir(dir.join("models")).unwrap().collect();
    assert!(files.is_empty(), "a cancelled run wrote a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_after_n_new_ratings() {
    let app = spawn_app_with(|s| s.training.retrain_after_ratings = 50).await;
    app.post_ratings(&planted()[..40]).await;
    let (_, m) = app.get_json("/v1/model").await;
    assert_eq!(m["training"]["pending_changes"], 40);
    assert!(m["version"].is_null());
    app.post_ratings(&planted()[40..60]).await;
    assert_eq!(app.wait_for_version_after(None).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_answers_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let app = Application::build(test_settings(tmp.path())).await.unwrap();
    let router = app.router();
    let res = router
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = router
        .oneshot(Request::patch("/v1/ratings").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_on_interval_only_when_something_changed() {
    let app = spawn_app_with(|s| s.training.retrain_interval_secs = 1).await;
    app.post_ratings(&planted()).await;
    assert_eq!(app.wait_for_version_after(None).await, 1);
    // with a model and no change since its run, a tick does not retrain
    let m = app.wait_idle().await;
    assert_eq!(m["training"]["pending_changes"], 0, "{m}");
    assert!(!app.worker.wants_run(Wake::Interval));
    // one change: the next tick retrains
    let (s, _) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "u0", "item": "i0", "rating": 1}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(app.wait_for_version_after(Some(1)).await, 2);
    assert_eq!(app.wait_idle().await["training"]["runs"], 2);
    app.stop().await;
}
