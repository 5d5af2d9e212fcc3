//! VDBs: writable thin clones of snapshots, each its own PostgreSQL cluster.
//!
//! The workflows follow the contract's call order:
//! - provision: clone snapshot → `virtual.mount_specification` → mount →
//!   `configure` → configure-clone hook;
//! - create empty: `mount_specification` → `initialize`;
//! - refresh: pre-refresh hook → `unconfigure` → re-clone →
//!   `mount_specification` → `configure` → configure-clone hook → post-refresh hook;
//! - rewind: pre-rewind hook → `unconfigure` → re-clone →
//!   `mount_specification` → `reconfigure` → post-rewind hook;
//! - snapshot: pre-snapshot hook → `virtual.pre_snapshot` → storage snapshot
//!   → `virtual.post_snapshot` → post-snapshot hook;
//! - start / stop with their hooks; enable (`status`, then
//!   `mount_specification` → `reconfigure` when INACTIVE); disable
//!   (`unconfigure`); delete (pre-stop hook → `unconfigure` → `cleanup` →
//!   post-stop hook → destroy clone).
//!
//! Each timeflow of a VDB lives on its own dataset (`vdb-<name>-<timeflow>`),
//! so a refresh or rewind never destroys data a child VDB still stands on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery;
use crate::host::lifecycle::dsource;
use crate::host::lifecycle::hooks;
use crate::host::lifecycle::placement;
use crate::host::lifecycle::timeflow::{self, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

/// Ports VDBs get when none is asked for: `PGVIRT_VDB_PORTS=first-last`.
pub const PORTS_ENV: &str = "PGVIRT_VDB_PORTS";
const DEFAULT_PORTS: (u16, u16) = (6500, 6999);

#[derive(Debug, Clone, Serialize)]
pub struct Vdb {
    pub id: i64,
    pub name: String,
    pub environment: String,
    pub parent_kind: String,
    pub parent_id: i64,
    pub parameters: Value,
    pub port: u16,
    pub dataset: String,
    pub mount_path: PathBuf,
    pub state: String,
    pub source_config: Value,
    /// The snapshot its current timeflow was cloned from (none when empty).
    pub origin_snapshot: Option<i64>,
    pub created_at: i64,
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
}

/// The VDB with its secret parameters masked, for showing.
pub fn masked(v: &Vdb, connector: &Connector) -> Vdb {
    let mut v = v.clone();
    v.parameters = connector
        .definitions
        .masked("virtual_source", &v.parameters);
    v
}

/// Where a provision starts from: `dsource`, `vdb`, either `@<snapshot id>`.
pub struct Origin {
    pub kind: &'static str,
    pub id: i64,
    pub name: String,
    pub snapshot: Snapshot,
}

/// Resolves `name[@snapshot]` to a parent and one of its snapshots (its
/// latest when none is named).
pub fn resolve_origin(store: &Store, spec: &str) -> Result<Origin> {
    let (name, snap) = match spec.split_once('@') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    let (kind, id) = if let Some(d) = dsource::find(store, name)? {
        ("dsource", d.id)
    } else if let Some(v) = find(store, name)? {
        ("vdb", v.id)
    } else {
        return Err(Error::NotFound(format!("no dSource or VDB named {name:?}")));
    };
    let snapshots = timeflow::snapshots(store, kind, id)?;
    let snapshot = match snap {
        Some(s) => {
            let sid: i64 = s.parse().map_err(|_| {
                Error::usage(format!("snapshot {s:?} in {spec:?} is not a snapshot id"))
            })?;
            snapshots.into_iter().find(|x| x.id == sid).ok_or_else(|| {
                Error::NotFound(format!(
                    "{kind} {name} has no snapshot {sid}; see `pgvirt snapshot list`"
                ))
            })?
        }
        None => snapshots
            .into_iter()
            .last()
            .ok_or_else(|| Error::NotFound(format!("{kind} {name} has no snapshots yet")))?,
    };
    Ok(Origin {
        kind,
        id,
        name: name.to_owned(),
        snapshot,
    })
}

fn check_provisionable(snapshot: &Snapshot) -> Result<()> {
    if snapshot
        .metadata
        .get("provisionable")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Ok(());
    }
    let reason = snapshot
        .metadata
        .get("not_provisionable_reason")
        .and_then(Value::as_str)
        .unwrap_or("it is marked not provisionable");
    Err(Error::Conflict(format!(
        "snapshot {} cannot be provisioned: {reason}",
        snapshot.id
    )))
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
                "port {p} belongs to another VDB or dSource; choose another"
            )));
        }
        if !free(p) {
            return Err(Error::Conflict(format!(
                "port {p} is already in use on this host; choose another"
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

/// What `provision` needs.
pub struct ProvisionRequest<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub port: Option<u16>,
    pub environment: Option<&'a str>,
    pub parameters: Value,
}

/// Provisions a VDB and leaves it running. On failure nothing is left.
pub fn provision(store: &Store, connector: &Connector, req: ProvisionRequest<'_>) -> Result<Vdb> {
    let origin = resolve_origin(store, req.from)?;
    check_provisionable(&origin.snapshot)?;
    create(store, connector, req, Some(origin))
}

/// Creates an empty VDB (a new cluster) with `virtual.initialize`.
pub fn create_empty(
    store: &Store,
    connector: &Connector,
    req: ProvisionRequest<'_>,
) -> Result<Vdb> {
    create(store, connector, req, None)
}

fn create(
    store: &Store,
    connector: &Connector,
    req: ProvisionRequest<'_>,
    origin: Option<Origin>,
) -> Result<Vdb> {
    environments::check_name(req.name, "VDB name")?;
    if find(store, req.name)?.is_some() || dsource::find(store, req.name)?.is_some() {
        return Err(Error::Conflict(format!(
            "a dSource or VDB named {:?} exists already",
            req.name
        )));
    }
    connector.definitions.validate(
        "virtual_source",
        &req.parameters,
        "virtual-source parameters",
    )?;
    let asked = req.port.or_else(|| {
        req.parameters
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
    });
    let port = choose_port(store, asked)?;
    let env_name = req
        .environment
        .or_else(|| req.parameters.get("environment").and_then(Value::as_str))
        .map(str::to_owned)
        .map_or_else(|| default_environment(store, origin.as_ref()), Ok)?;
    let env = environments::get(store, &env_name)?;
    let pool = Pool::open(store)?;
    let mount_path = match req.parameters.get("mount_path").and_then(Value::as_str) {
        Some(p) => PathBuf::from(p),
        None => pool.default_mount_path(&format!("vdb-{}", req.name)),
    };
    pool.check_mount_path(store, &mount_path)?;
    let (parent_kind, parent_id) = origin.as_ref().map_or(("empty", 0), |o| (o.kind, o.id));
    store
        .conn()
        .execute(
            "INSERT INTO vdbs (name, environment_id, parent_kind, parent_id, parameters, port, dataset, mount_path,
                               state, source_config, origin_snapshot, created_at, pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, 'provisioning', '{}', ?8, ?9, ?10)",
            params![
                req.name,
                env.id,
                parent_kind,
                parent_id,
                req.parameters.to_string(),
                port,
                mount_path.to_string_lossy(),
                origin.as_ref().map(|o| o.snapshot.id),
                store::now(),
                std::process::id()
            ],
        )
        .map_err(|e| store.err(e))?;
    let vdb = get(store, req.name)?;
    let result = (|| {
        let tf = timeflow::create(store, "vdb", vdb.id, origin.as_ref().map(|o| o.snapshot.id))?;
        let dataset = format!("vdb-{}-{}", vdb.name, tf.id);
        let user = env.user()?;
        match &origin {
            Some(o) => {
                pool.clone_snapshot(store, o.snapshot.dataset_snapshot_id, &dataset, Some(&user))?
            }
            None => pool.create_dataset(store, &dataset, Some(&user))?,
        };
        set_dataset(store, vdb.id, &dataset)?;
        let vdb = get(store, req.name)?;
        let platform = HostPlatform::new(&env);
        let mut input = input_for(store, &pool, &vdb, &env)?;
        mount(store, connector, &pool, &vdb, &env, &mut input)?;
        let config = match &origin {
            Some(o) => {
                input["snapshot"] = o.snapshot.metadata.clone();
                connector.invoke("virtual.configure", &input, platform)?
            }
            None => connector.invoke("virtual.initialize", &input, platform)?,
        };
        set_config(store, vdb.id, &config, "running")?;
        let vdb = get(store, req.name)?;
        if origin.is_some() {
            run_hook(&env, &vdb, "configure_clone")?;
        }
        Ok(vdb)
    })();
    result.inspect_err(|_| destroy(store, connector, &pool, &vdb.name, &env))
}

/// Finishes what an interrupted provision left: a VDB still `provisioning`
/// whose process is gone is removed with everything it made.
pub fn recover(store: &Store, connector: &Connector) -> Result<Vec<String>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT name, pid FROM vdbs WHERE state = 'provisioning'")
        .map_err(|e| store.err(e))?;
    let rows: Vec<(String, Option<i64>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))?;
    let mut cleaned = Vec::new();
    for (name, pid) in rows {
        if pid.is_some_and(crate::host::storage::process_alive) {
            continue;
        }
        let vdb = get(store, &name)?;
        let env = environments::get(store, &vdb.environment)?;
        let pool = Pool::open(store)?;
        destroy(store, connector, &pool, &name, &env);
        log::warn!("removed VDB {name}, left half-made by an interrupted provision");
        cleaned.push(name);
    }
    Ok(cleaned)
}

