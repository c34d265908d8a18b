//! Forget on request: `DELETE /v1/users/{user}` (every rating of a user, and the served model stops using their vector) and `DELETE /v1/items/{item}` (retire an item).

use crate::domain::{unix_now, ItemId, UserId};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiPath;
use crate::http::openapi::PathId;
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;

/// An id quoted as a JSON string (the API's spelling in messages).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `DELETE /v1/users/{user}` — deletes every rating of the user (committed before the
/// 204, in order with other writes). From the 204 on, the served model no longer uses
/// the user's vector: predictions and recommendations are what an unknown user gets,
/// until the user rates again (then they are folded in from those ratings). This
/// holds across restarts until a model trained after the deletion serves.
#[utoipa::path(
    delete,
    path = "/v1/users/{user}",
    tag = "ratings",
    operation_id = "forget_user",
    params(("user" = PathId, Path, description = "User id")),
    responses(
        (status = 204, description = "Every rating of the user deleted (also when there were none left)"),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`user_not_found`: the store has never seen this user", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn forget_user(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user = UserId::parse(&user)?;
    // every model version that exists now may hold the user's vector
    let version = st.serving.get().map_or(0, |s| s.version);
    let tag = forget_tag();
    if !st.writer.forget_user(user.clone(), tag).await? {
        return Err(ApiError::UserNotFound(format!(
            "user {} has never rated anything",
            quote(user.as_str())
        )));
    }
    st.forgets
        .forget(user.as_str(), st.recent.seq(), tag, version);
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/items/{item}` (admin) — retires the item: deletes its ratings
/// (committed before the 204) and, from the 204 on, never recommends it nor returns it
/// as similar (as the query it gets the popularity list, `"fallback": true`); a later
/// rating of it is refused with 409 `item_retired`, and training leaves it out.
#[utoipa::path(
    delete,
    path = "/v1/items/{item}",
    tag = "ratings",
    operation_id = "retire_item",
    params(("item" = PathId, Path, description = "Item id")),
    responses(
        (status = 204, description = "Retired (also when it already was)"),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`item_not_found`: the store has never seen this item", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn retire_item(
    State(st): State<AppState>,
    ApiPath(item): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let item = ItemId::parse(&item)?;
    if !st.writer.retire_item(item.clone(), unix_now()).await? {
        return Err(ApiError::ItemNotFound(format!(
            "item {} has never been rated",
            quote(item.as_str())
        )));
    }
    st.forgets.retire(item.as_str());
    Ok(StatusCode::NO_CONTENT)
}

/// A tag for a `forgotten_users` row: the time in nanoseconds (a later deletion of the
/// same user gets a larger one).
fn forget_tag() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}
