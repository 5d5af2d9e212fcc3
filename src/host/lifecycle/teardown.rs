//! Deleting a dSource with everything provisioned from it.

use super::dsource;
use super::vdb::{self, ParentKind};
use crate::host::connectors::loader::Connector;
use crate::host::error::Result;
use crate::host::store::Store;

/// Deletes a dSource; with `with_vdbs`, first every VDB provisioned from
/// it (and their children). Returns the VDBs deleted.
pub fn delete_dsource(
    store: &Store,
    connector: &Connector,
    name: &str,
    with_vdbs: bool,
) -> Result<Vec<String>> {
    let d = dsource::get(store, name)?;
    let mut deleted = Vec::new();
    // Refused before anything goes (a staging push's cluster still runs).
    dsource::check_may_stop(store, connector, &d)?;
    if with_vdbs {
        for v in vdb::children(store, ParentKind::Dsource, d.id)? {
            deleted.extend(vdb::delete_tree(store, connector, &v.name)?);
        }
    }
    dsource::delete(store, connector, name)?;
    Ok(deleted)
}
