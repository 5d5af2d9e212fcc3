//! dSources: a source cluster ingested into a staging cluster on engine
//! storage, kept in sync, and snapshotted on a timeflow.
//!
//! The workflows follow the contract's call order:
//! - link: record it → first sync with `resync: true`;
//! - sync: `linked.mount_specification` → pre-sync hook →
//!   `linked.pre_snapshot` → storage snapshot → `linked.post_snapshot` →
//!   post-sync hook;
//! - enable: `mount_specification` → mount → `start_staging`;
//! - disable / delete: `stop_staging` (delete then frees storage; refused
//!   while VDBs depend on its snapshots).
//!
//! A link that fails leaves nothing: no row, no dataset, no mount, no staging
//! process (the connector removes what it made on the source).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery::{self, SourceConfig};
use crate::host::lifecycle::hooks;
use crate::host::lifecycle::placement;
use crate::host::lifecycle::timeflow::{self, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

/// A stored dSource.
#[derive(Debug, Clone, Serialize)]
pub struct DSource {
    pub id: i64,
    pub name: String,
    pub source_config_id: i64,
    pub environment: String,
    /// The linked-source parameters, secrets masked when shown.
    pub parameters: Value,
    pub state: String,
    pub dataset: String,
    pub mount_path: PathBuf,
    pub created_at: i64,
}

/// What `link` needs.
pub struct LinkRequest<'a> {
    pub name: &'a str,
    pub source_config: &'a str,
    /// The staging environment; default: the source config's.
    pub environment: Option<&'a str>,
    pub parameters: Value,
}

fn dataset_name(name: &str) -> String {
    format!("dsource-{name}")
}

/// Links a source: validates everything, then ingests and takes the first
/// snapshot. On any failure, removes what it made and says why.
pub fn link(
    store: &Store,
    connector: &Connector,
    request: LinkRequest<'_>,
) -> Result<(DSource, Snapshot)> {
    environments::check_name(request.name, "dSource name")?;
    if find(store, request.name)?.is_some() {
        return Err(Error::Conflict(format!(
            "dSource {:?} exists already",
            request.name
        )));
    }
    let config = discovery::find_source_config(store, request.source_config)?;
    let env = environments::get(store, request.environment.unwrap_or(&config.environment))?;
    connector.definitions.validate(
        "linked_source",
        &request.parameters,
        "linked-source parameters",
    )?;
    let port = request
        .parameters
        .get("staging_port")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    check_port_free(store, port as u16)?;
    let pool = Pool::open(store)?;
    let dataset = dataset_name(request.name);
    let mount_path = match request.parameters.get("mount_path").and_then(Value::as_str) {
        Some(p) => PathBuf::from(p),
        None => pool.default_mount_path(&dataset),
    };
    pool.check_mount_path(store, &mount_path)?;

    store
        .conn()
        .execute(
            "INSERT INTO dsources (name, source_config_id, parameters, state, created_at, environment_id, dataset, mount_path, pid)
             VALUES (?1, ?2, ?3, 'linking', ?4, ?5, ?6, ?7, ?8)",
            params![
                request.name,
                config.id,
                request.parameters.to_string(),
                store::now(),
                env.id,
                dataset,
                mount_path.to_string_lossy(),
                std::process::id()
            ],
        )
        .map_err(|e| store.err(e))?;
    let dsource = get(store, request.name)?;
    let result = (|| {
        let user = env.user()?;
        pool.create_dataset(store, &dataset, Some(&user))?;
        timeflow::create(store, "dsource", dsource.id, None)?;
        sync_inner(store, connector, &pool, &dsource, &config, &env, true)
    })();
    match result {
        Ok(snapshot) => {
            set_state(store, dsource.id, "enabled")?;
            Ok((get(store, request.name)?, snapshot))
        }
        Err(e) => {
            undo_link(store, connector, &pool, &dsource, &config, &env);
            Err(e)
        }
    }
}

/// Finishes what an interrupted link left: a dSource still `linking` whose
/// process is gone is removed with everything it made.
pub fn recover(store: &Store, connector: &Connector) -> Result<Vec<String>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT name, pid FROM dsources WHERE state = 'linking'")
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
        let d = get(store, &name)?;
        let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
        let env = environments::get(store, &d.environment)?;
        let pool = Pool::open(store)?;
        undo_link(store, connector, &pool, &d, &config, &env);
        log::warn!("removed dSource {name}, left half-made by an interrupted link");
        cleaned.push(name);
    }
    Ok(cleaned)
}

