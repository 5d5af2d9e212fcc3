//! Linking a source: everything checked before anything is made, then the
//! first ingest and snapshot; on failure (or, by [`super::repair`], after a
//! kill) everything it made is removed, as far as it got.

use std::path::PathBuf;

use rusqlite::params;
use serde_json::{json, Value};

use super::sync::sync_inner;
use super::{check_port_free, get, owner, set_state, stop_staging, DSource, DsourceState};
use crate::host::connectors::loader::Connector;
use crate::host::environments;
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery::{self, SourceConfig};
use crate::host::lifecycle::jobs::{Job, JobKind, Step};
use crate::host::lifecycle::names;
use crate::host::lifecycle::timeflow::{self, ContainerKind, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

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
    let source_env = environments::get(store, &config.environment)?;
    let env = staging_environment(store, request.environment, &source_env)?;
    let mut request = request;
    fill_source_defaults(&mut request.parameters, &config, &source_env);
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
            if let Err(undo) = undo_link(store, connector, &pool, &d, job.step) {
                // The job stays running-dead: the next command repairs it.
                log::warn!("cleaning up the failed link of {}: {undo}", d.name);
                return Err(e);
            }
            job.fail(store, &e)?;
            Err(e)
        }
    }
}

/// Where staging runs: on the engine's host, whose storage it lives on.
/// Default: the source config's environment when that is local, else the
/// engine's (first) local environment.
fn staging_environment(
    store: &Store,
    asked: Option<&str>,
    source_env: &environments::Environment,
) -> Result<environments::Environment> {
    let env = match asked {
        Some(name) => environments::get(store, name)?,
        None if source_env.is_local() => source_env.clone(),
        None => environments::list(store)?
            .into_iter()
            .find(environments::Environment::is_local)
            .ok_or_else(|| {
                Error::usage(format!(
                    "the source is on remote environment {}; staging runs on the engine's host: \
                     add it with `pgvirt env add local --user postgres` and `pgvirt env refresh local`",
                    source_env.name
                ))
            })?,
    };
    if !env.is_local() {
        return Err(Error::usage(format!(
            "--env {}: staging runs on the engine's host, where its storage is; {} is remote \
             (name a local environment, or leave --env out)",
            env.name, env.name
        )));
    }
    Ok(env)
}

/// Where to reach a source the method connects to, when the parameters do
/// not say: the host of the source config's environment (this host for a
/// local one), on the source config's port.
fn fill_source_defaults(
    params: &mut Value,
    config: &SourceConfig,
    source_env: &environments::Environment,
) {
    let Some(pointer) = crate::abi::IngestionMethod::of(params).source_pointer() else {
        return;
    };
    if !params.is_object() {
        return;
    }
    // The streaming methods' `source` may be left out; single_database's
    // object is required (the schema says so if it is missing).
    if pointer == "/source" {
        if let Some(p) = params.as_object_mut() {
            p.entry("source").or_insert_with(|| json!({}));
        }
    }
    if let Some(Value::Object(source)) = params.pointer_mut(pointer) {
        let host = source_env
            .ssh
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |t| t.host.clone());
        source.entry("host").or_insert_with(|| json!(host));
        if !source.contains_key("port") {
            if let Some(port) = config.document.get("port") {
                source.insert("port".into(), port.clone());
            }
        }
    }
}

/// Removes everything a link made, as far as it got (best effort).
pub(super) fn undo_link(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    reached: Step,
) -> Result<()> {
    if reached >= Step::Connector {
        // The connector undoes what it made: its staging, its slot, its
        // passfile. It was not called before this step, so nothing to undo.
        if let Err(e) = stop_staging(store, connector, pool, d, "delete") {
            log::warn!("cleaning up the failed link of {}: {e}", d.name);
        }
    }
    // Storage that cannot go yet keeps the row (and its job, for the next
    // command): nothing is left that no object owns.
    remove_storage(store, pool, d)?;
    store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Frees a dSource's storage: processes still using it, its mount, every
/// snapshot of its dataset (recorded or not), the dataset, its timeflows.
pub(super) fn remove_storage(store: &Store, pool: &Pool, d: &DSource) -> Result<()> {
    let wal = crate::host::lifecycle::placement::wal_dataset(&d.dataset);
    pool.release(store, &d.dataset)?;
    pool.release(store, &wal)?;
    // Prepared images first (they are clones of the snapshots), recorded
    // or left unrecorded by a cut-short sync.
    let prefix = format!("{}-prep-", d.dataset);
    for name in pool.dataset_names(store)? {
        if name.starts_with(&prefix) {
            // The kept WAL lent to a preparation cut short.
            crate::host::lifecycle::placement::return_wal(pool, &name)?;
            pool.release(store, &name)?;
            pool.destroy_dataset_tree(store, &name)?;
        }
    }
    for s in timeflow::snapshots(store, ContainerKind::Dsource, d.id)? {
        timeflow::discard(store, pool, &s)?;
    }
    pool.destroy_dataset_tree(store, &d.dataset)?;
    pool.destroy_dataset_tree(store, &wal)?;
    timeflow::remove_container(store, ContainerKind::Dsource, d.id)
}
