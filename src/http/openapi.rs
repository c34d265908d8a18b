//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations
//! (`utoipa`), with the configured limits (scale, batch size, `n`, page size) filled in,
//! served at `GET /openapi.json`.

use crate::config::Settings;
use crate::http::body::{id_string_schema, RawId};
use crate::http::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::http::AppState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use serde_json::{json, Value};
use std::borrow::Cow;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{OpenApi, ToSchema};

/// A user or item id in a path segment (percent-decoded): 1–128 characters, no control
/// characters.
pub struct PathId;

impl utoipa::PartialSchema for PathId {
    fn schema() -> RefOr<Schema> {
        id_string_schema().into()
    }
}

impl ToSchema for PathId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PathId")
    }
}

/// `GET /openapi.json` — this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn openapi_doc() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "funkrec",
        description = "Recommendation service: Funk-SVD matrix factorisation served over HTTP. \
                       Every error is `{\"error\": {\"code\", \"message\"}}` with a stable code; \
                       unknown routes answer 404 `not_found`, unsupported methods 405 \
                       `method_not_allowed`. Every response carries `x-request-id`."
    ),
    paths(
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::http::metrics::metrics,
        crate::http::ratings::post_ratings,
        crate::http::ratings::list_ratings,
        crate::http::ratings::delete_rating,
        crate::http::recs::prediction,
        crate::http::recs::recommendations,
        crate::http::recs::similar,
        crate::http::model::get_model,
        crate::http::model::train,
        openapi_doc,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, PathId, RawId)),
    tags(
        (name = "ratings", description = "Write, list and delete ratings"),
        (name = "serving", description = "Predictions, recommendations, similar items"),
        (name = "model", description = "The serving snapshot and training"),
        (name = "health", description = "Probes"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The document for a server running with `settings`: the generated one with the
/// configured limits written into the schemas, so that what it allows is exactly what the
/// server accepts.
pub fn document(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let s = &settings.server;
    let scale = settings.model.scale;
    let rating = doc
        .pointer_mut("/components/schemas/RatingInput/properties/rating")
        .expect("RatingInput.rating is in the document");
    rating["minimum"] = json!(scale.min as f64);
    rating["maximum"] = json!(scale.max as f64);
    let batch = doc
        .pointer_mut("/components/schemas/RatingBatch/properties/ratings")
        .expect("RatingBatch.ratings is in the document");
    batch["maxItems"] = json!(s.max_batch);
    // Every /v1 route passes the auth middleware and the shared concurrency limit.
    let error = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (_, item) in paths.iter_mut().filter(|(p, _)| p.starts_with("/v1/")) {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                op["security"] = json!([{"bearer": []}]);
                let responses = &mut op["responses"];
                responses["401"] =
                    error("`unauthorized`: keys are configured and no valid key was sent");
                responses["403"] =
                    error("`forbidden`: the key's role does not allow this operation");
                responses["503"] = error("`overloaded` (with `Retry-After`) or `timeout`");
            }
        }
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in op.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params {
                    let max = match p["name"].as_str() {
                        Some("n") => json!(s.max_n),
                        Some("limit") => json!(s.max_page_size),
                        Some("offset") => json!(u64::MAX),
                        _ => continue,
                    };
                    p["schema"]["maximum"] = max;
                }
            }
        }
    }
    doc
}

/// The route serving the document (rendered once, when the router is built).
pub fn route(settings: &Settings) -> MethodRouter<AppState> {
    let body = serde_json::to_string(&document(settings)).expect("the document serialises");
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    })
}
