//! The cluster with real binaries on loopback: one PostgreSQL database, two `api` replicas and two `trainer` processes.
//!
//! MovieLens-like synthetic ratings (a planted low-rank model, integer stars) are
//! POSTed across both replicas, then a train request goes to one of them. The trainer
//! holding the lock is SIGKILLed in the middle of its run: it is started first with
//! far more epochs than the other (so it is certainly mid-run when killed, however
//! slow the machine), then the second one. The test checks that the second takes the
//! lock within 10 s and publishes, that both replicas serve that version within 2 s
//! of its publication (the `model` row appearing in the database), and that every
//! acknowledged rating is in the database.
//!
//! Needs PostgreSQL (`FUNKREC_TEST_PG_URL`, see `tests/common/pg.rs`): without it the
//! test prints `skipped: ...` and passes, unless `FUNKREC_TEST_PG_REQUIRED=1`.

use serde_json::{json, Value};
use sqlx::Connection;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/pg.rs"]
mod pg;

const ADMIN: &str = "cluster-admin-0123456789abcdef";
const USERS: u64 = 300;
const ITEMS: u64 = 200;
const PER_USER: u64 = 50;
const BATCH: usize = 500;

/// A running `funkrec serve` and what it wrote to stderr.
struct Proc {
    name: &'static str,
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(name: &'static str, db_url: &str, dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_funkrec"));
        cmd.arg("serve");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FUNKREC__") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("FUNKREC__SERVER__BIND", "127.0.0.1:0")
            .env("FUNKREC__STORAGE__DATA_DIR", dir.join(name))
            .env("FUNKREC__STORAGE__DATABASE_URL", db_url)
            .env("FUNKREC__LOG__JSON", "true")
            .env("FUNKREC__AUTH__KEYS", format!("admin:{ADMIN}"))
            .env("FUNKREC__TRAINING__RETRAIN_AFTER_RATINGS", "0")
            .env("FUNKREC__TRAINING__RETRAIN_INTERVAL_SECS", "0")
            .env("FUNKREC__TRAINING__TRAIN_ON_START", "false")
            .env("FUNKREC__MODEL__FACTORS", "8")
            .env("FUNKREC__MODEL__EPOCHS", "30");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start funkrec");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["fields"]["message"] == "listening" || v["message"] == "listening" {
                            let addr = v["fields"]["addr"]
                                .as_str()
                                .or(v["addr"].as_str())
                                .unwrap_or_default();
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not start:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        Proc {
            name,
            child,
            base: format!("http://{addr}"),
            logs,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown code runs, the trainer lock goes with the session.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn logs(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            self.logs.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn get_json(c: &reqwest::Client, p: &Proc, path: &str) -> (u16, Value) {
    match c.get(p.url(path)).bearer_auth(ADMIN).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

async fn metrics(c: &reqwest::Client, p: &Proc) -> String {
    c.get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn holds_lock(c: &reqwest::Client, p: &Proc) -> bool {
    let (s, v) = get_json(c, p, "/readyz").await;
    s == 200 && v["trainer_lock"] == json!(true)
}

async fn served_version(c: &reqwest::Client, p: &Proc) -> Option<u64> {
    get_json(c, p, "/v1/model").await.1["version"].as_u64()
}

/// Polls `check` every 50 ms until it holds; false after `limit`.
async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// MovieLens-like ratings: every user rates `PER_USER` distinct items, 1-5 stars
/// from a planted rank-3 model plus noise (a seeded SplitMix64, no data files).
fn synthetic() -> Vec<Value> {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut factor = |n: u64| -> Vec<[f64; 3]> {
        (0..n)
            .map(|_| [next() - 0.5, next() - 0.5, next() - 0.5])
            .collect()
    };
    let (p, q) = (factor(USERS), factor(ITEMS));
    let mut out = Vec::new();
    for u in 0..USERS {
        // PER_USER distinct items: a stride coprime with ITEMS from a per-user start
        let start = (u * 37) % ITEMS;
        for k in 0..PER_USER {
            let i = (start + k * 7) % ITEMS;
            let dot: f64 = (0..3).map(|f| p[u as usize][f] * q[i as usize][f]).sum();
            let stars = (3.6 + 6.0 * dot).round().clamp(1.0, 5.0);
            out.push(json!({"user": format!("u{u}"), "item": format!("m{i}"), "rating": stars}));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_two_trainers_one_elected() {
    let Some(db) = pg::PgDb::create("cluster").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let api = [("FUNKREC__CLUSTER__ROLE", "api")];
    let mut a = Proc::start("api-a", &db.url, dir.path(), &api);
    let mut b = Proc::start("api-b", &db.url, dir.path(), &api);
    // the first trainer takes the lock; its runs would last minutes
    let slow = [
        ("FUNKREC__CLUSTER__ROLE", "trainer"),
        ("FUNKREC__MODEL__EPOCHS", "100000"),
        // every epoch: early stopping would end this run before the kill
        ("FUNKREC__MODEL__PATIENCE", "0"),
    ];
    let mut t1 = Proc::start("trainer-1", &db.url, dir.path(), &slow);
    assert!(
        wait_for(Duration::from_secs(10), || holds_lock(&c, &t1)).await,
        "{}",
        t1.logs()
    );
    let mut t2 = Proc::start(
        "trainer-2",
        &db.url,
        dir.path(),
        &[("FUNKREC__CLUSTER__ROLE", "trainer")],
    );
    let all = |a: &Proc, b: &Proc, t1: &Proc, t2: &Proc| {
        [a, b, t1, t2]
            .iter()
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // roles on the probes and metrics; a trainer serves no API
    let (s, v) = get_json(&c, &a, "/readyz").await;
    assert_eq!(
        (s, &v["role"], &v["trainer_lock"]),
        (200, &json!("api"), &json!(false)),
        "{v}"
    );
    let (s, v) = get_json(&c, &t2, "/readyz").await;
    assert_eq!(
        (s, &v["role"], &v["trainer_lock"]),
        (200, &json!("trainer"), &json!(false)),
        "{v}"
    );
    assert!(metrics(&c, &t1)
        .await
        .contains("funkrec_cluster_trainer_lock 1\n"));
    assert!(metrics(&c, &a)
        .await
        .contains("funkrec_cluster_role{role=\"api\"} 1\n"));
    let (s, v) = get_json(&c, &t2, "/v1/model").await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");

    // ratings across both replicas, two clients each; count what was acknowledged
    let ratings = synthetic();
    let batches: Vec<Vec<Value>> = ratings.chunks(BATCH).map(|c| c.to_vec()).collect();
    let acked = Arc::new(Mutex::new(0usize));
    let mut clients = Vec::new();
    for lane in 0..4 {
        let mine: Vec<Vec<Value>> = batches.iter().skip(lane).step_by(4).cloned().collect();
        let target = if lane % 2 == 0 {
            a.url("/v1/ratings")
        } else {
            b.url("/v1/ratings")
        };
        let (c, acked) = (c.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            for batch in mine {
                let n = batch.len();
                let r = c
                    .post(&target)
                    .bearer_auth(ADMIN)
                    .json(&json!({ "ratings": batch }))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().as_u16() == 201) {
                    *acked.lock().unwrap() += n;
                }
            }
        }));
    }
    for h in clients {
        h.await.unwrap();
    }
    let acked = *acked.lock().unwrap();
    assert_eq!(acked, ratings.len(), "every batch is acknowledged");

    // a train request on a replica reaches the elected trainer through the database
    let r = c
        .post(a.url("/v1/model/train"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            metrics(&c, &t1)
                .await
                .contains("funkrec_training_running 1\n")
        })
        .await,
        "{}",
        all(&a, &b, &t1, &t2)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    t1.kill();
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || holds_lock(&c, &t2)).await,
        "the second trainer did not take over within 10 s:\n{}",
        all(&a, &b, &t1, &t2)
    );
    eprintln!("takeover after {:.1} s", killed.elapsed().as_secs_f64());

    // the new trainer runs the request the killed one did not finish; watch the
    // database for the publication and both replicas for the swap
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut published = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) && published.is_none() {
        published = sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM model")
            .fetch_one(&mut conn)
            .await
            .ok()
            .flatten();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = Instant::now();
    let version = published.expect("a model is published") as u64;
    for p in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(2), || async {
                served_version(&c, p).await == Some(version)
            })
            .await,
            "{} does not serve version {version} within 2 s of its publication:\n{}",
            p.name,
            all(&a, &b, &t1, &t2)
        );
    }
    eprintln!(
        "both replicas serve version {version} {:.2} s after publication",
        at.elapsed().as_secs_f64()
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM model")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the killed trainer published nothing");
    assert!(metrics(&c, &t2)
        .await
        .contains("funkrec_training_runs_total 1\n"));
    assert!(metrics(&c, &a)
        .await
        .contains("funkrec_model_loads_total 1\n"));
    // the replicas answer from the model
    let (s, v) = get_json(&c, &b, "/v1/users/u1/recommendations?n=5").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 5, "{v}");

    // zero acknowledged ratings lost
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ratings")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored as usize, acked);
    drop(conn);
    for p in [&mut a, &mut b, &mut t2] {
        p.kill();
    }
    db.drop_now().await;
}
