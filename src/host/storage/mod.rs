//! Engine storage: a pool of datasets (where dSources and VDBs keep their
//! data), their read-only snapshots, writable clones of those snapshots, and
//! where datasets are mounted.
//!
//! Layout of a pool directory (chosen with `pgvirt init --pool DIR`):
//! - `.pgvirt-pool`: marker naming the backend;
//! - `datasets/<name>`: each dataset, owned by its environment user (0700);
//! - `snapshots/<dataset>@<name>`: read-only snapshots (root only);
//! - `mounts/<name>`: default mount points.
//!
//! Every change is recorded in the store before it touches the filesystem
//! (`creating`/`destroying` with the pid doing it) and finished after, so a
//! kill leaves a row [`Pool::check`] recognises: the next command (or
//! `pgvirt pool check --repair`) removes the leftover. The backends are in
//! [`backend`], space accounting in [`space`], mounts in [`mount`].

pub mod backend;
mod check;
pub mod mount;
pub mod space;

use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;

pub use backend::Backend;
pub use check::{CheckReport, Owned};
pub use mount::MountKind;
pub use space::Space;

use crate::host::environments::OsUser;
use crate::host::error::{Error, Result};
use crate::host::files;
use crate::host::store::{self, Store};

/// Set to `clone` (or `snapshot`, `create`) to make that step pause for 60 s
/// after writing and before it is recorded as done: the crash-safety tests
/// kill the process there.
pub const FAULT_PAUSE_ENV: &str = "PGVIRT_FAULT_PAUSE";

const MARKER: &str = ".pgvirt-pool";

/// An open storage pool.
pub struct Pool {
    root: PathBuf,
    backend: Backend,
    reason: String,
}

/// What `pool info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub path: PathBuf,
    pub backend: Backend,
    pub why: String,
    pub filesystem: String,
    pub mounts: &'static str,
    pub datasets: usize,
    pub snapshots: usize,
}

/// Where a dataset or snapshot is in its life. `creating` and `destroying`
/// carry the pid doing it: if that process is gone, the work was cut short.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DatasetState {
    Creating,
    Ready,
    Destroying,
}

crate::host::store::columns::text_enum_column!(DatasetState, Backend);

#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub id: i64,
    pub name: String,
    pub path: PathBuf,
    pub owner: Option<String>,
    pub origin_snapshot: Option<i64>,
    pub state: DatasetState,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetSnapshot {
    pub id: i64,
    pub dataset: String,
    pub name: String,
    pub path: PathBuf,
    pub state: DatasetState,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    #[serde(flatten)]
    pub dataset: Dataset,
    pub space: Space,
    pub mount: Option<PathBuf>,
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    #[serde(flatten)]
    pub snapshot: DatasetSnapshot,
    pub space: Space,
    /// Datasets cloned from it.
    pub dependents: Vec<String>,
}

