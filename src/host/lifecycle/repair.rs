//! Repair of interrupted work, run before every command: each job whose
//! process died before it ended is undone or finished (see
//! [`super::dsource::repair`] and [`super::vdb::repair`]), then marked
//! repaired. A repair that fails is reported and tried again by the next
//! command; meanwhile no new job starts on that object.

use super::jobs;
use super::timeflow::ContainerKind;
use super::{dsource, vdb};
use crate::host::connectors::{registry, scratch};
use crate::host::error::Result;
use crate::host::store::Store;

/// Repairs every interrupted job; returns what was done, and what could
/// not be repaired yet (as warnings).
pub fn repair_interrupted(store: &Store) -> Result<Vec<String>> {
    // What an interrupted connector install left (it holds no job).
    let mut said: Vec<String> = scratch::sweep(store)
        .into_iter()
        .map(|path| format!("removed {path}, left by an interrupted connector install"))
        .collect();
    let interrupted = jobs::interrupted(store)?;
    if interrupted.is_empty() {
        return Ok(said);
    }
    let connector = registry::open(store, None)?;
    for job in interrupted {
        let outcome = match job.target_kind {
            ContainerKind::Dsource => dsource::repair(store, &connector, &job),
            ContainerKind::Vdb => vdb::repair(store, &connector, &job),
        };
        match outcome {
            Ok(what) => {
                job.repaired(store, &what)?;
                said.push(what);
            }
            Err(e) => said.push(format!(
                "could not yet repair the interrupted {} of {} {}: {e}",
                job.kind,
                job.target_kind.title(),
                job.target_name
            )),
        }
    }
    Ok(said)
}
