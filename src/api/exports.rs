//! `/exports`: table exports, as `pgvirt export` — define, review the DDL,
//! install, run, status, reset, remove.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::body::Body;
use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::connectors::registry;
use crate::host::lifecycle::export::{self, AddRequest};

/// An export to define: as `pgvirt export add`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// The export's name.
    pub name: String,
    /// The source config the tables are in (id or name).
    pub source: String,
    /// `schema.table`, in order.
    pub tables: Vec<String>,
    /// `schema.table=index`: a unique index keying a table without a
    /// primary key.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Where to ship them: VDB names or source configs (id or name).
    pub targets: Vec<String>,
    /// The connector's export options (`lock_timeout_seconds`, `purge`).
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    pub options: Value,
}

fn empty() -> Value {
    json!({})
}

#[utoipa::path(get, path = "/exports", tag = "exports",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_exports(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing exports".into(), |s| export::list(s)).await?;
    Ok(Json(json!(all)))
}

/// Defines an export (nothing is installed yet).
#[utoipa::path(post, path = "/exports", tag = "exports", request_body = ExportBody,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add_export(
    State(state): State<AppState>,
    Body(body): Body<ExportBody>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let what = format!("adding export {}", body.name);
    let added = blocking(&state, what, move |s| {
        let connector = registry::open(s, None)?;
        export::add(
            s,
            &connector,
            AddRequest {
                name: &body.name,
                source: &body.source,
                tables: &body.tables,
                keys: &body.keys,
                targets: &body.targets,
                options: body.options,
            },
        )
    })
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(json!(added))))
}

#[utoipa::path(get, path = "/exports/{name}", tag = "exports",
    params(("name" = String, Path, description = "The export")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_export(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("showing export {name}");
    let e = blocking(&state, what, move |s| export::get(s, &name)).await?;
    Ok(Json(json!(e)))
}

/// The SQL `install` would run on the source, for review.
#[utoipa::path(get, path = "/exports/{name}/ddl", tag = "exports",
    params(("name" = String, Path, description = "The export")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn export_ddl(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("making the DDL of export {name}");
    let sql = blocking(&state, what, move |s| {
        export::ddl(s, &registry::open(s, None)?, &name)
    })
    .await?;
    Ok(Json(json!({"sql": sql})))
}

/// Per target and table: changes waiting, last export, rows shipped.
#[utoipa::path(get, path = "/exports/{name}/status", tag = "exports",
    params(("name" = String, Path, description = "The export")),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub async fn export_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("reading the status of export {name}");
    let lines = blocking(&state, what, move |s| {
        export::status(s, &registry::open(s, None)?, &name)
    })
    .await?;
    Ok(Json(json!(lines)))
}

/// The export's actions that change it (each answers what it did).
macro_rules! export_action {
    ($fn_name:ident, $path:literal, $verb:literal, $op:path) => {
        #[utoipa::path(post, path = $path, tag = "exports",
                    params(("name" = String, Path, description = "The export")),
                    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
                        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
        pub async fn $fn_name(
            State(state): State<AppState>,
            Path(name): Path<String>,
        ) -> Result<Json<Value>, ApiError> {
            let what = format!("{} export {name}", $verb);
            let done = blocking(&state, what, move |s| {
                $op(s, &registry::open(s, None)?, &name)
            })
            .await?;
            Ok(Json(done))
        }
    };
}

export_action!(
    install_export,
    "/exports/{name}/install",
    "installing",
    export::install
);
export_action!(run_export, "/exports/{name}/run", "running", export::run);
export_action!(
    reset_export,
    "/exports/{name}/reset",
    "resetting",
    export::reset
);

/// Removes everything the export installed (source and targets), and it.
#[utoipa::path(delete, path = "/exports/{name}", tag = "exports",
    params(("name" = String, Path, description = "The export")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_export(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("removing export {name}");
    let done = blocking(&state, what, move |s| {
        export::remove(s, &registry::open(s, None)?, &name)
    })
    .await?;
    Ok(Json(done))
}
