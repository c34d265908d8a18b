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
use std::borrow::Cow;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::Object;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{self, ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::Number;
use utoipa::{Modify, OpenApi, ToSchema};

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
        crate::http::forget::forget_user,
        crate::http::forget::retire_item,
        crate::http::recs::prediction,
        crate::http::recs::recommendations,
        crate::http::recs::similar,
        crate::http::model::get_model,
        crate::http::model::train,
        crate::http::model::versions,
        crate::http::model::rollback,
        openapi_doc,
        crate::http::dashboard::page,
        crate::http::dashboard::script,
        crate::http::dashboard::style,
        crate::http::dashboard::session,
        crate::http::dashboard::learning_curve_svg,
        crate::http::dashboard::history,
        crate::http::dashboard::history_svg,
        crate::http::dashboard::ingestion,
        crate::http::dashboard::ingestion_svg,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, PathId, RawId)),
    tags(
        (name = "ratings", description = "Write, list and delete ratings"),
        (name = "serving", description = "Predictions, recommendations, similar items"),
        (name = "model", description = "The serving snapshot and training"),
        (name = "health", description = "Probes"),
        (name = "meta", description = "This document"),
        (name = "dashboard", description = "The dashboard page (`GET /dashboard`) and its assets"),
    ),
    modifiers(&ProtectedApi)
)]
struct ApiDoc;

/// Every `/v1` operation passes the auth middleware and the shared concurrency limit:
/// it needs the bearer key and can answer 401, 403 and 503.
struct ProtectedApi;

impl Modify for ProtectedApi {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        let error = |what: &str| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            ResponseBuilder::new()
                .description(what)
                .content("application/json", body)
                .build()
        };
        let v1 = doc
            .paths
            .paths
            .iter_mut()
            .filter(|(p, _)| p.starts_with("/v1/"));
        for op in v1.flat_map(|(_, item)| operations(item)) {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let responses = &mut op.responses.responses;
            let mut add = |status: &str, what: &str| {
                responses.insert(status.to_owned(), error(what).into());
            };
            add(
                "401",
                "`unauthorized`: keys are configured and no valid key was sent",
            );
            add(
                "403",
                "`forbidden`: the key's role does not allow this operation",
            );
            add("503", "`overloaded` (with `Retry-After`) or `timeout`");
        }
    }
}

/// The limits of a running server, written into the schemas so that what the document
/// allows is exactly what the server accepts: the rating scale, the batch size and the
/// maxima of `n`, `limit` and `offset`.
struct ConfiguredLimits<'a>(&'a Settings);

impl Modify for ConfiguredLimits<'_> {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let (s, scale) = (&self.0.server, self.0.model.scale);
        let schemas = &mut doc
            .components
            .as_mut()
            .expect("the document has components")
            .schemas;
        let rating = object(schemas.get_mut("RatingInput"))
            .and_then(|o| object(o.properties.get_mut("rating")))
            .expect("RatingInput.rating is an object schema");
        rating.minimum = Some(Number::Float(scale.min as f64));
        rating.maximum = Some(Number::Float(scale.max as f64));
        let batch = match object(schemas.get_mut("RatingBatch"))
            .and_then(|o| o.properties.get_mut("ratings"))
        {
            Some(RefOr::T(Schema::Array(a))) => a,
            _ => panic!("RatingBatch.ratings is an array schema"),
        };
        batch.max_items = Some(s.max_batch);
        let params = doc
            .paths
            .paths
            .values_mut()
            .flat_map(operations)
            .flat_map(|op| op.parameters.iter_mut().flatten());
        for p in params {
            let max = match p.name.as_str() {
                "n" => s.max_n,
                "limit" => s.max_page_size as usize,
                "offset" => u64::MAX as usize,
                _ => continue,
            };
            if let Some(o) = object(p.schema.as_mut()) {
                o.maximum = Some(Number::UInt(max));
            }
        }
    }
}

/// Schemas that only ever appear in responses, where the server writes every field:
/// every property is required and none has a `default`. (`#[serde(default)]` on the Rust
/// type makes utoipa write defaults, and a `oneOf` with a `default` is a schema that
/// client generators such as openapi-python-client refuse: they drop the property and
/// the generated model then fails to parse the response.)
struct ResponseOnly<'a>(&'a [&'a str]);

impl Modify for ResponseOnly<'_> {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let schemas = &mut doc
            .components
            .as_mut()
            .expect("the document has components")
            .schemas;
        for name in self.0 {
            let o = object(schemas.get_mut(*name))
                .unwrap_or_else(|| panic!("{name} is an object schema"));
            o.default = None;
            for p in o.properties.values_mut() {
                match p {
                    RefOr::T(Schema::Object(o)) => o.default = None,
                    RefOr::T(Schema::OneOf(o)) => o.default = None,
                    RefOr::T(Schema::AllOf(o)) => o.default = None,
                    RefOr::T(Schema::AnyOf(o)) => o.default = None,
                    RefOr::T(Schema::Array(a)) => a.default = None,
                    _ => {}
                }
            }
            o.required = o.properties.keys().cloned().collect();
        }
    }
}

/// The operations of a path, whatever their method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// The object schema written in place (not a `$ref`), if that is what `schema` is.
fn object(schema: Option<&mut RefOr<Schema>>) -> Option<&mut Object> {
    match schema {
        Some(RefOr::T(Schema::Object(o))) => Some(o),
        _ => None,
    }
}

/// The document for a server running with `settings`.
pub fn document(settings: &Settings) -> openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    ConfiguredLimits(settings).modify(&mut doc);
    ResponseOnly(&["Hyper"]).modify(&mut doc);
    doc
}

/// The route serving the document (rendered once, when the router is built).
pub fn route(settings: &Settings) -> MethodRouter<AppState> {
    let body = document(settings)
        .to_json()
        .expect("the document serialises");
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    })
}
