//! Forget on request: `DELETE /v1/users/{user}` and `DELETE /v1/items/{item}` change what
//! is served at once and after a restart with the old snapshot; roles and 404s.

use crate::guard::{keys, ADMIN, READER, WRITER};
use crate::helpers::*;
use serde_json::{json, Value};

fn item_names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap().to_owned())
        .collect()
}

async fn delete(app: &TestApp, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = app.client.delete(app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn recs(app: &TestApp, user: &str) -> Value {
    let (s, v) = app
        .get_json(&format!("/v1/users/{user}/recommendations?n=20"))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// What an unknown user gets: the popularity list, and predictions from the item's terms.
async fn assert_served_as_unknown(app: &TestApp, user: &str) {
    let unknown = recs(app, "nobody-at-all").await;
    let v = recs(app, user).await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );
    assert_eq!(item_names(&v), item_names(&unknown), "the same list: {v}");
    for item in ["i0", "i15"] {
        let (_, p) = app
            .get_json(&format!("/v1/users/{user}/predictions/{item}"))
            .await;
        let (_, q) = app
            .get_json(&format!("/v1/users/nobody-at-all/predictions/{item}"))
            .await;
        assert_eq!(p["rating"], q["rating"], "{p} vs {q}");
        assert_eq!(
            (p["known_user"].as_bool(), p["fallback"].as_bool()),
            (Some(false), Some(true)),
            "{p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_user_serves_them_as_unknown_at_once_and_after_restart() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    let v1 = app.train().await;
    let before = recs(&app, "u0").await;
    assert_eq!(before["fallback"], false, "{before}");

    let (s, v) = delete(&app, "/v1/users/u0", None).await;
    assert_eq!(s, 204, "{v}");
    let (_, page) = app.get_json("/v1/users/u0/ratings").await;
    assert_eq!(page["total"], 0, "every rating deleted: {page}");
    assert_served_as_unknown(&app, "u0").await;
    // idempotent for a user the store has seen
    assert_eq!(delete(&app, "/v1/users/u0", None).await.0, 204);

    // a restart loads the same snapshot (which still holds u0's vector): still unknown
    let tmp = app.tmp.clone();
    app.stop().await;
    let app = spawn_app_in(tmp.clone(), |_| {}).await;
    assert_eq!(app.model_version().await, Some(v1));
    assert_served_as_unknown(&app, "u0").await;

    // rating again: folded in from the new ratings only (odd taste now)
    let odd: Vec<(String, String, f64)> = (0..20)
        .filter(|i| i % 3 == 0)
        .map(|i| ("u0".into(), format!("i{i}"), if i < 10 { 1.0 } else { 5.0 }))
        .collect();
    app.post_ratings(&odd).await;
    let v = recs(&app, "u0").await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    let top: usize = item_names(&v)[0][1..].parse().unwrap();
    assert!(
        top >= 10,
        "follows the new ratings, not the forgotten vector: {v}"
    );
    assert_eq!(item_names(&v).len(), 20 - odd.len(), "rated items excluded");

    // a snapshot trained after the deletion covers it: u0 is the snapshot's again
    let v2 = app.train().await;
    assert!(v2 > v1);
    let v = recs(&app, "u0").await;
    assert_eq!(
        (v["fallback"].as_bool(), v["folded_in"].as_bool()),
        (Some(false), Some(false)),
        "{v}"
    );
    app.stop().await;
}

/// `item` is in no list, is not the query of similar items, and is unknown to predictions.
async fn assert_retired(app: &TestApp, item: &str) {
    for user in ["u0", "u1", "nobody"] {
        let v = recs(app, user).await;
        assert!(!item_names(&v).iter().any(|i| i == item), "{user}: {v}");
    }
    for q in ["i1", "i5", "i12"] {
        let (_, v) = app.get_json(&format!("/v1/items/{q}/similar?n=20")).await;
        assert_eq!(v["fallback"], false, "{v}");
        assert!(!item_names(&v).is_empty());
        assert!(!item_names(&v).iter().any(|i| i == item), "{q}: {v}");
    }
    let (_, v) = app
        .get_json(&format!("/v1/items/{item}/similar?n=20"))
        .await;
    assert_eq!(v["fallback"], true, "as the query: {v}");
    assert!(!item_names(&v).iter().any(|i| i == item), "{v}");
    let (_, p) = app
        .get_json(&format!("/v1/users/u0/predictions/{item}"))
        .await;
    assert_eq!(p["known_item"], false, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_item_is_never_served_again_and_takes_no_ratings() {
    let app = spawn_app().await;
    app.post_ratings(&planted()).await;
    let v1 = app.train().await;
    // an item u0 (who likes i0..i9) has not rated
    let liked_unrated = (0..10).find(|&i| is_unrated(0, i)).unwrap();
    let item = format!("i{liked_unrated}");
    let v = recs(&app, "u0").await;
    assert!(item_names(&v).contains(&item), "{v}");
    let (_, sim) = app.get_json("/v1/items/i1/similar?n=19").await;
    assert!(item_names(&sim).contains(&item), "{sim}");

    let (s, v) = delete(&app, &format!("/v1/items/{item}"), None).await;
    assert_eq!(s, 204, "{v}");
    assert_retired(&app, &item).await;
    // a new rating of it is refused (a whole batch with it, too)
    let (s, v) = app
        .post_json(
            "/v1/ratings",
            &json!({"user": "u5", "item": item, "rating": 5}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("item_retired")),
        "{v}"
    );
    let (s, _) = app
        .post_json(
            "/v1/ratings",
            &json!({"ratings": [{"user": "u5", "item": "i2", "rating": 5}, {"user": "u5", "item": item, "rating": 5}]}),
        )
        .await;
    assert_eq!(s, 409);
    let (_, page) = app.get_json("/v1/users/u5/ratings?limit=100").await;
    let rated: Vec<&str> = page["ratings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_str().unwrap())
        .collect();
    assert!(
        !rated.contains(&item.as_str()),
        "its ratings are gone: {page}"
    );

    // after a restart with the same snapshot
    let tmp = app.tmp.clone();
    app.stop().await;
    let app = spawn_app_in(tmp, |_| {}).await;
    assert_eq!(app.model_version().await, Some(v1));
    assert_retired(&app, &item).await;
    // the next model does not know it at all
    app.train().await;
    let (_, p) = app
        .get_json(&format!("/v1/users/u0/predictions/{item}"))
        .await;
    assert_eq!(p["known_item"], false, "{p}");
    assert_retired(&app, &item).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_needs_write_and_retire_needs_admin_and_unknown_ids_are_404() {
    let app = spawn_app_with(|s| s.auth.keys = keys()).await;
    let r = app
        .client
        .post(app.url("/v1/ratings"))
        .bearer_auth(WRITER)
        .json(&json!({"ratings": [{"user": "a", "item": "x", "rating": 4}, {"user": "b", "item": "y", "rating": 4}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let code = |v: &Value| v["error"]["code"].as_str().map(str::to_owned);
    let (s, v) = delete(&app, "/v1/users/a", None).await;
    assert_eq!((s, code(&v).as_deref()), (401, Some("unauthorized")));
    let (s, v) = delete(&app, "/v1/users/a", Some(READER)).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")));
    assert_eq!(delete(&app, "/v1/users/a", Some(WRITER)).await.0, 204);
    let (s, v) = delete(&app, "/v1/items/x", Some(WRITER)).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    assert_eq!(delete(&app, "/v1/items/x", Some(ADMIN)).await.0, 204);
    assert_eq!(
        delete(&app, "/v1/items/x", Some(ADMIN)).await.0,
        204,
        "idempotent"
    );
    let (s, v) = delete(&app, "/v1/users/never-seen", Some(WRITER)).await;
    assert_eq!(
        (s, code(&v).as_deref()),
        (404, Some("user_not_found")),
        "{v}"
    );
    let (s, v) = delete(&app, "/v1/items/never-seen", Some(ADMIN)).await;
    assert_eq!(
        (s, code(&v).as_deref()),
        (404, Some("item_not_found")),
        "{v}"
    );
    let (s, v) = delete(&app, "/v1/users/a%01b", Some(WRITER)).await;
    assert_eq!((s, code(&v).as_deref()), (422, Some("invalid_id")), "{v}");
    // y and b are untouched
    let r = app
        .client
        .get(app.url("/v1/users/b/ratings"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["total"], 1, "{page}");
    app.stop().await;
}