fn default_environment(store: &Store, origin: Option<&Origin>) -> Result<String> {
    match origin {
        Some(o) if o.kind == "dsource" => Ok(dsource::get(store, &o.name)?.environment),
        Some(o) => Ok(get(store, &o.name)?.environment),
        None => match environments::list(store)?.as_slice() {
            [one] => Ok(one.name.clone()),
            _ => Err(Error::usage("name the environment with --env")),
        },
    }
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
            fallback: &vdb.mount_path,
        },
        env,
        input,
    )
    .map(|_| ())
}

/// The input every virtual operation gets.
fn input_for(store: &Store, pool: &Pool, vdb: &Vdb, env: &Environment) -> Result<Value> {
    let repository = discovery::repositories(store, Some(&env.name))?
        .into_iter()
        .filter(|r| r.state == "present")
        .find(|r| {
            vdb.source_config.get("major_version").is_none()
                || r.document.get("major_version") == vdb.source_config.get("major_version")
        })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "environment {} has no PostgreSQL installation for this VDB; run `pgvirt env refresh {}`",
                env.name, env.name
            ))
        })?;
    let mut input = json!({
        "environment": env.to_input(),
        "repository": repository.document,
        "virtual_source": vdb.parameters,
        "vdb": {"name": vdb.name, "port": vdb.port},
        "mount": {"path": pool.effective_path(&vdb.dataset, &vdb.mount_path)},
        "default_mount_path": vdb.mount_path,
    });
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

