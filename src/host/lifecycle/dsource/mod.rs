//! dSources: a source cluster ingested into a staging cluster on engine
//! storage, kept in sync, and snapshotted on a timeflow.
//!
//! The workflows follow the contract's call order:
//! - link: record it → first sync with `resync: true`;
//! - sync: `linked.mount_specification` → pre-sync hook →
//!   `linked.pre_snapshot` → storage snapshot → `linked.post_snapshot` →
//!   post-sync hook;
//! - enable: `mount_specification` → mount → `start_staging`;
//! - password: `start_staging` with `check_source` (the source must accept
//!   the new password, which staging's passfile then holds) → sealed;
//! - disable / delete: `stop_staging` (delete then frees storage; refused
//!   while VDBs depend on its snapshots).
//!
//! Each runs as a [job](super::jobs); one file per workflow: [`link`],
//! [`sync`], [`control`] (enable, disable, delete), [`password`], [`repair`]. A link that fails leaves nothing (no
//! row, dataset, mount, staging process, or slot it made); a sync cut short
//! is repaired by the next command ([`repair`]): its unrecorded snapshot
//! goes, and staging replays WAL again.

mod control;
mod link;
mod password;
mod prepare;
mod repair;
mod sync;

use std::path::PathBuf;

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

pub use control::{delete, disable, enable};
pub use link::{link, LinkRequest};
pub use password::set_password;
pub use repair::repair;
pub use sync::sync;

use super::discovery::{self, SourceConfig};
use super::jobs;
use super::timeflow::{self, ContainerKind};
use super::{pitr, placement};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::{columns, Store};

/// Where a dSource is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DsourceState {
    /// Its first ingest is under way.
    Linking,
    /// Staging runs and follows the source.
    Enabled,
    /// Staging is stopped and unmounted.
    Disabled,
    /// A resync was cut short: the next sync ingests again.
    ResyncNeeded,
    /// Being deleted.
    Deleting,
}

columns::text_enum_column!(DsourceState);

/// A stored dSource.
#[derive(Debug, Clone, Serialize)]
pub struct DSource {
    pub id: i64,
    pub name: String,
    pub source_config_id: i64,
    pub environment: String,
    /// The linked-source parameters; secrets show as `********` (the real
    /// values are sealed apart, see [`DSource::unsealed_parameters`]).
    pub parameters: Value,
    pub state: DsourceState,
    pub dataset: String,
    pub mount_path: PathBuf,
    pub created_at: i64,
    #[serde(skip)]
    sealed: Option<Vec<u8>>,
}

impl DSource {
    /// The parameters with their secrets, for the connector.
    pub fn unsealed_parameters(&self, store: &Store) -> Result<Value> {
        let mut doc = self.parameters.clone();
        store.unseal(&owner(&self.name), &mut doc, self.sealed.as_deref())?;
        Ok(doc)
    }
}

/// The associated data its secrets are sealed with.
pub(crate) fn owner(name: &str) -> String {
    format!("dSource {name}")
}

/// The input every linked operation gets.
pub(super) fn input_for(
    store: &Store,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
) -> Result<Value> {
    let mut repository = discovery::repositories(store, Some(&config.environment))?
        .into_iter()
        .find(|r| r.id == config.repository_id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "repository {} of source config {} is gone",
                config.repository_id, config.id
            ))
        })?;
    if env.name != config.environment {
        // Staging on another host than the source: its own installation of
        // the source's major version.
        let major = repository.document.get("major_version").cloned();
        repository = discovery::repositories(store, Some(&env.name))?
            .into_iter()
            .find(|r| {
                r.state == discovery::Presence::Present
                    && r.document.get("major_version") == major.as_ref()
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "staging environment {} has no PostgreSQL {} installation known (the source's major version); \
                     install it there and run `pgvirt env refresh {}`",
                    env.name,
                    major.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
                    env.name
                ))
            })?;
    }
    let mut input = json!({
        "environment": env.to_input(),
        "repository": repository.document,
        "source_config": config.document,
        "linked_source": d.unsealed_parameters(store)?,
        "dsource": {"name": d.name, "id": d.id},
        "mount": {
            "path": pool.effective_path(&d.dataset, &d.mount_path),
            "atomic_snapshots": pool.backend().snapshots_atomically(),
        },
    });
    placement::offer(
        pool,
        &placement::wal_dataset(&d.dataset),
        &d.mount_path,
        &mut input,
    );
    // Where the WAL dataset is, when there is one (it is mounted there).
    let wal = placement::wal_dataset(&d.dataset);
    if let Some(ds) = pool.find_dataset(store, &wal)? {
        if let Some(at) = crate::host::storage::mount::mounted_at(store, ds.id)? {
            input["wal"] = json!({ "path": pool.effective_path(&wal, &at) });
        }
    }
    Ok(input)
}

