//! Slow clients, exhausted connections and ambiguous input (issue 13), against the real
//! server on a real port: half-sent headers and idle keep-alive connections are closed,
//! trickled bodies time out without taking the API down, oversized heads and every other
//! HTTP-layer error carry the JSON error body, request ids are short and plain, JSON with
//! repeated keys and non-UTF-8 charsets are refused, ids that look alike are one id.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

fn host_port(app: &TestApp) -> String {
    app.addr.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_keep_alive_connections_are_closed() {
    let app = spawn_app_with(|s| s.server.header_read_timeout_secs = 1).await;
    // half a header, then nothing
    let mut half = TcpStream::connect(host_port(&app)).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // nothing at all
    let mut silent = TcpStream::connect(host_port(&app)).await.unwrap();
    // one complete request, then an idle keep-alive connection
    let mut idle = TcpStream::connect(host_port(&app)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, s) in [
        ("half header", &mut half),
        ("silent", &mut silent),
        ("idle keep-alive", &mut idle),
    ] {
        let (got, after) = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(
            after < Duration::from_secs(5),
            "{name}: closed after {after:?}"
        );
        if name == "idle keep-alive" {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_time_out_without_holding_the_api() {
    let app = spawn_app_with(|s| {
        s.server.max_concurrent_requests = 4;
        s.server.body_timeout_secs = 2;
    })
    .await;
    // more tricklers than the API has concurrency permits
    let mut tricklers = Vec::new();
    for n in 0..12 {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        s.write_all(
            format!(
                "POST /v1/ratings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 200\r\n\r\n{{\"user\":\"t{n}\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tricklers.push(s);
    }
    // the API still answers at once, reads and writes alike
    for _ in 0..5 {
        let started = Instant::now();
        let (s, v) = app.get_json("/v1/users/nobody/ratings").await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = app
            .post_json(
                "/v1/ratings",
                &json!({"user": "ok", "item": "i", "rating": 3}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // every trickler gets 408 request_timeout in JSON and its connection is closed
    for mut s in tricklers {
        let _ = s.write_all(b",").await;
        let (got, after) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(after < Duration::from_secs(5), "closed after {after:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(code(&body), Some("request_timeout"), "{body}");
    }
    let (_, p) = app.get_json("/v1/users/t0/ratings").await;
    assert_eq!(p["total"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room() {
    let app = spawn_app_with(|s| {
        s.server.max_connections = 20;
        s.server.header_read_timeout_secs = 30;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        stalled.push(s);
    }
    for path in ["/healthz", "/v1/users/u/ratings"] {
        let started = Instant::now();
        let client = reqwest::Client::new();
        let r = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // the oldest stalled connections were closed to make room (long before the timeout)
    let (_, after) = read_until_closed(&mut stalled[0], Duration::from_secs(5)).await;
    assert!(after < Duration::from_secs(5));
    app.stop().await;
}

/// Sends `head` as is and returns the status and the JSON body.
async fn raw_request(app: &TestApp, head: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(host_port(app)).await.unwrap();
    s.write_all(head).await.unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_json_414_and_431() {
    let app = spawn_app().await;
    let long_uri = format!(
        "GET /v1/users/{}/ratings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let (s, v) = raw_request(&app, long_uri.as_bytes()).await;
    assert_eq!((s, code(&v)), (414, Some("uri_too_long")), "{v}");
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(40_000)
    );
    let (s, v) = raw_request(&app, big_header.as_bytes()).await;
    assert_eq!((s, code(&v)), (431, Some("headers_too_large")), "{v}");
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for n in 0..150 {
        many.push_str(&format!("X-H{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let (s, v) = raw_request(&app, many.as_bytes()).await;
    assert_eq!((s, code(&v)), (431, Some("headers_too_large")), "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_short_plain_request_ids_are_echoed() {
    let app = spawn_app().await;
    // a 400 KB id is more header than the server reads
    let huge = "x".repeat(400 * 1024);
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", huge.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_ne!(
        r.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(huge.as_bytes())
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), Some("headers_too_large"));
    for bad in [
        "x".repeat(20 * 1024),
        "a b".into(),
        "<script>".into(),
        "x".repeat(65),
    ] {
        let r = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "generated instead: {id}");
    }
    let ok = "A.b_c-".repeat(10) + "1234";
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", ok.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], ok.as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_json_keys_and_foreign_charsets_are_refused() {
    let app = spawn_app().await;
    for body in [
        r#"{"user":"a","user":"b","item":"i","rating":3}"#,
        r#"{"ratings":[{"user":"a","item":"i","rating":1,"rating":5}]}"#,
    ] {
        let (s, v) = app
            .post_raw("/v1/ratings", Some("application/json"), body)
            .await;
        assert_eq!((s, code(&v)), (400, Some("invalid_body")), "{body}: {v}");
    }
    let body = r#"{"user":"a","item":"i","rating":3}"#;
    for ct in [
        "application/json; charset=utf-16",
        "application/json;charset=\"ISO-8859-1\"",
    ] {
        let (s, v) = app.post_raw("/v1/ratings", Some(ct), body).await;
        assert_eq!(
            (s, code(&v)),
            (415, Some("unsupported_media_type")),
            "{ct}: {v}"
        );
    }
    let (_, p) = app.get_json("/v1/users/a/ratings").await;
    assert_eq!(p["total"], 0, "nothing was stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_look_alike_are_one_id_or_refused() {
    let app = spawn_app().await;
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "caf\u{e9}", "item": "i", "rating": 4}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "cafe\u{301}", "item": "j", "rating": 2}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // both ratings belong to one user, whichever spelling asks
    for spelling in ["caf%C3%A9", "cafe%CC%81"] {
        let (s, p) = app.get_json(&format!("/v1/users/{spelling}/ratings")).await;
        assert_eq!((s, p["total"].as_u64()), (200, Some(2)), "{spelling}: {p}");
        assert_eq!(p["user"], "caf\u{e9}");
    }
    for bad in ["alice ", " alice", "   ", "al\u{200b}ice", "\u{202e}ecila"] {
        let (s, v) = app
            .post_json(
                "/v1/ratings",
                &json!({"user": bad, "item": "i", "rating": 4}),
            )
            .await;
        assert_eq!((s, code(&v)), (422, Some("invalid_id")), "{bad:?}: {v}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_messages_speak_the_apis_language() {
    let app = spawn_app().await;
    let r = app
        .client
        .delete(app.url("/v1/users/a%2Fb/ratings/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), Some("rating_not_found"));
    assert_eq!(
        v["error"]["message"],
        r#"user "a/b" has no rating for item "x""#
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_writes_disk_and_model() {
    let app = spawn_app().await;
    let (s, v) = app.get_json("/readyz").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["writes"], &v["disk"]),
        (&json!("ok"), &json!("ok")),
        "{v}"
    );
    assert!(v["disk_free_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["model_loaded"], false);
    app.stop().await;
    // more free space required than any disk has: not ready, `disk` named
    let app = spawn_app_with(|s| s.storage.min_free_bytes = u64::MAX).await;
    let (s, v) = app.get_json("/readyz").await;
    assert_eq!((s, code(&v)), (503, Some("unavailable")), "{v}");
    assert_eq!(v["error"]["message"], "not ready: disk");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_snapshot_files_are_removed_at_start() {
    let tmp = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let left = models.join("model-0000000007.tmp");
    std::fs::write(&left, vec![0u8; 1 << 20]).unwrap();
    let app = spawn_app_in(tmp.clone(), |_| {}).await;
    assert!(!left.exists(), "the partial snapshot file is still there");
    app.stop().await;
}