/// Removes everything of a VDB (best effort): processes, mounts, datasets
/// and snapshots, timeflows, the row.
fn destroy(store: &Store, connector: &Connector, pool: &Pool, name: &str, env: &Environment) {
    let Ok(vdb) = get(store, name) else { return };
    if !vdb.dataset.is_empty() {
        if let Ok(input) = input_for(store, pool, &vdb, env) {
            let _ = connector.invoke("virtual.cleanup", &input, HostPlatform::new(env));
        }
        let _ = pool.unmount(store, &vdb.dataset);
    }
    if let Err(e) = destroy_storage(store, pool, &vdb) {
        log::warn!("removing the storage of VDB {name}: {e}");
    }
    let _ = timeflow::remove_container(store, "vdb", vdb.id);
    let _ = store
        .conn()
        .execute("DELETE FROM vdbs WHERE id = ?1", [vdb.id]);
}

/// Destroys a VDB's datasets and snapshots in dependency order: its own
/// timeflows may be clones of its own snapshots (after a rewind).
fn destroy_storage(store: &Store, pool: &Pool, vdb: &Vdb) -> Result<()> {
    let mut datasets = datasets_of(store, vdb);
    let mut snapshots = timeflow::snapshots(store, "vdb", vdb.id)?;
    while !datasets.is_empty() || !snapshots.is_empty() {
        let before = datasets.len() + snapshots.len();
        datasets.retain(|d| pool.destroy_dataset(store, d).is_err());
        let mut kept = Vec::new();
        for s in snapshots {
            if pool.dependents(store, s.dataset_snapshot_id)?.is_empty() {
                timeflow::remove_snapshot(store, s.id)?;
                pool.destroy_snapshot(store, s.dataset_snapshot_id)?;
            } else {
                kept.push(s);
            }
        }
        snapshots = kept;
        if datasets.len() + snapshots.len() == before {
            // No progress: say what blocks (the first dataset's own error).
            if let Some(d) = datasets.first() {
                pool.destroy_dataset(store, d)?;
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

/// Every dataset a VDB's timeflows lived on.
fn datasets_of(store: &Store, vdb: &Vdb) -> Vec<String> {
    let mut names: Vec<String> = timeflow::list(store, "vdb", vdb.id)
        .unwrap_or_default()
        .into_iter()
        .map(|tf| format!("vdb-{}-{}", vdb.name, tf.id))
        .collect();
    if !vdb.dataset.is_empty() && !names.contains(&vdb.dataset) {
        names.push(vdb.dataset.clone());
    }
    names
}

/// Names of datasets outside this VDB that stand on its snapshots.
fn outside_dependents(store: &Store, pool: &Pool, vdb: &Vdb) -> Result<Vec<String>> {
    let own = datasets_of(store, vdb);
    let mut dependents = Vec::new();
    for s in timeflow::snapshots(store, "vdb", vdb.id)? {
        dependents.extend(
            pool.dependents(store, s.dataset_snapshot_id)?
                .into_iter()
                .filter(|d| !own.contains(d)),
        );
    }
    dependents.sort();
    dependents.dedup();
    Ok(dependents)
}

/// Deletes a VDB; refused while VDBs were provisioned from its snapshots.
pub fn delete(store: &Store, connector: &Connector, name: &str) -> Result<()> {
    let vdb = get(store, name)?;
    let pool = Pool::open(store)?;
    let dependents = outside_dependents(store, &pool, &vdb)?;
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "VDB {name} has snapshots that {} depend on; delete those first",
            dependents.join(", ")
        )));
    }
    let env = environments::get(store, &vdb.environment)?;
    run_hook(&env, &vdb, "pre_stop")?;
    let input = input_for(store, &pool, &vdb, &env)?;
    connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
    connector.invoke("virtual.cleanup", &input, HostPlatform::new(&env))?;
    run_hook(&env, &vdb, "post_stop")?;
    pool.unmount(store, &vdb.dataset)?;
    destroy_storage(store, &pool, &vdb)?;
    timeflow::remove_container(store, "vdb", vdb.id)?;
    store
        .conn()
        .execute("DELETE FROM vdbs WHERE id = ?1", [vdb.id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Deletes a VDB and, first, every VDB provisioned from it (children of
/// children too).
pub fn delete_tree(store: &Store, connector: &Connector, name: &str) -> Result<Vec<String>> {
    let vdb = get(store, name)?;
    let mut deleted = Vec::new();
    for child in list(store)?
        .into_iter()
        .filter(|c| c.parent_kind == "vdb" && c.parent_id == vdb.id)
    {
        deleted.extend(delete_tree(store, connector, &child.name)?);
    }
    delete(store, connector, name)?;
    deleted.push(name.to_owned());
    Ok(deleted)
}

/// Starts a VDB (also after its postgres crashed).
pub fn start(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    run_hook(&env, &vdb, "pre_start")?;
    let mut input = input_for(store, &pool, &vdb, &env)?;
    mount(store, connector, &pool, &vdb, &env, &mut input)?;
    connector.invoke("virtual.start", &input, HostPlatform::new(&env))?;
    set_state(store, vdb.id, "running")?;
    run_hook(&env, &vdb, "post_start")?;
    get(store, name)
}

/// Stops a VDB.
pub fn stop(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    run_hook(&env, &vdb, "pre_stop")?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, &vdb, &env)?;
    connector.invoke("virtual.stop", &input, HostPlatform::new(&env))?;
    pool.unmount(store, &vdb.dataset)?;
    set_state(store, vdb.id, "stopped")?;
    run_hook(&env, &vdb, "post_stop")?;
    get(store, name)
}

/// ACTIVE or INACTIVE, as the connector sees it now.
pub fn status(store: &Store, connector: &Connector, name: &str) -> Result<String> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, &vdb, &env)?;
    let out = connector.invoke("virtual.status", &input, HostPlatform::new(&env))?;
    Ok(out["status"].as_str().unwrap_or("INACTIVE").to_owned())
}

/// Enables a disabled VDB: if INACTIVE, mount and reconfigure.
pub fn enable(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    if status(store, connector, name)? == "INACTIVE" {
        let pool = Pool::open(store)?;
        let mut input = input_for(store, &pool, &vdb, &env)?;
        mount(store, connector, &pool, &vdb, &env, &mut input)?;
        input["fresh_clone"] = json!(false);
        let config = connector.invoke("virtual.reconfigure", &input, HostPlatform::new(&env))?;
        set_config(store, vdb.id, &config, "running")?;
    }
    get(store, name)
}

/// Disables a VDB: unconfigure (stop) and unmount.
pub fn disable(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, &vdb, &env)?;
    connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
    Pool::open(store)?.unmount(store, &vdb.dataset)?;
    set_state(store, vdb.id, "disabled")?;
    get(store, name)
}

