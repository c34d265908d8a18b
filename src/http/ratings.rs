//! Rating endpoints: ingest (single or batch, all-or-nothing), list a user's ratings, delete one.

use crate::domain::{unix_now, ItemId, UserId};
use crate::http::body::{parse_ratings_body, BodyLimits};
use crate::http::error::ApiError;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiPath, ApiQuery, JsonBytes};
use crate::http::openapi::PathId;
use crate::http::AppState;
use crate::store::StoredRating;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `201` answer of `POST /v1/ratings`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Ratings in the request (duplicates of a pair inside a batch included).
    pub accepted: u64,
}

/// `POST /v1/ratings` — `201 {"accepted": n}` once the transaction committed.
#[utoipa::path(
    post,
    path = "/v1/ratings",
    tag = "ratings",
    operation_id = "post_ratings",
    request_body(
        content = crate::http::body::RatingsBody,
        content_type = "application/json",
        description = "One rating, or `{\"ratings\": [...]}` with 1 … `server.max_batch` \
                       ratings (all-or-nothing). Unknown fields are refused."
    ),
    responses(
        (status = 201, description = "Stored (the transaction committed)", body = Accepted),
        (status = 400, description = "`malformed_json`: not JSON (syntax, truncation, `NaN`, numbers beyond f64)", body = ErrorBody),
        (status = 413, description = "`batch_too_large` (more than `server.max_batch` ratings) or `payload_too_large` (body over `server.body_limit_bytes`)", body = ErrorBody),
        (status = 409, description = "`item_retired`: a rating of a retired item (the whole batch is refused)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: missing or non-JSON `Content-Type`", body = ErrorBody),
        (status = 422, description = "`invalid_body` (wrong shape, types, missing or unknown fields), `invalid_id`, `invalid_rating` or `empty_batch`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable` (database)", body = ErrorBody),
    )
)]
pub async fn post_ratings(
    State(st): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let limits = BodyLimits {
        max_batch: st.settings.server.max_batch,
        scale: st.settings.model.scale,
    };
    let ratings = parse_ratings_body(&body, &limits, unix_now())?;
    let n = ratings.len() as u64;
    if let Some(item) = st
        .forgets
        .first_retired(ratings.iter().map(|r| r.item.as_str()))
    {
        return Err(ApiError::ItemRetired(format!(
            "item {} is retired: it takes no ratings",
            serde_json::Value::from(item)
        )));
    }
    // answers once the group transaction holding these ratings committed
    st.writer.upsert(ratings).await?;
    Ok((StatusCode::CREATED, Json(Accepted { accepted: n })))
}

/// Paging of `GET /v1/users/{user}/ratings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 … `server.max_page_size`; `server.default_page_size` when absent.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// Ratings to skip.
    #[param(minimum = 0)]
    offset: Option<u64>,
}

/// One page of a user's ratings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RatingsPage {
    pub user: String,
    /// All ratings of the user.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
    /// Offset of the next page; `null` on the last page.
    pub next_offset: Option<u64>,
    pub ratings: Vec<StoredRating>,
}

/// `GET /v1/users/{user}/ratings?limit=&offset=` — ordered, paged.
#[utoipa::path(
    get,
    path = "/v1/users/{user}/ratings",
    tag = "ratings",
    operation_id = "list_ratings",
    params(("user" = PathId, Path, description = "User id"), PageQuery),
    responses(
        (status = 200, description = "A page of the user's ratings, in the order items first appeared", body = RatingsPage),
        (status = 400, description = "`invalid_query` (bad `limit`/`offset`) or `invalid_path` (not UTF-8 after decoding)", body = ErrorBody),
        (status = 404, description = "`not_found`: an empty path segment matches no route", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn list_ratings(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<RatingsPage>, ApiError> {
    let user = UserId::parse(&user)?;
    let s = &st.settings.server;
    let limit = q.limit.unwrap_or(s.default_page_size);
    if limit == 0 || limit > s.max_page_size {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {}, got {limit}",
            s.max_page_size
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let (ratings, total) = st.store.list_ratings(&user, limit, offset).await?;
    let next = offset.saturating_add(ratings.len() as u64);
    let next_offset = (next < total).then_some(next);
    Ok(Json(RatingsPage {
        user: user.as_str().to_owned(),
        total,
        limit,
        offset,
        next_offset,
        ratings,
    }))
}

/// `DELETE /v1/users/{user}/ratings/{item}` — 204, or 404 `rating_not_found`.
#[utoipa::path(
    delete,
    path = "/v1/users/{user}/ratings/{item}",
    tag = "ratings",
    operation_id = "delete_rating",
    params(
        ("user" = PathId, Path, description = "User id"),
        ("item" = PathId, Path, description = "Item id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`rating_not_found` (no such rating), or `not_found` for an empty path segment", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn delete_rating(
    State(st): State<AppState>,
    ApiPath((user, item)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user = UserId::parse(&user)?;
    let item = ItemId::parse(&item)?;
    if st.writer.delete(user.clone(), item.clone()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        // ids quoted as JSON strings: the API's spelling, never the Rust type names
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        Err(ApiError::RatingNotFound(format!(
            "user {} has no rating for item {}",
            quote(user.as_str()),
            quote(item.as_str())
        )))
    }
}
