//! VDBs: writable thin clones of snapshots, each its own PostgreSQL cluster.
//!
//! The workflows follow the contract's call order, each as a
//! [job](super::jobs) so that a kill at any point is repaired by the next
//! command ([`repair`]):
//! - [`provision`]: clone snapshot → `virtual.mount_specification` → mount →
//!   `configure` → configure-clone hook; create empty: `initialize`;
//! - [`reclone`]: refresh (`configure`) and rewind (`reconfigure`) onto a
//!   new dataset, the old VDB kept until the new one runs;
//! - [`control`]: start, stop, status, enable, disable, snapshot;
//! - [`quota`]: what a VDB may add on its clone, and what it has added;
//! - [`delete`]: pre-stop hook → `unconfigure` → `cleanup` → post-stop hook
//!   → destroy clone;
//! - [`wal`]: the WAL each timeflow keeps, for moments past its snapshots.
//!
//! Each timeflow of a VDB lives on its own dataset (`vdb-<name>-<n>`), so a
//! refresh or rewind never destroys data a child VDB still stands on.

pub mod control;
pub mod delete;
pub mod provision;
pub mod quota;
pub mod reclone;
pub mod repair;
pub mod wal;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use super::discovery::{self, Presence};
use super::hooks;
use super::placement;
use super::timeflow::{self, ContainerKind};
use crate::host::connectors::loader::Connector;
use crate::host::environments::Environment;
use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::{columns, Store};

pub use control::{disable, enable, snapshot, start, status, stop};
pub use delete::{delete, delete_tree};
pub use provision::{create_empty, provision, resolve_origin, Origin, ProvisionRequest};
pub use quota::{described, quota_usage, set_quota};
pub use reclone::{refresh, rewind};
pub use repair::repair;

/// Ports VDBs get when none is asked for: `PGVIRT_VDB_PORTS=first-last`.
pub const PORTS_ENV: &str = "PGVIRT_VDB_PORTS";
const DEFAULT_PORTS: (u16, u16) = (6500, 6999);

/// Where a VDB is in its life.
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
pub enum VdbState {
    /// Being made.
    Provisioning,
    Running,
    Stopped,
    /// Stopped and unmounted; `enable` brings it back.
    Disabled,
    /// Being deleted.
    Deleting,
}

/// What a VDB was made from.
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
pub enum ParentKind {
    Dsource,
    Vdb,
    /// A new, empty cluster.
    Empty,
}

impl ParentKind {
    /// The kind of container the parent is, if there is one.
    pub fn container(self) -> Option<ContainerKind> {
        match self {
            Self::Dsource => Some(ContainerKind::Dsource),
            Self::Vdb => Some(ContainerKind::Vdb),
            Self::Empty => None,
        }
    }
}

columns::text_enum_column!(VdbState, ParentKind);

#[derive(Debug, Clone, Serialize)]
pub struct Vdb {
    pub id: i64,
    pub name: String,
    pub environment: String,
    pub parent_kind: ParentKind,
    pub parent_id: i64,
    /// The parent's name (none for an empty VDB, or when it is gone).
    pub parent: Option<String>,
    /// The virtual-source parameters; secrets show as `********`.
    pub parameters: Value,
    pub port: u16,
    pub dataset: String,
    pub mount_path: PathBuf,
    pub state: VdbState,
    pub source_config: Value,
    /// The snapshot its current timeflow was cloned from (none when empty).
    pub origin_snapshot: Option<i64>,
    pub created_at: i64,
    /// How much it may add on its clone, if limited.
    pub quota_bytes: Option<u64>,
    #[serde(skip)]
    sealed: Option<Vec<u8>>,
}

impl Vdb {
    /// How to connect, as a libpq URI.
    pub fn connection_string(&self) -> String {
        let socket = self
            .source_config
            .get("socket_directory")
            .and_then(Value::as_str)
            .unwrap_or("/tmp");
        format!(
            "postgresql://postgres@/postgres?host={socket}&port={}",
            self.port
        )
    }

    /// The parameters with their secrets, for the connector.
    pub fn unsealed_parameters(&self, store: &Store) -> Result<Value> {
        let mut doc = self.parameters.clone();
        store.unseal(&owner(&self.name), &mut doc, self.sealed.as_deref())?;
        Ok(doc)
    }
}

/// The associated data its secrets are sealed with.
pub(crate) fn owner(name: &str) -> String {
    format!("VDB {name}")
}

/// Picks the port: the one asked for (checked free), or the first free one
/// of the range that no other VDB or dSource holds.
fn choose_port(store: &Store, asked: Option<u16>) -> Result<u16> {
    let held: Vec<u16> = {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT port FROM vdbs UNION SELECT json_extract(parameters, '$.staging_port') FROM dsources",
            )
            .map_err(|e| store.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Option<i64>>(0))
            .map_err(|e| store.err(e))?;
        rows.filter_map(|r| r.ok().flatten())
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    };
    let free = |p: u16| !held.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    if let Some(p) = asked {
        if held.contains(&p) {
            return Err(Error::Conflict(format!(
                "--port {p} belongs to another VDB or dSource; choose another"
            )));
        }
        if !free(p) {
            return Err(Error::Conflict(format!(
                "--port {p} is already in use on this host; choose another"
            )));
        }
        return Ok(p);
    }
    let (first, last) = std::env::var(PORTS_ENV)
        .ok()
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .unwrap_or(DEFAULT_PORTS);
    (first..=last).find(|p| free(*p)).ok_or_else(|| {
        Error::Conflict(format!(
            "no free port in {first}-{last}; set {PORTS_ENV} or pass --port"
        ))
    })
}

