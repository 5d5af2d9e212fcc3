//! What the dSource and VDB workflows share: asking the connector where a
//! dataset goes (`mount_specification`) and putting it there.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::host::connectors::loader::Connector;
use crate::host::environments::{Environment, HostPlatform};
use crate::host::error::Result;
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Which dataset to place, for which operation group, and where when the
/// connector names no path.
pub struct Placement<'a> {
    /// `linked` or `virtual`.
    pub group: &'a str,
    pub dataset: &'a str,
    pub fallback: &'a Path,
}

/// Calls `<group>.mount_specification`, mounts the dataset where it says,
/// and records the path in `input` for the operations that follow. Returns
/// the path the user sees.
pub fn mount_as_specified(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    placement: Placement<'_>,
    env: &Environment,
    input: &mut Value,
) -> Result<PathBuf> {
    let operation = format!("{}.mount_specification", placement.group);
    let spec = connector.invoke(&operation, input, HostPlatform::new(env))?;
    let wanted = spec
        .pointer("/mounts/0/path")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| placement.fallback.to_owned());
    let path = pool.mount(store, placement.dataset, &wanted)?;
    input["mount"] = json!({"path": path});
    Ok(path)
}
