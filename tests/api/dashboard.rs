//! The dashboard over real HTTP: a self-contained page under a strict CSP, the key check
//! it starts with, and the plot and history endpoints it draws from.

use crate::guard::{keys, ADMIN, READER};
use crate::helpers::*;
use serde_json::Value;

const ASSETS: [&str; 3] = ["/dashboard", "/dashboard/app.js", "/dashboard/app.css"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_self_contained_under_a_strict_csp() {
    let app = spawn_app().await;
    let mut total = 0;
    for path in ASSETS {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        let body = r.text().await.unwrap();
        total += body.len();
        // nothing is fetched from another origin
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names an external URL"
        );
        if path == "/dashboard" {
            // every script is a same-origin file, none inline, no inline handlers
            let scripts: Vec<&str> = body.split("<script").skip(1).collect();
            assert!(!scripts.is_empty());
            for s in scripts {
                assert!(s.trim_start().starts_with("src=\"/dashboard/"), "{s}");
            }
            assert!(!body.contains(" onclick=") && !body.contains(" onload="));
            assert!(
                !body.contains("style=\""),
                "inline styles are refused by the CSP"
            );
        }
    }
    assert!(total < 300 * 1024, "the page weighs {total} bytes");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reports_the_role_of_the_key_sent() {
    let open = spawn_app().await;
    let (s, v) = open.get_json("/dashboard/session").await;
    assert_eq!(
        (s, &v["keys_required"], &v["role"]),
        (200, &Value::Bool(false), &"admin".into())
    );
    open.stop().await;

    let app = spawn_app_with(|s| s.auth.keys = keys()).await;
    let session = |key: Option<&'static str>| {
        let mut req = app.client.get(app.url("/dashboard/session"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    for (key, role) in [
        (None, Value::Null),
        (Some("not-a-key"), Value::Null),
        (Some(READER), "read".into()),
        (Some(ADMIN), "admin".into()),
    ] {
        let v = session(key).await;
        assert_eq!(v["keys_required"], true);
        assert_eq!(v["role"], role, "{key:?}");
    }
    // the plots follow the model's role: admin only
    let curve = |key: &'static str| {
        app.client
            .get(app.url("/v1/model/curve.svg"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(curve(READER).await.unwrap().status(), 403);
    assert_eq!(curve(ADMIN).await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curve_and_history_plot_the_serving_model() {
    let app = spawn_app().await;
    let r = app.get("/v1/model/curve.svg").await;
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    let empty = r.text().await.unwrap();
    assert!(empty.contains("(no data)") && !empty.contains("<circle"));

    app.post_ratings(&planted()).await;
    let v1 = app.train().await;
    let v2 = app.train().await;
    assert!(v2 > v1);
    let (_, model) = app.get_json("/v1/model").await;
    let epochs = model["epochs"].as_array().unwrap();
    assert!(epochs.len() > 1);
    let with_validation = epochs
        .iter()
        .filter(|e| e["validation_rmse"].is_f64())
        .count();
    let svg = app.get("/v1/model/curve.svg").await.text().await.unwrap();
    // one marker per epoch for the train line, and one per validated epoch
    assert_eq!(
        svg.matches("<circle").count(),
        epochs.len() + with_validation
    );

    let (s, history) = app.get_json("/v1/model/history").await;
    assert_eq!(s, 200);
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![v1, v2]);
    let last = &history["versions"][1];
    assert_eq!(last["holdout_rmse"], model["holdout_rmse"]);
    assert_eq!(last["train_seconds"], model["train_seconds"]);
    let with_holdout = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["holdout_rmse"].is_f64())
        .count();
    let svg = app.get("/v1/model/history.svg").await.text().await.unwrap();
    // two panels: training time (one marker per version) and holdout RMSE
    assert_eq!(svg.matches("<circle").count(), 2 + with_holdout);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_counts_committed_writes_and_the_snapshot_distribution() {
    let app = spawn_app_with(|s| s.auth.keys = keys()).await;
    let get = |path: &'static str, key: &'static str| {
        let req = app.client.get(app.url(path)).bearer_auth(key);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = get("/v1/stats/ingestion", READER).await;
    assert_eq!(s, 200, "a read key may: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["written_per_minute"].as_array().unwrap().len(), 60);
    assert_eq!(v["distribution"], Value::Array(vec![]), "no model yet");
    assert_eq!(v["model_version"], Value::Null);

    let ratings = planted();
    for chunk in ratings.chunks(100) {
        let body = serde_json::json!({"ratings": chunk.iter().map(|(u, i, r)| serde_json::json!({"user": u, "item": i, "rating": r})).collect::<Vec<_>>()});
        let r = app
            .client
            .post(app.url("/v1/ratings"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // a deletion is not a rating written
    let r = app
        .client
        .delete(app.url("/v1/users/u0/ratings/i1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .client
        .post(app.url("/v1/model/train"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    app.wait_for_version_after(None).await;

    let (_, body) = get("/v1/stats/ingestion", READER).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let per_minute: Vec<u64> = v["written_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    // the posts may straddle a minute boundary: the sum is what counts
    assert_eq!(per_minute.iter().sum::<u64>(), ratings.len() as u64);
    assert!(v["model_version"].is_u64());
    let bins: Vec<(f64, u64)> = v["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["rating"].as_f64().unwrap(), b["count"].as_u64().unwrap()))
        .collect();
    let ones = ratings.iter().filter(|r| r.2 == 1.0).count() as u64;
    let fives = ratings.len() as u64 - ones;
    // u0's rating of i1 (a 5: u0 is even and i1 < 10) was deleted before training
    assert_eq!(bins, vec![(1.0, ones), (5.0, fives - 1)]);

    let (s, svg) = get("/v1/stats/ingestion.svg", READER).await;
    assert_eq!(s, 200);
    assert_eq!(svg.matches("<circle").count(), 60, "one marker per minute");
    assert_eq!(
        svg.matches("opacity=\"0.8\"").count(),
        2,
        "one bar per rating value"
    );
    assert!(svg.contains("Rating distribution"));
    app.stop().await;
}