/// The parts of a dSource's world its workflows need.
struct Context {
    config: SourceConfig,
    env: Environment,
    pool: Pool,
}

fn context(store: &Store, d: &DSource) -> Result<Context> {
    Ok(Context {
        config: discovery::find_source_config(store, &d.source_config_id.to_string())?,
        env: environments::get(store, &d.environment)?,
        pool: Pool::open(store)?,
    })
}

/// Mounts staging where the connector says and starts it (replaying WAL).
pub(super) fn start_staging(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    start_staging_checked(store, connector, d, false)
}

/// [`start_staging`]; with `check_source`, the source must first accept
/// the user and password staging connects with.
pub(super) fn start_staging_checked(
    store: &Store,
    connector: &Connector,
    d: &DSource,
    check_source: bool,
) -> Result<()> {
    let cx = context(store, d)?;
    let mut input = input_for(store, &cx.pool, d, &cx.config, &cx.env)?;
    placement::mount_as_specified(
        store,
        connector,
        &cx.pool,
        placement::Placement {
            group: "linked",
            dataset: &d.dataset,
            wal: &placement::wal_dataset(&d.dataset),
            fallback: &d.mount_path,
        },
        &cx.env,
        &mut input,
    )?;
    if check_source {
        input["check_source"] = json!(true);
    }
    connector.invoke("linked.start_staging", &input, HostPlatform::new(&cx.env))?;
    Ok(())
}

/// Stops staging (`purpose`: `disable` or `delete`, which also lets the
/// connector drop what it made on the source).
pub(super) fn stop_staging(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    purpose: &str,
) -> Result<()> {
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let mut input = input_for(store, pool, d, &config, &env)?;
    input["purpose"] = json!(purpose);
    connector.invoke("linked.stop_staging", &input, HostPlatform::new(&env))?;
    Ok(())
}

/// Asks the connector whether staging may be stopped now (a staging push
/// whose user still runs the cluster may not): before a delete changes
/// anything.
pub fn check_may_stop(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    let pool = Pool::open(store)?;
    stop_staging(store, connector, &pool, d, "check")
}

/// The provisionable ranges of a dSource: its snapshots and the WAL kept
/// after them.
pub fn ranges(store: &Store, connector: &Connector, d: &DSource) -> Result<Vec<pitr::Range>> {
    let snapshots = timeflow::snapshots(store, ContainerKind::Dsource, d.id)?;
    let cx = context(store, d)?;
    let wal = cx
        .pool
        .find_dataset(store, &placement::wal_dataset(&d.dataset))?;
    let mut input = input_for(store, &cx.pool, d, &cx.config, &cx.env)?;
    pitr::ranges(&snapshots, |s| {
        let Some(wal) = &wal else {
            return Ok(pitr::Kept::default());
        };
        // The dataset itself: it is there whether staging runs or not.
        input["wal"] = json!({ "path": wal.path });
        // A snapshot taken while staging replayed recovers from its redo
        // point: its range is the WAL kept contiguously from there.
        input["from_lsn"] = if s.needs_kept_wal() {
            s.metadata["redo_lsn"].clone()
        } else {
            s.metadata["replayed_lsn"].clone()
        };
        input["timeline"] = s.metadata["timeline"].clone();
        input["wal_segment_size"] = s.metadata["wal_segment_size"].clone();
        let out = connector.invoke("linked.wal_range", &input, HostPlatform::new(&cx.env))?;
        Ok(pitr::Kept::from_output(&out))
    })
}

