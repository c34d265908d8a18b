//! `GET /openapi.json`: every route the router serves is documented, with the methods it
//! answers, and the document carries the configured limits.

use crate::helpers::*;
use funkrec::startup::Application;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The paths the router really serves, read from the router itself (axum's `Debug` output
/// lists its route table as `RouteId(n): "/path"`), so that a route added without
/// documentation cannot hide from this test.
fn served_paths(router: &axum::Router) -> BTreeSet<String> {
    let dump = format!("{router:?}");
    // the fallback router's own table ("/", "/{*__private__axum_fallback}") is not an API
    let dump = dump.split("fallback_router:").next().unwrap();
    let mut out = BTreeSet::new();
    let mut rest = dump;
    while let Some(i) = rest.find("RouteId(") {
        rest = &rest[i + "RouteId(".len()..];
        let Some(j) = rest.find(')') else { break };
        if let Some(after) = rest[j..].strip_prefix("): \"") {
            if let Some(end) = after.find('"') {
                out.insert(after[..end].to_owned());
            }
        }
        rest = &rest[j..];
    }
    out
}

/// Fills `{param}` segments with a valid id.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_route_and_method_is_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let app = Application::build(test_settings(tmp.path())).await.unwrap();
    let served = served_paths(&app.router());
    assert!(
        served.len() >= 11 && served.contains("/v1/ratings"),
        "could not read the route table from the router (axum's Debug format changed?): {served:?}"
    );
    drop(app);

    let app = spawn_app().await;
    let (s, doc) = app.get_json("/openapi.json").await;
    assert_eq!(s, 200);
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, ops)| {
            let methods = ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|m| METHODS.contains(&m.as_str()) || *m == "head" || *m == "options")
                .cloned()
                .collect();
            (p.clone(), methods)
        })
        .collect();
    let documented_paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        served, documented_paths,
        "routes served but not in /openapi.json (or documented but not served)"
    );

    // every method the server answers on a path is documented, and only those
    for (path, methods) in &documented {
        let url = app.url(&concrete(path));
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = app.client.request(method, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if methods.contains(m) {
                assert!(
                    status != 405 && !(status == 404 && body["error"]["code"] == "not_found"),
                    "{m} {path} is documented but answers {status} {body}"
                );
                let op = &doc["paths"][path][m]["responses"];
                assert!(
                    op.get(status.to_string()).is_some(),
                    "{m} {path} answered {status}, which is not documented: {body}"
                );
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{m} {path} is not documented but is served"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_openapi_31_with_errors_and_configured_limits() {
    let app = spawn_app_with(|s| {
        s.model.scale = funkrec_engine::Scale {
            min: 0.5,
            max: 10.0,
        };
        s.server.max_n = 77;
        s.server.max_page_size = 33;
        s.server.default_page_size = 10;
    })
    .await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let schemas = &doc["components"]["schemas"];
    let rating = &schemas["RatingInput"]["properties"]["rating"];
    assert_eq!(
        (rating["minimum"].as_f64(), rating["maximum"].as_f64()),
        (Some(0.5), Some(10.0))
    );
    assert_eq!(
        schemas["RatingBatch"]["properties"]["ratings"]["maxItems"],
        100
    );
    assert_eq!(
        schemas["RatingBatch"]["properties"]["ratings"]["minItems"],
        1
    );
    assert_eq!(schemas["RatingInput"]["additionalProperties"], false);

    // the document's error codes are exactly the ones docs/api.md's error table explains
    let codes: BTreeSet<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let api_md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let table = api_md
        .split("\n## Errors\n")
        .nth(1)
        .expect("docs/api.md has an Errors section");
    // rows are `| status | `code` | when |`; the table ends at the first non-row line
    let documented: BTreeSet<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(2))
        .filter_map(|c| c.trim().strip_prefix('`')?.strip_suffix('`'))
        .collect();
    assert_eq!(codes, documented, "docs/api.md error table vs the document");

    // every operation: errors are the JSON error body, successes have a JSON body (but 204)
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                let content = &resp["content"];
                if status == "204" {
                    assert!(content.is_null(), "{m} {path} {status}");
                    continue;
                }
                if status == "200"
                    && (path.starts_with("/dashboard/app.")
                        || path == "/dashboard"
                        || path.ends_with(".svg"))
                {
                    // the dashboard's page, script, style sheet and SVG plots
                    let media = content.as_object().unwrap().keys().next().unwrap();
                    let expected = ["text/html", "text/javascript", "text/css", "image/svg+xml"];
                    assert!(expected.contains(&media.as_str()), "{m} {path}: {media}");
                    continue;
                }
                if path == "/metrics" && status == "200" {
                    // Prometheus exposition format, the one non-JSON success body.
                    let text = content.as_object().unwrap().keys().next().unwrap();
                    assert!(text.starts_with("text/plain"), "{m} {path}: {text}");
                    continue;
                }
                let json = &content["application/json"]["schema"];
                assert!(
                    !json.is_null(),
                    "{m} {path} {status}: no application/json body"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        json["$ref"], "#/components/schemas/ErrorBody",
                        "{m} {path} {status}"
                    );
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let max = &p["schema"]["maximum"];
                match p["name"].as_str().unwrap() {
                    "n" => assert_eq!(max, 77, "{path}"),
                    "limit" => assert_eq!(max, 33, "{path}"),
                    _ => {}
                }
            }
        }
    }
    // the documented query limits are the ones enforced
    let (s, _) = app.get_json("/v1/users/u/recommendations?n=77").await;
    assert_eq!(s, 200);
    let (s, _) = app.get_json("/v1/users/u/recommendations?n=78").await;
    assert_eq!(s, 400);
    let (s, _) = app.get_json("/v1/users/u/ratings?limit=33").await;
    assert_eq!(s, 200);
    let (s, _) = app.get_json("/v1/users/u/ratings?limit=34").await;
    assert_eq!(s, 400);
    app.stop().await;
}

/// No schema combines `oneOf`/`anyOf`/`allOf` with a `default`: client generators
/// (openapi-python-client refuses "ModelProperty cannot have a default value") drop such
/// a property, and the generated model then fails to parse the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_composed_schema_has_a_default() {
    fn walk(at: &str, v: &Value, bad: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                let composed = ["oneOf", "anyOf", "allOf"]
                    .iter()
                    .any(|k| o.contains_key(*k));
                if composed && o.contains_key("default") {
                    bad.push(at.to_owned());
                }
                for (k, v) in o {
                    walk(&format!("{at}/{k}"), v, bad);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{at}/{i}"), v, bad);
                }
            }
            _ => {}
        }
    }
    let app = spawn_app().await;
    let (s, doc) = app.get_json("/openapi.json").await;
    assert_eq!(s, 200);
    let mut bad = Vec::new();
    walk("#", &doc, &mut bad);
    assert!(bad.is_empty(), "composed schemas with a default: {bad:?}");
    // the model's hyperparameters are always written in full: every field is required
    let hyper = &doc["components"]["schemas"]["Hyper"];
    let required: BTreeSet<&str> = hyper["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let props: BTreeSet<&str> = hyper["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(required, props);
    app.stop().await;
}
