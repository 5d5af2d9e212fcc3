//! Refresh (to a newer snapshot of the parent) and rewind (to one of the
//! VDB's own snapshots): the snapshot is cloned onto a new dataset while the
//! VDB still runs on its old one; the old VDB stops, the new one starts in
//! its place (same name, port, parameters); only once it runs is the switch
//! recorded — in one transaction — and the old dataset freed. Cut short
//! before that, [`rollback`] brings back the old VDB as it was; after it,
//! only tidying is left. Either way the VDB exists: the old or the new.

use rusqlite::params;
use serde_json::json;

use super::provision::{at_target, check_provisionable, lend_parent_wal, resolve_origin, Origin};
use super::{get, input_for, mount, next_dataset, run_hook, Vdb, VdbState};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{Job, JobKind, Step};
use crate::host::lifecycle::pitr::Target;
use crate::host::lifecycle::placement;
use crate::host::lifecycle::timeflow::{self, ContainerKind};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Refreshes a VDB to its parent's latest (or a chosen newer) snapshot.
pub fn refresh(
    store: &Store,
    connector: &Connector,
    name: &str,
    snapshot: Option<i64>,
    target: Option<Target>,
) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let Some(parent) = vdb
        .parent
        .clone()
        .filter(|_| vdb.parent_kind.container().is_some())
    else {
        return Err(Error::usage(format!(
            "VDB {name} has no parent to refresh from (it was created empty, or its parent is gone)"
        )));
    };
    let spec = match snapshot {
        Some(id) => format!("{parent}@{id}"),
        None => parent,
    };
    let mut origin = resolve_origin(store, &spec)?;
    if let Some(target) = &target {
        origin.snapshot = at_target(store, connector, &origin, target)?;
    }
    check_provisionable(&origin.snapshot)?;
    let target = target.filter(|t| t.past(&origin.snapshot));
    reclone(store, connector, &vdb, &origin, JobKind::Refresh, target)
}

/// Rewinds a VDB to one of its own earlier snapshots, or to a moment past
/// one (recovered with the WAL it keeps).
pub fn rewind(
    store: &Store,
    connector: &Connector,
    name: &str,
    snapshot: Option<i64>,
    target: Option<Target>,
) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let origin = match (snapshot, &target) {
        (Some(id), None) => resolve_origin(store, &format!("{name}@{id}"))?,
        (None, Some(t)) => {
            let mut o = resolve_origin(store, name)?;
            o.snapshot = at_target(store, connector, &o, t)?;
            o
        }
        _ => {
            return Err(Error::usage(
                "give either --snapshot or a moment (--at, --at-lsn)",
            ))
        }
    };
    check_provisionable(&origin.snapshot)?;
    let target = target.filter(|t| t.past(&origin.snapshot));
    reclone(store, connector, &vdb, &origin, JobKind::Rewind, target)
}

