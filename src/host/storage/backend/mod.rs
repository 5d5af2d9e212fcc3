//! How a pool makes datasets, snapshots and clones on its filesystem.
//!
//! - `btrfs`: datasets are subvolumes; a snapshot is a read-only subvolume
//!   snapshot and a clone a writable one: constant time, ownership kept.
//! - `reflink`: datasets are directories; snapshots and clones are
//!   reflink copies (FICLONE per file, on a few threads: shared extents, no
//!   data copied) on XFS with reflink or btrfs ([`reflink`]).
//! - `zfs`: datasets are ZFS file systems under the pool's own dataset;
//!   snapshots and clones are ZFS snapshots and clones ([`zfs`]): constant
//!   time, space accounted by ZFS (`used`, `referenced`, `written`).
//! - `copy`: the same with plain copies, for filesystems without either
//!   (ext4): correct, but every clone is a full copy.
//!
//! Datasets and snapshots are named by path (`<pool>/datasets/<name>`,
//! `<pool>/snapshots/<dataset>@<name>`); for ZFS a snapshot's path is only
//! its name (ZFS keeps it inside the dataset).
//!
//! Copies keep each file's owner and mode (`cp -a` for plain copies, the
//! same by hand for reflinks), run as root or as the owner: there is never a
//! chown pass over a tree.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::Space;
use crate::host::error::{Error, ProcessError, Result};

mod reflink;
pub mod zfs;

/// How the pool makes datasets, snapshots and clones.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    clap::ValueEnum,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Backend {
    /// btrfs subvolume snapshots.
    Btrfs,
    /// File clones by reflink (XFS with reflink, btrfs).
    Reflink,
    /// ZFS snapshots and clones (the pool directory is a ZFS dataset).
    Zfs,
    /// Plain copies (any filesystem; every clone is a full copy).
    Copy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Picks the best backend for `dir` and says why.
    pub fn detect(dir: &Path) -> Result<(Self, String)> {
        let fs = filesystem(dir)?;
        if fs == "zfs" || fs == "fuse" {
            if let Some(name) = zfs::dataset_at(dir)? {
                return Ok((
                    Self::Zfs,
                    format!("the pool is the ZFS dataset {name}: ZFS snapshots and clones"),
                ));
            }
        }
        if fs == "btrfs" {
            return Ok((
                Self::Btrfs,
                "the pool is on btrfs: subvolume snapshots".into(),
            ));
        }
        if reflink_works(dir) {
            return Ok((
                Self::Reflink,
                format!("the pool is on {fs}, which clones files by reflink (FICLONE)"),
            ));
        }
        Ok((
            Self::Copy,
            format!("the pool is on {fs}, which has neither subvolume snapshots nor reflinks: clones are full copies"),
        ))
    }

    /// Whether a snapshot captures the whole dataset at one instant (a
    /// running cluster's snapshot is then as after a crash, which it
    /// recovers from), not file by file.
    pub fn snapshots_atomically(self) -> bool {
        matches!(self, Self::Btrfs | Self::Zfs)
    }

    /// Checks an override fits the filesystem.
    pub fn check(self, dir: &Path) -> Result<String> {
        let fs = filesystem(dir)?;
        match self {
            Self::Btrfs if fs != "btrfs" => Err(Error::usage(format!(
                "the btrfs backend needs a btrfs filesystem; {} is on {fs}",
                dir.display()
            ))),
            Self::Reflink if !reflink_works(dir) => Err(Error::usage(format!(
                "the reflink backend needs reflink support; {} is on {fs}, which has none",
                dir.display()
            ))),
            Self::Zfs if zfs::dataset_at(dir)?.is_none() => Err(Error::usage(format!(
                "the zfs backend needs the pool directory to be a ZFS dataset's mount point; {} is on {fs}",
                dir.display()
            ))),
            _ => Ok(format!("chosen by the user (filesystem {fs})")),
        }
    }

    /// Creates an empty dataset at `path`.
    pub fn create(self, path: &Path) -> Result<()> {
        match self {
            Self::Btrfs => {
                run(Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(path))?;
                // No copy-on-write for every write (what databases on
                // btrfs are advised): files made inside inherit it, and
                // snapshots and their clones keep it; the first write to an
                // extent a snapshot shares is still copied.
                run(Command::new("chattr").arg("+C").arg(path))
            }
            Self::Zfs => zfs::create(path),
            _ => std::fs::create_dir(path).map_err(|e| Error::io("cannot create dataset", path, e)),
        }
    }

    /// Makes `to` a copy of `from`: read-only (`snapshot`) or writable.
    pub fn copy(self, from: &Path, to: &Path, read_only: bool) -> Result<()> {
        let began = std::time::Instant::now();
        let made = self.copy_now(from, to, read_only);
        log::debug!(
            "{self:?} copy of {} took {:.3} s",
            from.display(),
            began.elapsed().as_secs_f64()
        );
        made
    }

    fn copy_now(self, from: &Path, to: &Path, read_only: bool) -> Result<()> {
        match self {
            Self::Btrfs => {
                let mut cmd = Command::new("btrfs");
                cmd.args(["subvolume", "snapshot"]);
                if read_only {
                    cmd.arg("-r");
                }
                run(cmd.arg(from).arg(to))
            }
            Self::Reflink => reflink::clone_tree(from, to),
            Self::Copy => run(Command::new("cp")
                .args(["-a", "--reflink=never"])
                .arg(from)
                .arg(to)),
            Self::Zfs if read_only => zfs::snapshot(from, to),
            Self::Zfs => zfs::clone(from, to),
        }
    }

    /// Whether a dataset or snapshot is there.
    pub fn exists(self, path: &Path) -> Result<bool> {
        match self {
            Self::Zfs => zfs::exists(path),
            _ => Ok(std::fs::symlink_metadata(path).is_ok()),
        }
    }

    /// The space of a dataset or snapshot, when the backend accounts it
    /// itself (ZFS); `None` means: measure the files.
    pub fn space(self, path: &Path) -> Result<Option<Space>> {
        match self {
            Self::Zfs => zfs::space(path).map(Some),
            _ => Ok(None),
        }
    }

    /// Removes a dataset or snapshot at `path` (gone already is fine).
    pub fn destroy(self, path: &Path) -> Result<()> {
        if self == Self::Zfs {
            return zfs::destroy(path);
        }
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        if self == Self::Btrfs && is_subvolume(path) {
            // A read-only snapshot must be made writable to be deleted
            // with plain permissions; `subvolume delete` needs neither.
            return run(Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(path));
        }
        std::fs::remove_dir_all(path).map_err(|e| Error::io("cannot remove", path, e))
    }
}

fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Subvolume roots have inode 256 on btrfs.
    std::fs::metadata(path)
        .map(|m| m.ino() == 256)
        .unwrap_or(false)
}

/// The filesystem type of `dir`, by statfs magic.
pub fn filesystem(dir: &Path) -> Result<String> {
    let st =
        nix::sys::statfs::statfs(dir).map_err(|e| Error::io("cannot statfs", dir, e.into()))?;
    let magic = st.filesystem_type().0 as u64;
    Ok(match magic {
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        0x794C_7630 => "overlayfs",
        _ => return Ok(format!("unknown (magic {magic:#x})")),
    }
    .to_owned())
}

/// Whether FICLONE works in `dir`: tried on a scratch file.
fn reflink_works(dir: &Path) -> bool {
    let Ok(tmp) = tempfile::Builder::new()
        .prefix(".reflink-probe")
        .tempdir_in(dir)
    else {
        return false;
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::write(&a, b"probe").is_ok() && reflink_copy::reflink(&a, &b).is_ok()
}

pub(super) fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(|_| ())
}

/// Runs a command of the engine's own; its stdout, or an error with all of
/// its output.
pub(super) fn output(cmd: &mut Command) -> Result<String> {
    let out = crate::host::processes::output(cmd).map_err(|e| {
        Error::io(
            "cannot run",
            Path::new(&format!("{:?}", cmd.get_program())),
            e,
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Process(Box::new(ProcessError {
            command: format!("{cmd:?}").replace('"', ""),
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })))
    }
}
