//! Serving endpoints: predictions, top-N recommendations and similar items from the current snapshot.

use super::extract::{ApiPath, ApiQuery};
use super::AppState;
use crate::domain::{ItemId, UserId};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;

#[derive(Deserialize)]
pub struct NQuery {
    n: Option<usize>,
}

fn items_json(list: impl IntoIterator<Item = (String, f32)>) -> Vec<Value> {
    list.into_iter()
        .map(|(item, score)| json!({"item": item, "score": score}))
        .collect()
}

/// `GET /v1/users/{user}/predictions/{item}`. Without a model: mid-scale, `"fallback": true`.
pub async fn prediction(
    State(st): State<AppState>,
    ApiPath((user, item)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user)?;
    let item = ItemId::parse(&item)?;
    let body = match st.serving.get() {
        Some(snap) => {
            let p = snap.model.predict(user.as_str(), item.as_str());
            json!({
                "user": user, "item": item, "rating": p.rating,
                "model_version": snap.version,
                "known_user": p.known_user, "known_item": p.known_item,
                "fallback": !(p.known_user && p.known_item),
            })
        }
        None => {
            let s = st.settings.model.scale;
            json!({
                "user": user, "item": item, "rating": (s.min + s.max) / 2.0,
                "model_version": null, "known_user": false, "known_item": false,
                "fallback": true,
            })
        }
    };
    Ok(Json(body))
}

/// `GET /v1/users/{user}/recommendations?n=` — never recommends an item the
/// user has rated, as of the store now (not as of the snapshot).
pub async fn recommendations(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<NQuery>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user)?;
    let n = st.n(q.n)?;
    let (version, fallback, items) = match st.serving.get() {
        Some(snap) => {
            let rated = st.store.rated_items(&user).await?;
            let m = &snap.model;
            let seen: HashSet<u32> = rated.iter().filter_map(|i| m.items.get(i)).collect();
            let (fallback, list) = match m.users.get(user.as_str()) {
                Some(u) => (false, snap.index.top_n(m, u, n, |i| seen.contains(&i))),
                None => (true, m.popular(n, |i| seen.contains(&i))),
            };
            let named = list.into_iter().map(|(i, s)| (m.items.id(i).to_owned(), s));
            (Some(snap.version), fallback, items_json(named))
        }
        None => (
            None,
            true,
            items_json(st.store.popular(n, Some(&user), None).await?),
        ),
    };
    Ok(Json(json!({
        "user": user, "model_version": version, "fallback": fallback, "items": items,
    })))
}

/// `GET /v1/items/{item}/similar?n=` — cosine similarity of item factors; an
/// unknown item (or no model yet) gets the popularity list, `"fallback": true`.
pub async fn similar(
    State(st): State<AppState>,
    ApiPath(item): ApiPath<String>,
    ApiQuery(q): ApiQuery<NQuery>,
) -> Result<Json<Value>, ApiError> {
    let item = ItemId::parse(&item)?;
    let n = st.n(q.n)?;
    let (version, fallback, items) = match st.serving.get() {
        Some(snap) => {
            let m = &snap.model;
            let (fallback, list) = match m.items.get(item.as_str()) {
                Some(i) => (false, m.similar_items(i, n)),
                None => (true, m.popular(n, |_| false)),
            };
            let named = list.into_iter().map(|(i, s)| (m.items.id(i).to_owned(), s));
            (Some(snap.version), fallback, items_json(named))
        }
        None => (
            None,
            true,
            items_json(st.store.popular(n, None, Some(&item)).await?),
        ),
    };
    Ok(Json(json!({
        "item": item, "model_version": version, "fallback": fallback, "items": items,
    })))
}
