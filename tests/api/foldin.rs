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
    let r = app
        .client
        .delete(app.url("/v1/users/fresh/ratings/i12"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
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
