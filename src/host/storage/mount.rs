//! Putting datasets where environments use them. As root, a dataset is
//! bind-mounted at the requested path (and unmounted on stop, disable and
//! delete); otherwise the dataset directory is used in place. Mount paths
//! are checked before anything is made.

use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rusqlite::params;

use super::Dataset;
use crate::host::error::{Error, Result};
use crate::host::store::Store;

/// How a dataset is put at its path.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum MountKind {
    /// A bind mount at the requested path (pgvirt is root).
    Bind,
    /// The dataset used in place (pgvirt is not root).
    Direct,
}

crate::host::store::columns::text_enum_column!(MountKind);

/// Whether pgvirt can bind-mount (it runs as root).
pub fn can_bind() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Checks a mount path. `own` is the dataset being (re)mounted, whose own
/// mount row does not count as a conflict; `field` names where the path
/// came from in errors. A mount path reaches shells (`pg_ctl` runs the
/// server through one): only plain characters pass, whatever a schema said.
pub fn check_path(
    store: &Store,
    pool: &Path,
    path: &Path,
    own: Option<i64>,
    field: &str,
) -> Result<()> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(Error::usage(format!("{field} {shown} must be absolute")));
    }
    crate::host::files::check_plain_path(path)
        .map_err(|why| Error::usage(format!("{field} {shown:?} {why}")))?;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::usage(format!(
            "{field} {shown} must not contain '..'"
        )));
    }
    if path.parent().is_none() {
        return Err(Error::usage(format!("{field} / is not allowed")));
    }
    for inside in [pool.join("datasets"), pool.join("snapshots")] {
        if path.starts_with(&inside) || inside.starts_with(path) {
            return Err(Error::usage(format!(
                "{field} {shown} is inside (or around) the pool's {}",
                inside.display()
            )));
        }
    }
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT d.name, m.path, m.dataset_id FROM mounts m JOIN datasets d ON d.id = m.dataset_id
             UNION ALL SELECT name, path, id FROM datasets",
        )
        .map_err(|e| store.err(e))?;
    let taken: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))?;
    for (name, other, id) in taken {
        if Some(id) == own {
            continue;
        }
        let other = Path::new(&other);
        if path.starts_with(other) || other.starts_with(path) {
            return Err(Error::Conflict(format!(
                "{field} {shown} overlaps {} (dataset {name}); choose another",
                other.display()
            )));
        }
    }
    if let Ok(mut entries) = std::fs::read_dir(path) {
        if entries.next().is_some() && !is_mountpoint(path) {
            return Err(Error::Conflict(format!(
                "{field} {shown} exists and is not empty; choose an empty or new directory"
            )));
        }
    }
    Ok(())
}

/// Where a dataset is mounted, if it is.
pub fn mounted_at(store: &Store, dataset_id: i64) -> Result<Option<PathBuf>> {
    let path: Option<String> = store.optional(store.conn().query_row(
        "SELECT path FROM mounts WHERE dataset_id = ?1",
        [dataset_id],
        |r| r.get(0),
    ))?;
    Ok(path.map(PathBuf::from))
}

/// Mounts `ds` at `path`; returns the path to use.
pub fn mount(store: &Store, pool: &Path, ds: &Dataset, path: &Path) -> Result<PathBuf> {
    if let Some(current) = mounted_at(store, ds.id)? {
        if current == path && (!can_bind() || is_mountpoint(path)) {
            return Ok(if can_bind() { current } else { ds.path.clone() });
        }
        unmount(store, ds.id)?;
    }
    check_path(store, pool, path, Some(ds.id), "mount path")?;
    if !can_bind() {
        store
            .conn()
            .execute(
                "INSERT INTO mounts (dataset_id, path, kind) VALUES (?1, ?2, ?3)",
                params![ds.id, ds.path.to_string_lossy(), MountKind::Direct],
            )
            .map_err(|e| store.err(e))?;
        log::info!(
            "not root: dataset {} is used in place at {} instead of {}",
            ds.name,
            ds.path.display(),
            path.display()
        );
        return Ok(ds.path.clone());
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io("cannot create mount point", path, e))?;
    nix::mount::mount(
        Some(&ds.path),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::io("cannot bind-mount at", path, e.into()))?;
    let recorded = store.conn().execute(
        "INSERT INTO mounts (dataset_id, path, kind) VALUES (?1, ?2, ?3)",
        params![ds.id, path.to_string_lossy(), MountKind::Bind],
    );
    if let Err(e) = recorded {
        let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        return Err(store.err(e));
    }
    Ok(path.to_owned())
}

/// Unmounts a dataset if it is mounted.
pub fn unmount(store: &Store, dataset_id: i64) -> Result<()> {
    let row: Option<(String, MountKind)> = store.optional(store.conn().query_row(
        "SELECT path, kind FROM mounts WHERE dataset_id = ?1",
        [dataset_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ))?;
    let Some((path, kind)) = row else {
        return Ok(());
    };
    if kind == MountKind::Bind && is_mountpoint(Path::new(&path)) {
        nix::mount::umount2(Path::new(&path), MntFlags::empty())
            .or_else(|_| nix::mount::umount2(Path::new(&path), MntFlags::MNT_DETACH))
            .map_err(|e| Error::io("cannot unmount", Path::new(&path), e.into()))?;
        // Remove the mount point we made, if it is empty now.
        let _ = std::fs::remove_dir(&path);
    }
    store
        .conn()
        .execute("DELETE FROM mounts WHERE dataset_id = ?1", [dataset_id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Mount rows whose bind mount is gone (a reboot): reported, and dropped
/// with `repair` (the next start mounts again).
pub fn check(store: &Store, repair: bool, problems: &mut Vec<String>) -> Result<Vec<String>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT dataset_id, path FROM mounts WHERE kind = ?1")
        .map_err(|e| store.err(e))?;
    let rows: Vec<(i64, String)> = stmt
        .query_map([MountKind::Bind], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))?;
    let mut repaired = Vec::new();
    for (id, path) in rows {
        if is_mountpoint(Path::new(&path)) {
            continue;
        }
        let what = format!("mount {path} is recorded but not mounted");
        if repair {
            store
                .conn()
                .execute("DELETE FROM mounts WHERE dataset_id = ?1", [id])
                .map_err(|e| store.err(e))?;
            repaired.push(format!("{what}: record dropped"));
        } else {
            problems.push(what);
        }
    }
    Ok(repaired)
}

/// Bind-mounts `source` read-only at `target` for a while (not recorded:
/// the caller notes it in its job and calls [`unmount_path`] after). As
/// root only; otherwise the source is used as it is.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<PathBuf> {
    if !can_bind() {
        return Ok(source.to_owned());
    }
    crate::host::files::check_plain_path(target)
        .map_err(|why| Error::usage(format!("{}: {why}", target.display())))?;
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io("cannot create mount point", target, e))?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::io("cannot bind-mount at", target, e.into()))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(Error::io("cannot make read-only", target, e.into()));
    }
    Ok(target.to_owned())
}

/// Unmounts what [`bind_read_only`] mounted, and removes its mount point.
pub fn unmount_path(target: &Path) -> Result<()> {
    if is_mountpoint(target) {
        nix::mount::umount2(target, MntFlags::empty())
            .or_else(|_| nix::mount::umount2(target, MntFlags::MNT_DETACH))
            .map_err(|e| Error::io("cannot unmount", target, e.into()))?;
    }
    let _ = std::fs::remove_dir(target);
    Ok(())
}

/// Whether `path` is a mount point (in /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == target)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