/// The name of a VDB's next dataset: `vdb-<name>-<n>`, `n` one past any
/// used before.
fn next_dataset(store: &Store, name: &str) -> Result<String> {
    let prefix = format!("vdb-{name}-");
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT name FROM datasets WHERE substr(name, 1, length(?1)) = ?1
             UNION SELECT dataset FROM timeflows WHERE substr(dataset, 1, length(?1)) = ?1",
        )
        .map_err(|e| store.err(e))?;
    let used = stmt
        .query_map([&prefix], |r| r.get::<_, String>(0))
        .map_err(|e| store.err(e))?;
    let mut next = 1u64;
    for name in used {
        let name = name.map_err(|e| store.err(e))?;
        if let Ok(n) = name[prefix.len()..].parse::<u64>() {
            next = next.max(n + 1);
        }
    }
    Ok(format!("{prefix}{next}"))
}

/// Mounts the VDB's dataset where `mount_specification` says.
fn mount(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    vdb: &Vdb,
    env: &Environment,
    input: &mut Value,
) -> Result<()> {
    placement::mount_as_specified(
        store,
        connector,
        pool,
        placement::Placement {
            group: "virtual",
            dataset: &vdb.dataset,
            wal: &wal_dataset(vdb),
            fallback: &vdb.mount_path,
        },
        env,
        input,
    )
    .map(|_| ())
}

/// The dataset a VDB keeps the WAL of its current timeflow in: each
/// timeflow is one promotion of a clone, with WAL of its own timelines.
pub(super) fn wal_dataset(vdb: &Vdb) -> String {
    placement::wal_dataset(&vdb.dataset)
}

/// The input every virtual operation gets.
fn input_for(store: &Store, pool: &Pool, vdb: &Vdb, env: &Environment) -> Result<Value> {
    let repository = discovery::repositories(store, Some(&env.name))?
        .into_iter()
        .filter(|r| r.state == Presence::Present)
        .find(|r| {
            vdb.source_config.get("major_version").is_none()
                || r.document.get("major_version") == vdb.source_config.get("major_version")
        })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "environment {} has no PostgreSQL installation for VDB {}; run `pgvirt env refresh {}`",
                env.name, vdb.name, env.name
            ))
        })?;
    let mut input = json!({
        "environment": env.to_input(),
        "repository": repository.document,
        "virtual_source": vdb.unsealed_parameters(store)?,
        "vdb": {"name": vdb.name, "port": vdb.port},
        "mount": {"path": pool.effective_path(&vdb.dataset, &vdb.mount_path)},
    });
    placement::offer(pool, &wal_dataset(vdb), &vdb.mount_path, &mut input);
    if vdb.source_config.get("data_directory").is_some() {
        input["source_config"] = vdb.source_config.clone();
    }
    Ok(input)
}

fn hook_variables(vdb: &Vdb) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert("PGVIRT_VDB".into(), vdb.name.clone());
    vars.insert("PGPORT".into(), vdb.port.to_string());
    vars.insert("PGUSER".into(), "postgres".into());
    vars.insert("PGDATABASE".into(), "postgres".into());
    if let Some(socket) = vdb
        .source_config
        .get("socket_directory")
        .and_then(Value::as_str)
    {
        vars.insert("PGHOST".into(), socket.to_owned());
    }
    vars.insert("PGVIRT_CONNECTION".into(), vdb.connection_string());
    vars.insert(
        "PGVIRT_MOUNT_PATH".into(),
        vdb.mount_path.display().to_string(),
    );
    vars
}

fn run_hook(env: &Environment, vdb: &Vdb, name: &str) -> Result<()> {
    hooks::run(env, vdb.parameters.get("hooks"), name, &hook_variables(vdb))
}

/// Every dataset a VDB's timeflows live on, and its current one, then
/// their WAL datasets.
fn datasets_of(store: &Store, vdb: &Vdb) -> Result<Vec<String>> {
    let mut names: Vec<String> = timeflow::list(store, ContainerKind::Vdb, vdb.id)?
        .into_iter()
        .map(|tf| tf.dataset)
        .filter(|d| !d.is_empty())
        .collect();
    if !vdb.dataset.is_empty() && !names.contains(&vdb.dataset) {
        names.push(vdb.dataset.clone());
    }
    names.dedup();
    let wal: Vec<String> = names.iter().map(|d| placement::wal_dataset(d)).collect();
    names.extend(wal);
    Ok(names)
}

