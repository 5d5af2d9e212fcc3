//! `/snapshots` (of dSources and VDBs), `/timeflows/{name}` (the moments a
//! dSource or VDB can be provisioned at), and the retention of each.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::body::Body;
use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::lifecycle::retention::{self, Applied, Retention};
use crate::host::lifecycle::timeflow::{self, ContainerKind};
use crate::host::lifecycle::{dsource, moments, vdb};

#[derive(Debug, Deserialize, IntoParams)]
pub struct SnapshotQuery {
    /// Only those of this dSource.
    dsource: Option<String>,
    /// Only those of this VDB.
    vdb: Option<String>,
}

#[utoipa::path(get, path = "/snapshots", tag = "snapshots", params(SnapshotQuery),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing snapshots".into(), move |s| {
        let only = match (&q.dsource, &q.vdb) {
            (Some(_), Some(_)) => {
                return Err(crate::host::Error::usage(
                    "name a dsource or a vdb, not both",
                ))
            }
            (Some(d), None) => Some((ContainerKind::Dsource, dsource::get(s, d)?.id)),
            (None, Some(v)) => Some((ContainerKind::Vdb, vdb::get(s, v)?.id)),
            (None, None) => None,
        };
        timeflow::listing(s, only)
    })
    .await?;
    Ok(Json(json!(all)))
}

/// The timeflows of a dSource or VDB, its provisionable ranges, and what
/// keeps its WAL.
#[utoipa::path(get, path = "/timeflows/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "The dSource or VDB")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn show_timeflows(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("showing the timeflows of {name}");
    let m = blocking(&state, what, move |s| moments::of(s, &name)).await?;
    Ok(Json(json!(m)))
}

/// Sets what a dSource keeps (snapshots; WAL between them) and applies it.
#[utoipa::path(put, path = "/dsources/{name}/retention", tag = "snapshots",
    params(("name" = String, Path, description = "The dSource")), request_body = Retention,
    responses((status = 200, body = Applied), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_dsource_retention(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(r): Body<Retention>,
) -> Result<Json<Applied>, ApiError> {
    retain(state, ContainerKind::Dsource, name, r).await
}

/// Sets how many snapshots a VDB keeps and applies it.
#[utoipa::path(put, path = "/vdbs/{name}/retention", tag = "snapshots",
    params(("name" = String, Path, description = "The VDB")), request_body = Retention,
    responses((status = 200, body = Applied), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_vdb_retention(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(r): Body<Retention>,
) -> Result<Json<Applied>, ApiError> {
    retain(state, ContainerKind::Vdb, name, r).await
}

async fn retain(
    state: AppState,
    kind: ContainerKind,
    name: String,
    r: Retention,
) -> Result<Json<Applied>, ApiError> {
    let what = format!("setting the retention of {} {name}", kind.title());
    let applied = blocking(&state, what, move |s| {
        retention::set(s, kind, &name, &r, |f| format!("`{f}`"))
    })
    .await?;
    Ok(Json(applied))
}