/// Best-effort removal of everything a failed link made.
fn undo_link(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
) {
    if let Ok(input) = input_for(store, pool, d, config, env) {
        let mut input = input;
        input["purpose"] = json!("delete");
        if let Err(e) = connector.invoke("linked.stop_staging", &input, HostPlatform::new(env)) {
            log::warn!("cleaning up the failed link: {e}");
        }
    }
    let _ = pool.unmount(store, &d.dataset);
    for snapshot in timeflow::snapshots(store, "dsource", d.id).unwrap_or_default() {
        let _ = timeflow::remove_snapshot(store, snapshot.id);
        let _ = pool.destroy_snapshot(store, snapshot.dataset_snapshot_id);
    }
    let _ = pool.destroy_dataset(store, &d.dataset);
    let _ = timeflow::remove_container(store, "dsource", d.id);
    let _ = store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id]);
}

/// Syncs a dSource: a new snapshot of its staging (re-ingested with `resync`).
pub fn sync(store: &Store, connector: &Connector, name: &str, resync: bool) -> Result<Snapshot> {
    let d = get(store, name)?;
    if d.state != "enabled" {
        return Err(Error::Conflict(format!(
            "dSource {name} is {}; enable it first (`pgvirt dsource enable {name}`)",
            d.state
        )));
    }
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let pool = Pool::open(store)?;
    if resync {
        // A resync starts a new timeflow; the old snapshots stay until
        // retention removes them.
        timeflow::create(store, "dsource", d.id, None)?;
    }
    sync_inner(store, connector, &pool, &d, &config, &env, resync)
}

fn sync_inner(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
    resync: bool,
) -> Result<Snapshot> {
    let platform = HostPlatform::new(env);
    let mut input = input_for(store, pool, d, config, env)?;
    let path = placement::mount_as_specified(
        store,
        connector,
        pool,
        placement::Placement {
            group: "linked",
            dataset: &d.dataset,
            fallback: &d.mount_path,
        },
        env,
        &mut input,
    )?;
    let hook_vars = hook_variables(d, &path);
    hooks::run(env, d.parameters.get("hooks"), "pre_sync", &hook_vars)?;
    input["snapshot_parameters"] = json!({"resync": resync});
    connector.invoke("linked.pre_snapshot", &input, platform.clone())?;
    let label = format!("{}-{}", d.dataset, store::now_millis());
    let taken = pool.snapshot(store, &d.dataset, &label);
    // post_snapshot also resumes replay: call it even when the snapshot failed.
    let meta = connector.invoke("linked.post_snapshot", &input, platform);
    let taken = taken?;
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            let _ = pool.destroy_snapshot(store, taken.id);
            return Err(e);
        }
    };
    let timeflow = timeflow::current(store, "dsource", d.id)?;
    let snapshot = timeflow::add_snapshot(store, timeflow.id, taken.id, &meta)?;
    hooks::run(env, d.parameters.get("hooks"), "post_sync", &hook_vars)?;
    let removed = timeflow::apply_retention(store, pool, "dsource", d.id)?;
    if !removed.is_empty() {
        log::info!(
            "retention removed snapshots {removed:?} of dSource {}",
            d.name
        );
    }
    Ok(snapshot)
}

fn hook_variables(d: &DSource, mount: &Path) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert("PGVIRT_DSOURCE".into(), d.name.clone());
    vars.insert("PGVIRT_MOUNT_PATH".into(), mount.display().to_string());
    if let Some(port) = d.parameters.get("staging_port") {
        vars.insert("PGVIRT_STAGING_PORT".into(), port.to_string());
    }
    vars
}

/// The input every linked operation gets.
fn input_for(
    store: &Store,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
) -> Result<Value> {
    let repository = discovery::repositories(store, Some(&config.environment))?
        .into_iter()
        .find(|r| r.id == config.repository_id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "repository {} of source config {} is gone",
                config.repository_id, config.id
            ))
        })?;
    Ok(json!({
        "environment": env.to_input(),
        "repository": repository.document,
        "source_config": config.document,
        "linked_source": d.parameters,
        "dsource": {"name": d.name, "id": d.id},
        "mount": {"path": pool.effective_path(&d.dataset, &d.mount_path)},
        "default_mount_path": d.mount_path,
    }))
}

/// Enables a disabled dSource: mount and start staging.
pub fn enable(store: &Store, connector: &Connector, name: &str) -> Result<DSource> {
    let d = get(store, name)?;
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let pool = Pool::open(store)?;
    let mut input = input_for(store, &pool, &d, &config, &env)?;
    placement::mount_as_specified(
        store,
        connector,
        &pool,
        placement::Placement {
            group: "linked",
            dataset: &d.dataset,
            fallback: &d.mount_path,
        },
        &env,
        &mut input,
    )?;
    connector.invoke("linked.start_staging", &input, HostPlatform::new(&env))?;
    set_state(store, d.id, "enabled")?;
    get(store, name)
}

/// Disables a dSource: stop staging and unmount.
pub fn disable(store: &Store, connector: &Connector, name: &str) -> Result<DSource> {
    let d = get(store, name)?;
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let pool = Pool::open(store)?;
    let mut input = input_for(store, &pool, &d, &config, &env)?;
    input["purpose"] = json!("disable");
    connector.invoke("linked.stop_staging", &input, HostPlatform::new(&env))?;
    Pool::open(store)?.unmount(store, &d.dataset)?;
    set_state(store, d.id, "disabled")?;
    get(store, name)
}

