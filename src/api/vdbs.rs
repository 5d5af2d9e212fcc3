//! `/vdbs`: provision (a job), start, stop, enable, disable, refresh,
//! rewind, snapshot, delete (jobs), quota, status, list and show;
//! `/empty-vdbs`: an empty VDB (a job).

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::body::{self, Body};
use super::error::{ApiError, ErrorBody};
use super::jobs::{launch, JobView};
use super::{blocking, AppState};
use crate::host::connectors::registry;
use crate::host::lifecycle::pitr::Target;
use crate::host::lifecycle::vdb;

/// What provisioning needs: as `pgvirt vdb provision`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    /// Name of the new VDB.
    pub name: String,
    /// `NAME` (its newest snapshot) or `NAME@SNAPSHOT` of a dSource or VDB.
    pub from: String,
    /// The virtual-source parameters (the connector's `virtual_source`
    /// schema): `port`, `environment`, `mount_path`, `config`...
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// A moment to provision at (RFC 3339 time), past the snapshot.
    #[serde(default)]
    pub at: Option<String>,
    /// A moment to provision at, as an LSN (`0/5A000000`).
    #[serde(default)]
    pub at_lsn: Option<String>,
    /// A quota in bytes.
    #[serde(default)]
    pub quota: Option<u64>,
}

fn empty() -> Value {
    json!({})
}

/// Where to refresh or rewind to: a snapshot, or a moment.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MomentBody {
    /// A snapshot id.
    #[serde(default)]
    pub snapshot: Option<i64>,
    /// A time (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// An LSN.
    #[serde(default)]
    pub at_lsn: Option<String>,
}

impl MomentBody {
    fn target(&self) -> crate::host::Result<Option<Target>> {
        if self.snapshot.is_some() && (self.at.is_some() || self.at_lsn.is_some()) {
            return Err(crate::host::Error::usage(
                "give a snapshot or a moment (at, at_lsn), not both",
            ));
        }
        Target::either(self.at.as_deref(), self.at_lsn.as_deref())
    }
}

/// A quota, or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Bytes; `null` lifts the quota.
    pub bytes: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Delete the VDBs provisioned from it (and theirs) too.
    #[serde(default)]
    with_children: bool,
}

#[utoipa::path(get, path = "/vdbs", tag = "vdbs",
    responses((status = 200, description = "Every VDB", body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_vdbs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing VDBs".into(), |s| vdb::list(s)).await?;
    Ok(Json(json!(all)))
}

/// Provisions a VDB from a snapshot (a job).
#[utoipa::path(post, path = "/vdbs", tag = "vdbs", request_body = ProvisionBody,
    responses((status = 202, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn provision_vdb(
    State(state): State<AppState>,
    Body(body): Body<ProvisionBody>,
) -> Result<Response, ApiError> {
    let what = format!("provisioning VDB {} from {}", body.name, body.from);
    launch(&state, what, "/parameters", move |store| {
        let target = Target::either(body.at.as_deref(), body.at_lsn.as_deref())?;
        let connector = registry::open(store, None)?;
        vdb::provision(
            store,
            &connector,
            vdb::ProvisionRequest {
                name: &body.name,
                from: &body.from,
                parameters: body.parameters,
                target,
                quota: body.quota,
            },
        )
    })
    .await
}

/// An empty VDB to create: as `pgvirt vdb create-empty`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {
    /// Name of the new VDB.
    pub name: String,
    /// The virtual-source parameters (`port`, `environment`, `mount_path`...).
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    pub parameters: Value,
}

/// Creates an empty VDB: a new cluster (a job).
#[utoipa::path(post, path = "/empty-vdbs", tag = "vdbs", request_body = EmptyBody,
    responses((status = 202, body = JobView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_empty_vdb(
    State(state): State<AppState>,
    Body(body): Body<EmptyBody>,
) -> Result<Response, ApiError> {
    let what = format!("creating the empty VDB {}", body.name);
    launch(&state, what, "/parameters", move |store| {
        let connector = registry::open(store, None)?;
        vdb::create_empty(
            store,
            &connector,
            vdb::ProvisionRequest {
                name: &body.name,
                from: "",
                parameters: body.parameters,
                target: None,
                quota: None,
            },
        )
    })
    .await
}

/// One VDB, with its quota use.
#[utoipa::path(get, path = "/vdbs/{name}", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_vdb(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("showing VDB {name}");
    Ok(Json(
        blocking(&state, what, move |s| {
            let v = vdb::get(s, &name)?;
            Ok(vdb::described(&v, vdb::quota_usage(s, &v)?))
        })
        .await?,
    ))
}

/// Deletes a VDB (a job; `with_children` deletes those made from it too).
#[utoipa::path(delete, path = "/vdbs/{name}", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB"), DeleteQuery),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn delete_vdb(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    launch(&state, format!("deleting VDB {name}"), "", move |store| {
        let connector = registry::open(store, None)?;
        let deleted = if q.with_children {
            vdb::delete_tree(store, &connector, &name)?
        } else {
            vdb::delete(store, &connector, &name)?;
            vec![name.clone()]
        };
        Ok(json!({"deleted": name, "vdbs_deleted": deleted}))
    })
    .await
}

