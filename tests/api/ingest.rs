//! Group-committed ingestion: concurrent single POSTs are all stored; a bad request does not fail its neighbours; writes and deletes after the snapshot shape recommendations at once.

use crate::helpers::*;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_posts_are_all_present_and_bad_ones_fail_alone() {
    let app = spawn_app().await;
    // 200 valid single ratings and 20 invalid ones (rating 9), all in flight at once
    let mut tasks = Vec::new();
    for k in 0..220u32 {
        let (client, url) = (app.client.clone(), app.url("/v1/ratings"));
        tasks.push(tokio::spawn(async move {
            let rating = if k % 11 == 10 { 9 } else { 1 + k % 5 };
            let body =
                json!({"user": format!("c{}", k % 10), "item": format!("i{k}"), "rating": rating});
            let r = client.post(url).json(&body).send().await.unwrap();
            (k, rating, r.status().as_u16())
        }));
    }
    let mut stored = HashSet::new();
    for t in tasks {
        let (k, rating, status) = t.await.unwrap();
        if rating == 9 {
            assert_eq!(status, 422, "rating {k}");
        } else {
            assert_eq!(status, 201, "rating {k}");
            stored.insert(format!("i{k}"));
        }
    }
    assert_eq!(stored.len(), 200);
    let mut found = HashSet::new();
    for u in 0..10 {
        let (_, p) = app
            .get_json(&format!("/v1/users/c{u}/ratings?limit=1000"))
            .await;
        for r in p["ratings"].as_array().unwrap() {
            found.insert(r["item"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(found, stored, "every 201 is stored, nothing else");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_after_the_snapshot_makes_an_item_recommendable_again() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    app.train().await;
    let recs = |v: serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, v) = app.get_json("/v1/users/u0/recommendations?n=20").await;
    let before = recs(v);
    let rated: Vec<String> = planted()
        .into_iter()
        .filter(|(u, _, _)| u == "u0")
        .map(|(_, i, _)| i)
        .collect();
    assert_eq!(before.len(), 20 - rated.len());
    // delete one rating, rate one more, delete that again: the list follows at once
    let gone = &rated[0];
    assert_eq!(
        app.delete(&format!("/v1/users/u0/ratings/{gone}")).await,
        204
    );
    let (_, v) = app.get_json("/v1/users/u0/recommendations?n=20").await;
    let after = recs(v);
    assert!(after.contains(gone), "{gone} unrated now: {after:?}");
    assert_eq!(after.len(), before.len() + 1);
    let (s, _) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "u0", "item": before[0], "rating": 3}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, v) = app.get_json("/v1/users/u0/recommendations?n=20").await;
    assert!(!recs(v).contains(&before[0]));

    // after a restart on the same data the loaded snapshot still excludes them
    let tmp = app.tmp.clone();
    app.stop().await;
    let app = spawn_app_in(tmp, |_| {}).await;
    let (_, v) = app.get_json("/v1/users/u0/recommendations?n=20").await;
    let restarted = recs(v);
    assert!(
        restarted.contains(gone) && !restarted.contains(&before[0]),
        "{restarted:?}"
    );
    app.stop().await;
}