/// Deletes a dSource: refused while anything depends on its snapshots,
/// unless `with_vdbs`, which deletes the VDBs made from it first.
pub fn delete(
    store: &Store,
    connector: &Connector,
    name: &str,
    with_vdbs: bool,
) -> Result<Vec<String>> {
    let d = get(store, name)?;
    let pool = Pool::open(store)?;
    let mut deleted = Vec::new();
    if with_vdbs {
        for v in crate::host::lifecycle::vdb::list(store)?
            .into_iter()
            .filter(|v| v.parent_kind == "dsource" && v.parent_id == d.id)
        {
            deleted.extend(crate::host::lifecycle::vdb::delete_tree(
                store, connector, &v.name,
            )?);
        }
    }
    let snapshots = timeflow::snapshots(store, "dsource", d.id)?;
    let mut dependents = Vec::new();
    for s in &snapshots {
        dependents.extend(pool.dependents(store, s.dataset_snapshot_id)?);
    }
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "dSource {name} has snapshots that {} depend on; delete those first, or pass --with-vdbs",
            dependents.join(", ")
        )));
    }
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let mut input = input_for(store, &pool, &d, &config, &env)?;
    input["purpose"] = json!("delete");
    connector.invoke("linked.stop_staging", &input, HostPlatform::new(&env))?;
    pool.unmount(store, &d.dataset)?;
    for s in &snapshots {
        timeflow::remove_snapshot(store, s.id)?;
        pool.destroy_snapshot(store, s.dataset_snapshot_id)?;
    }
    pool.destroy_dataset(store, &d.dataset)?;
    timeflow::remove_container(store, "dsource", d.id)?;
    store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id])
        .map_err(|e| store.err(e))?;
    Ok(deleted)
}

/// State, replication health and the last snapshot.
pub fn show(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let d = get(store, name)?;
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, &d, &config, &env)?;
    let status = connector
        .invoke("linked.status", &input, HostPlatform::new(&env))
        .map(|s| s["status"].clone())
        .unwrap_or(json!("UNKNOWN"));
    let health = if status == json!("ACTIVE") {
        connector
            .invoke("linked.worker", &input, HostPlatform::new(&env))
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    } else {
        json!({"running": false, "connected": false})
    };
    let last = timeflow::snapshots(store, "dsource", d.id)?
        .into_iter()
        .last();
    Ok(json!({
        "dsource": masked(&d, connector),
        "status": status,
        "replication": health,
        "last_snapshot": last,
    }))
}

/// The dSource with its secret parameters masked.
pub fn masked(d: &DSource, connector: &Connector) -> DSource {
    let mut d = d.clone();
    d.parameters = connector.definitions.masked("linked_source", &d.parameters);
    d
}

/// A staging port must be free on this host before anything is made.
fn check_port_free(store: &Store, port: u16) -> Result<()> {
    let taken_by: Option<String> = store.optional(store.conn().query_row(
        "SELECT name FROM dsources WHERE json_extract(parameters, '$.staging_port') = ?1",
        [port],
        |r| r.get(0),
    ))?;
    if let Some(other) = taken_by {
        return Err(Error::Conflict(format!(
            "staging port {port} belongs to dSource {other}; choose another"
        )));
    }
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Err(Error::Conflict(format!(
            "staging port {port} is already in use on this host; choose another --staging-port"
        )));
    }
    Ok(())
}

fn set_state(store: &Store, id: i64, state: &str) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE dsources SET state = ?2 WHERE id = ?1",
            params![id, state],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

const COLUMNS: &str = "d.id, d.name, d.source_config_id, e.name, d.parameters, d.state, d.dataset, d.mount_path, d.created_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DSource> {
    Ok(DSource {
        id: r.get(0)?,
        name: r.get(1)?,
        source_config_id: r.get(2)?,
        environment: r.get(3)?,
        parameters: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or(Value::Null),
        state: r.get(5)?,
        dataset: r.get(6)?,
        mount_path: PathBuf::from(r.get::<_, String>(7)?),
        created_at: r.get(8)?,
    })
}

pub fn list(store: &Store) -> Result<Vec<DSource>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {COLUMNS} FROM dsources d JOIN environments e ON e.id = d.environment_id ORDER BY d.name"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map([], row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn find(store: &Store, name: &str) -> Result<Option<DSource>> {
    store.optional(store.conn().query_row(
        &format!("SELECT {COLUMNS} FROM dsources d JOIN environments e ON e.id = d.environment_id WHERE d.name = ?1"),
        [name],
        row,
    ))
}

pub fn get(store: &Store, name: &str) -> Result<DSource> {
    find(store, name)?
        .ok_or_else(|| Error::NotFound(format!("no dSource {name:?}; see `pgvirt dsource list`")))
}
