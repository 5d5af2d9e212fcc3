//! Enabling, disabling and deleting a dSource.

use super::link::remove_storage;
use super::{get, set_state, start_staging, stop_staging, DSource, DsourceState};
use crate::host::connectors::loader::Connector;
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{self, JobKind};
use crate::host::lifecycle::timeflow::ContainerKind;
use crate::host::lifecycle::{ownership, placement};
use crate::host::storage::Pool;
use crate::host::store::Store;

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

pub(super) fn finish_enable(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
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

pub(super) fn finish_disable(store: &Store, connector: &Connector, d: &DSource) -> Result<()> {
    let pool = Pool::open(store)?;
    stop_staging(store, connector, &pool, d, "disable")?;
    pool.unmount(store, &d.dataset)?;
    pool.unmount(store, &placement::wal_dataset(&d.dataset))?;
    set_state(store, d.id, DsourceState::Disabled)
}

/// Deletes a dSource: refused while anything depends on its snapshots
/// (delete those first; [`crate::host::lifecycle::teardown`] deletes them too).
pub fn delete(store: &Store, connector: &Connector, name: &str) -> Result<()> {
    let d = get(store, name)?;
    let pool = Pool::open(store)?;
    let dependents = ownership::dependents_of(store, &pool, ContainerKind::Dsource, d.id)?;
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "{} on snapshots of dSource {name}; delete them first, or pass --with-vdbs",
            ownership::depend_phrase(&dependents)
        )));
    }
    super::check_may_stop(store, connector, &d)?;
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

pub(super) fn finish_delete(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
) -> Result<()> {
    stop_staging(store, connector, pool, d, "delete")?;
    remove_storage(store, pool, d)?;
    store
        .conn()
        .execute("DELETE FROM dsources WHERE id = ?1", [d.id])
        .map_err(|e| store.err(e))?;
    Ok(())
}
