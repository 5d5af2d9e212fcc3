//! Space accounting: the bytes a dataset or snapshot holds alone and the
//! bytes it shares with others, from each file's extent map (FIEMAP, whose
//! SHARED flag XFS and btrfs set on reflinked and snapshotted extents). On a
//! copy pool nothing is shared, so everything counts as its own.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use serde::Serialize;

use crate::host::error::{Error, Result};

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Space {
    /// Bytes only this tree holds.
    pub exclusive: u64,
    /// Bytes this tree shares with another dataset or snapshot.
    pub shared: u64,
    /// ZFS's own figures, on a ZFS pool: `used`, `referenced`, `written`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsSpace>,
}

/// Space as ZFS accounts it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ZfsSpace {
    /// Space the dataset (and its snapshots) consume.
    pub used: u64,
    /// Data the dataset can reach, shared or not.
    pub referenced: u64,
    /// Data written since its origin snapshot (or since it was made).
    pub written: u64,
}

impl Space {
    pub fn total(&self) -> u64 {
        self.exclusive + self.shared
    }
}

const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS],
}

// FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap): the size in the request
// code is the header's (32 bytes), not our buffer's.
nix::ioctl_readwrite_bad!(
    fs_ioc_fiemap,
    nix::request_code_readwrite!(b'f', 11, 32),
    Fiemap
);

/// Space of one file. Files whose filesystem has no FIEMAP count by size.
fn file_space(path: &Path) -> Result<Space> {
    let file = fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut space = Space::default();
    let mut start = 0u64;
    loop {
        let mut map = Fiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS],
        };
        // SAFETY: `map` is a valid, writable `struct fiemap` with room for
        // `fm_extent_count` extents, and `file` stays open for the call.
        if unsafe { fs_ioc_fiemap(file.as_raw_fd(), &mut map) }.is_err() {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            return Ok(Space {
                exclusive: len,
                ..Space::default()
            });
        }
        let n = (map.fm_mapped_extents as usize).min(EXTENTS);
        if n == 0 {
            return Ok(space);
        }
        for extent in &map.fm_extents[..n] {
            if extent.fe_flags & FIEMAP_EXTENT_SHARED != 0 {
                space.shared += extent.fe_length;
            } else {
                space.exclusive += extent.fe_length;
            }
        }
        let last = map.fm_extents[n - 1];
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(space);
        }
        start = last.fe_logical + last.fe_length;
    }
}

/// Space of a tree (files only; directories and links are negligible).
pub fn tree_space(root: &Path) -> Result<Space> {
    let mut total = Space::default();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("cannot read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot read", &dir, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::io("cannot stat", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                // A file may vanish under a running cluster; skip it.
                if let Ok(s) = file_space(&entry.path()) {
                    total.exclusive += s.exclusive;
                    total.shared += s.shared;
                }
            } else if kind.is_socket() || kind.is_fifo() || kind.is_symlink() {
                continue;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_all_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), vec![7u8; 64 * 1024]).expect("write");
        let s = tree_space(dir.path()).expect("space");
        assert_eq!(s.shared, 0);
        assert!(s.exclusive >= 64 * 1024, "{s:?}");
    }
}
