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
//! `pgvirt pool check --repair`) removes the leftover. Datasets and their
//! snapshots are made and destroyed in `datasets`, checked in `check`
//! (which also finds what no object owns); the backends are in [`backend`],
//! space accounting in [`space`], mounts in [`mount`].

pub mod backend;
mod check;
mod datasets;
pub mod mount;
mod quota;
pub mod space;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use backend::Backend;
pub use check::{CheckReport, Owned};
pub use mount::MountKind;
pub use space::Space;

use crate::host::error::{Error, Result};
use crate::host::files;
use crate::host::store::Store;
use datasets::dataset_row;
pub use datasets::fault_pause;

/// Set to `clone` (or `snapshot`, `create`) to make that step pause for 60 s
/// after writing and before it is recorded as done, or to `switch` to pause
/// a refresh or rewind right after its switch is recorded: the
/// crash-safety tests kill the process there.
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
        if backend == Backend::Zfs {
            // Datasets are ZFS file systems under a container of their own.
            backend::zfs::create_container(&dir.join("datasets"))?;
        }
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
        for r in report.repaired.iter().chain(&report.problems) {
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
                    space: self.space_of(&s.path)?,
                    dependents: self.dependents(store, s.id)?,
                    snapshot: s,
                });
            }
            out.push(DatasetInfo {
                space: self.space_of(&ds.path)?,
                mount: mount::mounted_at(store, ds.id)?,
                dataset: ds,
                snapshots,
            });
        }
        Ok(out)
    }

    /// Says whether this pool can hold quotas (before anything is made).
    pub fn check_quota(&self) -> Result<()> {
        quota::check(self.backend)
    }

    /// Limits what a dataset may add on its clone to `bytes`.
    pub fn set_quota(&self, store: &Store, dataset: &str, bytes: u64) -> Result<()> {
        let ds = self.dataset(store, dataset)?;
        quota::set(self.backend, &self.root, &ds.path, Some(bytes))
    }

    /// Lifts a dataset's quota.
    pub fn clear_quota(&self, store: &Store, dataset: &str) -> Result<()> {
        let ds = self.dataset(store, dataset)?;
        quota::set(self.backend, &self.root, &ds.path, None)
    }

    /// What a dataset has added on its clone, where the pool counts it.
    pub fn quota_used(&self, store: &Store, dataset: &str) -> Result<Option<u64>> {
        let ds = self.dataset(store, dataset)?;
        quota::added(self.backend, &self.root, &ds.path)
    }

    /// The space of a dataset or snapshot: as the backend accounts it, or
    /// from its files' extents.
    pub fn space_of(&self, path: &Path) -> Result<Space> {
        match self.backend.space(path)? {
            Some(space) => Ok(space),
            None => space::tree_space(path),
        }
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
