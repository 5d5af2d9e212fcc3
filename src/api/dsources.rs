//! `/dsources`: link a source config (a job), sync, enable, disable,
//! delete (jobs), list and show.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::body::Body;
use super::error::{ApiError, ErrorBody};
use super::jobs::{launch, JobView};
use super::{blocking, AppState};
use crate::host::connectors::registry;
use crate::host::lifecycle::{dsource, teardown};

/// A name or a numeric id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Key {
    Id(i64),
    Name(String),
}

impl Key {
    pub fn text(&self) -> String {
        match self {
            Self::Id(i) => i.to_string(),
            Self::Name(n) => n.clone(),
        }
    }
}

/// What linking needs: as `pgvirt dsource link`, with the linked-source
/// parameters as a document (validated against the connector's schema;
/// its secrets, such as `source.replication_password`, are sealed and
/// never shown again).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// Name of the new dSource (dSources and VDBs share one name space).
    pub name: String,
    /// The source config, by id or name.
    pub source_config: Key,
    /// The staging environment (default: the source config's).
    #[serde(default)]
    pub environment: Option<String>,
    /// The linked-source parameters (the connector's `linked_source` schema).
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    pub parameters: Value,
}

fn empty() -> Value {
    json!({})
}

/// `sync`'s options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// Ingest the source again from scratch, on a new timeflow.
    #[serde(default)]
    pub resync: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Delete the VDBs provisioned from it (and their children) first.
    #[serde(default)]
    with_vdbs: bool,
}

#[utoipa::path(get, path = "/dsources", tag = "dsources",
    responses((status = 200, description = "Every dSource", body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_dsources(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing dSources".into(), |s| dsource::list(s)).await?;
    Ok(Json(json!(all)))
}

/// Links a source config: ingests it into staging and takes the first
/// snapshot (a job).
#[utoipa::path(post, path = "/dsources", tag = "dsources", request_body = LinkBody,
    responses((status = 202, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn link_dsource(
    State(state): State<AppState>,
    Body(body): Body<LinkBody>,
) -> Result<Response, ApiError> {
    let what = format!("linking dSource {}", body.name);
    launch(&state, what, "/parameters", move |store| {
        let connector = registry::open(store, None)?;
        let (d, snapshot) = dsource::link(
            store,
            &connector,
            dsource::LinkRequest {
                name: &body.name,
                source_config: &body.source_config.text(),
                environment: body.environment.as_deref(),
                parameters: body.parameters,
            },
        )?;
        Ok(json!({"dsource": d, "snapshot": snapshot}))
    })
    .await
}

/// State, replication health and the last snapshot.
#[utoipa::path(get, path = "/dsources/{name}", tag = "dsources",
    params(("name" = String, Path, description = "The dSource")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_dsource(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("showing dSource {name}");
    Ok(Json(
        blocking(&state, what, move |s| {
            let connector = registry::open(s, None)?;
            dsource::show(s, &connector, &name)
        })
        .await?,
    ))
}

/// Deletes a dSource (a job; refused while VDBs depend on it, unless
/// `with_vdbs`).
#[utoipa::path(delete, path = "/dsources/{name}", tag = "dsources",
    params(("name" = String, Path, description = "The dSource"), DeleteQuery),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn delete_dsource(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    launch(
        &state,
        format!("deleting dSource {name}"),
        "",
        move |store| {
            let connector = registry::open(store, None)?;
            let vdbs = teardown::delete_dsource(store, &connector, &name, q.with_vdbs)?;
            Ok(json!({"deleted": name, "vdbs_deleted": vdbs}))
        },
    )
    .await
}

/// Takes a new snapshot (a job); `resync` ingests again from scratch.
#[utoipa::path(post, path = "/dsources/{name}/sync", tag = "dsources",
    params(("name" = String, Path, description = "The dSource")), request_body(content = Option<SyncBody>),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn sync_dsource(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let options: SyncBody = if body.iter().all(u8::is_ascii_whitespace) {
        SyncBody::default()
    } else {
        super::body::parse(&body)?
    };
    launch(
        &state,
        format!("syncing dSource {name}"),
        "",
        move |store| {
            let connector = registry::open(store, None)?;
            dsource::sync(store, &connector, &name, options.resync)
        },
    )
    .await
}

/// Starts staging again (a job).
#[utoipa::path(post, path = "/dsources/{name}/enable", tag = "dsources",
    params(("name" = String, Path, description = "The dSource")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn enable_dsource(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    launch(
        &state,
        format!("enabling dSource {name}"),
        "",
        move |store| {
            let connector = registry::open(store, None)?;
            dsource::enable(store, &connector, &name)
        },
    )
    .await
}

/// Stops staging and unmounts it (a job).
#[utoipa::path(post, path = "/dsources/{name}/disable", tag = "dsources",
    params(("name" = String, Path, description = "The dSource")),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disable_dsource(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    launch(
        &state,
        format!("disabling dSource {name}"),
        "",
        move |store| {
            let connector = registry::open(store, None)?;
            dsource::disable(store, &connector, &name)
        },
    )
    .await
}

/// A changed source password (`format: password`: sealed, never shown).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The source user's new password.
    #[schema(format = Password)]
    pub password: String,
}

impl std::fmt::Debug for PasswordBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordBody { password: ******** }")
    }
}

/// Hands over the source user's changed password: the source must accept
/// it; staging's passfile then holds it and the store keeps it sealed.
#[utoipa::path(put, path = "/dsources/{name}/password", tag = "dsources",
    params(("name" = String, Path, description = "The dSource")), request_body = PasswordBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn set_dsource_password(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<PasswordBody>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("changing the password of dSource {name}");
    let d = blocking(&state, what, move |s| {
        let connector = registry::open(s, None)?;
        dsource::set_password(s, &connector, &name, &body.password)
    })
    .await?;
    Ok(Json(json!(d)))
}