/// Takes a snapshot of a VDB.
pub fn snapshot(store: &Store, connector: &Connector, name: &str) -> Result<Snapshot> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    run_hook(&env, &vdb, "pre_snapshot")?;
    let input = input_for(store, &pool, &vdb, &env)?;
    connector.invoke("virtual.pre_snapshot", &input, HostPlatform::new(&env))?;
    let label = format!("{}-{}", vdb.dataset, store::now_millis());
    let taken = pool.snapshot(store, &vdb.dataset, &label);
    // post_snapshot restarts the VDB: call it even when the snapshot failed.
    let meta = connector.invoke("virtual.post_snapshot", &input, HostPlatform::new(&env));
    let taken = taken?;
    let meta = meta.inspect_err(|_| {
        let _ = pool.destroy_snapshot(store, taken.id);
    })?;
    let tf = timeflow::current(store, "vdb", vdb.id)?;
    let snapshot = timeflow::add_snapshot(store, tf.id, taken.id, &meta)?;
    run_hook(&env, &vdb, "post_snapshot")?;
    let removed = timeflow::apply_retention(store, &pool, "vdb", vdb.id)?;
    if !removed.is_empty() {
        log::info!("retention removed snapshots {removed:?} of VDB {name}");
    }
    Ok(snapshot)
}

