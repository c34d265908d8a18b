//! Serving endpoints: predictions, top-N recommendations and similar items from the current snapshot.

use crate::domain::{ItemId, UserId};
use crate::foldin::{self, UserVector};
use crate::http::error::ApiError;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::openapi::PathId;
use crate::http::AppState;
use crate::listcache::{List, ListKey};
use crate::rated;
use crate::snapshot::Snapshot;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `n` of the list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NQuery {
    /// How many items, 1 … `server.max_n`; `server.default_n` when absent.
    #[param(minimum = 1)]
    n: Option<usize>,
}

/// A predicted rating.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictionOut {
    pub user: String,
    pub item: String,
    /// Inside the rating scale.
    pub rating: f32,
    /// Version of the snapshot that answered; `null` before the first model.
    pub model_version: Option<u64>,
    pub known_user: bool,
    pub known_item: bool,
    /// True when either side is unknown to the snapshot or no model exists yet.
    pub fallback: bool,
    /// True when the user's vector was solved from their ratings as of now (fold-in:
    /// they rated since the snapshot, or the snapshot does not know them).
    #[serde(default)]
    pub folded_in: bool,
}

/// One item of a list, with its score.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScoredItem {
    pub item: String,
    /// Predicted rating (recommendations), cosine similarity (similar items) or damped
    /// popularity (fallback lists).
    pub score: f32,
}

/// Top-N recommendations for a user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recommendations {
    pub user: String,
    pub model_version: Option<u64>,
    /// True when the list is the popularity fallback.
    pub fallback: bool,
    /// True when the user's vector was solved from their ratings as of now (fold-in:
    /// they rated since the snapshot, or the snapshot does not know them).
    #[serde(default)]
    pub folded_in: bool,
    pub items: Vec<ScoredItem>,
}

/// Items similar to an item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SimilarItems {
    pub item: String,
    pub model_version: Option<u64>,
    /// True when the list is the popularity fallback.
    pub fallback: bool,
    pub items: Vec<ScoredItem>,
}

fn scored(list: impl IntoIterator<Item = (String, f32)>) -> Vec<ScoredItem> {
    list.into_iter()
        .map(|(item, score)| ScoredItem { item, score })
        .collect()
}

