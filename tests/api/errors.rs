//! Every validation and routing error answers `{"error": {"code", "message"}}` with a stable code.

use crate::helpers::*;
use serde_json::{json, Value};

fn assert_error_shape(v: &Value) {
    let obj = v.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 1, "{v}");
    let e = v["error"].as_object().expect("has error");
    assert_eq!(e.len(), 2, "{v}");
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_body_errors() {
    let app = spawn_app().await;
    let long = "a".repeat(129);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "truncated json",
            r#"{"user": "u", "item""#.into(),
            400,
            "malformed_json",
        ),
        ("not json", "rating=5".into(), 400, "malformed_json"),
        (
            "NaN literal",
            r#"{"user":"u","item":"i","rating":NaN}"#.into(),
            400,
            "malformed_json",
        ),
        (
            "number too big for f64",
            r#"{"user":"u","item":"i","rating":1e400}"#.into(),
            400,
            "malformed_json",
        ),
        (
            "rating as string",
            r#"{"user":"u","item":"i","rating":"5"}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "user as bool",
            r#"{"user":true,"item":"i","rating":5}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "user as float",
            r#"{"user":1.5,"item":"i","rating":5}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "user as huge integer",
            r#"{"user":123456789012345678901234567890,"item":"i","rating":5}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "missing rating",
            r#"{"user":"u","item":"i"}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "unknown field",
            r#"{"user":"u","item":"i","rating":3,"stars":3}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "timestamp as string",
            r#"{"user":"u","item":"i","rating":3,"timestamp":"now"}"#.into(),
            422,
            "invalid_body",
        ),
        ("array body", "[1, 2]".into(), 422, "invalid_body"),
        ("null body", "null".into(), 422, "invalid_body"),
        (
            "ratings not an array",
            r#"{"ratings": {"user":"u"}}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "batch with extra field",
            r#"{"ratings": [], "x": 1}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "bad item in batch",
            r#"{"ratings": [{"user":"u","item":"i","rating":3},{"user":"u","rating":3}]}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "empty batch",
            r#"{"ratings": []}"#.into(),
            422,
            "empty_batch",
        ),
        (
            "huge but finite rating",
            r#"{"user":"u","item":"i","rating":1e300}"#.into(),
            422,
            "invalid_rating",
        ),
        (
            "rating below scale",
            r#"{"user":"u","item":"i","rating":0.5}"#.into(),
            422,
            "invalid_rating",
        ),
        (
            "rating above scale",
            r#"{"user":"u","item":"i","rating":5.01}"#.into(),
            422,
            "invalid_rating",
        ),
        (
            "negative rating",
            r#"{"user":"u","item":"i","rating":-3}"#.into(),
            422,
            "invalid_rating",
        ),
        (
            "empty user",
            r#"{"user":"","item":"i","rating":3}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "too long item",
            format!(r#"{{"user":"u","item":"{long}","rating":3}}"#),
            422,
            "invalid_id",
        ),
        (
            "control char in user",
            r#"{"user":"a\u0001b","item":"i","rating":3}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "newline in item",
            r#"{"user":"u","item":"x\ny","rating":3}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "DEL in item",
            r#"{"user":"u","item":"x\u007f","rating":3}"#.into(),
            422,
            "invalid_id",
        ),
    ];
    for (name, body, status, code) in cases {
        let (s, v) = app
            .post_raw("/v1/ratings", Some("application/json"), body)
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {v}"
        );
        assert_error_shape(&v);
    }

    // oversized batch (test config: max_batch = 100)
    let batch: Vec<_> = (0..101)
        .map(|i| json!({"user": "u", "item": i, "rating": 3}))
        .collect();
    let (s, v) = app
        .post_json("/v1/ratings", &json!({ "ratings": batch }))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("batch_too_large")),
        "{v}"
    );

    // content type
    let ok_body = r#"{"user":"u","item":"i","rating":3}"#;
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let (s, v) = app.post_raw("/v1/ratings", ct, ok_body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (415, Some("unsupported_media_type")),
            "{ct:?}: {v}"
        );
        assert_error_shape(&v);
    }
    // none of the above was stored
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 0, "{p}");
    // and the valid body is accepted with the right content type (incl. charset)
    let (s, _) = app
        .post_raw(
            "/v1/ratings",
            Some("application/json; charset=utf-8"),
            ok_body,
        )
        .await;
    assert_eq!(s, 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_limit_is_a_json_413() {
    let app = spawn_app_with(|s| s.server.body_limit_bytes = 1024).await;
    let big = json!({"user": "u", "item": "i", "rating": 3, "pad": "x".repeat(2000)}).to_string();
    let (s, v) = app
        .post_raw("/v1/ratings", Some("application/json"), big)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    assert_error_shape(&v);
    // streamed (no content-length) bodies are cut too
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok("x".repeat(200))).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (s, v) = app
        .post_raw("/v1/ratings", Some("application/json"), body)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_path_and_query_errors() {
    let app = spawn_app().await;
    let long = "b".repeat(129);
    let gets: Vec<(String, u16, &str)> = vec![
        ("/nope".into(), 404, "not_found"),
        ("/v1".into(), 404, "not_found"),
        (
            "/v1/users/u/ratings/extra/segments".into(),
            404,
            "not_found",
        ),
        (
            format!("/v1/users/{long}/recommendations"),
            422,
            "invalid_id",
        ),
        ("/v1/users/a%01b/predictions/x".into(), 422, "invalid_id"),
        ("/v1/users/u/predictions/%0A".into(), 422, "invalid_id"),
        (
            "/v1/users/%FF%FE/recommendations".into(),
            400,
            "invalid_path",
        ),
        (
            "/v1/users/u/recommendations?n=0".into(),
            400,
            "invalid_query",
        ),
        (
            "/v1/users/u/recommendations?n=1001".into(),
            400,
            "invalid_query",
        ),
        (
            "/v1/users/u/recommendations?n=ten".into(),
            400,
            "invalid_query",
        ),
        (
            "/v1/users/u/recommendations?n=-1".into(),
            400,
            "invalid_query",
        ),
        (
            "/v1/items/x/similar?n=99999999999999999999999".into(),
            400,
            "invalid_query",
        ),
    ];
    for (path, status, code) in gets {
        let r = app.get(&path).await;
        assert!(
            r.headers().contains_key("x-request-id"),
            "{path}: no request id"
        );
        assert_eq!(
            r.headers().get("content-type").unwrap().to_str().unwrap(),
            "application/json",
            "{path}"
        );
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {v}"
        );
        assert_error_shape(&v);
    }
    for (method, path) in [
        (reqwest::Method::DELETE, "/v1/ratings"),
        (reqwest::Method::PUT, "/v1/model"),
        (reqwest::Method::GET, "/v1/model/train"),
        (reqwest::Method::POST, "/healthz"),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{method} {path}");
        assert_error_shape(&v);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_or_propagated() {
    let app = spawn_app().await;
    let r = app.get("/healthz").await;
    let id = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "trace-me-42");
    app.stop().await;
}
