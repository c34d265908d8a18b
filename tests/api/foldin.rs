//! Fold-in: a write is reflected by the very next read (new user, changed user, deleted
//! rating), and a new snapshot that covers the writes takes over from the folded vector.

use crate::helpers::*;
use serde_json::{json, Value};

fn item_numbers(v: &Value) -> Vec<usize> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap()[1..].parse().unwrap())
        .collect()
}

async fn predict(app: &TestApp, user: &str, item: &str) -> Value {
    let (s, p) = app
        .get_json(&format!("/v1/users/{user}/predictions/{item}"))
        .await;
    assert_eq!(s, 200, "{p}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_reflected_by_the_next_read() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    let v1 = app.train().await;

    // a new user: personal at once, from the items they rated
    let mut fresh: Vec<(String, String, f64)> = (0..4)
        .map(|i| ("fresh".into(), format!("i{i}"), 5.0))
        .collect();
    fresh.extend((10..14).map(|i| ("fresh".into(), format!("i{i}"), 1.0)));
    app.post_ratings(&fresh).await;
    let (s, v) = app.get_json("/v1/users/fresh/recommendations?n=20").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    assert_eq!(v["model_version"], v1);
    let recs = item_numbers(&v);
    assert_eq!(recs.len(), 12, "every unrated item once: {v}");
    assert!(recs
        .iter()
        .all(|i| !(0..4).contains(i) && !(10..14).contains(i)));
    assert!(
        recs[..6].iter().all(|&i| i < 10),
        "the liked group first: {recs:?}"
    );
    let high = predict(&app, "fresh", "i7").await;
    let low = predict(&app, "fresh", "i17").await;
    assert_eq!(
        (high["folded_in"].as_bool(), high["fallback"].as_bool()),
        (Some(true), Some(false)),
        "{high}"
    );
    assert_eq!(high["known_user"], false, "not in the snapshot");
    assert!(high["rating"].as_f64().unwrap() > 3.5, "{high}");
    assert!(low["rating"].as_f64().unwrap() < 2.5, "{low}");

    // a deleted rating: the user's next read is solved without it
    let before = predict(&app, "fresh", "i12").await["rating"]
        .as_f64()
        .unwrap();
    assert_eq!(app.delete("/v1/users/fresh/ratings/i12").await, 204);
    let after = predict(&app, "fresh", "i12").await["rating"]
        .as_f64()
        .unwrap();
    assert_ne!(before, after, "the cached vector was replaced");
    let (_, v) = app.get_json("/v1/users/fresh/recommendations?n=20").await;
    assert!(item_numbers(&v).contains(&12), "i12 is unrated again: {v}");

    // a known user changes taste: their next read follows the new ratings
    let u = 0usize; // even: likes i0..i9
    let (_, v) = app
        .get_json(&format!("/v1/users/u{u}/recommendations?n=3"))
        .await;
    assert_eq!(v["folded_in"], false, "no write since the snapshot: {v}");
    let flipped: Vec<(String, String, f64)> = (0..20)
        .filter(|&i| !is_unrated(u, i))
        .map(|i| {
            (
                format!("u{u}"),
                format!("i{i}"),
                if i < 10 { 1.0 } else { 5.0 },
            )
        })
        .collect();
    app.post_ratings(&flipped).await;
    let (_, v) = app
        .get_json(&format!("/v1/users/u{u}/recommendations?n=20"))
        .await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    let top = item_numbers(&v)[0];
    assert!(
        top >= 10,
        "top item i{top} is from the group u{u} now dislikes: {v}"
    );
    for i in (0..20).filter(|&i| is_unrated(u, i)) {
        let p = predict(&app, &format!("u{u}"), &format!("i{i}")).await;
        assert_eq!(p["folded_in"], true);
        let r = p["rating"].as_f64().unwrap();
        assert!(if i < 10 { r < 2.5 } else { r > 3.5 }, "u{u} i{i}: {p}");
    }

    // a new snapshot covers the writes: the snapshot's own vectors serve again
    let v2 = app.train().await;
    assert!(v2 > v1);
    for user in ["fresh", "u0"] {
        let (_, v) = app
            .get_json(&format!("/v1/users/{user}/recommendations?n=3"))
            .await;
        assert_eq!(v["model_version"], v2);
        assert_eq!(
            (v["fallback"].as_bool(), v["folded_in"].as_bool()),
            (Some(false), Some(false)),
            "{v}"
        );
    }
    // and the next write folds in against the new snapshot
    app.post_json(
        "/v1/ratings",
        &json!({"user": "fresh", "item": "i5", "rating": 5}),
    )
    .await;
    let (_, v) = app.get_json("/v1/users/fresh/recommendations?n=3").await;
    assert_eq!(v["folded_in"], true, "{v}");
    assert!(!item_numbers(&v).contains(&5));

    // a user whose only rating is of an item the snapshot does not know: fallback
    app.post_ratings(&[("loner".into(), "brand-new".into(), 4.0)])
        .await;
    let (_, v) = app.get_json("/v1/users/loner/recommendations?n=3").await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );
    app.stop().await;
}

