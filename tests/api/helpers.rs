//! `spawn_app`: the real server on 127.0.0.1:0 with its own temporary data dir and database.

use funkrec::config::Settings;
use funkrec::startup::Application;
use funkrec::worker::Worker;
use funkrec_engine::{Scale, TrainerKind};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Small, fast hyperparameters that still learn the planted pattern.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.bind = "127.0.0.1:0".into();
    s.server.max_batch = 100;
    s.storage.data_dir = dir.to_path_buf();
    s.storage.keep_snapshots = 5;
    s.training.retrain_after_ratings = 0;
    s.training.retrain_interval_secs = 0;
    s.training.holdout_fraction = 0.02;
    s.model.trainer = TrainerKind::Sgd;
    s.model.factors = 4;
    s.model.epochs = 150;
    s.model.lr = 0.02;
    s.model.lr_bias = 0.02;
    s.model.reg = 0.02;
    s.model.lr_decay = 1.0;
    s.model.init_std = 0.1;
    s.model.threads = 1;
    // every epoch runs (tests count them, or need long runs); tests/api/versions.rs
    // turns early stopping on
    s.model.patience = 0;
    // the holdout of these small data sets is a handful of ratings: the publish gate
    // only rejects a model twice as bad (tests/api/versions.rs tests it at 2 %)
    s.training.max_regression = 1.0;
    s.model.scale = Scale { min: 1.0, max: 5.0 };
    if std::env::var_os("TEST_LOG").is_some() {
        funkrec::telemetry::init("info,funkrec=debug", false);
    }
    s
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// Keeps the temporary directory alive as long as any app uses it.
    pub tmp: Arc<TempDir>,
    /// The app's training worker: its status and publications, without polling.
    pub worker: Worker,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    spawn_app_in(tmp, tweak).await
}

/// Starts an app on an existing data directory (for restart tests).
pub async fn spawn_app_in(tmp: Arc<TempDir>, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(tmp.path());
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let addr = format!("http://{}", app.local_addr());
    let worker = app.worker();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        data_dir: tmp.path().to_path_buf(),
        tmp,
        worker,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// `DELETE path`; the status.
    pub async fn delete(&self, path: &str) -> u16 {
        let r = self.client.delete(self.url(path)).send().await.unwrap();
        r.status().as_u16()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Posts raw bytes with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_ratings(&self, ratings: &[(String, String, f64)]) {
        for chunk in ratings.chunks(100) {
            let body = json!({"ratings": chunk.iter().map(|(u, i, r)| json!({"user": u, "item": i, "rating": r})).collect::<Vec<_>>()});
            let (s, v) = self.post_json("/v1/ratings", &body).await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(v["accepted"], chunk.len() as u64);
        }
    }

    pub async fn model_version(&self) -> Option<u64> {
        let (s, v) = self.get_json("/v1/model").await;
        assert_eq!(s, 200);
        v["version"].as_u64()
    }

    /// Waits until a model other than `before` is served; returns its version.
    pub async fn wait_for_version_after(&self, before: Option<u64>) -> u64 {
        let mut published = self.worker.published();
        let waited = published.wait_for(|v| v.is_some() && *v != before);
        let version = *hang_guard(waited, &self.worker)
            .await
            .expect("worker alive");
        version.expect("a version")
    }

    /// Waits until the worker is neither running nor has a run queued; returns `/v1/model`.
    pub async fn wait_idle(&self) -> Value {
        let mut status = self.worker.subscribe();
        let idle = status.wait_for(|s| !s.running && !s.queued);
        drop(hang_guard(idle, &self.worker).await.expect("worker alive"));
        let (s, v) = self.get_json("/v1/model").await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Requests a run and waits for the snapshot it publishes.
    pub async fn train(&self) -> u64 {
        let before = self.model_version().await;
        let (s, v) = self.post_json("/v1/model/train", &json!({})).await;
        assert_eq!(s, 202, "{v}");
        self.wait_for_version_after(before).await
    }

    /// Graceful shutdown; waits for the server and worker to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

/// Awaits `fut`, failing the test instead of hanging CI if the worker never gets there
/// (a guard against a hang, not a claim about speed).
pub async fn hang_guard<T>(fut: impl std::future::Future<Output = T>, worker: &Worker) -> T {
    match tokio::time::timeout(Duration::from_secs(300), fut).await {
        Ok(v) => v,
        Err(_) => panic!("still waiting after 300 s; worker: {:?}", worker.status()),
    }
}

/// Planted pattern: even users love items i0..i9 (5) and dislike i10..i19 (1),
/// odd users the reverse. Each user leaves about a quarter of the items unrated.
pub fn planted() -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for u in 0..20 {
        for i in 0..20 {
            if is_unrated(u, i) {
                continue;
            }
            let same = (u % 2 == 0) == (i < 10);
            out.push((
                format!("u{u}"),
                format!("i{i}"),
                if same { 5.0 } else { 1.0 },
            ));
        }
    }
    out
}

pub fn is_unrated(u: usize, i: usize) -> bool {
    (u * 7 + i * 3) % 4 == 0
}

/// Items user `u` likes under the planted pattern.
pub fn liked(u: usize, i: usize) -> bool {
    (u % 2 == 0) == (i < 10)
}
