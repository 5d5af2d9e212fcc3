//! A VDB's kept WAL: each of its timeflows archives into a WAL dataset of
//! its own (`<dataset>-wal`: every timeflow is one promotion, with its own
//! timeline), so that `vdb rewind --at` and `vdb refresh --at` of its
//! children reach any moment after one of its snapshots, as they do for a
//! dSource.

use std::path::PathBuf;

use serde_json::json;

use super::{input_for, Vdb};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::Result;
use crate::host::lifecycle::pitr;
use crate::host::lifecycle::placement;
use crate::host::lifecycle::timeflow::{self, ContainerKind, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Where the WAL after `snapshot` (one of the VDB's) is kept, if anywhere.
pub fn kept_path(
    store: &Store,
    pool: &Pool,
    vdb: &Vdb,
    snapshot: &Snapshot,
) -> Result<Option<PathBuf>> {
    let Some(tf) = timeflow::list(store, ContainerKind::Vdb, vdb.id)?
        .into_iter()
        .find(|t| t.id == snapshot.timeflow_id)
    else {
        return Ok(None);
    };
    Ok(pool
        .find_dataset(store, &placement::wal_dataset(&tf.dataset))?
        .map(|ds| ds.path))
}

/// Archives what the VDB has written up to now (when it runs), so that its
/// ranges reach this moment.
pub fn archive_now(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<()> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let mut input = input_for(store, &pool, vdb, &env)?;
    if let Some(wal) = pool.find_dataset(store, &super::wal_dataset(vdb))? {
        input["wal"] = json!({ "path": wal.path });
    }
    connector.invoke("virtual.archive_wal", &input, HostPlatform::new(&env))?;
    Ok(())
}

/// The provisionable ranges of a VDB: its snapshots and the WAL kept after
/// them, timeflow by timeflow.
pub fn ranges(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<Vec<pitr::Range>> {
    let env = environments::get(store, &vdb.environment)?;
    let pool = Pool::open(store)?;
    let snapshots = timeflow::snapshots(store, ContainerKind::Vdb, vdb.id)?;
    let mut input = input_for(store, &pool, vdb, &env)?;
    pitr::ranges(&snapshots, |s| {
        let Some(wal) = kept_path(store, &pool, vdb, s)? else {
            return Ok(pitr::Kept::default());
        };
        input["wal"] = json!({ "path": wal });
        input["from_lsn"] = s.metadata["checkpoint_lsn"].clone();
        input["timeline"] = s.metadata["timeline"].clone();
        input["wal_segment_size"] = s.metadata["wal_segment_size"].clone();
        let out = connector.invoke("virtual.wal_range", &input, HostPlatform::new(&env))?;
        Ok(pitr::Kept::from_output(&out))
    })
}

/// Prunes what the current timeflow keeps from before its oldest snapshot
/// (nothing can recover from there). Returns the files removed.
pub fn prune(store: &Store, connector: &Connector, vdb: &Vdb) -> Result<u64> {
    let pool = Pool::open(store)?;
    let Some(wal) = pool.find_dataset(store, &super::wal_dataset(vdb))? else {
        return Ok(0);
    };
    let tf = timeflow::current(store, ContainerKind::Vdb, vdb.id)?;
    let Some(oldest) = timeflow::snapshots(store, ContainerKind::Vdb, vdb.id)?
        .into_iter()
        .filter(|s| s.timeflow_id == tf.id)
        .filter_map(|s| {
            s.metadata["checkpoint_lsn"]
                .as_str()
                .and_then(pitr::parse_lsn)
                .map(|l| (l, s))
        })
        .min_by_key(|(l, _)| *l)
    else {
        return Ok(0);
    };
    let env = environments::get(store, &vdb.environment)?;
    let mut input = input_for(store, &pool, vdb, &env)?;
    input["wal"] = json!({ "path": wal.path });
    input["before_lsn"] = json!(pitr::lsn_text(oldest.0));
    input["wal_segment_size"] = oldest.1.metadata["wal_segment_size"].clone();
    let out = connector.invoke("virtual.wal_prune", &input, HostPlatform::new(&env))?;
    Ok(out["removed"].as_u64().unwrap_or(0))
}