/// Prunes the kept WAL no range within the policy needs: WAL before the
/// oldest snapshot always; with a policy, WAL before the oldest snapshot
/// younger than its days, and while more than its bytes are kept; never
/// WAL a kept snapshot needs to be consistent. Returns the files removed.
pub fn prune_wal(store: &Store, connector: &Connector, d: &DSource) -> Result<u64> {
    let cx = context(store, d)?;
    let Some(wal) = cx
        .pool
        .find_dataset(store, &placement::wal_dataset(&d.dataset))?
    else {
        return Ok(0);
    };
    let mut points: Vec<(timeflow::Snapshot, u64, jiff::Timestamp)> =
        timeflow::snapshots(store, ContainerKind::Dsource, d.id)?
            .into_iter()
            .filter_map(|s| pitr::point(&s).map(|(l, t)| (s, l, t)))
            .collect();
    if points.is_empty() {
        return Ok(0);
    }
    points.sort_by_key(|(_, l, _)| *l);
    let (days, bytes) = timeflow::wal_retention(store, ContainerKind::Dsource, d.id)?;
    let mut start = 0;
    if let Some(days) = days {
        let since = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * i64::from(days));
        start = points
            .iter()
            .position(|(_, _, t)| *t >= since)
            .unwrap_or(points.len() - 1);
    }
    let mut input = input_for(store, &cx.pool, d, &cx.config, &cx.env)?;
    input["wal"] = json!({ "path": wal.path });
    let platform = || HostPlatform::new(&cx.env);
    if let Some(limit) = bytes {
        while start + 1 < points.len() {
            let s = &points[start].0;
            input["from_lsn"] = s.metadata["replayed_lsn"].clone();
            input["timeline"] = s.metadata["timeline"].clone();
            input["wal_segment_size"] = s.metadata["wal_segment_size"].clone();
            let kept = connector.invoke("linked.wal_range", &input, platform())?;
            if pitr::Kept::from_output(&kept).bytes <= limit {
                break;
            }
            start += 1;
        }
    }
    // What each snapshot needs kept: from its point, or from its redo when
    // it was taken while staging replayed (it is consistent only with the
    // WAL from there). Those from `start` on keep their ranges; older ones
    // keep only the WAL from their redo to their point, which a prepared
    // image spares.
    let needs = |s: &timeflow::Snapshot, point: u64| {
        if s.needs_kept_wal() {
            s.metadata["redo_lsn"]
                .as_str()
                .and_then(pitr::parse_lsn)
                .map_or(point, |redo| redo.min(point))
        } else {
            point
        }
    };
    let before = points[start..]
        .iter()
        .map(|(s, point, _)| needs(s, *point))
        .min()
        .unwrap_or(points[start].1);
    let keep: Vec<Value> = points[..start]
        .iter()
        .filter(|(s, _, _)| s.needs_kept_wal() && s.prepared_id.is_none())
        .map(|(s, point, _)| json!([pitr::lsn_text(needs(s, *point)), pitr::lsn_text(*point)]))
        .collect();
    input["keep"] = json!(keep);
    input["before_lsn"] = json!(pitr::lsn_text(before));
    input["wal_segment_size"] = points[start].0.metadata["wal_segment_size"].clone();
    let out = connector.invoke("linked.wal_prune", &input, platform())?;
    Ok(out["removed"].as_u64().unwrap_or(0))
}

/// The path of a dSource's WAL dataset, if it has one.
pub fn wal_path(store: &Store, d: &DSource) -> Result<Option<PathBuf>> {
    let pool = Pool::open(store)?;
    Ok(pool
        .find_dataset(store, &placement::wal_dataset(&d.dataset))?
        .map(|ds| ds.path))
}

