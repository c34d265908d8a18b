//! Hostile request bodies and paths beyond `errors.rs`: every one gets a 4xx with the JSON
//! error body (never a 5xx, never a partial write), and what is valid but unusual is stored
//! exactly. Includes the regressions for what schemathesis found.

use crate::helpers::*;
use serde_json::{json, Value};

async fn post(app: &TestApp, body: impl Into<reqwest::Body>) -> (u16, Value) {
    app.post_raw("/v1/ratings", Some("application/json"), body)
        .await
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_numbers_and_encodings_are_malformed_json() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Infinity",
            br#"{"user":"u","item":"i","rating":Infinity}"#.to_vec(),
        ),
        (
            "-Infinity",
            br#"{"user":"u","item":"i","rating":-Infinity}"#.to_vec(),
        ),
        (
            "1e309",
            br#"{"user":"u","item":"i","rating":1e309}"#.to_vec(),
        ),
        (
            "-1e309",
            br#"{"user":"u","item":"i","rating":-1e309}"#.to_vec(),
        ),
        (
            "lone surrogate",
            br#"{"user":"\ud800","item":"i","rating":3}"#.to_vec(),
        ),
        (
            "invalid utf-8",
            b"{\"user\":\"\xff\xfe\",\"item\":\"i\",\"rating\":3}".to_vec(),
        ),
        (
            "trailing garbage",
            br#"{"user":"u","item":"i","rating":3} x"#.to_vec(),
        ),
        (
            "two documents",
            br#"{"user":"u","item":"i","rating":3}{}"#.to_vec(),
        ),
        ("empty body", Vec::new()),
        ("whitespace only", b"   \n".to_vec()),
        (
            "single quotes",
            b"{'user':'u','item':'i','rating':3}".to_vec(),
        ),
        (
            "trailing comma",
            br#"{"user":"u","item":"i","rating":3,}"#.to_vec(),
        ),
        ("deep nesting", {
            let mut v = "[".repeat(100_000);
            v.push_str(&"]".repeat(100_000));
            v.into_bytes()
        }),
    ];
    for (name, body) in cases {
        let (s, v) = post(&app, body).await;
        assert_eq!((s, code(&v)), (400, Some("malformed_json")), "{name}: {v}");
    }
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_truncation_of_a_batch_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let body = json!({"ratings": [
        {"user": "t", "item": "a", "rating": 4.5, "timestamp": 1700000000},
        {"user": "t", "item": "b", "rating": 1}
    ]})
    .to_string();
    for cut in 0..body.len() {
        let (s, v) = post(&app, body[..cut].to_owned()).await;
        assert!(
            s == 400 || s == 422,
            "prefix of {cut} bytes answered {s} {v}: {}",
            &body[..cut]
        );
    }
    let (_, p) = app.get_json("/v1/users/t/ratings").await;
    assert_eq!(p["total"], 0, "{p}");
    let (s, v) = post(&app, body).await;
    assert_eq!((s, v["accepted"].as_u64()), (201, Some(2)));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_everywhere_are_invalid_body() {
    let app = spawn_app().await;
    let cases = [
        json!({"user": "u", "item": "i", "rating": null}),
        json!({"user": "u", "item": "i", "rating": true}),
        json!({"user": "u", "item": "i", "rating": [3]}),
        json!({"user": "u", "item": "i", "rating": {"v": 3}}),
        json!({"user": null, "item": "i", "rating": 3}),
        json!({"user": ["u"], "item": "i", "rating": 3}),
        json!({"user": {"id": "u"}, "item": "i", "rating": 3}),
        json!({"user": "u", "item": 2.5, "rating": 3}),
        json!({"user": "u", "item": "i", "rating": 3, "timestamp": 1.5}),
        json!({"user": "u", "item": "i", "rating": 3, "timestamp": true}),
        json!({"user": "u", "item": "i", "rating": 3, "timestamp": 9223372036854775808u64}),
        json!({"ratings": null}),
        json!({"ratings": "[]"}),
        json!({"ratings": [1, 2]}),
        json!({"ratings": [[{"user": "u", "item": "i", "rating": 3}]]}),
        json!({"ratings": [{"user": "u", "item": "i", "rating": 3}], "ratings2": []}),
        json!({}),
        json!("a string"),
        json!(42),
        json!(true),
    ];
    for body in cases {
        let (s, v) = post(&app, body.to_string()).await;
        assert_eq!((s, code(&v)), (422, Some("invalid_body")), "{body}: {v}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_ids_and_timestamps_follow_json_schema_integers() {
    // schemathesis regression: JSON Schema's `integer` includes 7.0, so an integral float
    // is the integer id / timestamp; integers beyond 64 bits (which serde_json can only
    // read as rounded floats) and floats beyond 2^53 are refused, not rounded into
    // another id.
    let app = spawn_app().await;
    let (s, v) = post(
        &app,
        r#"{"user": -820.0, "item": 7.0, "rating": 3, "timestamp": 1700000000.0}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, p) = app.get_json("/v1/users/-820/ratings").await;
    assert_eq!(p["ratings"][0]["item"], "7", "{p}");
    assert_eq!(p["ratings"][0]["timestamp"], 1700000000, "{p}");
    // proptest regression: float parsing must be exact (serde_json `float_roundtrip`)
    let (s, v) = post(
        &app,
        r#"{"user": -3772251820622817.0, "item": 9007199254740991.0, "rating": 3}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, p) = app.get_json("/v1/users/-3772251820622817/ratings").await;
    assert_eq!(p["ratings"][0]["item"], "9007199254740991", "{p}");
    // the full 64-bit range as integers is kept exactly
    let (s, v) = post(
        &app,
        r#"{"user": -9223372036854775808, "item": 18446744073709551615, "rating": 3, "timestamp": 9223372036854775807}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, p) = app.get_json("/v1/users/-9223372036854775808/ratings").await;
    assert_eq!(p["ratings"][0]["item"], "18446744073709551615", "{p}");
    assert_eq!(p["ratings"][0]["timestamp"], i64::MAX, "{p}");
    for body in [
        r#"{"user": -9223372036854775809, "item": "i", "rating": 3}"#,
        r#"{"user": 18446744073709551616, "item": "i", "rating": 3}"#,
        r#"{"user": 9007199254740993.0, "item": "i", "rating": 3}"#,
        r#"{"user": 1e20, "item": "i", "rating": 3}"#,
        r#"{"user": "u", "item": "i", "rating": 3, "timestamp": 9223372036854775808}"#,
        r#"{"user": "u", "item": "i", "rating": 3, "timestamp": -9223372036854775809}"#,
        r#"{"user": "u", "item": "i", "rating": 3, "timestamp": 1e300}"#,
    ] {
        let (s, v) = post(&app, body).await;
        assert_eq!((s, code(&v)), (422, Some("invalid_body")), "{body}: {v}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_and_edge_ids() {
    let app = spawn_app().await;
    // valid: stored and listed back in NFC (limit counts characters, not bytes)
    let valid = [
        "🎬".repeat(128),
        "e\u{301}".repeat(64), // combining accents: stored precomposed
        "inner spaces ok".to_owned(),
        "ﬁ/ß/İ".to_owned(),
        "\u{fffd}".to_owned(),
    ];
    for (n, id) in valid.iter().enumerate() {
        let item = format!("item{n}");
        let (s, v) = app
            .post_json(
                "/v1/ratings",
                &json!({"user": id, "item": item, "rating": 2}),
            )
            .await;
        assert_eq!(s, 201, "{id:?}: {v}");
        let r = app
            .client
            .get(
                app.url("/v1/users/x/ratings")
                    .replace("/x/", &format!("/{}/", urlencode(id))),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id:?}");
        let p: Value = r.json().await.unwrap();
        let nfc: String = unicode_normalization::UnicodeNormalization::nfc(id.as_str()).collect();
        assert_eq!(p["user"], json!(nfc), "{id:?}");
        assert_eq!(p["ratings"][0]["item"], json!(item), "{id:?}");
    }
    // invalid: 129 characters of 4 bytes each, NUL, C1 control, a megabyte
    let invalid = [
        "🎬".repeat(129),
        "a\u{0}b".to_owned(),
        "a\u{85}b".to_owned(),
        "\t".to_owned(),
        "x".repeat(1 << 20),
        "\u{202e}evil".to_owned(), // right-to-left override (format character)
        "a\u{200d}b".to_owned(),   // zero-width joiner (format character)
        " leading and trailing ".to_owned(),
    ];
    for id in invalid {
        let (s, v) = app
            .post_json(
                "/v1/ratings",
                &json!({"user": "u", "item": id, "rating": 2}),
            )
            .await;
        assert_eq!((s, code(&v)), (422, Some("invalid_id")), "{v}");
        assert!(v.to_string().len() < 1000, "the error does not echo the id");
    }
    app.stop().await;
}

/// A GET sent byte for byte as given (no client-side path normalisation).
async fn raw_get(app: &TestApp, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = app.addr.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_ids_is_just_an_id() {
    let app = spawn_app().await;
    let evil = "../../etc/passwd";
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": evil, "item": "..", "rating": 3}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // %2F keeps the slashes inside one segment: the id, not a path
    let (s, p) = app
        .get_json("/v1/users/..%2F..%2Fetc%2Fpasswd/ratings")
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["user"], evil);
    assert_eq!(p["ratings"][0]["item"], "..");
    // dot segments, literal or encoded, sent as they are (an HTTP client library would
    // resolve them before sending): the server does not resolve them, they are ids
    let (s, p) = raw_get(&app, "/v1/users/..%2F..%2Fetc%2Fpasswd/predictions/%2E%2E").await;
    assert_eq!(
        (s, &p["user"], &p["item"]),
        (200, &json!(evil), &json!(".."))
    );
    let (s, p) = raw_get(&app, "/v1/users/../ratings").await;
    assert_eq!((s, &p["user"]), (200, &json!("..")), "{p}");
    let (s, p) = raw_get(&app, "/v1/users/%2e%2e/../../../etc/passwd").await;
    assert_eq!((s, code(&p)), (404, Some("not_found")), "{p}");
    let (s, p) = app
        .get_json("/v1/items/..%2F..%2F..%2Fetc%2Fshadow/similar")
        .await;
    assert_eq!(s, 200, "{p}");
    let (s, p) = raw_get(
        &app,
        "/v1/users/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/recommendations",
    )
    .await;
    assert_eq!((s, &p["user"]), (200, &json!(evil)));
    // backslashes and encoded NUL
    let (s, p) = app.get_json("/v1/users/..%5C..%5Cwindows/ratings").await;
    assert_eq!((s, &p["user"]), (200, &json!("..\\..\\windows")));
    let (s, p) = app.get_json("/v1/users/a%00b/ratings").await;
    assert_eq!((s, code(&p)), (422, Some("invalid_id")));
    let r = app
        .client
        .delete(app.url("/v1/users/..%2F..%2Fetc%2Fpasswd/ratings/.%2E%2E"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "item `...` was never rated");
    // nothing was written outside the data directory
    let entries: Vec<_> = std::fs::read_dir(&app.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e.starts_with("funkrec.db") || e == "models"),
        "{entries:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_batch_sizes() {
    let app = spawn_app().await;
    let body = r#"{"user":"ct","item":"i","rating":3}"#;
    for ct in [
        "APPLICATION/JSON",
        "application/json;charset=UTF-8",
        "application/vnd.funkrec+json",
    ] {
        let (s, v) = app.post_raw("/v1/ratings", Some(ct), body).await;
        assert_eq!(s, 201, "{ct}: {v}");
    }
    for ct in [
        "application/jsonx",
        "json",
        "application/+json",
        "text/json",
        "multipart/form-data; boundary=x",
        "",
        "application/json;charset=latin1",
        "application/json; charset=utf-16",
    ] {
        let (s, v) = app.post_raw("/v1/ratings", Some(ct), body).await;
        assert_eq!(
            (s, code(&v)),
            (415, Some("unsupported_media_type")),
            "{ct:?}: {v}"
        );
    }
    // exactly max_batch (100 in tests) is fine; duplicates included
    let batch: Vec<_> = (0..100)
        .map(|i| json!({"user": "big", "item": format!("i{}", i % 10), "rating": 1 + i % 5}))
        .collect();
    let (s, v) = app
        .post_json("/v1/ratings", &json!({ "ratings": batch }))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (201, Some(100)), "{v}");
    let (_, p) = app.get_json("/v1/users/big/ratings").await;
    assert_eq!(p["total"], 10, "the last rating of each pair wins: {p}");
    // a huge batch (20 000 entries, under the byte limit) is refused before it is parsed
    let huge: Vec<_> = (0..20_000)
        .map(|i| json!({"user": "huge", "item": i, "rating": 3}))
        .collect();
    let (s, v) = app
        .post_json("/v1/ratings", &json!({ "ratings": huge }))
        .await;
    assert_eq!((s, code(&v)), (413, Some("batch_too_large")), "{v}");
    let (_, p) = app.get_json("/v1/users/huge/ratings").await;
    assert_eq!(p["total"], 0);
    app.stop().await;
}