fn reclone(
    store: &Store,
    connector: &Connector,
    vdb: &Vdb,
    origin: &Origin,
    kind: JobKind,
    // A moment past the snapshot.
    at: Option<Target>,
) -> Result<Vdb> {
    let snapshot = &origin.snapshot;
    let how = if kind == JobKind::Refresh {
        "refresh"
    } else {
        "rewind"
    };
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let mut job = Job::begin(store, kind, ContainerKind::Vdb, vdb.id, &vdb.name)?;
    let new_dataset = next_dataset(store, &vdb.name)?;
    let switched = (|| {
        job.note(store, "old_dataset", json!(vdb.dataset))?;
        job.note(store, "old_state", json!(vdb.state))?;
        job.note(store, "new_dataset", json!(new_dataset))?;
        run_hook(&env, vdb, &format!("pre_{how}"))?;
        job.step(store, Step::Storage)?;
        let user = env.user()?;
        let image = if at.is_some() {
            snapshot.dataset_snapshot_id
        } else {
            snapshot.image()
        };
        pool.clone_snapshot(store, image, &new_dataset, Some(&user))?;
        if let Some(quota) = vdb.quota_bytes {
            pool.set_quota(store, &new_dataset, quota)?;
        }
        job.step(store, Step::Connector)?;
        let input = input_for(store, &pool, vdb, &env)?;
        connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
        pool.release(store, &vdb.dataset)?;
        let mut next = vdb.clone();
        next.dataset = new_dataset.clone();
        let mut input = input_for(store, &pool, &next, &env)?;
        mount(store, connector, &pool, &next, &env, &mut input)?;
        input["snapshot"] = snapshot.metadata.clone();
        lend_parent_wal(store, &pool, origin, at.as_ref(), &new_dataset, &mut input)?;
        let configured = if kind == JobKind::Refresh {
            connector.invoke("virtual.configure", &input, HostPlatform::new(&env))
        } else {
            input["fresh_clone"] = json!(true);
            connector.invoke("virtual.reconfigure", &input, HostPlatform::new(&env))
        };
        placement::return_wal(&pool, &new_dataset)?;
        let config = configured?;
        store.atomically(|| {
            timeflow::create(
                store,
                ContainerKind::Vdb,
                vdb.id,
                Some(snapshot.id),
                &new_dataset,
            )?;
            store
                .conn()
                .execute(
                    "UPDATE vdbs SET dataset = ?2, origin_snapshot = ?3, source_config = ?4, state = ?5
                     WHERE id = ?1",
                    params![
                        vdb.id,
                        new_dataset,
                        snapshot.id,
                        config.to_string(),
                        VdbState::Running
                    ],
                )
                .map_err(|e| store.err(e))?;
            // In the same transaction: a kill can't fall between the switch
            // and the step that tells repair it happened.
            job.step(store, Step::Committed)
        })?;
        crate::host::storage::fault_pause("switch");
        Ok(())
    })();
    if let Err(e) = switched {
        if let Err(back) = rollback(store, connector, &pool, vdb, &new_dataset) {
            log::warn!(
                "bringing back VDB {} after a failed {how}: {back}",
                vdb.name
            );
        }
        job.fail(store, &e)?;
        return Err(e);
    }
    let current = get(store, &vdb.name)?;
    let after = (|| {
        if kind == JobKind::Refresh {
            run_hook(&env, &current, "configure_clone")?;
        }
        run_hook(&env, &current, &format!("post_{how}"))
    })();
    free_old(store, &pool, &vdb.dataset);
    job.end(store, &after)?;
    after.map(|()| current)
}

/// The old timeflow's dataset goes once the switch is recorded, unless its
/// snapshots (the VDB's history, which rewinds and children use) live on.
pub(super) fn free_old(store: &Store, pool: &Pool, old: &str) {
    let has_snapshots = pool
        .find_dataset(store, old)
        .ok()
        .flatten()
        .is_some_and(|ds| pool.has_snapshots(store, ds.id).unwrap_or(true));
    // Its WAL (kept for moments after its snapshots) is no longer written.
    let wal = placement::wal_dataset(old);
    if let Err(e) = pool.release(store, &wal) {
        log::warn!("unmounting the previous WAL dataset {wal}: {e}");
    }
    if has_snapshots {
        return;
    }
    if let Err(e) = pool
        .destroy_dataset(store, old)
        .and_then(|()| pool.destroy_dataset_tree(store, &wal))
    {
        log::warn!("keeping the previous dataset {old}: {e}");
    }
}

/// Brings back the VDB as it was before a refresh or rewind that did not
/// get to its switch: whatever runs on the new dataset stops, the new
/// dataset goes, and the old one is mounted (and started, if it ran).
pub(super) fn rollback(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    vdb: &Vdb,
    new_dataset: &str,
) -> Result<()> {
    placement::return_wal(pool, new_dataset)?;
    pool.release(store, new_dataset)?;
    pool.destroy_dataset_tree(store, new_dataset)?;
    let wal = placement::wal_dataset(new_dataset);
    pool.release(store, &wal)?;
    pool.destroy_dataset_tree(store, &wal)?;
    if matches!(vdb.state, VdbState::Running | VdbState::Stopped) {
        let env = environments::get(store, &vdb.environment)?;
        let mut input = input_for(store, pool, vdb, &env)?;
        mount(store, connector, pool, vdb, &env, &mut input)?;
        if vdb.state == VdbState::Running {
            connector.invoke("virtual.start", &input, HostPlatform::new(&env))?;
        }
    }
    Ok(())
}
