//! What an install writes before it commits, and the sweep that removes
//! what a killed one left.
//!
//! - An uploaded or packed `connector.json` carries its library; it is
//!   written out to a scratch directory named after the process
//!   (`.pgvirt-connector-<pid>-<start>-…`), removed when the install ends.
//! - A release's directory (`connectors/<id>/<version>+<build>/`) holds an
//!   `.installing` marker with the installing process until its install
//!   commits or fails.
//!
//! [`sweep`] runs before every command (with the repair of interrupted
//! jobs): scratch directories and marked release directories of processes
//! that are gone are removed, unless the store refers to the release (its
//! install committed just before the kill: then only the marker goes).

use std::path::{Path, PathBuf};

use crate::host::processes::ProcessId;
use crate::host::store::Store;

/// How scratch directories of embedded libraries begin.
pub const PREFIX: &str = ".pgvirt-connector-";

/// The marker in a release directory being installed.
const MARKER: &str = ".installing";

/// The prefix of this process's scratch directories.
pub fn prefix() -> String {
    let me = ProcessId::current();
    format!("{PREFIX}{}-{}-", me.pid, me.start.unwrap_or(0))
}

/// Where an install writes out an uploaded library.
pub fn incoming(store: &Store) -> PathBuf {
    store.data_dir().join("connectors").join(".incoming")
}

/// Marks `dir` as being installed by this process.
pub fn mark(dir: &Path) -> std::io::Result<()> {
    let me = ProcessId::current();
    std::fs::write(
        dir.join(MARKER),
        format!("{} {}", me.pid, me.start.unwrap_or(0)),
    )
}

/// Removes the marker (the install committed or was undone).
pub fn unmark(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(MARKER));
}

fn gone(pid: &str, start: &str) -> bool {
    let (Ok(pid), Ok(start)) = (pid.parse::<i64>(), start.parse::<i64>()) else {
        return false;
    };
    !ProcessId {
        pid,
        start: (start != 0).then_some(start),
    }
    .alive()
}

/// Removes what killed installs left; returns what it removed.
pub fn sweep(store: &Store) -> Vec<String> {
    let mut removed = Vec::new();
    for dir in [incoming(store), std::env::temp_dir()] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let mut parts = rest.splitn(3, '-');
            if let (Some(pid), Some(start)) = (parts.next(), parts.next()) {
                if gone(pid, start) && std::fs::remove_dir_all(entry.path()).is_ok() {
                    removed.push(entry.path().display().to_string());
                }
            }
        }
    }
    let referenced: Vec<PathBuf> = super::registry::list(store)
        .map(|all| all.into_iter().map(|c| c.library_path).collect())
        .unwrap_or_default();
    let connectors = store.data_dir().join("connectors");
    for id in std::fs::read_dir(&connectors)
        .into_iter()
        .flatten()
        .flatten()
    {
        for release in std::fs::read_dir(id.path()).into_iter().flatten().flatten() {
            let dir = release.path();
            let Ok(text) = std::fs::read_to_string(dir.join(MARKER)) else {
                continue;
            };
            let mut parts = text.split_whitespace();
            let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !gone(pid, start) {
                continue;
            }
            if referenced.iter().any(|lib| lib.starts_with(&dir)) {
                unmark(&dir);
            } else if std::fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir.display().to_string());
            }
        }
    }
    removed
}