impl Pool {
    /// Makes (or adopts) a pool at `dir` and records it as the engine's pool.
    pub fn init(store: &Store, dir: &Path, backend: Option<Backend>) -> Result<Self> {
        if !dir.is_absolute() {
            return Err(Error::usage(format!(
                "--pool {} must be an absolute path",
                dir.display()
            )));
        }
        // Data directories inside the pool reach shells (pg_ctl uses one).
        files::check_plain_path(dir)
            .map_err(|why| Error::usage(format!("--pool {}: {why}", dir.display())))?;
        if let Some(existing) = store.setting("pool.path")? {
            if Path::new(&existing) != dir {
                return Err(Error::Conflict(format!(
                    "this engine already has the pool {existing}; one pool per store"
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create the pool", dir, e))?;
        let is_pool = dir.join(MARKER).is_file();
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io("cannot read", dir, e))?
            .filter_map(|e| e.ok())
            .all(|e| e.file_name() == "lost+found");
        if !is_pool && !empty {
            return Err(Error::usage(format!(
                "{} is neither empty nor a pgvirt pool; choose an empty directory",
                dir.display()
            )));
        }
        let (backend, reason) = match backend {
            Some(b) => {
                let why = b.check(dir)?;
                (b, why)
            }
            None => Backend::detect(dir)?,
        };
        for (sub, mode) in [("datasets", 0o711), ("snapshots", 0o700), ("mounts", 0o711)] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("cannot create", &p, e))?;
            files::set_mode(&p, mode)?;
        }
        files::set_mode(dir, 0o711)?;
        files::write_atomic(
            &dir.join(MARKER),
            format!("{}\n", backend.name()).as_bytes(),
            0o644,
        )?;
        store.set_setting("pool.path", &dir.to_string_lossy())?;
        store.set_setting("pool.backend", backend.into())?;
        store.set_setting("pool.reason", &reason)?;
        if backend == Backend::Copy {
            log::warn!("pool {}: {reason}", dir.display());
        }
        Ok(Self {
            root: dir.to_owned(),
            backend,
            reason,
        })
    }

    /// The engine's pool. Leftovers of interrupted commands are cleaned up.
    pub fn open(store: &Store) -> Result<Self> {
        let pool = Self::open_unchecked(store)?;
        // Only what interrupted commands left; anything else found on disk
        // waits for `pool check --repair`, so nothing is removed unasked.
        let mut report = CheckReport::default();
        pool.check_interrupted(store, true, &mut report)?;
        for r in &report.repaired {
            log::warn!("pool: {r}");
        }
        Ok(pool)
    }

    /// The engine's pool as it is, leftovers and all (for `pool check`).
    pub fn open_unchecked(store: &Store) -> Result<Self> {
        let path = store.setting("pool.path")?.ok_or_else(|| {
            Error::NotFound("no storage pool yet; run `pgvirt init --pool DIR` first".into())
        })?;
        let backend = match store.setting("pool.backend")? {
            Some(name) => name.parse::<Backend>().map_err(|_| {
                Error::usage(format!(
                    "the store names pool backend {name:?}, which this pgvirt does not know; use a newer pgvirt"
                ))
            })?,
            None => Backend::Copy,
        };
        let pool = Self {
            root: PathBuf::from(path),
            backend,
            reason: store.setting("pool.reason")?.unwrap_or_default(),
        };
        if !pool.root.join(MARKER).is_file() {
            return Err(Error::NotFound(format!(
                "the pool {} is gone (no {MARKER}); is its filesystem mounted?",
                pool.root.display()
            )));
        }
        Ok(pool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn info(&self, store: &Store) -> Result<PoolInfo> {
        let count = |table: &str| -> Result<usize> {
            store
                .conn()
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as usize)
                .map_err(|e| store.err(e))
        };
        Ok(PoolInfo {
            path: self.root.clone(),
            backend: self.backend,
            why: self.reason.clone(),
            filesystem: backend::filesystem(&self.root)?,
            mounts: if mount::can_bind() {
                "bind mounts at the requested paths (pgvirt runs as root)"
            } else {
                "datasets used in place (pgvirt is not root, so it cannot bind-mount)"
            },
            datasets: count("datasets")?,
            snapshots: count("dataset_snapshots")?,
        })
    }

    /// Where a dataset is mounted when no path is asked for.
    pub fn default_mount_path(&self, dataset: &str) -> PathBuf {
        self.root.join("mounts").join(dataset)
    }

    /// The path a dataset's user sees: the mount path when pgvirt can
    /// bind-mount, else the dataset itself.
    pub fn effective_path(&self, dataset: &str, requested: &Path) -> PathBuf {
        if mount::can_bind() {
            requested.to_owned()
        } else {
            self.dataset_path(dataset)
        }
    }

    fn dataset_path(&self, name: &str) -> PathBuf {
        self.root.join("datasets").join(name)
    }

    fn snapshot_path(&self, dataset: &str, name: &str) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{dataset}@{name}"))
    }

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

    fn snapshots_of(&self, store: &Store, dataset_id: i64) -> Result<Vec<DatasetSnapshot>> {
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

    /// Every dataset with its snapshots, sizes and dependents.
    pub fn list(&self, store: &Store) -> Result<Vec<DatasetInfo>> {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT id, name, path, owner, origin_snapshot, state FROM datasets ORDER BY name",
            )
            .map_err(|e| store.err(e))?;
        let datasets: Vec<Dataset> = stmt
            .query_map([], dataset_row)
            .map_err(|e| store.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))?;
        let mut out = Vec::new();
        for ds in datasets {
            let mut snapshots = Vec::new();
            for s in self.snapshots_of(store, ds.id)? {
                snapshots.push(SnapshotInfo {
                    space: space::tree_space(&s.path)?,
                    dependents: self.dependents(store, s.id)?,
                    snapshot: s,
                });
            }
            out.push(DatasetInfo {
                space: space::tree_space(&ds.path)?,
                mount: mount::mounted_at(store, ds.id)?,
                dataset: ds,
                snapshots,
            });
        }
        Ok(out)
    }

    /// Checks a mount path: absolute, not `/`, no `..`, not inside the pool's
    /// own directories, another dataset or another mount (nor around one).
    /// `field` names where the path came from (`mount_path`), for errors.
    pub fn check_mount_path(&self, store: &Store, path: &Path, field: &str) -> Result<()> {
        mount::check_path(store, &self.root, path, None, field)
    }

    /// Mounts a dataset at `path` (bind mount as root; else the dataset is
    /// used in place). Returns the path its user should use.
    pub fn mount(&self, store: &Store, dataset: &str, path: &Path) -> Result<PathBuf> {
        let ds = self.dataset(store, dataset)?;
        mount::mount(store, &self.root, &ds, path)
    }

    /// Unmounts a dataset, if mounted.
    pub fn unmount(&self, store: &Store, dataset: &str) -> Result<()> {
        match self.find_dataset(store, dataset)? {
            Some(ds) => mount::unmount(store, ds.id),
            None => Ok(()),
        }
    }
}

fn dataset_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        path: PathBuf::from(r.get::<_, String>(2)?),
        owner: r.get(3)?,
        origin_snapshot: r.get(4)?,
        state: r.get(5)?,
    })
}

fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetSnapshot> {
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

fn fault_pause(step: &str) {
    if std::env::var(FAULT_PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("{FAULT_PAUSE_ENV}={step}: pausing");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
