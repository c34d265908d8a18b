//! A PostgreSQL database of a test's own on the server at `FUNKREC_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards; a printed "skipped" notice when the server does not answer.
//!
//! Included by `#[path]` from the test crates that need it. When the server does not
//! answer, [`PgDb::create`] prints `skipped: ...` straight to stderr and returns None,
//! unless `FUNKREC_TEST_PG_REQUIRED=1` (CI sets it), which makes it panic instead.
#![allow(dead_code)]

use sqlx::Connection;
use std::sync::atomic::{AtomicU32, Ordering};

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn pg_admin_url() -> String {
    std::env::var("FUNKREC_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let cut = base
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(base.len());
    format!("{}/{db}", &base[..cut])
}

/// Creates a database of its own for one test (None, with a printed notice, when the
/// server does not answer and PostgreSQL is not required).
async fn create_pg_database(test: &str) -> Option<(String, String)> {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = pg_admin_url();
    let shown = funkrec::config::redact_url(&admin);
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("FUNKREC_TEST_PG_REQUIRED").is_ok_and(|v| v == "1") {
                panic!(
                    "PostgreSQL at {shown} does not answer ({e}) and FUNKREC_TEST_PG_REQUIRED=1"
                );
            }
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let notice = format!(
                "skipped: {test} on PostgreSQL: the server at {shown} does not answer ({e}); \
                 set FUNKREC_TEST_PG_URL to run it\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
            return None;
        }
    };
    let name = format!(
        "funkrec_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(30)
            .collect::<String>()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    Some((admin, name))
}

async fn drop_database(admin: &str, name: &str) {
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// A database created for one test; dropped by [`PgDb::drop_now`] or, failing that,
/// when the value is dropped.
pub struct PgDb {
    admin: String,
    name: String,
    /// The URL of the test's database.
    pub url: String,
    dropped: bool,
}

impl PgDb {
    pub async fn create(test: &str) -> Option<PgDb> {
        let (admin, name) = create_pg_database(test).await?;
        let url = with_database(&admin, &name);
        Some(PgDb {
            admin,
            name,
            url,
            dropped: false,
        })
    }

    pub async fn drop_now(mut self) {
        drop_database(&self.admin, &self.name).await;
        self.dropped = true;
    }
}

impl Drop for PgDb {
    /// A test that failed before `drop_now` still drops its database (on a thread of
    /// its own: this may run inside the test's runtime).
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_database(&admin, &name))
        })
        .join();
    }
}
