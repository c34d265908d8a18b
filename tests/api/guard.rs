//! Access control, load shedding, metrics and the safe-bind rule, over real HTTP.

use crate::helpers::*;
use funkrec::auth::ApiKeys;
use funkrec::startup::Application;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN: &str = "admin-key-aaaaaaaaaaaaaaaa";
pub const WRITER: &str = "write-key-bbbbbbbbbbbbbbbb";
pub const READER: &str = "read-key-cccccccccccccccc";

pub fn keys() -> ApiKeys {
    ApiKeys::parse_all([
        format!("admin:{ADMIN}").as_str(),
        &format!("write:{WRITER}"),
        &format!("read:{READER}"),
    ])
    .unwrap()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_each_endpoint() {
    use reqwest::Method as M;
    let app = spawn_app_with(|s| s.auth.keys = keys()).await;
    let rating = || Some(json!({"user": "u1", "item": "i1", "rating": 4}));
    // (method, path, body, least role that may call it)
    let cases: Vec<(M, &str, Option<Value>, usize)> = vec![
        (M::GET, "/v1/users/u1/ratings", None, 0),
        (M::GET, "/v1/users/u1/predictions/i1", None, 0),
        (M::GET, "/v1/users/u1/recommendations", None, 0),
        (M::GET, "/v1/items/i1/similar", None, 0),
        (M::POST, "/v1/ratings", rating(), 1),
        (M::DELETE, "/v1/users/nobody/ratings/i1", None, 1),
        (M::GET, "/v1/model", None, 2),
        (M::POST, "/v1/model/train", None, 2),
    ];
    let roles = [READER, WRITER, ADMIN];
    for (method, path, body, least) in &cases {
        // no key, a malformed header, an unknown key: 401 with WWW-Authenticate
        for key in [None, Some("not-a-configured-key-000000")] {
            let r = send(&app, method.clone(), path, key, body.clone()).await;
            assert_eq!(r.status(), 401, "{method} {path} key={key:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"funkrec\"");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
        }
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .header("authorization", format!("Basic {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "Basic scheme is not a bearer key");
        for (rank, key) in roles.iter().enumerate() {
            let r = send(&app, method.clone(), path, Some(key), body.clone()).await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if rank < *least {
                assert_eq!(status, 403, "{method} {path} as {key}: {v}");
                assert_eq!(v["error"]["code"], "forbidden");
            } else {
                assert!(
                    matches!(status, 200 | 201 | 202 | 404),
                    "{method} {path} as {key}: {status} {v}"
                );
                if status == 404 {
                    assert_eq!(v["error"]["code"], "rating_not_found");
                }
            }
        }
    }
    // the probes and /metrics stay open
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    // unknown routes are 404 as before; wrong methods on API routes need a key first
    assert_eq!(app.get("/nope").await.status(), 404);
    let r = send(&app, M::PATCH, "/v1/ratings", Some(WRITER), None).await;
    assert_eq!(r.status(), 405);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_loopback_is_open() {
    let app = spawn_app().await;
    let (s, _) = app.post_json("/v1/model/train", &json!({})).await;
    assert_eq!(s, 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_bind_without_keys_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = test_settings(tmp.path());
    s.server.bind = "0.0.0.0:0".into();
    let e = Application::build(s.clone())
        .await
        .err()
        .expect("must refuse");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("allow_open") && msg.contains("0.0.0.0"),
        "{msg}"
    );
    // explicitly open: starts
    s.auth.allow_open = true;
    let app = Application::build(s.clone())
        .await
        .expect("allow_open starts");
    assert!(app.local_addr().ip().is_unspecified());
    drop(app);
    // with keys: starts, allow_open not needed
    s.auth.allow_open = false;
    s.auth.keys = keys();
    Application::build(s)
        .await
        .expect("keys make any bind fine");
}

/// Sends `POST /v1/ratings` (one rating) on a new connection, without reading the answer.
async fn send_post(host: &str) -> tokio::net::TcpStream {
    let body = br#"{"user": "u1", "item": "i1", "rating": 5}"#;
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /v1/ratings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn
}

// Request A must hold the only permit before B is sent. A is sent first, but the server
// may pick up a probing GET before A (under load, e.g. beside other tests of this binary):
// the GET then holds the permit, A is shed with 503 (never reaching its handler), and
// every later GET succeeds. So a shed A is sent again until a GET is the one shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_shed_with_503() {
    let app = spawn_app_with(|s| {
        s.server.max_concurrent_requests = 1;
        s.server.retry_after_secs = 7;
    })
    .await;
    // Request A takes the only permit and keeps it: another connection holds the
    // database's write lock, so A's handler waits for its commit. (A body that is slow to
    // arrive holds no permit: bodies are read before the limit.)
    let locker = rusqlite::Connection::open(app.data_dir.join("funkrec.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let host = app.addr.trim_start_matches("http://").to_owned();
    let mut conn = send_post(&host).await;
    let mut resent = 0;
    // A is in its handler once a read is shed (the limit is 1)
    let shed = hang_guard(
        async {
            loop {
                let r = app.get("/v1/users/u1/ratings").await;
                if r.status() == 503 {
                    break r;
                }
                // an answer on A's connection already: A was the one shed
                let mut first = [0u8; 12];
                if let Ok(n) = conn.try_read(&mut first) {
                    assert!(
                        n == 0 || first[..n].starts_with(b"HTTP/1.1 503"),
                        "A answered before the lock was released: {:?}",
                        String::from_utf8_lossy(&first[..n])
                    );
                    conn = send_post(&host).await;
                    resent += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                tokio::task::yield_now().await;
            }
        },
        &app.worker,
    )
    .await;
    if resent > 0 {
        eprintln!("request A was shed and sent again {resent} time(s)");
    }

    // B is shed, not queued: its answer arrives while A still holds the permit
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "7");
    let v: Value = shed.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(app.get("/v1/items/i1/similar").await.status(), 503);
    // probes and metrics are outside the limit
    assert_eq!(app.get("/healthz").await.status(), 200);
    let (s, ready) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(
        (&ready["writer"], &ready["training_worker"]),
        (&json!("ok"), &json!("ok"))
    );
    assert!(
        ready["database_latency_ms"].as_f64().unwrap() >= 0.0,
        "{ready}"
    );
    let m = app.get("/metrics").await.text().await.unwrap();
    assert!(
        m.contains(r#"route="/v1/users/{user}/ratings",status="503"}"#),
        "{m}"
    );

    // A completes normally once the lock is released; then the permit is free again
    locker.execute_batch("ROLLBACK").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (s, v) = app.get_json("/v1/users/u1/ratings").await;
    assert_eq!((s, v["total"].as_u64()), (200, Some(1)));
    app.stop().await;
}

fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() {
    let app = spawn_app().await;
    let m = app.get("/metrics").await;
    assert_eq!(m.status(), 200);
    assert!(m.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = m.text().await.unwrap();
    assert_eq!(sample(&text, "funkrec_model_version "), Some(0.0), "{text}");
    assert_eq!(sample(&text, "funkrec_model_loaded "), Some(0.0));

    app.post_ratings(&planted()).await;
    let version = app.train().await;
    for u in ["u1", "u2", "u3"] {
        assert_eq!(
            app.get(&format!("/v1/users/{u}/recommendations?n=3"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(app.get("/v1/users/u1/predictions/i1").await.status(), 200);
    assert_eq!(app.get("/no/such/route/12345").await.status(), 404);
    let (s, _) = app
        .post_raw("/v1/ratings", Some("application/json"), "{")
        .await;
    assert_eq!(s, 400);
    app.wait_idle().await;

    let text = app.get("/metrics").await.text().await.unwrap();
    let n = planted().len() as f64;
    assert_eq!(sample(&text, "funkrec_ratings "), Some(n), "{text}");
    assert_eq!(
        sample(&text, "funkrec_model_version "),
        Some(version as f64)
    );
    assert_eq!(sample(&text, "funkrec_model_loaded "), Some(1.0));
    assert_eq!(sample(&text, "funkrec_training_runs_total "), Some(1.0));
    assert_eq!(sample(&text, "funkrec_training_failures_total "), Some(0.0));
    assert!(sample(&text, "funkrec_training_last_duration_seconds ").unwrap() > 0.0);
    let rmse = sample(&text, "funkrec_model_holdout_rmse ").unwrap();
    let (_, model) = app.get_json("/v1/model").await;
    assert!((rmse - model["holdout_rmse"].as_f64().unwrap()).abs() < 1e-9);
    // per route template (never the raw URI) and status
    let batches = (planted().len() as f64 / 100.0).ceil();
    assert_eq!(
        sample(
            &text,
            r#"funkrec_http_requests_total{method="POST",route="/v1/ratings",status="201"}"#
        ),
        Some(batches)
    );
    assert_eq!(
        sample(
            &text,
            r#"funkrec_http_requests_total{method="GET",route="/v1/users/{user}/recommendations",status="200"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"funkrec_http_requests_total{method="POST",route="/v1/ratings",status="400"}"#
        ),
        Some(1.0)
    );
    assert!(text.contains(r#"route="unmatched",status="404""#));
    assert!(
        !text.contains("u1") && !text.contains("12345"),
        "raw paths leaked"
    );
    assert_eq!(
        sample(
            &text,
            r#"funkrec_http_request_duration_seconds_count{method="GET",route="/v1/users/{user}/recommendations",status="200"}"#
        ),
        Some(3.0)
    );
    assert!(text.contains(
        r#"funkrec_http_request_duration_seconds_bucket{method="POST",route="/v1/model/train",status="202",le="+Inf"}"#
    ));
    app.stop().await;
}
