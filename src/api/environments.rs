//! `/environments` (hosts and their discovery), `/repositories` and
//! `/source-configs`.

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::body::Body;
use super::dsources::Key;
use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::connectors::registry;
use crate::host::environments::{self, EnvironmentKind};
use crate::host::lifecycle::discovery;

/// A new environment: as `pgvirt env add`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentBody {
    /// The kind of host: `local` (this host).
    #[schema(value_type = String, example = "local")]
    pub kind: EnvironmentKind,
    /// OS user that runs PostgreSQL there (never root).
    pub user: String,
    /// Its name (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A directory private to that user, outside every dataset.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub scratch: Option<PathBuf>,
}

/// A source config added by hand: as `pgvirt source add`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfigBody {
    /// The environment it is on.
    pub environment: String,
    /// The repository (installation), by id or name; default: the only one.
    #[serde(default)]
    pub repository: Option<Key>,
    /// The source config document (the connector's `source_config` schema).
    #[schema(value_type = Object)]
    pub document: Value,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EnvironmentQuery {
    /// Only those of this environment.
    environment: Option<String>,
}

#[utoipa::path(get, path = "/environments", tag = "environments",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_environments(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing environments".into(), |s| {
        environments::list(s)
    })
    .await?;
    Ok(Json(json!(all)))
}

/// Adds an environment.
#[utoipa::path(post, path = "/environments", tag = "environments", request_body = EnvironmentBody,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_environment(
    State(state): State<AppState>,
    Body(body): Body<EnvironmentBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let what = format!("adding a {} environment", body.kind);
    let e = blocking(&state, what, move |s| {
        environments::add(
            s,
            body.kind,
            body.name.as_deref(),
            &body.user,
            body.scratch.as_deref(),
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!(e))))
}

#[utoipa::path(get, path = "/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "The environment")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_environment(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("showing environment {name}");
    let e = blocking(&state, what, move |s| environments::get(s, &name)).await?;
    Ok(Json(json!(e)))
}

/// Discovers the environment's PostgreSQL installations (repositories)
/// and clusters (source configs) again.
#[utoipa::path(post, path = "/environments/{name}/refresh", tag = "environments",
    params(("name" = String, Path, description = "The environment")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn refresh_environment(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("refreshing environment {name}");
    let done = blocking(&state, what, move |s| {
        let e = environments::get(s, &name)?;
        let connector = registry::open(s, None)?;
        let summary = discovery::refresh(s, &connector, &e)?;
        Ok(json!({
            "summary": summary,
            "repositories": discovery::repositories(s, Some(&name))?,
            "source_configs": discovery::source_configs(s, Some(&name))?,
        }))
    })
    .await?;
    Ok(Json(done))
}

#[utoipa::path(get, path = "/repositories", tag = "environments", params(EnvironmentQuery),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub async fn list_repositories(
    State(state): State<AppState>,
    Query(q): Query<EnvironmentQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing repositories".into(), move |s| {
        discovery::repositories(s, q.environment.as_deref())
    })
    .await?;
    Ok(Json(json!(all)))
}

#[utoipa::path(get, path = "/source-configs", tag = "environments", params(EnvironmentQuery),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub async fn list_source_configs(
    State(state): State<AppState>,
    Query(q): Query<EnvironmentQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing source configs".into(), move |s| {
        discovery::source_configs(s, q.environment.as_deref())
    })
    .await?;
    Ok(Json(json!(all)))
}

/// Adds a source config by hand (validated against the connector's schema).
#[utoipa::path(post, path = "/source-configs", tag = "environments", request_body = SourceConfigBody,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add_source_config(
    State(state): State<AppState>,
    Body(body): Body<SourceConfigBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let path = state.store_path.clone();
    let added = tokio::task::spawn_blocking(move || {
        let store = crate::host::store::Store::open(&path)?;
        let connector = registry::open(&store, None)?;
        discovery::add_source_config(
            &store,
            &connector,
            &body.environment,
            body.repository.map(|r| r.text()).as_deref(),
            body.document,
        )
    })
    .await
    .map_err(|e| ApiError::internal("adding a source config", e.to_string()))?
    .map_err(|e| ApiError::from_host("adding a source config", e, "/document"))?;
    Ok((StatusCode::CREATED, Json(json!(added))))
}

/// Removes a source config (refused while a dSource uses it: 422).
#[utoipa::path(delete, path = "/source-configs/{id}", tag = "environments",
    params(("id" = String, Path, description = "The source config's id or name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn remove_source_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("removing source config {id}");
    let gone = blocking(&state, what, move |s| {
        discovery::remove_source_config(s, &id)
    })
    .await?;
    Ok(Json(json!(gone)))
}
