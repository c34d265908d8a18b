//! Rating endpoints: ingest (single or batch, all-or-nothing), list a user's ratings, delete one.

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::domain::{unix_now, DomainError, ItemId, NewRating, RatingInput, UserId};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

fn at(i: usize, e: DomainError) -> ApiError {
    match e {
        DomainError::InvalidId(m) => ApiError::InvalidId(format!("ratings[{i}]: {m}")),
        DomainError::InvalidRating(m) => ApiError::InvalidRating(format!("ratings[{i}]: {m}")),
    }
}

/// Turns the posted JSON into raw inputs: a single rating object or `{"ratings": [...]}`.
fn inputs(body: Value, max_batch: usize) -> Result<(Vec<RatingInput>, bool), ApiError> {
    match body {
        Value::Object(mut m) if m.contains_key("ratings") => {
            if m.len() != 1 {
                let extra: Vec<_> = m.keys().filter(|k| *k != "ratings").cloned().collect();
                return Err(ApiError::InvalidBody(format!(
                    "a batch has only the field `ratings`; unknown field(s): {}",
                    extra.join(", ")
                )));
            }
            let Some(Value::Array(list)) = m.remove("ratings") else {
                return Err(ApiError::InvalidBody("`ratings` must be an array".into()));
            };
            if list.is_empty() {
                return Err(ApiError::EmptyBatch("`ratings` is empty".into()));
            }
            if list.len() > max_batch {
                return Err(ApiError::BatchTooLarge(format!(
                    "batch of {} ratings, at most {max_batch} are accepted",
                    list.len()
                )));
            }
            let parsed = list
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value(v)
                        .map_err(|e| ApiError::InvalidBody(format!("ratings[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((parsed, true))
        }
        v @ Value::Object(_) => {
            let one =
                serde_json::from_value(v).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
            Ok((vec![one], false))
        }
        _ => Err(ApiError::InvalidBody(
            "expected a rating object or {\"ratings\": [...]}".into(),
        )),
    }
}

/// `POST /v1/ratings` — `201 {"accepted": n}` once the transaction committed.
pub async fn post_ratings(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (raw, batch) = inputs(body, st.settings.server.max_batch)?;
    let scale = st.settings.model.scale;
    let now = unix_now();
    let ratings = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            NewRating::parse(r, &scale, now).map_err(|e| if batch { at(i, e) } else { e.into() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    st.store.upsert_ratings(&ratings).await?;
    let n = ratings.len() as u64;
    st.worker.record_changes(n);
    Ok((StatusCode::CREATED, Json(json!({ "accepted": n }))))
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<u32>,
    offset: Option<u64>,
}

/// `GET /v1/users/{user}/ratings?limit=&offset=` — ordered, paged.
pub async fn list_ratings(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let next = offset + ratings.len() as u64;
    let next_offset = (next < total).then_some(next);
    Ok(Json(json!({
        "user": user,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
        "ratings": ratings,
    })))
}

/// `DELETE /v1/users/{user}/ratings/{item}` — 204, or 404 `rating_not_found`.
pub async fn delete_rating(
    State(st): State<AppState>,
    ApiPath((user, item)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user = UserId::parse(&user)?;
    let item = ItemId::parse(&item)?;
    if st.store.delete_rating(&user, &item).await? {
        st.worker.record_changes(1);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::RatingNotFound(format!(
            "user {user:?} has no rating for item {item:?}"
        )))
    }
}
