//! The ZFS backend: the pool directory is a ZFS dataset's mount point `D`;
//! datasets are file systems `D/datasets/<name>` (mounted at the pool's
//! `datasets/<name>`), snapshots are `D/datasets/<name>@<snapshot>`, clones
//! are ZFS clones. Paths name them: a dataset by its mount point, a
//! snapshot by `<pool>/snapshots/<dataset>@<name>`, which is only a name.
//!
//! The same `zpool`/`zfs` commands serve OpenZFS (the kernel module) and
//! `zfs-fuse` (which the tests use); where `zfs-fuse` lacks a property
//! (`written`), the nearest one it has stands in (`usedbydataset`).

use std::path::Path;
use std::process::Command;

use super::{output, run};
use crate::host::error::{Error, Result};
use crate::host::storage::space::{Space, ZfsSpace};

/// The ZFS file system mounted exactly at `dir`, if any.
pub fn dataset_at(dir: &Path) -> Result<Option<String>> {
    if Command::new("zfs").arg("-?").output().is_err() {
        return Ok(None); // no zfs command on this host
    }
    let listed = output(Command::new("zfs").args([
        "list",
        "-H",
        "-o",
        "name,mountpoint",
        "-t",
        "filesystem",
    ]))?;
    Ok(listed.lines().find_map(|line| {
        let (name, mount) = line.split_once('\t')?;
        (Path::new(mount) == dir).then(|| name.to_owned())
    }))
}

fn dataset_named_at(dir: &Path) -> Result<String> {
    dataset_at(dir)?
        .ok_or_else(|| Error::NotFound(format!("no ZFS dataset is mounted at {}", dir.display())))
}

/// A snapshot path's ZFS name: `<pool>/snapshots/<ds>@<snap>` is the
/// snapshot `<snap>` of the file system mounted at `<pool>/datasets/<ds>`.
fn snapshot_name(path: &Path) -> Result<String> {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} names no snapshot", path.display())))?;
    let (dataset, snap) = base
        .split_once('@')
        .ok_or_else(|| Error::usage(format!("{} names no snapshot", path.display())))?;
    let pool = path
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::usage(format!("{} is not in a pool", path.display())))?;
    Ok(format!(
        "{}@{snap}",
        dataset_named_at(&pool.join("datasets").join(dataset))?
    ))
}

fn is_snapshot_path(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "snapshots")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains('@'))
}

/// The child file system for `path` (its parent directory is a ZFS dataset).
fn child_name(path: &Path) -> Result<String> {
    let parent = path
        .parent()
        .ok_or_else(|| Error::usage(format!("{} has no parent", path.display())))?;
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} has no name", path.display())))?;
    Ok(format!("{}/{base}", dataset_named_at(parent)?))
}

/// Makes `dir` (in the pool directory, itself a ZFS dataset) a ZFS file
/// system of its own, so datasets can be made under it.
pub fn create_container(dir: &Path) -> Result<()> {
    if dataset_at(dir)?.is_some() {
        return Ok(());
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::usage(format!(
            "{} exists and is not a ZFS dataset; a ZFS pool keeps its datasets in one",
            dir.display()
        )));
    }
    let _ = std::fs::remove_dir(dir);
    create(dir)
}

/// Creates an empty file system at `path`.
pub fn create(path: &Path) -> Result<()> {
    run(Command::new("zfs").arg("create").arg(child_name(path)?))
}

/// Snapshots the file system at `dataset` as the snapshot path `to`.
pub fn snapshot(dataset: &Path, to: &Path) -> Result<()> {
    let snap = to
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('@'))
        .map(|(_, s)| s.to_owned())
        .ok_or_else(|| Error::usage(format!("{} names no snapshot", to.display())))?;
    run(Command::new("zfs")
        .arg("snapshot")
        .arg(format!("{}@{snap}", dataset_named_at(dataset)?)))
}

/// Clones the snapshot at path `from` into a file system at `to`.
pub fn clone(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("zfs")
        .arg("clone")
        .arg(snapshot_name(from)?)
        .arg(child_name(to)?))
}

/// Whether the dataset or snapshot at `path` exists.
pub fn exists(path: &Path) -> Result<bool> {
    if is_snapshot_path(path) {
        let Ok(name) = snapshot_name(path) else {
            return Ok(false);
        };
        let out = Command::new("zfs")
            .args(["list", "-H", "-o", "name", "-t", "snapshot"])
            .arg(&name)
            .output()
            .map_err(|e| Error::io("cannot run zfs for", path, e))?;
        Ok(out.status.success())
    } else {
        Ok(dataset_at(path)?.is_some())
    }
}

/// Destroys the dataset or snapshot at `path` (gone already is fine). A
/// FUSE file system may be busy for a moment after use: it is unmounted
/// and tried again.
pub fn destroy(path: &Path) -> Result<()> {
    let name = if is_snapshot_path(path) {
        match snapshot_name(path) {
            Ok(n) if exists(path)? => n,
            _ => return Ok(()),
        }
    } else {
        match dataset_at(path)? {
            Some(n) => n,
            None => {
                // Not (or no longer) a file system: what is left is a plain
                // directory a cut-short create made, if anything.
                let _ = std::fs::remove_dir(path);
                return Ok(());
            }
        }
    };
    let mut last = None;
    for _ in 0..20 {
        match run(Command::new("zfs").arg("destroy").arg(&name)) {
            Ok(()) => return Ok(()),
            Err(e) if e.to_string().contains("busy") => {
                let _ = Command::new("zfs")
                    .args(["umount", "-f"])
                    .arg(&name)
                    .output();
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::usage(format!("cannot destroy {name}"))))
}

/// ZFS's figures for the dataset or snapshot at `path`.
pub fn space(path: &Path) -> Result<Space> {
    let name = if is_snapshot_path(path) {
        snapshot_name(path)?
    } else {
        dataset_named_at(path)?
    };
    let props = output(
        Command::new("zfs")
            .args([
                "get",
                "-Hp",
                "-o",
                "property,value",
                "used,referenced,usedbydataset",
            ])
            .arg(&name),
    )?;
    let get = |key: &str| -> u64 {
        props
            .lines()
            .find_map(|l| {
                l.split_once('\t')
                    .filter(|(k, _)| *k == key)
                    .map(|(_, v)| v)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // OpenZFS has `written`; zfs-fuse does not: its `usedbydataset` is
    // the same for a clone (what it wrote since its origin).
    let written = output(
        Command::new("zfs")
            .args(["get", "-Hp", "-o", "value", "written"])
            .arg(&name),
    )
    .ok()
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or_else(|| get("usedbydataset"));
    let referenced = get("referenced");
    Ok(Space {
        exclusive: written,
        shared: referenced.saturating_sub(written),
        zfs: Some(ZfsSpace {
            used: get("used"),
            referenced,
            written,
        }),
    })
}

/// Limits what the file system at `path` may hold apart from its origin
/// (`quota`: its data and its snapshots).
/// `limit` is bytes or `none`.
pub fn set_quota(path: &Path, limit: &str) -> Result<()> {
    run(Command::new("zfs")
        .arg("set")
        .arg(format!("quota={limit}"))
        .arg(dataset_named_at(path)?))
}