/// `model.trainer = "svdpp"` end to end: the service trains SVD++, serves known users
/// from their effective vectors, folds a new user in with the implicit term of the
/// items they rated, and serves the same model after a restart (model file with Y).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svdpp_trains_serves_folds_in_and_survives_a_restart() {
    let app = spawn_app_with(|s| s.model.trainer = funkrec_engine::TrainerKind::Svdpp).await;
    app.post_ratings(&planted()).await;
    let v1 = app.train().await;
    let (s, m) = app.get_json("/v1/model").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["trainer"], "svdpp", "{m}");
    assert_eq!(m["hyperparameters"]["trainer"], "svdpp", "{m}");
    for u in [0usize, 1] {
        for i in (0..20).filter(|&i| is_unrated(u, i)) {
            let p = predict(&app, &format!("u{u}"), &format!("i{i}")).await;
            assert_eq!(p["folded_in"], false, "{p}");
            let r = p["rating"].as_f64().unwrap();
            assert!(
                if liked(u, i) { r > 3.5 } else { r < 2.5 },
                "u{u} i{i}: {p}"
            );
        }
    }
    // a new user: folded in (Y gives the implicit term of what they rated)
    let mut fresh: Vec<(String, String, f64)> = (0..4)
        .map(|i| ("fresh".into(), format!("i{i}"), 5.0))
        .collect();
    fresh.extend((10..14).map(|i| ("fresh".into(), format!("i{i}"), 1.0)));
    app.post_ratings(&fresh).await;
    let (_, v) = app.get_json("/v1/users/fresh/recommendations?n=20").await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    let recs = item_numbers(&v);
    assert!(
        recs[..6].iter().all(|&i| i < 10),
        "the liked group first: {recs:?}"
    );
    let (_, before) = app.get_json("/v1/users/u3/predictions/i5").await;
    let tmp = app.tmp.clone();
    app.stop().await;

    let app = spawn_app_in(tmp, |s| {
        s.model.trainer = funkrec_engine::TrainerKind::Svdpp
    })
    .await;
    let (_, m) = app.get_json("/v1/model").await;
    assert_eq!(m["version"], v1, "{m}");
    assert_eq!(m["trainer"], "svdpp", "{m}");
    let (_, after) = app.get_json("/v1/users/u3/predictions/i5").await;
    assert_eq!(before, after);
    app.stop().await;
}

/// `funkrec_list_cache_requests_total` (hits, misses) from `/metrics`.
async fn list_cache(app: &TestApp) -> (u64, u64) {
    let text = app.get("/metrics").await.text().await.unwrap();
    let count = |result: &str| {
        let series = format!("funkrec_list_cache_requests_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (count("hit"), count("miss"))
}

/// The same request again is answered from the list kept for the user (the same list),
/// and the user's next write or delete makes the next one rank again: the kept list
/// never outlives the ratings it was ranked from. With the cache off
/// (`server.list_cache_users = 0`, same ratings and model) the list is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_list_is_replaced_by_the_users_next_write() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    let version = app.train().await;
    let path = "/v1/users/u0/recommendations?n=5";
    let (_, first) = app.get_json(path).await;
    assert_eq!(list_cache(&app).await, (0, 1));
    let (_, again) = app.get_json(path).await;
    assert_eq!(first, again);
    assert_eq!(list_cache(&app).await, (1, 1), "the second was kept");
    assert_eq!(first["folded_in"], false, "{first}");

    // u0 rates the top item: the next same request excludes it, folded in
    let top = item_numbers(&first)[0];
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "u0", "item": format!("i{top}"), "rating": 1}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, after) = app.get_json(path).await;
    assert_eq!(
        list_cache(&app).await,
        (1, 2),
        "ranked again after the write"
    );
    assert_eq!(after["folded_in"], true, "{after}");
    assert!(!item_numbers(&after).contains(&top), "{after}");
    // and the delete of that rating makes it recommendable again
    assert_eq!(
        app.delete(&format!("/v1/users/u0/ratings/i{top}")).await,
        204
    );
    let (_, back) = app.get_json(path).await;
    assert!(item_numbers(&back).contains(&top), "{back}");
    let (_, back_again) = app.get_json(path).await;
    assert_eq!(back, back_again);
    assert_eq!(
        list_cache(&app).await,
        (2, 3),
        "ranked after the delete, then kept"
    );

    // the same data and model with the cache off, after a restart (which reads u0's
    // ratings into the new rated index: u0 is served the snapshot's vector again): the
    // list first served
    let tmp = app.tmp.clone();
    app.stop().await;
    let app = spawn_app_in(tmp, |s| {
        s.server.list_cache_users = 0;
        s.training.train_on_start = false;
    })
    .await;
    assert_eq!(app.model_version().await, Some(version));
    let (_, uncached) = app.get_json(path).await;
    assert_eq!(uncached["items"], first["items"], "{uncached} vs {first}");
    app.stop().await;
}