/// State, replication health, the last snapshot, and any job at work on it.
pub fn show(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let d = get(store, name)?;
    let cx = context(store, &d)?;
    let mut input = input_for(store, &cx.pool, &d, &cx.config, &cx.env)?;
    input["snapshot_in_progress"] = json!(jobs::syncing(store, d.id)?);
    let status = connector
        .invoke("linked.status", &input, HostPlatform::new(&cx.env))
        .ok()
        .and_then(|s| crate::abi::Status::of(&s));
    // The connector says how staging is, and what it needs from the user
    // next (for a staging push, whether it waits for data or runs).
    let health = connector
        .invoke("linked.worker", &input, HostPlatform::new(&cx.env))
        .unwrap_or_else(|e| json!({"running": status == Some(crate::abi::Status::Active), "error": e.to_string()}));
    let next = health.get("next").cloned().unwrap_or(Value::Null);
    let last = timeflow::snapshots(store, ContainerKind::Dsource, d.id)?
        .into_iter()
        .last();
    let busy: Vec<Value> = jobs::running_on(store, ContainerKind::Dsource, d.id)?
        .into_iter()
        .map(|j| json!({"job": j.kind, "pid": j.pid, "since": j.started_at}))
        .collect();
    Ok(json!({
        "dsource": d,
        "status": status.map_or(json!("UNKNOWN"), |s| json!(s)),
        "ingestion_method": crate::abi::IngestionMethod::of(&d.parameters),
        "next": next,
        "replication": health,
        "last_snapshot": last,
        "busy": busy,
    }))
}

/// A staging port must be free on this host before anything is made.
pub(super) fn check_port_free(store: &Store, port: u16) -> Result<()> {
    let taken_by: Option<String> = store.optional(store.conn().query_row(
        "SELECT name FROM dsources WHERE json_extract(parameters, '$.staging_port') = ?1
         UNION ALL SELECT 'VDB ' || name FROM vdbs WHERE port = ?1",
        [port],
        |r| r.get(0),
    ))?;
    if let Some(other) = taken_by {
        return Err(Error::Conflict(format!(
            "staging port {port} belongs to {other}; choose another --staging-port"
        )));
    }
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Err(Error::Conflict(format!(
            "staging port {port} is already in use on this host; choose another --staging-port"
        )));
    }
    Ok(())
}

pub(super) fn set_state(store: &Store, id: i64, state: DsourceState) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE dsources SET state = ?2 WHERE id = ?1",
            params![id, state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

const COLUMNS: &str = "d.id, d.name, d.source_config_id, e.name, d.parameters, d.state, d.dataset, d.mount_path, d.created_at, d.sealed";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DSource> {
    let name: String = r.get(1)?;
    Ok(DSource {
        id: r.get(0)?,
        source_config_id: r.get(2)?,
        environment: r.get(3)?,
        parameters: columns::json(r, 4, || format!("parameters of dSource {name}"))?,
        state: r.get(5)?,
        dataset: r.get(6)?,
        mount_path: PathBuf::from(r.get::<_, String>(7)?),
        created_at: r.get(8)?,
        sealed: r.get(9)?,
        name,
    })
}

fn query(store: &Store, filter: &str, args: impl rusqlite::Params) -> Result<Vec<DSource>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {COLUMNS} FROM dsources d JOIN environments e ON e.id = d.environment_id {filter} ORDER BY d.name"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map(args, row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn list(store: &Store) -> Result<Vec<DSource>> {
    query(store, "", [])
}

pub fn find(store: &Store, name: &str) -> Result<Option<DSource>> {
    Ok(query(store, "WHERE d.name = ?1", [name])?.pop())
}

pub fn find_by_id(store: &Store, id: i64) -> Result<Option<DSource>> {
    Ok(query(store, "WHERE d.id = ?1", [id])?.pop())
}

pub fn get(store: &Store, name: &str) -> Result<DSource> {
    find(store, name)?
        .ok_or_else(|| Error::NotFound(format!("no dSource {name:?}; see `pgvirt dsource list`")))
}