/// Destroys a VDB's datasets and snapshots in dependency order: its own
/// timeflows may be clones of its own snapshots (after a rewind).
fn destroy_storage(store: &Store, pool: &Pool, vdb: &Vdb) -> Result<()> {
    let mut datasets = datasets_of(store, vdb)?;
    for d in &datasets {
        pool.release(store, d)?;
    }
    let mut snapshots = timeflow::snapshots(store, ContainerKind::Vdb, vdb.id)?;
    while !datasets.is_empty() || !snapshots.is_empty() {
        let before = datasets.len() + snapshots.len();
        let mut kept = Vec::new();
        for s in snapshots {
            if !timeflow::has_clones(pool, store, &s)? {
                timeflow::discard(store, pool, &s)?;
            } else {
                kept.push(s);
            }
        }
        snapshots = kept;
        datasets.retain(|d| pool.destroy_dataset_tree(store, d).is_err());
        if datasets.len() + snapshots.len() == before {
            // No progress: say what blocks (the first dataset's own error).
            if let Some(d) = datasets.first() {
                pool.destroy_dataset_tree(store, d)?;
            }
            return Err(Error::Conflict(format!(
                "VDB {}: snapshots {} still have dependents",
                vdb.name,
                snapshots
                    .iter()
                    .map(|s| s.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Removes everything of a VDB (best effort): its server, mounts, datasets
/// and snapshots, timeflows, the row. For what a failed or cut-short
/// provision left.
fn destroy(store: &Store, connector: &Connector, pool: &Pool, vdb: &Vdb) {
    let _ = super::placement::return_wal(pool, &vdb.dataset);
    if let Ok(env) = crate::host::environments::get(store, &vdb.environment) {
        if let Ok(input) = input_for(store, pool, vdb, &env) {
            let _ = connector.invoke(
                "virtual.cleanup",
                &input,
                crate::host::environments::HostPlatform::new(&env),
            );
        }
    }
    if let Err(e) = destroy_storage(store, pool, vdb) {
        log::warn!("removing the storage of VDB {}: {e}", vdb.name);
    }
    let _ = timeflow::remove_container(store, ContainerKind::Vdb, vdb.id);
    let _ = store
        .conn()
        .execute("DELETE FROM vdbs WHERE id = ?1", [vdb.id]);
}

fn set_state(store: &Store, id: i64, state: VdbState) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET state = ?2 WHERE id = ?1",
            params![id, state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

fn set_config(store: &Store, id: i64, config: &Value, state: VdbState) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET source_config = ?2, state = ?3 WHERE id = ?1",
            params![id, config.to_string(), state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

const COLUMNS: &str = "v.id, v.name, e.name, v.parent_kind, v.parent_id, v.parameters, v.port, v.dataset, \
     v.mount_path, v.state, v.source_config, v.origin_snapshot, v.created_at, v.sealed, \
     CASE v.parent_kind WHEN 'dsource' THEN (SELECT d.name FROM dsources d WHERE d.id = v.parent_id) \
                        WHEN 'vdb' THEN (SELECT p.name FROM vdbs p WHERE p.id = v.parent_id) END, \
     v.quota_bytes";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Vdb> {
    let name: String = r.get(1)?;
    Ok(Vdb {
        id: r.get(0)?,
        environment: r.get(2)?,
        parent_kind: r.get(3)?,
        parent_id: r.get(4)?,
        parameters: columns::json(r, 5, || format!("parameters of VDB {name}"))?,
        port: r.get(6)?,
        dataset: r.get(7)?,
        mount_path: PathBuf::from(r.get::<_, String>(8)?),
        state: r.get(9)?,
        source_config: columns::json(r, 10, || format!("source config of VDB {name}"))?,
        origin_snapshot: r.get(11)?,
        created_at: r.get(12)?,
        sealed: r.get(13)?,
        parent: r.get(14)?,
        quota_bytes: r.get::<_, Option<i64>>(15)?.map(|q| q as u64),
        name,
    })
}

fn query(store: &Store, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Vdb>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {COLUMNS} FROM vdbs v JOIN environments e ON e.id = v.environment_id {filter} ORDER BY v.name"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map(args, row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn list(store: &Store) -> Result<Vec<Vdb>> {
    query(store, "", [])
}

pub fn find(store: &Store, name: &str) -> Result<Option<Vdb>> {
    Ok(query(store, "WHERE v.name = ?1", [name])?.pop())
}

pub fn find_by_id(store: &Store, id: i64) -> Result<Option<Vdb>> {
    Ok(query(store, "WHERE v.id = ?1", [id])?.pop())
}

pub fn get(store: &Store, name: &str) -> Result<Vdb> {
    find(store, name)?
        .ok_or_else(|| Error::NotFound(format!("no VDB {name:?}; see `pgvirt vdb list`")))
}

/// The VDBs made from a parent's snapshots.
pub fn children(store: &Store, kind: ParentKind, parent_id: i64) -> Result<Vec<Vdb>> {
    query(
        store,
        "WHERE v.parent_kind = ?1 AND v.parent_id = ?2",
        params![kind, parent_id],
    )
}
