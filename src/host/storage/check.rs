//! `pool check`: what the store says against what is on disk, and who owns
//! it. Finds (and with `repair` fixes) unfinished creates and destroys of
//! dead processes, entries on disk without a row, rows without their files,
//! stale mounts, and datasets and snapshots that no object owns.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::{mount, DatasetState, Pool};
use crate::host::error::{Error, Result};
use crate::host::processes;
use crate::host::store::Store;

/// What the objects of the store own on the pool (filled in by the
/// lifecycle, which knows the objects).
#[derive(Debug, Clone, Default)]
pub struct Owned {
    /// Dataset names.
    pub datasets: BTreeSet<String>,
    /// Dataset snapshot ids.
    pub snapshots: BTreeSet<i64>,
}

/// What `pool check` found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub repaired: Vec<String>,
}

impl Pool {
    /// Finds (and with `repair` fixes) drift between the store and the
    /// filesystem: unfinished creates and destroys of dead processes, entries
    /// on disk without a row, rows without their files, stale mounts.
    pub fn check(&self, store: &Store, repair: bool, owned: &Owned) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        self.check_interrupted(store, repair, &mut report)?;
        self.check_drift(store, repair, &mut report)?;
        self.check_owners(store, repair, owned, &mut report)?;
        report
            .repaired
            .extend(mount::check(store, repair, &mut report.problems)?);
        Ok(report)
    }

    /// Creates and destroys whose process died before finishing.
    pub(super) fn check_interrupted(
        &self,
        store: &Store,
        repair: bool,
        report: &mut CheckReport,
    ) -> Result<()> {
        for table in ["dataset_snapshots", "datasets"] {
            let mut stmt = store
                .conn()
                .prepare(&format!(
                    "SELECT id, path, state, pid FROM {table} WHERE state <> 'ready'"
                ))
                .map_err(|e| store.err(e))?;
            let rows: Vec<(i64, String, DatasetState, Option<i64>)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| store.err(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| store.err(e))?;
            for (id, path, state, pid) in rows {
                let alive =
                    pid.is_some_and(|pid| processes::ProcessId { pid, start: None }.alive());
                if alive {
                    continue; // another pgvirt is at work on it
                }
                let what = format!(
                    "{} {path} was left {state} by an interrupted command",
                    &table[..table.len() - 1]
                );
                if repair {
                    // Whatever the cut-short command started may still be
                    // writing there (or be a server started on it).
                    let removed = (|| {
                        let mut roots = vec![Path::new(&path).to_owned()];
                        if table == "datasets" {
                            roots.extend(mount::mounted_at(store, id)?);
                        }
                        processes::kill_holders(&roots, std::time::Duration::from_secs(30));
                        if table == "datasets" {
                            mount::unmount(store, id)?;
                        }
                        self.backend.destroy(Path::new(&path))?;
                        store
                            .conn()
                            .execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])
                            .map_err(|e| store.err(e))?;
                        Ok::<(), Error>(())
                    })();
                    match removed {
                        Ok(()) => report.repaired.push(format!("{what}: removed")),
                        // Still busy (a ZFS dataset a moment after its
                        // unmount): a problem to report, tried again by the
                        // next command, never a failure of this one.
                        Err(e) => report
                            .problems
                            .push(format!("{what}: could not remove it yet: {e}")),
                    }
                } else {
                    report.problems.push(what);
                }
            }
        }
        Ok(())
    }

    /// Entries on disk without a row, rows without their files.
    fn check_drift(&self, store: &Store, repair: bool, report: &mut CheckReport) -> Result<()> {
        for (sub, table) in [("datasets", "datasets"), ("snapshots", "dataset_snapshots")] {
            let dir = self.root.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let known: bool = store
                    .conn()
                    .query_row(
                        &format!("SELECT count(*) > 0 FROM {table} WHERE path = ?1"),
                        [path.to_string_lossy()],
                        |r| r.get(0),
                    )
                    .map_err(|e| store.err(e))?;
                if !known {
                    let what = format!("{} is on disk but not in the store", path.display());
                    if repair {
                        self.backend.destroy(&path)?;
                        report.repaired.push(format!("{what}: removed"));
                    } else {
                        report.problems.push(what);
                    }
                }
            }
        }
        for table in ["datasets", "dataset_snapshots"] {
            let mut stmt = store
                .conn()
                .prepare(&format!("SELECT path FROM {table} WHERE state = 'ready'"))
                .map_err(|e| store.err(e))?;
            let paths: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .map_err(|e| store.err(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| store.err(e))?;
            for p in paths {
                if self.backend.exists(Path::new(&p))? {
                    continue;
                }
                report.problems.push(format!(
                    "{p} is in the store but missing on disk (restore it, or delete what uses it)"
                ));
            }
        }
        Ok(())
    }

    /// Datasets and snapshots that no object owns.
    fn check_owners(
        &self,
        store: &Store,
        repair: bool,
        owned: &Owned,
        report: &mut CheckReport,
    ) -> Result<()> {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT s.id, d.name, s.name FROM dataset_snapshots s JOIN datasets d ON d.id = s.dataset_id
                 WHERE s.state = 'ready' ORDER BY s.id",
            )
            .map_err(|e| store.err(e))?;
        let snapshots: Vec<(i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| store.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))?;
        for (id, dataset, name) in snapshots {
            if owned.snapshots.contains(&id) {
                continue;
            }
            let what = format!("snapshot {name} of dataset {dataset} is on no timeflow");
            let dependents = self.dependents(store, id)?;
            if !dependents.is_empty() {
                report
                    .problems
                    .push(format!("{what}, but {} stand on it", dependents.join(", ")));
            } else if repair {
                self.destroy_snapshot(store, id)?;
                report.repaired.push(format!("{what}: removed"));
            } else {
                report.problems.push(what);
            }
        }
        let mut stmt = store
            .conn()
            .prepare("SELECT name FROM datasets WHERE state = 'ready' ORDER BY name")
            .map_err(|e| store.err(e))?;
        let datasets: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| store.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| store.err(e))?;
        for name in datasets {
            if owned.datasets.contains(&name) {
                continue;
            }
            let what = format!("dataset {name} belongs to no dSource or VDB");
            if repair {
                self.release(store, &name)?;
                match self.destroy_dataset_tree(store, &name) {
                    Ok(()) => report.repaired.push(format!("{what}: removed")),
                    Err(e) => report.problems.push(format!("{what}, and cannot go: {e}")),
                }
            } else {
                report.problems.push(what);
            }
        }
        Ok(())
    }
}