/// `GET /v1/users/{user}/predictions/{item}`. A user who rated since the snapshot (or
/// whom it does not know) is folded in. Without a model: the item's damped mean (the
/// global mean for an unrated item; mid-scale in an empty store), `"fallback": true`.
#[utoipa::path(
    get,
    path = "/v1/users/{user}/predictions/{item}",
    tag = "serving",
    operation_id = "prediction",
    params(
        ("user" = PathId, Path, description = "User id"),
        ("item" = PathId, Path, description = "Item id"),
    ),
    responses(
        (status = 200, description = "The predicted rating", body = PredictionOut),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 404, description = "`not_found`: an empty path segment matches no route", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn prediction(
    State(st): State<AppState>,
    ApiPath((user, item)): ApiPath<(String, String)>,
) -> Result<Json<PredictionOut>, ApiError> {
    let user = UserId::parse(&user)?;
    let item = ItemId::parse(&item)?;
    let body = match st.serving.get() {
        Some(snap) => {
            let m = &snap.model;
            let forgotten = st.forgets.is_forgotten(user.as_str(), &snap);
            let now =
                foldin::user_now(&snap, &st.recent, &st.store, &user, false, forgotten).await?;
            // a retired item is served as one the model does not know
            let i = m
                .items
                .get(item.as_str())
                .filter(|_| !st.forgets.is_retired(item.as_str()));
            let (rating, folded_in) = match (&now.vector, i) {
                (UserVector::Folded(f), Some(i)) => (f.predict(m, i), true),
                (UserVector::Folded(f), None) => {
                    (m.hyper.scale.clamp(m.global_mean + f.bias), true)
                }
                (UserVector::Snapshot(u), i) => (m.predict_for(*u, i.unwrap_or(u32::MAX)), false),
                // an unknown (or forgotten) user: the item's terms only
                (UserVector::None, i) => (m.predict_for(u32::MAX, i.unwrap_or(u32::MAX)), false),
            };
            let known_user = m.users.get(user.as_str()).is_some() && !forgotten;
            PredictionOut {
                user: user.as_str().to_owned(),
                item: item.as_str().to_owned(),
                rating,
                model_version: Some(snap.version),
                known_user,
                known_item: i.is_some(),
                fallback: !((known_user || folded_in) && i.is_some()),
                folded_in,
            }
        }
        None => {
            // the item's damped mean, or the global mean, as of now
            let s = st.settings.model.scale;
            let rating = match st.store.damped_mean(&item).await? {
                Some(r) => s.clamp(r),
                None => (s.min + s.max) / 2.0,
            };
            PredictionOut {
                user: user.as_str().to_owned(),
                item: item.as_str().to_owned(),
                rating,
                model_version: None,
                known_user: false,
                known_item: false,
                fallback: true,
                folded_in: false,
            }
        }
    };
    Ok(Json(body))
}

/// `GET /v1/users/{user}/recommendations?n=` — never recommends an item the
/// user has rated, as of the store now (not as of the snapshot): the snapshot's
/// rated-items index plus the writes committed since (no query per request).
#[utoipa::path(
    get,
    path = "/v1/users/{user}/recommendations",
    tag = "serving",
    operation_id = "recommendations",
    params(("user" = PathId, Path, description = "User id"), NQuery),
    responses(
        (status = 200, description = "Top-N unrated items (popularity fallback for unknown users)", body = Recommendations),
        (status = 400, description = "`invalid_query` (bad `n`) or `invalid_path`", body = ErrorBody),
        (status = 404, description = "`not_found`: an empty path segment matches no route", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn recommendations(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<NQuery>,
) -> Result<Json<Recommendations>, ApiError> {
    let user = UserId::parse(&user)?;
    let n = st.n(q.n)?;
    let (version, fallback, folded_in, items) = match st.serving.get() {
        Some(snap) => {
            let m = &snap.model;
            let list = ranked(&st, &snap, &user, n).await?;
            let named = list
                .items
                .iter()
                .map(|&(i, s)| (m.items.id(i).to_owned(), s));
            (
                Some(snap.version),
                list.fallback,
                list.folded_in,
                scored(named),
            )
        }
        None => (
            None,
            true,
            false,
            scored(st.store.popular(n, Some(&user), None).await?),
        ),
    };
    Ok(Json(Recommendations {
        user: user.as_str().to_owned(),
        model_version: version,
        fallback,
        folded_in,
        items,
    }))
}

/// The user's top-`n` list from `snap`: the one cached for the same user state, or
/// ranked now (and cached, [`crate::listcache`]).
async fn ranked(st: &AppState, snap: &Snapshot, user: &UserId, n: usize) -> Result<List, ApiError> {
    let m = &snap.model;
    let name = user.as_str();
    let forgotten = st.forgets.is_forgotten(name, snap);
    // read before the mask: a retirement in between leaves a list cached under the
    // older generation, which no later request asks for
    let retired_generation = st.forgets.retired_generation();
    let plan = foldin::plan(snap, &st.recent, &st.store, user, forgotten).await?;
    let key = plan.user_state().map(|user_state| ListKey {
        user_state,
        forgotten,
        retired: retired_generation,
        n,
    });
    if let Some(list) = key.as_ref().and_then(|k| snap.lists.get(name, k)) {
        st.metrics.observe_list_cache(true);
        return Ok(list);
    }
    st.metrics.observe_list_cache(false);
    let mut now = foldin::resolve(plan, snap, &st.store, user, true, forgotten).await?;
    // retired items are excluded like rated ones (one OR of the two bit sets)
    if let Some(retired) = st.forgets.retired_mask(snap) {
        now.rated.union_with(&retired);
    }
    let seen = |i| rated::contains(&now.rated, i);
    let (fallback, folded_in, items) = match &now.vector {
        UserVector::Snapshot(u) => (false, false, snap.index.top_n(m, *u, n, seen)),
        UserVector::Folded(f) => (
            false,
            true,
            snap.index.top_n_for(m, &f.factors, f.bias, n, seen),
        ),
        UserVector::None => (true, false, m.popular(n, seen)),
    };
    let list = List {
        fallback,
        folded_in,
        items: items.into(),
    };
    if let Some(key) = key {
        let max = st.settings.server.list_cache_users;
        snap.lists.put(name, key, list.clone(), max);
    }
    Ok(list)
}

/// `GET /v1/items/{item}/similar?n=` — cosine similarity of item factors; an
/// unknown item (or no model yet) gets the popularity list, `"fallback": true`.
#[utoipa::path(
    get,
    path = "/v1/items/{item}/similar",
    tag = "serving",
    operation_id = "similar",
    params(("item" = PathId, Path, description = "Item id"), NQuery),
    responses(
        (status = 200, description = "Most similar items (popularity fallback for unknown items)", body = SimilarItems),
        (status = 400, description = "`invalid_query` (bad `n`) or `invalid_path`", body = ErrorBody),
        (status = 404, description = "`not_found`: an empty path segment matches no route", body = ErrorBody),
        (status = 422, description = "`invalid_id`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable`", body = ErrorBody),
    )
)]
pub async fn similar(
    State(st): State<AppState>,
    ApiPath(item): ApiPath<String>,
    ApiQuery(q): ApiQuery<NQuery>,
) -> Result<Json<SimilarItems>, ApiError> {
    let item = ItemId::parse(&item)?;
    let n = st.n(q.n)?;
    let (version, fallback, items) = match st.serving.get() {
        Some(snap) => {
            let m = &snap.model;
            let retired = st.forgets.retired_mask(&snap);
            let out = |i: u32| retired.as_ref().is_some_and(|r| rated::contains(r, i));
            // a retired item is answered as an unknown one (the popularity list)
            let (fallback, list) = match m.items.get(item.as_str()).filter(|&i| !out(i)) {
                Some(i) => (false, m.similar_items_excluding(i, n, out)),
                None => (true, m.popular(n, out)),
            };
            let named = list.into_iter().map(|(i, s)| (m.items.id(i).to_owned(), s));
            (Some(snap.version), fallback, scored(named))
        }
        None => (
            None,
            true,
            scored(st.store.popular(n, None, Some(&item)).await?),
        ),
    };
    Ok(Json(SimilarItems {
        item: item.as_str().to_owned(),
        model_version: version,
        fallback,
        items,
    }))
}