/// Whether its cluster runs (asks the connector).
#[utoipa::path(get, path = "/vdbs/{name}/status", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn vdb_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("asking the status of VDB {name}");
    Ok(Json(
        blocking(&state, what, move |s| {
            let connector = registry::open(s, None)?;
            let status = vdb::status(s, &connector, &name)?;
            Ok(json!({"name": name, "status": status}))
        })
        .await?,
    ))
}

macro_rules! simple_job {
    ($fn_name:ident, $path:literal, $verb:literal, $op:path, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "vdbs",
                    params(("name" = String, Path, description = "The VDB")),
                    responses((status = 202, body = JobView), (status = 404, body = ErrorBody),
                        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
        pub async fn $fn_name(
            State(state): State<AppState>,
            Path(name): Path<String>,
        ) -> Result<Response, ApiError> {
            launch(&state, format!("{} VDB {name}", $verb), "", move |store| {
                let connector = registry::open(store, None)?;
                $op(store, &connector, &name)
            })
            .await
        }
    };
}

simple_job!(
    start_vdb,
    "/vdbs/{name}/start",
    "starting",
    vdb::start,
    "Starts the VDB's cluster (a job)."
);
simple_job!(
    stop_vdb,
    "/vdbs/{name}/stop",
    "stopping",
    vdb::stop,
    "Stops the VDB's cluster (a job)."
);
simple_job!(
    enable_vdb,
    "/vdbs/{name}/enable",
    "enabling",
    vdb::enable,
    "Mounts and starts a disabled VDB (a job)."
);
simple_job!(
    disable_vdb,
    "/vdbs/{name}/disable",
    "disabling",
    vdb::disable,
    "Stops and unmounts the VDB (a job)."
);
simple_job!(
    snapshot_vdb,
    "/vdbs/{name}/snapshot",
    "snapshotting",
    vdb::snapshot,
    "Takes a snapshot of the VDB (a job)."
);

fn moment(bytes: &[u8]) -> Result<MomentBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(MomentBody::default())
    } else {
        body::parse(bytes)
    }
}

/// Refreshes the VDB from its parent: newest snapshot, a given one, or a
/// moment (a job).
#[utoipa::path(post, path = "/vdbs/{name}/refresh", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB")), request_body(content = Option<MomentBody>),
    responses((status = 202, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn refresh_vdb(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let m = moment(&bytes)?;
    launch(&state, format!("refreshing VDB {name}"), "", move |store| {
        let target = m.target()?;
        let connector = registry::open(store, None)?;
        vdb::refresh(store, &connector, &name, m.snapshot, target)
    })
    .await
}

/// Rewinds the VDB to one of its own snapshots or moments (a job).
#[utoipa::path(post, path = "/vdbs/{name}/rewind", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB")), request_body = MomentBody,
    responses((status = 202, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rewind_vdb(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(m): Body<MomentBody>,
) -> Result<Response, ApiError> {
    launch(&state, format!("rewinding VDB {name}"), "", move |store| {
        let target = m.target()?;
        let connector = registry::open(store, None)?;
        vdb::rewind(store, &connector, &name, m.snapshot, target)
    })
    .await
}

/// Sets, raises or lifts the VDB's quota.
#[utoipa::path(put, path = "/vdbs/{name}/quota", tag = "vdbs",
    params(("name" = String, Path, description = "The VDB")), request_body = QuotaBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn set_vdb_quota(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(q): Body<QuotaBody>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("setting the quota of VDB {name}");
    Ok(Json(
        blocking(&state, what, move |s| {
            Ok(json!(vdb::set_quota(s, &name, q.bytes)?))
        })
        .await?,
    ))
}
