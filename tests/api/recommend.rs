//! Predictions, recommendations and similar items reflect the data; fallbacks before a model.

use crate::helpers::*;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_model_everything_falls_back_without_error() {
    let app = spawn_app().await;
    let (s, v) = app.get_json("/v1/model").await;
    assert_eq!(s, 200);
    assert_eq!(v["state"], "no_model");
    assert!(v["version"].is_null());

    // empty store
    let (s, v) = app.get_json("/v1/users/nobody/recommendations").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fallback"], true);
    assert!(v["model_version"].is_null());
    assert_eq!(v["items"].as_array().unwrap().len(), 0);

    // with ratings but no training run: popularity from the store, rated items excluded
    app.post_ratings(&[
        ("a".into(), "x".into(), 5.0),
        ("b".into(), "x".into(), 5.0),
        ("b".into(), "y".into(), 1.0),
        ("c".into(), "z".into(), 3.0),
    ])
    .await;
    let (s, v) = app.get_json("/v1/users/a/recommendations?n=5").await;
    assert_eq!(s, 200);
    assert_eq!(v["fallback"], true);
    let items: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    assert_eq!(
        items,
        vec!["z", "y"],
        "x is rated by a; z (3) ranks above y (1)"
    );

    // before a model: the item's damped mean (s + 10μ)/(n + 10), μ = 3.5
    let (s, v) = app.get_json("/v1/users/a/predictions/x").await;
    assert_eq!(s, 200);
    assert_eq!(v["fallback"], true);
    assert_eq!(v["rating"], (10.0 + 35.0) / 12.0);
    assert!(v["model_version"].is_null());
    let (_, v) = app.get_json("/v1/users/a/predictions/never-rated").await;
    assert_eq!(v["rating"], 3.5, "the global mean for an item nobody rated");

    let (s, v) = app.get_json("/v1/items/x/similar?n=2").await;
    assert_eq!(s, 200);
    assert_eq!(v["fallback"], true);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["item"] != "x"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_train_then_predictions_and_recommendations_reflect_the_pattern() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    let version = app.train().await;
    assert_eq!(version, 1);

    let (s, m) = app.get_json("/v1/model").await;
    assert_eq!(s, 200);
    assert_eq!(m["state"], "ready");
    assert_eq!(m["trainer"], "sgd");
    assert_eq!(m["hyperparameters"]["factors"], 4);
    assert_eq!(m["counts"]["ratings"], planted().len());
    assert_eq!(m["counts"]["users"], 20);
    assert!(m["counts"]["holdout_ratings"].as_u64().unwrap() > 0);
    assert_eq!(m["epochs"].as_array().unwrap().len(), 150);
    let train_rmse = m["train_rmse"].as_f64().unwrap();
    assert!(train_rmse < 0.5, "train RMSE {train_rmse}");
    assert!(m["holdout_rmse"].as_f64().is_some());
    assert!(m["trained_at"].as_str().unwrap().ends_with('Z'));
    let first = m["epochs"][0]["loss"].as_f64().unwrap();
    let last = m["epochs"][149]["loss"].as_f64().unwrap();
    assert!(last < first, "loss fell: {first} -> {last}");

    let mut checked = 0;
    for u in 0..20usize {
        let (s, v) = app
            .get_json(&format!("/v1/users/u{u}/recommendations?n=3"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(v["fallback"], false);
        assert_eq!(v["model_version"], version);
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        for it in items {
            let i: usize = it["item"].as_str().unwrap()[1..].parse().unwrap();
            assert!(is_unrated(u, i), "u{u} got already-rated i{i}");
        }
        // the best recommendation comes from the user's group
        let top: usize = items[0]["item"].as_str().unwrap()[1..].parse().unwrap();
        let unrated_liked = (0..20).filter(|&i| is_unrated(u, i) && liked(u, i)).count();
        if unrated_liked > 0 {
            assert!(
                liked(u, top),
                "u{u}: top item i{top} is from the other group: {v}"
            );
            checked += 1;
        }
        // predictions separate liked from disliked unrated items
        for i in (0..20).filter(|&i| is_unrated(u, i)) {
            let (s, p) = app
                .get_json(&format!("/v1/users/u{u}/predictions/i{i}"))
                .await;
            assert_eq!(s, 200);
            assert_eq!(p["known_user"], true);
            assert_eq!(p["model_version"], version);
            let r = p["rating"].as_f64().unwrap();
            if liked(u, i) {
                assert!(r > 3.5, "u{u} i{i} predicted {r}, expected high");
            } else {
                assert!(r < 2.5, "u{u} i{i} predicted {r}, expected low");
            }
        }
    }
    assert!(checked >= 10);

    // similar items: an item's nearest neighbours come from its own group
    let (s, v) = app.get_json("/v1/items/i0/similar?n=5").await;
    assert_eq!(s, 200);
    assert_eq!(v["fallback"], false);
    for it in v["items"].as_array().unwrap() {
        let i: usize = it["item"].as_str().unwrap()[1..].parse().unwrap();
        assert!(i < 10 && i != 0, "i0 similar to i{i}: {v}");
    }

    // unknown user: popularity fallback, flagged
    let (s, v) = app.get_json("/v1/users/stranger/recommendations?n=4").await;
    assert_eq!(s, 200);
    assert_eq!(v["fallback"], true);
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    let (_, p) = app.get_json("/v1/users/stranger/predictions/i3").await;
    assert_eq!(p["known_user"], false);
    assert_eq!(p["known_item"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rated_items_are_never_recommended_even_after_the_snapshot() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    app.train().await;

    let user = "u0";
    let rated: HashSet<String> = planted()
        .into_iter()
        .filter(|(u, _, _)| u == user)
        .map(|(_, i, _)| i)
        .collect();
    let (_, v) = app
        .get_json(&format!("/v1/users/{user}/recommendations?n=20"))
        .await;
    let recs: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap().to_owned())
        .collect();
    assert!(!recs.is_empty());
    assert!(recs.iter().all(|i| !rated.contains(i)), "{recs:?}");
    assert_eq!(
        recs.len(),
        20 - rated.len(),
        "every unrated item is listed once"
    );

    // rate the top recommendation now (after the snapshot): it must disappear at once
    let top = recs[0].clone();
    let (s, _) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": user, "item": top, "rating": 4}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, v) = app
        .get_json(&format!("/v1/users/{user}/recommendations?n=20"))
        .await;
    let after: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    assert!(
        !after.contains(&top.as_str()),
        "{top} still recommended: {after:?}"
    );
    assert_eq!(after.len(), recs.len() - 1);

    // a user unknown to the snapshot is folded in, without the items they just rated
    app.post_ratings(&[
        ("newbie".into(), "i1".into(), 5.0),
        ("newbie".into(), "i2".into(), 5.0),
    ])
    .await;
    let (_, v) = app.get_json("/v1/users/newbie/recommendations?n=20").await;
    assert_eq!(v["fallback"], false);
    assert_eq!(v["folded_in"], true);
    let items: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    assert_eq!(items.len(), 18);
    assert!(!items.contains(&"i1") && !items.contains(&"i2"));
    app.stop().await;
}
