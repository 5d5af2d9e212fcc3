//! Syncing: a new snapshot of staging at a consistent point (re-ingested on
//! a resync, on a new timeflow).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::{get, input_for, prepare, set_state, DSource, DsourceState};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery::{self, SourceConfig};
use crate::host::lifecycle::jobs::{self, Job, JobKind, Step};
use crate::host::lifecycle::timeflow::{self, ContainerKind, Snapshot};
use crate::host::lifecycle::{hooks, placement};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

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
            return Err(Error::Refused(format!(
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
pub(super) fn sync_inner(
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
            wal: &placement::wal_dataset(&d.dataset),
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
        let snapshot = timeflow::add_snapshot(store, timeflow.id, taken.id, &meta)?;
        job.step(store, Step::Committed)?;
        Ok(snapshot)
    })?;
    let prepared = if prepare::worth_it(&snapshot, pool) {
        prepare::prepare(store, connector, pool, d, config, env, &snapshot, job)
    } else {
        Ok(())
    };
    let snapshot = match prepared {
        Ok(()) => timeflow::snapshot(store, snapshot.id)?,
        Err(e) => {
            log::warn!(
                "snapshot {} of dSource {} could not be prepared ({e}); VDBs made from it recover at start",
                snapshot.id,
                d.name
            );
            snapshot
        }
    };
    hooks::run(env, d.parameters.get("hooks"), "post_sync", &hook_vars)?;
    let removed = timeflow::apply_retention(store, pool, ContainerKind::Dsource, d.id)?;
    if !removed.is_empty() {
        log::info!(
            "retention removed snapshots {removed:?} of dSource {}",
            d.name
        );
    }
    match super::prune_wal(store, connector, d) {
        Ok(0) => {}
        Ok(n) => log::info!("pruned {n} kept WAL files of dSource {}", d.name),
        Err(e) => log::warn!("could not prune the kept WAL of dSource {}: {e}", d.name),
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
