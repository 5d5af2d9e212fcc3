//! `/pool`: the storage pool, its datasets, and its consistency check.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::lifecycle::ownership;
use crate::host::storage::Pool;

#[utoipa::path(get, path = "/pool", tag = "pool",
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn pool_info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = blocking(&state, "reading the pool".into(), |s| {
        Pool::open(s)?.info(s)
    })
    .await?;
    Ok(Json(json!(info)))
}

#[utoipa::path(get, path = "/pool/datasets", tag = "pool",
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub async fn pool_datasets(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing datasets".into(), |s| {
        Pool::open(s)?.list(s)
    })
    .await?;
    Ok(Json(json!(all)))
}

/// Whether the store and the filesystem agree (nothing is repaired here).
#[utoipa::path(get, path = "/pool/check", tag = "pool",
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn pool_check(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = blocking(&state, "checking the pool".into(), |s| {
        ownership::check_pool(s, false)
    })
    .await?;
    Ok(Json(json!(report)))
}
