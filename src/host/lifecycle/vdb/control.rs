//! Running a VDB: start, stop, status, enable, disable, and snapshots.

use serde_json::json;

use crate::abi::Status;

use super::{get, input_for, mount, quota, run_hook, set_config, set_state, Vdb, VdbState};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::Result;
use crate::host::lifecycle::jobs::{self, JobKind, Step};
use crate::host::lifecycle::timeflow::{self, ContainerKind, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::{self, Store};

/// Starts a VDB (also after its postgres crashed).
pub fn start(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    jobs::run(
        store,
        JobKind::Start,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |_| {
            let env = environments::get(store, &vdb.environment)?;
            run_hook(&env, &vdb, "pre_start")?;
            quota::reapply(store, &vdb)?;
            finish_start(store, connector, &vdb).map_err(|e| quota::explain(store, &vdb, e))?;
            run_hook(&env, &vdb, "post_start")
        },
    )?;
    get(store, name)
}

pub(super) fn finish_start(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<()> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let mut input = input_for(store, &pool, vdb, &env)?;
    mount(store, connector, &pool, vdb, &env, &mut input)?;
    connector.invoke("virtual.start", &input, HostPlatform::new(&env))?;
    set_state(store, vdb.id, VdbState::Running)
}

/// Stops a VDB.
pub fn stop(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    jobs::run(
        store,
        JobKind::Stop,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |_| {
            let env = environments::get(store, &vdb.environment)?;
            run_hook(&env, &vdb, "pre_stop")?;
            finish_stop(store, connector, &vdb, VdbState::Stopped)?;
            run_hook(&env, &vdb, "post_stop")
        },
    )?;
    get(store, name)
}

/// Stops the server, unmounts, records `state` (stopped or disabled).
pub(super) fn finish_stop(
    store: &Store,
    connector: &Connector,
    vdb: &Vdb,
    state: VdbState,
) -> Result<()> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, vdb, &env)?;
    connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
    pool.unmount(store, &vdb.dataset)?;
    pool.unmount(store, &super::wal_dataset(vdb))?;
    set_state(store, vdb.id, state)
}

/// ACTIVE or INACTIVE, as the connector sees it now.
pub fn status(store: &Store, connector: &Connector, name: &str) -> Result<Status> {
    live_status(store, connector, &get(store, name)?)
}

pub(super) fn live_status(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<Status> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let input = input_for(store, &pool, vdb, &env)?;
    let out = connector.invoke("virtual.status", &input, HostPlatform::new(&env))?;
    // The loader checked the output is a status.
    Ok(Status::of(&out).unwrap_or(Status::Inactive))
}

/// Enables a disabled VDB: if INACTIVE, mount and reconfigure.
pub fn enable(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    jobs::run(
        store,
        JobKind::EnableVdb,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |_| finish_enable(store, connector, &vdb),
    )?;
    get(store, name)
}

pub(super) fn finish_enable(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<()> {
    if live_status(store, connector, vdb)? == Status::Inactive {
        let env = environments::get(store, &vdb.environment)?;
        let pool = Pool::open(store)?;
        let mut input = input_for(store, &pool, vdb, &env)?;
        mount(store, connector, &pool, vdb, &env, &mut input)?;
        input["fresh_clone"] = json!(false);
        let config = connector.invoke("virtual.reconfigure", &input, HostPlatform::new(&env))?;
        set_config(store, vdb.id, &config, VdbState::Running)?;
    } else {
        set_state(store, vdb.id, VdbState::Running)?;
    }
    Ok(())
}

/// Disables a VDB: unconfigure (stop) and unmount.
pub fn disable(store: &Store, connector: &Connector, name: &str) -> Result<Vdb> {
    let vdb = get(store, name)?;
    jobs::run(
        store,
        JobKind::DisableVdb,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |_| finish_stop(store, connector, &vdb, VdbState::Disabled),
    )?;
    get(store, name)
}

/// Takes a snapshot of a VDB.
pub fn snapshot(store: &Store, connector: &Connector, name: &str) -> Result<Snapshot> {
    let vdb = get(store, name)?;
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    jobs::run(
        store,
        JobKind::SnapshotVdb,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |job| {
            run_hook(&env, &vdb, "pre_snapshot")?;
            // A stopped VDB is unmounted: its files must be where the
            // connector looks.
            let mut input = input_for(store, &pool, &vdb, &env)?;
            mount(store, connector, &pool, &vdb, &env, &mut input)?;
            job.step(store, Step::Connector)?;
            connector.invoke("virtual.pre_snapshot", &input, HostPlatform::new(&env))?;
            let label = format!("{}-{}", vdb.dataset, store::now_millis());
            job.note(store, "snapshot_of", json!(vdb.dataset))?;
            job.note(store, "snapshot", json!(label))?;
            job.step(store, Step::Snapshot)?;
            let taken = pool.snapshot(store, &vdb.dataset, &label);
            // post_snapshot restarts the VDB: call it even when the snapshot failed.
            let meta = connector.invoke("virtual.post_snapshot", &input, HostPlatform::new(&env));
            let taken = taken?;
            let meta = meta.inspect_err(|_| {
                let _ = pool.destroy_snapshot(store, taken.id);
            })?;
            let tf = timeflow::current(store, ContainerKind::Vdb, vdb.id)?;
            let snapshot = store.atomically(|| {
                let snapshot = timeflow::add_snapshot(store, tf.id, taken.id, &meta)?;
                job.step(store, Step::Committed)?;
                Ok(snapshot)
            })?;
            run_hook(&env, &vdb, "post_snapshot")?;
            let removed = timeflow::apply_retention(store, &pool, ContainerKind::Vdb, vdb.id)?;
            if !removed.is_empty() {
                log::info!("retention removed snapshots {removed:?} of VDB {name}");
            }
            if let Err(e) = super::wal::prune(store, connector, &vdb) {
                log::warn!("could not prune the kept WAL of VDB {name}: {e}");
            }
            Ok(snapshot)
        },
    )
}
