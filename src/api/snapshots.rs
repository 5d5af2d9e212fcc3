//! `/snapshots` (of dSources and VDBs) and `/timeflows/{name}` (the
//! moments a dSource or VDB can be provisioned at).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
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