/// Refreshes a VDB to its parent's latest (or a chosen newer) snapshot.
pub fn refresh(
    store: &Store,
    connector: &Connector,
    name: &str,
    snapshot: Option<i64>,
) -> Result<Vdb> {
    let vdb = get(store, name)?;
    if vdb.parent_kind == "empty" {
        return Err(Error::usage(format!(
            "VDB {name} was created empty: it has no parent to refresh from"
        )));
    }
    let parent_name = parent_name(store, &vdb)?;
    let spec = match snapshot {
        Some(id) => format!("{parent_name}@{id}"),
        None => parent_name,
    };
    let origin = resolve_origin(store, &spec)?;
    check_provisionable(&origin.snapshot)?;
    reclone(store, connector, &vdb, origin.snapshot, "refresh")
}

/// Rewinds a VDB to one of its own earlier snapshots.
pub fn rewind(store: &Store, connector: &Connector, name: &str, snapshot: i64) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let origin = resolve_origin(store, &format!("{name}@{snapshot}"))?;
    reclone(store, connector, &vdb, origin.snapshot, "rewind")
}

fn parent_name(store: &Store, vdb: &Vdb) -> Result<String> {
    let table = if vdb.parent_kind == "dsource" {
        "dsources"
    } else {
        "vdbs"
    };
    store
        .conn()
        .query_row(
            &format!("SELECT name FROM {table} WHERE id = ?1"),
            [vdb.parent_id],
            |r| r.get(0),
        )
        .map_err(|_| Error::NotFound(format!("the parent of VDB {} is gone", vdb.name)))
}

