//! What the dSource and VDB workflows share: asking the connector where a
//! dataset goes (`mount_specification`) and putting it there — and, when
//! the connector keeps WAL (`"wal": {"path": ...}` in its answer), the
//! dataset's WAL dataset (made when missing) too; and
//! lending a dSource's kept WAL, read-only, to a clone that recovers with it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::host::connectors::loader::Connector;
use crate::host::environments::{Environment, HostPlatform};
use crate::host::error::Result;
use crate::host::storage::{mount, Pool};
use crate::host::store::Store;

/// Which dataset to place, for which operation group, and where when the
/// connector names no path.
pub struct Placement<'a> {
    /// `linked` or `virtual`.
    pub group: &'a str,
    pub dataset: &'a str,
    /// Its WAL dataset's name, made when the connector keeps WAL.
    pub wal: &'a str,
    pub fallback: &'a Path,
}

/// The name of a dataset's WAL dataset.
pub fn wal_dataset(dataset: &str) -> String {
    format!("{dataset}-wal")
}

/// What `input` offers the connector for placing a dataset: its default
/// mount path and that of its WAL dataset `wal`.
pub fn offer(pool: &Pool, wal: &str, fallback: &Path, input: &mut Value) {
    input["default_mount_path"] = json!(fallback);
    input["default_wal_path"] = json!(pool.default_mount_path(wal));
}

/// Calls `<group>.mount_specification`, mounts the dataset (and its WAL
/// dataset) where it says, and records the paths in `input` for the
/// operations that follow. Returns the path the user sees.
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
    input["mount"] = json!({
        "path": path,
        "atomic_snapshots": pool.backend().snapshots_atomically(),
    });
    if let Some(wal) = spec.pointer("/wal/path").and_then(Value::as_str) {
        let name = placement.wal;
        if pool.find_dataset(store, name)?.is_none() {
            pool.create_dataset(store, name, Some(&env.user()?))?;
        }
        let wal_path = pool.mount(store, name, Path::new(wal))?;
        input["wal"] = json!({ "path": wal_path });
    }
    Ok(path)
}

/// Where a clone on `dataset` reads its parent's kept WAL while it recovers
/// (`<pool>/mounts/<dataset>-walsrc`, mounted read-only there for that
/// time only).
pub fn wal_source(pool: &Pool, dataset: &str) -> PathBuf {
    pool.default_mount_path(&format!("{dataset}-walsrc"))
}

/// Mounts the kept WAL at `kept` read-only at the WAL source of `dataset`
/// and names it in `input` (`parent_wal.path`; `wal` is the clone's own).
pub fn lend_wal(pool: &Pool, dataset: &str, kept: &Path, input: &mut Value) -> Result<()> {
    let path = mount::bind_read_only(kept, &wal_source(pool, dataset))?;
    input["parent_wal"] = json!({ "path": path });
    Ok(())
}

/// Unmounts the WAL lent to `dataset`, if it is mounted.
pub fn return_wal(pool: &Pool, dataset: &str) -> Result<()> {
    mount::unmount_path(&wal_source(pool, dataset))
}
