//! PostgreSQL restarted under the service: writes get 503 with `Retry-After` while it is down, reads of the loaded model keep working, everything works again within 5 s of its return, nothing acknowledged is lost.
//!
//! The test runs a PostgreSQL server of its own (`initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/15/bin`, as the `postgres` user, in a temporary directory, on a
//! free port), so restarting it disturbs no other test.

use crate::helpers::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server in a temporary directory; stopped when dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser runs")
}

impl OwnPostgres {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// None (with a printed notice) when PostgreSQL's binaries or the `postgres`
    /// user are missing.
    fn init() -> Option<OwnPostgres> {
        let uid = Command::new("id").args(["-u", "postgres"]).output().ok()?;
        if !Path::new(BIN).join("initdb").exists() || !uid.status.success() {
            let notice = "skipped: PostgreSQL fault test: no initdb in /usr/lib/postgresql/15/bin or no postgres user\n";
            let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("chown")
            .args(["postgres", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPostgres { dir, port };
        let out = as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            pg.data().to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let mut all = vec![
            format!("{BIN}/pg_ctl"),
            "-D".into(),
            data.to_str().unwrap().into(),
            "-l".into(),
            log.to_str().unwrap().into(),
            "-w".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        let out = as_postgres(&all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        self.ctl(&["-o", &opts, "start"]);
    }

    fn stop(&self) {
        self.ctl(&["-m", "fast", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            self.data().to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_and_needs_no_funkrec_restart() {
    let Some(pg) = OwnPostgres::init() else {
        return;
    };
    let url = pg.url();
    let app = spawn_app_with(|s| s.storage.database_url = url.clone()).await;
    app.post_ratings(&planted()).await;
    app.train().await;
    let mut acknowledged = planted().len() as u64;

    pg.stop();
    let one = |k: u64| json!({"user": "fault", "item": format!("f{k}"), "rating": 4});
    let r = app
        .client
        .post(app.url("/v1/ratings"))
        .json(&one(0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        !v.to_string().contains("127.0.0.1"),
        "no database details: {v}"
    );
    // the loaded model keeps serving
    let (s, v) = app.get_json("/v1/users/u0/predictions/i0").await;
    assert_eq!(s, 200, "{v}");

    pg.start();
    let back = Instant::now();
    let mut k = 1;
    loop {
        let r = app
            .client
            .post(app.url("/v1/ratings"))
            .json(&one(k))
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            acknowledged += 1;
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still 503 five seconds after the restart"
        );
        k += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    // everything acknowledged is there
    let store = {
        let mut settings = funkrec::config::Settings::default();
        settings.storage.database_url = url.clone();
        funkrec::store::Store::connect(&settings).await.unwrap()
    };
    assert_eq!(store.count_ratings().await.unwrap(), acknowledged);
    store.close().await;
}