/// Refresh and rewind: unconfigure, clone the snapshot onto a new timeflow's
/// dataset, mount, then configure (refresh) or reconfigure (rewind). Name,
/// port and parameters stay.
fn reclone(
    store: &Store,
    connector: &Connector,
    vdb: &Vdb,
    snapshot: Snapshot,
    how: &str,
) -> Result<Vdb> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    run_hook(&env, vdb, &format!("pre_{how}"))?;
    let input = input_for(store, &pool, vdb, &env)?;
    connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
    pool.unmount(store, &vdb.dataset)?;
    let old_dataset = vdb.dataset.clone();
    let tf = timeflow::create(store, "vdb", vdb.id, Some(snapshot.id))?;
    let dataset = format!("vdb-{}-{}", vdb.name, tf.id);
    let user = env.user()?;
    pool.clone_snapshot(store, snapshot.dataset_snapshot_id, &dataset, Some(&user))?;
    set_dataset(store, vdb.id, &dataset)?;
    store
        .conn()
        .execute(
            "UPDATE vdbs SET origin_snapshot = ?2 WHERE id = ?1",
            params![vdb.id, snapshot.id],
        )
        .map_err(|e| store.err(e))?;
    let current = get(store, &vdb.name)?;
    let mut input = input_for(store, &pool, &current, &env)?;
    mount(store, connector, &pool, &current, &env, &mut input)?;
    input["snapshot"] = snapshot.metadata.clone();
    let config = if how == "refresh" {
        connector.invoke("virtual.configure", &input, HostPlatform::new(&env))?
    } else {
        input["fresh_clone"] = json!(true);
        connector.invoke("virtual.reconfigure", &input, HostPlatform::new(&env))?
    };
    set_config(store, vdb.id, &config, "running")?;
    let current = get(store, &vdb.name)?;
    if how == "refresh" {
        run_hook(&env, &current, "configure_clone")?;
    }
    run_hook(&env, &current, &format!("post_{how}"))?;
    // The old timeflow's dataset goes when nothing stands on it any more.
    let old_snapshots = timeflow::snapshots(store, "vdb", vdb.id)?;
    let old_has_dependents = old_snapshots.iter().any(|s| {
        pool.dataset_of_snapshot(store, s.dataset_snapshot_id)
            .ok()
            .as_deref()
            == Some(old_dataset.as_str())
    });
    if !old_has_dependents {
        if let Err(e) = pool.destroy_dataset(store, &old_dataset) {
            log::warn!("keeping the previous dataset {old_dataset}: {e}");
        }
    }
    Ok(current)
}

fn set_state(store: &Store, id: i64, state: &str) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET state = ?2 WHERE id = ?1",
            params![id, state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

fn set_dataset(store: &Store, id: i64, dataset: &str) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET dataset = ?2 WHERE id = ?1",
            params![id, dataset],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

fn set_config(store: &Store, id: i64, config: &Value, state: &str) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET source_config = ?2, state = ?3 WHERE id = ?1",
            params![id, config.to_string(), state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

const COLUMNS: &str =
    "v.id, v.name, e.name, v.parent_kind, v.parent_id, v.parameters, v.port, v.dataset, \
                       v.mount_path, v.state, v.source_config, v.origin_snapshot, v.created_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Vdb> {
    Ok(Vdb {
        id: r.get(0)?,
        name: r.get(1)?,
        environment: r.get(2)?,
        parent_kind: r.get(3)?,
        parent_id: r.get(4)?,
        parameters: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
        port: r.get(6)?,
        dataset: r.get(7)?,
        mount_path: PathBuf::from(r.get::<_, String>(8)?),
        state: r.get(9)?,
        source_config: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or(Value::Null),
        origin_snapshot: r.get(11)?,
        created_at: r.get(12)?,
    })
}

pub fn list(store: &Store) -> Result<Vec<Vdb>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {COLUMNS} FROM vdbs v JOIN environments e ON e.id = v.environment_id ORDER BY v.name"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map([], row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn find(store: &Store, name: &str) -> Result<Option<Vdb>> {
    store.optional(store.conn().query_row(
        &format!("SELECT {COLUMNS} FROM vdbs v JOIN environments e ON e.id = v.environment_id WHERE v.name = ?1"),
        [name],
        row,
    ))
}

pub fn get(store: &Store, name: &str) -> Result<Vdb> {
    find(store, name)?
        .ok_or_else(|| Error::NotFound(format!("no VDB {name:?}; see `pgvirt vdb list`")))
}
