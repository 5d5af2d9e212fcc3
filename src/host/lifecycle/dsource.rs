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
//! Each runs as a [job](super::jobs). A link that fails leaves nothing (no
//! row, dataset, mount, staging process, or slot it made); a sync cut short
//! is repaired by the next command ([`repair`]): its unrecorded snapshot
//! goes, and staging replays WAL again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use super::discovery::{self, SourceConfig};
use super::jobs::{self, Job, JobKind, Step};
use super::timeflow::{self, ContainerKind, Snapshot};
use super::{hooks, names, placement};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::{self, columns, Store};

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
fn owner(name: &str) -> String {
    format!("dSource {name}")
}

/// What `link` needs.
pub struct LinkRequest<'a> {
    pub name: &'a str,
    pub source_config: &'a str,
    /// The staging environment; default: the source config's.
    pub environment: Option<&'a str>,
    pub parameters: Value,
}

/// Links a source: validates everything, then ingests and takes the first
/// snapshot. On any failure, removes what it made and says why.
pub fn link(
    store: &Store,
    connector: &Connector,
    request: LinkRequest<'_>,
) -> Result<(DSource, Snapshot)> {
    names::check_free(store, request.name, "dSource name")?;
    let config = discovery::find_source_config(store, request.source_config)?;
    let env = environments::get(store, request.environment.unwrap_or(&config.environment))?;
    let mut request = request;
    fill_source_defaults(&mut request.parameters, &config);
    connector.definitions.validate(
        "linked_source",
        &request.parameters,
        "linked-source parameters",
    )?;
    let port = request
        .parameters
        .get("staging_port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| Error::usage("linked-source parameters#/staging_port is required"))?;
    check_port_free(store, port)?;
    let pool = Pool::open(store)?;
    let dataset = format!("dsource-{}", request.name);
    let mount_path = match request.parameters.get("mount_path").and_then(Value::as_str) {
        Some(p) => PathBuf::from(p),
        None => pool.default_mount_path(&dataset),
    };
    pool.check_mount_path(store, &mount_path, "mount_path")?;
    let (public, sealed) = store.seal(
        &owner(request.name),
        &request.parameters,
        &connector.definitions.secret_fields("linked_source"),
    )?;
    // The row and its job land together: a kill right after leaves a job
    // the next command repairs, never a row nothing knows how far it got.
    let (d, mut job) = store.atomically(|| {
        store
            .conn()
            .execute(
                "INSERT INTO dsources (name, source_config_id, parameters, sealed, state, created_at, environment_id, dataset, mount_path)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    request.name,
                    config.id,
                    public.to_string(),
                    sealed,
                    DsourceState::Linking,
                    store::now(),
                    env.id,
                    dataset,
                    mount_path.to_string_lossy(),
                ],
            )
            .map_err(|e| store.err(e))?;
        let d = get(store, request.name)?;
        let job = Job::begin(store, JobKind::Link, ContainerKind::Dsource, d.id, &d.name)?;
        Ok((d, job))
    })?;
    let result = (|| {
        job.step(store, Step::Storage)?;
        pool.create_dataset(store, &dataset, Some(&env.user()?))?;
        sync_inner(store, connector, &pool, &d, &config, &env, true, &mut job)
    })();
    match result {
        Ok(snapshot) => {
            set_state(store, d.id, DsourceState::Enabled)?;
            job.succeed(store)?;
            Ok((get(store, request.name)?, snapshot))
        }
        Err(e) => {
            undo_link(store, connector, &pool, &d, job.step);
            job.fail(store, &e)?;
            Err(e)
        }
    }
}

/// Where to reach a source that streams, when the parameters do not say:
/// this host (the source config is on a local environment), on the source
/// config's port.
fn fill_source_defaults(params: &mut Value, config: &SourceConfig) {
    if !crate::abi::IngestionMethod::of(params).streams() || !params.is_object() {
        return;
    }
    let source = params
        .as_object_mut()
        .map(|p| p.entry("source").or_insert_with(|| json!({})));
    if let Some(Value::Object(source)) = source {
        source.entry("host").or_insert_with(|| json!("127.0.0.1"));
        if !source.contains_key("port") {
            if let Some(port) = config.document.get("port") {
                source.insert("port".into(), port.clone());
            }
        }
    }
}

/// Removes everything a link made, as far as it got (best effort).
fn undo_link(store: &Store, connector: &Connector, pool: &Pool, d: &DSource, reached: Step) {
    if reached >= Step::Connector {
        // The connector undoes what it made: its staging, its slot, its
        // passfile. It was not called before this step, so nothing to undo.
        if let Err(e) = stop_staging(store, connector, pool, d, "delete") {
            log::warn!("cleaning up the failed link of {}: {e}", d.name);
        }
    }
    if let Err(e) = remove_storage(store, pool, d) {
        log::warn!("removing the storage of {}: {e}", d.name);
    }
    let _ = store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id]);
}

