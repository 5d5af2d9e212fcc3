//! Repairs what a job on a VDB left when its process died before it ended.
//! Each kind of job is undone, finished, or reconciled with what runs:
//!
//! - provision, create empty: undone (nothing of the VDB is left);
//! - refresh, rewind: before their switch, undone (the old VDB back as it
//!   was); after it, finished (the old dataset freed);
//! - snapshot: its unrecorded snapshot goes; the VDB runs again if it ran;
//! - delete, disable, enable: finished;
//! - start, stop: the recorded state follows what the connector sees.

use super::control::{finish_enable, finish_stop, live_status};
use super::delete::finish_delete;
use super::reclone::{free_old, rollback};
use super::{destroy, find_by_id, input_for, mount, set_state, VdbState};
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{Job, JobKind, Step};
use crate::host::lifecycle::ownership;
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Repairs an interrupted job on a VDB; says what it did.
pub fn repair(store: &Store, connector: &Connector, job: &Job) -> Result<String> {
    let Some(vdb) = find_by_id(store, job.target_id)? else {
        return Ok(format!("VDB {} is gone already", job.target_name));
    };
    let pool = Pool::open(store)?;
    let name = &vdb.name;
    match job.kind {
        JobKind::Provision | JobKind::CreateEmpty if job.step == Step::Committed => Ok(format!(
            "VDB {name}: its provision had finished when it was interrupted (its configure_clone hook may not have run)"
        )),
        JobKind::Provision | JobKind::CreateEmpty => {
            destroy(store, connector, &pool, &vdb);
            Ok(format!(
                "removed VDB {name}, left half-made by an interrupted provision"
            ))
        }
        JobKind::Refresh | JobKind::Rewind => {
            let new = job.noted("new_dataset").unwrap_or_default();
            // The switch and its step are one transaction; the VDB on the
            // new dataset also says the switch happened.
            if job.step < Step::Committed && vdb.dataset != new {
                rollback(store, connector, &pool, &vdb, new)?;
                Ok(format!(
                    "VDB {name}: an interrupted {} was undone; it is back as it was",
                    job.kind
                ))
            } else {
                if let Some(old) = job.noted("old_dataset") {
                    free_old(store, &pool, old);
                }
                Ok(format!("VDB {name}: finished an interrupted {}", job.kind))
            }
        }
        JobKind::SnapshotVdb => {
            if let (Some(of), Some(label)) = (job.noted("snapshot_of"), job.noted("snapshot")) {
                ownership::discard_unrecorded(store, &pool, of, label)?;
            }
            if vdb.state == VdbState::Running && job.step >= Step::Connector {
                // post_snapshot starts the VDB again if pre_snapshot stopped it.
                let env = environments::get(store, &vdb.environment)?;
                let mut input = input_for(store, &pool, &vdb, &env)?;
                mount(store, connector, &pool, &vdb, &env, &mut input)?;
                connector.invoke("virtual.post_snapshot", &input, HostPlatform::new(&env))?;
            }
            Ok(format!(
                "VDB {name}: an interrupted snapshot was undone; the VDB runs as before"
            ))
        }
        JobKind::DeleteVdb => {
            finish_delete(store, connector, &pool, &vdb)?;
            Ok(format!("finished the interrupted delete of VDB {name}"))
        }
        JobKind::DisableVdb => {
            finish_stop(store, connector, &vdb, VdbState::Disabled)?;
            Ok(format!("VDB {name}: finished an interrupted disable"))
        }
        JobKind::EnableVdb => {
            finish_enable(store, connector, &vdb)?;
            Ok(format!("VDB {name}: finished an interrupted enable"))
        }
        JobKind::Start | JobKind::Stop => {
            let state = if live_status(store, connector, &vdb)? == crate::abi::Status::Active {
                VdbState::Running
            } else {
                pool.unmount(store, &vdb.dataset)?;
                VdbState::Stopped
            };
            set_state(store, vdb.id, state)?;
            Ok(format!(
                "VDB {name}: an interrupted {} left it {state}",
                job.kind
            ))
        }
        other => Err(Error::usage(format!(
            "job {} ({other}) is not a VDB job",
            job.id
        ))),
    }
}
