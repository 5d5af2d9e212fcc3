//! Prepared images: each snapshot of a dSource is recovered once, right
//! after it is taken — cloned, brought to its point by `virtual.configure`
//! (recovery from its backup label), shut down cleanly by
//! `virtual.pre_snapshot`, and snapshotted — so that VDBs cloned from it
//! start without recovery, however much WAL staging had to replay (issue
//! 10: provision time that does not grow with the write load). A moment past
//! the snapshot is recovered from the snapshot as taken.

use serde_json::json;

use super::{input_for, DSource};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery::SourceConfig;
use crate::host::lifecycle::jobs::Job;
use crate::host::lifecycle::placement;
use crate::host::lifecycle::timeflow::{self, Snapshot};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// A clone replays the WAL from the snapshot's redo point to its point;
/// below this much, that takes well under a second. On a copy pool a
/// prepared image costs two full copies more per sync: there it is made
/// only above this. (On a thin pool it is always made: cheap, and a clone
/// that starts without recovery also writes no new WAL segments, which a
/// small quota would not hold.)
const PREPARE_ABOVE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether `snapshot` is worth preparing: what its clones would replay.
/// Only a snapshot its clones recover (from its backup label) is: one not
/// provisionable, or of a cluster shut down cleanly (staging push, single
/// database), has nothing to recover.
pub(super) fn worth_it(snapshot: &Snapshot, pool: &Pool) -> bool {
    let recovers = snapshot.metadata["provisionable"] == serde_json::json!(true)
        && snapshot.metadata.get("backup_label").is_some();
    if !recovers {
        return false;
    }
    if pool.backend() != crate::host::storage::Backend::Copy {
        return true;
    }
    let lsn = |k: &str| {
        snapshot.metadata[k]
            .as_str()
            .and_then(crate::host::lifecycle::pitr::parse_lsn)
    };
    match (lsn("redo_lsn"), lsn("replayed_lsn")) {
        (Some(redo), Some(point)) => point.saturating_sub(redo) > PREPARE_ABOVE_BYTES,
        _ => false,
    }
}

/// The dataset a snapshot's image is prepared on.
pub(super) fn dataset_for(d: &DSource, snapshot: &Snapshot) -> String {
    format!("{}-prep-{}", d.dataset, snapshot.id)
}

/// Prepares the image of `snapshot`; on failure removes what it made (the
/// snapshot stays, provisionable with recovery).
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    store: &Store,
    connector: &Connector,
    pool: &Pool,
    d: &DSource,
    config: &SourceConfig,
    env: &Environment,
    snapshot: &Snapshot,
    job: &mut Job,
) -> Result<()> {
    let name = dataset_for(d, snapshot);
    job.note(store, "prep_dataset", json!(name))?;
    pool.clone_snapshot(
        store,
        snapshot.dataset_snapshot_id,
        &name,
        Some(&env.user()?),
    )?;
    let made = (|| {
        let path = pool.mount(store, &name, &pool.default_mount_path(&name))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| {
                Error::io(
                    "cannot find a free port on",
                    std::path::Path::new("127.0.0.1"),
                    e,
                )
            })?;
        let linked = input_for(store, pool, d, config, env)?;
        let mut input = json!({
            "environment": linked["environment"],
            "repository": linked["repository"],
            "virtual_source": {},
            "vdb": {"name": name, "port": port},
            "mount": {"path": path},
            "snapshot": snapshot.metadata,
        });
        // A snapshot taken while staging replayed reaches its point with
        // the kept WAL, lent read-only for the recovery.
        if snapshot.needs_kept_wal() {
            let kept = super::wal_path(store, d)?
                .ok_or_else(|| Error::NotFound(format!("dSource {} keeps no WAL", d.name)))?;
            placement::lend_wal(pool, &name, &kept, &mut input)?;
        }
        let configured = connector.invoke("virtual.configure", &input, HostPlatform::new(env));
        placement::return_wal(pool, &name)?;
        configured?;
        // Stops it cleanly, leaves no backup label for its clones, and
        // only the WAL segment of its shutdown checkpoint.
        input["trim_wal"] = json!(true);
        connector.invoke("virtual.pre_snapshot", &input, HostPlatform::new(env))?;
        pool.unmount(store, &name)?;
        let image = pool.snapshot(store, &name, "prepared")?;
        timeflow::set_prepared(store, snapshot.id, image.id)
    })();
    if made.is_err() {
        discard(store, pool, &name);
    }
    made
}

/// Removes a prepared dataset and what runs on it (best effort).
pub(super) fn discard(store: &Store, pool: &Pool, name: &str) {
    let _ = placement::return_wal(pool, name);
    if let Err(e) = pool
        .release(store, name)
        .and_then(|()| pool.destroy_dataset_tree(store, name))
    {
        log::warn!("removing the unfinished prepared image {name}: {e}");
    }
}