/// Frees a dSource's storage: processes still using it, its mount, every
/// snapshot of its dataset (recorded or not), the dataset, its timeflows.
fn remove_storage(store: &Store, pool: &Pool, d: &DSource) -> Result<()> {
    pool.release(store, &d.dataset)?;
    for s in timeflow::snapshots(store, ContainerKind::Dsource, d.id)? {
        timeflow::remove_snapshot(store, s.id)?;
    }
    pool.destroy_dataset_tree(store, &d.dataset)?;
    timeflow::remove_container(store, ContainerKind::Dsource, d.id)
}

/// Syncs a dSource: a new snapshot of its staging (re-ingested with `resync`,
/// on a new timeflow).
pub fn sync(store: &Store, connector: &Connector, name: &str, resync: bool) -> Result<Snapshot> {
    let d = get(store, name)?;
    let resync = match d.state {
        DsourceState::Enabled => resync,
        DsourceState::ResyncNeeded => {
            log::warn!("dSource {name}: its last resync was cut short; ingesting again");
            true
        }
        other => {
            return Err(Error::Conflict(format!(
                "dSource {name} is {other}; enable it first (`pgvirt dsource enable {name}`)"
            )))
        }
    };
    let config = discovery::find_source_config(store, &d.source_config_id.to_string())?;
    let env = environments::get(store, &d.environment)?;
    let pool = Pool::open(store)?;
    jobs::run(
        store,
        JobKind::Sync,
        (ContainerKind::Dsource, d.id, &d.name),
        |job| {
            job.note(store, "resync", json!(resync))?;
            let snapshot = sync_inner(store, connector, &pool, &d, &config, &env, resync, job)?;
            if d.state == DsourceState::ResyncNeeded {
                set_state(store, d.id, DsourceState::Enabled)?;
            }
            Ok(snapshot)
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn sync_inner(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
    resync: bool,
    job: &mut Job,
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
    job.step(store, Step::Connector)?;
    connector.invoke("linked.pre_snapshot", &input, platform.clone())?;
    let label = format!("{}-{}", d.dataset, store::now_millis());
    job.note(store, "snapshot_of", json!(d.dataset))?;
    job.note(store, "snapshot", json!(label))?;
    job.step(store, Step::Snapshot)?;
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
    let snapshot = store.atomically(|| {
        let timeflow = match timeflow::list(store, ContainerKind::Dsource, d.id)?.pop() {
            Some(tf) if !resync => tf,
            _ => timeflow::create(store, ContainerKind::Dsource, d.id, None, &d.dataset)?,
        };
        timeflow::add_snapshot(store, timeflow.id, taken.id, &meta)
    })?;
    job.step(store, Step::Committed)?;
    hooks::run(env, d.parameters.get("hooks"), "post_sync", &hook_vars)?;
    let removed = timeflow::apply_retention(store, pool, ContainerKind::Dsource, d.id)?;
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
        "linked_source": d.unsealed_parameters(store)?,
        "dsource": {"name": d.name, "id": d.id},
        "mount": {"path": pool.effective_path(&d.dataset, &d.mount_path)},
        "default_mount_path": d.mount_path,
    }))
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
fn start_staging(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    let cx = context(store, d)?;
    let mut input = input_for(store, &cx.pool, d, &cx.config, &cx.env)?;
    placement::mount_as_specified(
        store,
        connector,
        &cx.pool,
        placement::Placement {
            group: "linked",
            dataset: &d.dataset,
            fallback: &d.mount_path,
        },
        &cx.env,
        &mut input,
    )?;
    connector.invoke("linked.start_staging", &input, HostPlatform::new(&cx.env))?;
    Ok(())
}

/// Stops staging (`purpose`: `disable` or `delete`, which also lets the
/// connector drop what it made on the source).
fn stop_staging(
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

/// Enables a disabled dSource: mount and start staging.
pub fn enable(store: &Store, connector: &Connector, name: &str) -> Result<DSource> {
    let d = get(store, name)?;
    jobs::run(
        store,
        JobKind::EnableDsource,
        (ContainerKind::Dsource, d.id, &d.name),
        |_| finish_enable(store, connector, &d),
    )?;
    get(store, name)
}

fn finish_enable(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    start_staging(store, connector, d)?;
    set_state(store, d.id, DsourceState::Enabled)
}

/// Disables a dSource: stop staging and unmount.
pub fn disable(store: &Store, connector: &Connector, name: &str) -> Result<DSource> {
    let d = get(store, name)?;
    jobs::run(
        store,
        JobKind::DisableDsource,
        (ContainerKind::Dsource, d.id, &d.name),
        |_| finish_disable(store, connector, &d),
    )?;
    get(store, name)
}

fn finish_disable(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    let pool = Pool::open(store)?;
    stop_staging(store, connector, &pool, d, "disable")?;
    pool.unmount(store, &d.dataset)?;
    set_state(store, d.id, DsourceState::Disabled)
}

/// Deletes a dSource: refused while anything depends on its snapshots
/// (delete those first; [`super::teardown`] deletes them too).
pub fn delete(store: &Store, connector: &Connector, name: &str) -> Result<()> {
    let d = get(store, name)?;
    let pool = Pool::open(store)?;
    let dependents = super::ownership::dependents_of(store, &pool, ContainerKind::Dsource, d.id)?;
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "{} on snapshots of dSource {name}; delete them first, or pass --with-vdbs",
            super::ownership::depend_phrase(&dependents)
        )));
    }
    jobs::run(
        store,
        JobKind::DeleteDsource,
        (ContainerKind::Dsource, d.id, &d.name),
        |_| {
            set_state(store, d.id, DsourceState::Deleting)?;
            finish_delete(store, connector, &pool, &d)
        },
    )
}

