//! Datasets and their snapshots: made, cloned and destroyed through the
//! backend, each change recorded in the store before it touches the
//! filesystem (`creating` / `destroying` with the pid doing it) and finished
//! after, so a kill leaves a row the next command recognises.

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::{mount, Dataset, DatasetSnapshot, DatasetState, Pool, FAULT_PAUSE_ENV};
use crate::host::environments::OsUser;
use crate::host::error::{Error, Result};
use crate::host::files;
use crate::host::store::{self, Store};

impl Pool {
    /// Creates an empty dataset owned by `owner` (mode 0700).
    pub fn create_dataset(
        &self,
        store: &Store,
        name: &str,
        owner: Option<&OsUser>,
    ) -> Result<Dataset> {
        check_dataset_name(name)?;
        let path = self.dataset_path(name);
        self.begin_dataset(store, name, &path, owner, None)?;
        self.backend.create(&path)?;
        files::set_mode(&path, 0o700)?;
        if let Some(owner) = owner {
            // One directory, not a tree: the new dataset is empty.
            owner.chown(&path)?;
        }
        fault_pause("create");
        self.finish(store, "datasets", name)?;
        self.dataset(store, name)
    }

    /// Takes a read-only snapshot of a dataset.
    pub fn snapshot(&self, store: &Store, dataset: &str, name: &str) -> Result<DatasetSnapshot> {
        check_dataset_name(name)?;
        let ds = self.dataset(store, dataset)?;
        let path = self.snapshot_path(dataset, name);
        store
            .conn()
            .execute(
                "INSERT INTO dataset_snapshots (dataset_id, name, path, state, pid, created_at)
                 VALUES (?1, ?2, ?3, 'creating', ?4, ?5)",
                params![
                    ds.id,
                    name,
                    path.to_string_lossy(),
                    std::process::id(),
                    store::now()
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::Conflict(format!("dataset {dataset} already has a snapshot {name:?}"))
                }
                e => store.err(e),
            })?;
        let id = store.conn().last_insert_rowid();
        self.backend.copy(&ds.path, &path, true)?;
        fault_pause("snapshot");
        store
            .conn()
            .execute(
                "UPDATE dataset_snapshots SET state = 'ready', pid = NULL WHERE id = ?1",
                [id],
            )
            .map_err(|e| store.err(e))?;
        self.snapshot_by_id(store, id)
    }

    /// Clones a snapshot into a new writable dataset. Ownership is kept by
    /// the copy itself (`owner` is recorded, and must match).
    pub fn clone_snapshot(
        &self,
        store: &Store,
        snapshot: i64,
        name: &str,
        owner: Option<&OsUser>,
    ) -> Result<Dataset> {
        check_dataset_name(name)?;
        let snap = self.snapshot_by_id(store, snapshot)?;
        if snap.state != DatasetState::Ready {
            return Err(Error::Conflict(format!(
                "snapshot {snapshot} is {}, not ready",
                snap.state
            )));
        }
        let path = self.dataset_path(name);
        self.begin_dataset(store, name, &path, owner, Some(snapshot))?;
        let copied = self.backend.copy(&snap.path, &path, false);
        if let Err(e) = copied {
            let _ = self.backend.destroy(&path);
            let _ = store
                .conn()
                .execute("DELETE FROM datasets WHERE name = ?1", [name]);
            return Err(e);
        }
        fault_pause("clone");
        self.finish(store, "datasets", name)?;
        self.dataset(store, name)
    }

    fn begin_dataset(
        &self,
        store: &Store,
        name: &str,
        path: &Path,
        owner: Option<&OsUser>,
        origin: Option<i64>,
    ) -> Result<()> {
        store
            .conn()
            .execute(
                "INSERT INTO datasets (name, path, owner, origin_snapshot, state, pid, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'creating', ?5, ?6)",
                params![
                    name,
                    path.to_string_lossy(),
                    owner.map(|o| o.name.clone()),
                    origin,
                    std::process::id(),
                    store::now()
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::Conflict(format!("dataset {name:?} exists already"))
                }
                e => store.err(e),
            })?;
        Ok(())
    }

    fn finish(&self, store: &Store, table: &str, name: &str) -> Result<()> {
        store
            .conn()
            .execute(
                &format!("UPDATE {table} SET state = 'ready', pid = NULL WHERE name = ?1"),
                [name],
            )
            .map_err(|e| store.err(e))?;
        Ok(())
    }

    /// Destroys a dataset: refused while it is mounted or has snapshots.
    pub fn destroy_dataset(&self, store: &Store, name: &str) -> Result<()> {
        let Some(ds) = self.find_dataset(store, name)? else {
            return Ok(());
        };
        let snaps = self.snapshots_of(store, ds.id)?;
        if !snaps.is_empty() {
            return Err(Error::Conflict(format!(
                "dataset {name} still has snapshots ({}); destroy them first",
                snaps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.unmount(store, name)?;
        store
            .conn()
            .execute(
                "UPDATE datasets SET state = 'destroying', pid = ?2 WHERE id = ?1",
                params![ds.id, std::process::id()],
            )
            .map_err(|e| store.err(e))?;
        self.backend.destroy(&ds.path)?;
        store
            .conn()
            .execute("DELETE FROM datasets WHERE id = ?1", [ds.id])
            .map_err(|e| store.err(e))?;
        Ok(())
    }

    /// Destroys a snapshot: refused, naming them, while clones depend on it.
    pub fn destroy_snapshot(&self, store: &Store, id: i64) -> Result<()> {
        let Ok(snap) = self.snapshot_by_id(store, id) else {
            return Ok(());
        };
        let dependents = self.dependents(store, id)?;
        if !dependents.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot {} of {} has dependent clones: {}; destroy them first",
                snap.name,
                snap.dataset,
                dependents.join(", ")
            )));
        }
        store
            .conn()
            .execute(
                "UPDATE dataset_snapshots SET state = 'destroying', pid = ?2 WHERE id = ?1",
                params![id, std::process::id()],
            )
            .map_err(|e| store.err(e))?;
        self.backend.destroy(&snap.path)?;
        store
            .conn()
            .execute("DELETE FROM dataset_snapshots WHERE id = ?1", [id])
            .map_err(|e| store.err(e))?;
        Ok(())
    }

    /// A dataset's snapshot by name.
    pub fn find_snapshot(
        &self,
        store: &Store,
        dataset: &str,
        name: &str,
    ) -> Result<Option<DatasetSnapshot>> {
        store.optional(store.conn().query_row(
            "SELECT s.id, d.name, s.name, s.path, s.state FROM dataset_snapshots s
             JOIN datasets d ON d.id = s.dataset_id WHERE d.name = ?1 AND s.name = ?2",
            [dataset, name],
            snapshot_row,
        ))
    }

    /// Stops every process still using a dataset (by its own path or where
    /// it is mounted) and unmounts it: before it is removed or replaced.
    pub fn release(&self, store: &Store, dataset: &str) -> Result<()> {
        let Some(ds) = self.find_dataset(store, dataset)? else {
            return Ok(());
        };
        let mut roots = vec![ds.path.clone()];
        roots.extend(mount::mounted_at(store, ds.id)?);
        crate::host::processes::kill_holders(&roots, std::time::Duration::from_secs(30));
        mount::unmount(store, ds.id)
    }

    /// Destroys a dataset and all its snapshots (refused, naming them, while
    /// clones depend on one of them).
    pub fn destroy_dataset_tree(&self, store: &Store, name: &str) -> Result<()> {
        let Some(ds) = self.find_dataset(store, name)? else {
            return Ok(());
        };
        for snap in self.snapshots_of(store, ds.id)? {
            self.destroy_snapshot(store, snap.id)?;
        }
        self.destroy_dataset(store, name)
    }

    /// Marks a dataset or snapshot as the operator's (made with the
    /// low-level `pgvirt pool dataset` commands): `pool check` does not
    /// count it an orphan.
    pub fn hold_for_operator(
        &self,
        store: &Store,
        dataset: Option<&str>,
        snapshot: Option<i64>,
    ) -> Result<()> {
        if let Some(name) = dataset {
            store
                .conn()
                .execute("UPDATE datasets SET operator = 1 WHERE name = ?1", [name])
                .map_err(|e| store.err(e))?;
        }
        if let Some(id) = snapshot {
            store
                .conn()
                .execute(
                    "UPDATE dataset_snapshots SET operator = 1 WHERE id = ?1",
                    [id],
                )
                .map_err(|e| store.err(e))?;
        }
        Ok(())
    }

    /// The names of all datasets.
    pub fn dataset_names(&self, store: &Store) -> Result<Vec<String>> {
        let mut stmt = store
            .conn()
            .prepare("SELECT name FROM datasets ORDER BY name")
            .map_err(|e| store.err(e))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| store.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))
    }

    /// Whether a dataset has snapshots.
    pub fn has_snapshots(&self, store: &Store, dataset_id: i64) -> Result<bool> {
        Ok(!self.snapshots_of(store, dataset_id)?.is_empty())
    }

    /// Names of the datasets cloned from a snapshot.
    pub fn dependents(&self, store: &Store, snapshot: i64) -> Result<Vec<String>> {
        let mut stmt = store
            .conn()
            .prepare("SELECT name FROM datasets WHERE origin_snapshot = ?1 ORDER BY name")
            .map_err(|e| store.err(e))?;
        let rows = stmt
            .query_map([snapshot], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))
    }

    /// The dataset a snapshot was taken of.
    pub fn dataset_of_snapshot(&self, store: &Store, snapshot: i64) -> Result<String> {
        Ok(self.snapshot_by_id(store, snapshot)?.dataset)
    }

    pub fn find_dataset(&self, store: &Store, name: &str) -> Result<Option<Dataset>> {
        store.optional(store.conn().query_row(
            "SELECT id, name, path, owner, origin_snapshot, state FROM datasets WHERE name = ?1",
            [name],
            dataset_row,
        ))
    }

    pub fn dataset(&self, store: &Store, name: &str) -> Result<Dataset> {
        self.find_dataset(store, name)?
            .ok_or_else(|| Error::NotFound(format!("no dataset {name:?}; see `pgvirt pool list`")))
    }

    pub fn snapshot_by_id(&self, store: &Store, id: i64) -> Result<DatasetSnapshot> {
        store
            .optional(store.conn().query_row(
                "SELECT s.id, d.name, s.name, s.path, s.state FROM dataset_snapshots s
                 JOIN datasets d ON d.id = s.dataset_id WHERE s.id = ?1",
                [id],
                snapshot_row,
            ))?
            .ok_or_else(|| Error::NotFound(format!("no dataset snapshot {id}")))
    }

    pub(super) fn snapshots_of(
        &self,
        store: &Store,
        dataset_id: i64,
    ) -> Result<Vec<DatasetSnapshot>> {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT s.id, d.name, s.name, s.path, s.state FROM dataset_snapshots s
                 JOIN datasets d ON d.id = s.dataset_id WHERE s.dataset_id = ?1 ORDER BY s.id",
            )
            .map_err(|e| store.err(e))?;
        let rows = stmt
            .query_map([dataset_id], snapshot_row)
            .map_err(|e| store.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))
    }
}

pub(super) fn dataset_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        path: PathBuf::from(r.get::<_, String>(2)?),
        owner: r.get(3)?,
        origin_snapshot: r.get(4)?,
        state: r.get(5)?,
    })
}

pub(super) fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetSnapshot> {
    Ok(DatasetSnapshot {
        id: r.get(0)?,
        dataset: r.get(1)?,
        name: r.get(2)?,
        path: PathBuf::from(r.get::<_, String>(3)?),
        state: r.get(4)?,
    })
}

/// Dataset and snapshot names become file names: keep them plain.
fn check_dataset_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "dataset or snapshot name {name:?} must be letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// Pauses for 60 s when [`FAULT_PAUSE_ENV`] names `step` (saying so on
/// stderr), for the crash-safety tests to kill the process there.
pub fn fault_pause(step: &str) {
    if std::env::var(FAULT_PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("{FAULT_PAUSE_ENV}={step}: pausing");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
