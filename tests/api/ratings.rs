//! Ingest, listing with paging, delete, batches (all-or-nothing, duplicates), id normalisation.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_ingest_then_list_and_page() {
    let app = spawn_app().await;
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": 7, "item": "m1", "rating": 4.5, "timestamp": 1700000000}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v, json!({"accepted": 1}));

    let batch: Vec<_> = (2..=25)
        .map(|i| json!({"user": "7", "item": format!("m{i}"), "rating": 3}))
        .collect();
    let (s, v) = app
        .post_json("/v1/ratings", &json!({ "ratings": batch }))
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["accepted"], 24);

    // integer user id 7 and string "7" are the same user
    let (s, p1) = app.get_json("/v1/users/7/ratings?limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(p1["total"], 25);
    assert_eq!(p1["ratings"].as_array().unwrap().len(), 10);
    assert_eq!(p1["next_offset"], 10);
    assert_eq!(
        p1["ratings"][0],
        json!({"item": "m1", "rating": 4.5, "timestamp": 1700000000})
    );
    let (_, p3) = app.get_json("/v1/users/7/ratings?limit=10&offset=20").await;
    assert_eq!(p3["ratings"].as_array().unwrap().len(), 5);
    assert!(p3["next_offset"].is_null());
    // pages are disjoint and cover everything
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let (_, p) = app
            .get_json(&format!("/v1/users/7/ratings?limit=7&offset={offset}"))
            .await;
        all.extend(
            p["ratings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["item"].as_str().unwrap().to_owned()),
        );
        match p["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 25);

    // default page size and unknown users
    let (_, p) = app.get_json("/v1/users/7/ratings").await;
    assert_eq!(p["limit"], 100);
    let (s, p) = app.get_json("/v1/users/ghost/ratings").await;
    assert_eq!(s, 200);
    assert_eq!(p["total"], 0);

    // paging caps
    for q in ["limit=0", "limit=1001", "limit=abc", "offset=-1"] {
        let (s, v) = app.get_json(&format!("/v1/users/7/ratings?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["error"]["code"], "invalid_query");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_duplicates_and_all_or_nothing() {
    let app = spawn_app().await;
    app.post_ratings(&[("u".into(), "a".into(), 2.0)]).await;
    // same pair again replaces
    app.post_ratings(&[("u".into(), "a".into(), 4.0)]).await;
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 1);
    assert_eq!(p["ratings"][0]["rating"], 4.0);

    // duplicate pair inside one batch: the last one wins, both count as accepted
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"ratings": [
                {"user": "u", "item": "b", "rating": 1},
                {"user": "u", "item": "b", "rating": 5}
            ]}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["accepted"], 2);
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 2);
    assert_eq!(
        p["ratings"][1],
        json!({"item": "b", "rating": 5.0, "timestamp": p["ratings"][1]["timestamp"]})
    );

    // one bad rating rejects the whole batch
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"ratings": [
                {"user": "u", "item": "c", "rating": 3},
                {"user": "u", "item": "d", "rating": 9}
            ]}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["code"], "invalid_rating");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ratings[1]"),
        "{v}"
    );
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 2, "nothing of the failed batch was stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_rating_then_404() {
    let app = spawn_app().await;
    app.post_ratings(&[("u".into(), "a".into(), 2.0), ("u".into(), "b".into(), 3.0)])
        .await;
    let r = app
        .client
        .delete(app.url("/v1/users/u/ratings/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, p) = app.get_json("/v1/users/u/ratings").await;
    assert_eq!(p["total"], 1);
    assert_eq!(p["ratings"][0]["item"], "b");
    for path in [
        "/v1/users/u/ratings/a",
        "/v1/users/nobody/ratings/a",
        "/v1/users/u/ratings/zzz",
    ] {
        let r = app.client.delete(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rating_not_found");
    }
    app.stop().await;
}
