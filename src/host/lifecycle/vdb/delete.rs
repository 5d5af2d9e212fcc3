//! Deleting VDBs: one (refused while others stand on its snapshots), or one
//! with every VDB provisioned from it.

use super::{
    children, destroy_storage, get, input_for, run_hook, set_state, ParentKind, Vdb, VdbState,
};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{self, JobKind};
use crate::host::lifecycle::ownership;
use crate::host::lifecycle::timeflow::{self, ContainerKind};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Deletes a VDB; refused while VDBs were provisioned from its snapshots.
pub fn delete(store: &Store, connector: &Connector, name: &str) -> Result<()> {
    let vdb = get(store, name)?;
    let pool = Pool::open(store)?;
    let dependents = ownership::dependents_of(store, &pool, ContainerKind::Vdb, vdb.id)?;
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "{} on snapshots of VDB {name}; delete them first, or pass --with-children",
            ownership::depend_phrase(&dependents)
        )));
    }
    jobs::run(
        store,
        JobKind::DeleteVdb,
        (ContainerKind::Vdb, vdb.id, &vdb.name),
        |_| {
            let env = environments::get(store, &vdb.environment)?;
            run_hook(&env, &vdb, "pre_stop")?;
            set_state(store, vdb.id, VdbState::Deleting)?;
            finish_delete(store, connector, &pool, &vdb)?;
            run_hook(&env, &vdb, "post_stop")
        },
    )
}

/// Stops what runs, frees the storage, forgets the VDB. Also finishes a
/// delete that was cut short (then the server or the mount may be gone).
pub(super) fn finish_delete(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    vdb: &Vdb,
) -> Result<()> {
    let env = environments::get(store, &vdb.environment)?;
    if pool.find_dataset(store, &vdb.dataset)?.is_some() {
        let input = input_for(store, pool, vdb, &env)?;
        connector.invoke("virtual.unconfigure", &input, HostPlatform::new(&env))?;
        connector.invoke("virtual.cleanup", &input, HostPlatform::new(&env))?;
    }
    destroy_storage(store, pool, vdb)?;
    timeflow::remove_container(store, ContainerKind::Vdb, vdb.id)?;
    store
        .conn()
        .execute("DELETE FROM vdbs WHERE id = ?1", [vdb.id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Deletes a VDB and, first, every VDB provisioned from it (children of
/// children too). Returns the names deleted, children first.
pub fn delete_tree(store: &Store, connector: &Connector, name: &str) -> Result<Vec<String>> {
    let vdb = get(store, name)?;
    let mut deleted = Vec::new();
    for child in children(store, ParentKind::Vdb, vdb.id)? {
        deleted.extend(delete_tree(store, connector, &child.name)?);
    }
    delete(store, connector, name)?;
    deleted.push(name.to_owned());
    Ok(deleted)
}