fn finish_delete(store: &Store, connector: &Connector, pool: &Pool, d: &DSource) -> Result<()> {
    stop_staging(store, connector, pool, d, "delete")?;
    remove_storage(store, pool, d)?;
    store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Repairs what an interrupted job on a dSource left; says what it did.
pub fn repair(store: &Store, connector: &Connector, job: &Job) -> Result<String> {
    let Some(d) = find_by_id(store, job.target_id)? else {
        return Ok(format!("dSource {} is gone already", job.target_name));
    };
    let pool = Pool::open(store)?;
    match job.kind {
        JobKind::Link if d.state == DsourceState::Enabled => Ok(format!(
            "dSource {}: its link had finished when it was interrupted",
            d.name
        )),
        JobKind::Link => {
            undo_link(store, connector, &pool, &d, job.step);
            Ok(format!(
                "removed dSource {}, left half-made by an interrupted link",
                d.name
            ))
        }
        JobKind::Sync => {
            let mut done = Vec::new();
            if let Some(label) = job.noted("snapshot") {
                if super::ownership::discard_unrecorded(store, &pool, &d.dataset, label)? {
                    done.push("removed its unfinished snapshot".to_owned());
                }
            }
            if d.state == DsourceState::Enabled && job.step >= Step::Connector {
                match start_staging(store, connector, &d) {
                    Ok(()) => done.push("staging replays WAL again".to_owned()),
                    Err(Error::Operation { error, .. })
                        if error.kind == crate::abi::ErrorKind::InvalidState =>
                    {
                        set_state(store, d.id, DsourceState::ResyncNeeded)?;
                        done.push(format!(
                            "its staging was being ingested again; the next `pgvirt dsource sync {}` ingests it anew",
                            d.name
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(format!(
                "dSource {}: an interrupted sync was repaired ({})",
                d.name,
                if done.is_empty() {
                    "nothing was left".to_owned()
                } else {
                    done.join("; ")
                }
            ))
        }
        JobKind::EnableDsource => {
            finish_enable(store, connector, &d)?;
            Ok(format!(
                "dSource {}: finished an interrupted enable",
                d.name
            ))
        }
        JobKind::DisableDsource => {
            finish_disable(store, connector, &d)?;
            Ok(format!(
                "dSource {}: finished an interrupted disable",
                d.name
            ))
        }
        JobKind::DeleteDsource => {
            finish_delete(store, connector, &pool, &d)?;
            Ok(format!(
                "finished the interrupted delete of dSource {}",
                d.name
            ))
        }
        other => Err(Error::usage(format!(
            "job {} ({other}) is not a dSource job",
            job.id
        ))),
    }
}

/// State, replication health, the last snapshot, and any job at work on it.
pub fn show(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let d = get(store, name)?;
    let cx = context(store, &d)?;
    let mut input = input_for(store, &cx.pool, &d, &cx.config, &cx.env)?;
    input["snapshot_in_progress"] = json!(jobs::syncing(store, d.id)?);
    let status = connector
        .invoke("linked.status", &input, HostPlatform::new(&cx.env))
        .map(|s| s["status"].clone())
        .unwrap_or(json!("UNKNOWN"));
    let health = if status == json!("ACTIVE") {
        connector
            .invoke("linked.worker", &input, HostPlatform::new(&cx.env))
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    } else {
        json!({"running": false, "connected": false})
    };
    let last = timeflow::snapshots(store, ContainerKind::Dsource, d.id)?
        .into_iter()
        .last();
    let busy: Vec<Value> = jobs::running_on(store, ContainerKind::Dsource, d.id)?
        .into_iter()
        .map(|j| json!({"job": j.kind, "pid": j.pid, "since": j.started_at}))
        .collect();
    Ok(json!({
        "dsource": d,
        "status": status,
        "replication": health,
        "last_snapshot": last,
        "busy": busy,
    }))
}

/// A staging port must be free on this host before anything is made.
fn check_port_free(store: &Store, port: u16) -> Result<()> {
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

fn set_state(store: &Store, id: i64, state: DsourceState) -> Result<()> {
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
