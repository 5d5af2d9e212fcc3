//! Quotas: how much a dataset may add on its clone, by backend — ZFS
//! `quota` (a clone's `used` is what it holds apart from its origin, its
//! snapshots included), btrfs quota groups (an exclusive limit; quotas are
//! enabled on the file system when first asked for). XFS project quotas are
//! refused for now: the kernels we test on lack XFS quota support, and an
//! untested quota is worse than none. A copy pool has none.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::backend::{output, run, zfs};
use super::Backend;
use crate::host::error::{Error, Result};

/// Says whether the pool can hold quotas, before anything is made.
pub fn check(backend: Backend) -> Result<()> {
    match backend {
        Backend::Zfs | Backend::Btrfs => Ok(()),
        Backend::Reflink => Err(Error::usage(
            "--quota is not available on XFS pools yet (project quotas are not supported); use a btrfs or ZFS pool",
        )),
        Backend::Copy => Err(Error::usage(
            "--quota needs a ZFS or btrfs pool; this pool makes full copies and has no quotas",
        )),
    }
}

/// Limits what the dataset at `path` may add to `bytes` (`None`: lifts the
/// limit).
pub fn set(backend: Backend, root: &Path, path: &Path, bytes: Option<u64>) -> Result<()> {
    if bytes.is_some() {
        check(backend)?;
    }
    let limit = bytes.map_or_else(|| "none".to_owned(), |b| b.to_string());
    match backend {
        Backend::Zfs => zfs::set_quota(path, &limit),
        Backend::Btrfs => {
            let fs = mount_of(root)?;
            let shown = Command::new("btrfs")
                .args(["qgroup", "show"])
                .arg(&fs)
                .output()
                .map_err(|e| Error::io("cannot run btrfs for", &fs, e))?;
            if !shown.status.success() {
                run(Command::new("btrfs").args(["quota", "enable"]).arg(&fs))?;
                run(Command::new("btrfs")
                    .args(["quota", "rescan", "-w"])
                    .arg(&fs))?;
            }
            run(Command::new("btrfs")
                .args(["qgroup", "limit", "-e"])
                .arg(limit)
                .arg(path))
        }
        Backend::Reflink | Backend::Copy => Ok(()),
    }
}

/// What the dataset has added on its clone, where the backend counts it.
pub fn added(backend: Backend, root: &Path, path: &Path) -> Result<Option<u64>> {
    match backend {
        Backend::Zfs => Ok(zfs::space(path)?.zfs.map(|z| z.used)),
        Backend::Btrfs => {
            let fs = mount_of(root)?;
            let id = output(
                Command::new("btrfs")
                    .args(["inspect-internal", "rootid"])
                    .arg(path),
            )?;
            let qgroup = format!("0/{}", id.trim());
            let shown = output(
                Command::new("btrfs")
                    .args(["qgroup", "show", "-re", "--raw", "--sync"])
                    .arg(&fs),
            )?;
            Ok(shown.lines().find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&qgroup.as_str()))
                    .then(|| cols.get(2).and_then(|v| v.parse().ok()))
                    .flatten()
            }))
        }
        Backend::Reflink | Backend::Copy => Ok(None),
    }
}

/// The mount point holding `path`.
fn mount_of(path: &Path) -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read", Path::new("/proc/self/mountinfo"), e))?;
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .ok_or_else(|| Error::NotFound(format!("no mount holds {}", path.display())))
}
