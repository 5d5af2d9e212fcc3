//! Repairing what a cut-short job on a dSource left: a link is undone (or
//! kept, if it had finished), a sync's unrecorded snapshot goes and staging
//! replays WAL again, an enable, disable or delete is finished.

use super::control::{finish_delete, finish_disable, finish_enable};
use super::link::undo_link;
use super::{find_by_id, set_state, start_staging, DsourceState};
use crate::host::connectors::loader::Connector;
use crate::host::error::{Error, Result};
use crate::host::lifecycle::jobs::{Job, JobKind, Step};
use crate::host::lifecycle::ownership;
use crate::host::storage::Pool;
use crate::host::store::Store;

/// Repairs what an interrupted job on a dSource left; says what it did.
pub fn repair(store: &Store, connector: &Connector, job: &Job) -> Result<String> {
    let Some(d) = find_by_id(store, job.target_id)? else {
        return Ok(format!("dSource {} is gone already", job.target_name));
    };
    let pool = Pool::open(store)?;
    match job.kind {
        JobKind::Link if d.state == DsourceState::Enabled => Ok(format!(
            "dSource {}: its link had finished when it was interrupted",
            d.name
        )),
        JobKind::Link => {
            undo_link(store, connector, &pool, &d, job.step)?;
            Ok(format!(
                "removed dSource {}, left half-made by an interrupted link",
                d.name
            ))
        }
        JobKind::Sync => {
            let mut done = Vec::new();
            if let Some(prep) = job.noted("prep_dataset") {
                // A preparation cut short: its image was never recorded.
                let recorded: bool = store
                    .conn()
                    .query_row(
                        "SELECT count(*) > 0 FROM snapshots s JOIN dataset_snapshots i ON i.id = s.prepared_id
                         JOIN datasets d ON d.id = i.dataset_id WHERE d.name = ?1",
                        [prep],
                        |r| r.get(0),
                    )
                    .map_err(|e| store.err(e))?;
                if !recorded && pool.find_dataset(store, prep)?.is_some() {
                    super::prepare::discard(store, &pool, prep);
                    done.push("removed its unfinished prepared image".to_owned());
                }
            }
            if let Some(label) = job.noted("snapshot") {
                if ownership::discard_unrecorded(store, &pool, &d.dataset, label)? {
                    done.push("removed its unfinished snapshot".to_owned());
                }
            }
            if d.state == DsourceState::Enabled && job.step >= Step::Connector {
                match start_staging(store, connector, &d) {
                    Ok(()) => done.push("staging replays WAL again".to_owned()),
                    Err(Error::Operation { error, .. })
                        if error.kind == crate::abi::ErrorKind::InvalidState =>
                    {
                        set_state(store, d.id, DsourceState::ResyncNeeded)?;
                        done.push(format!(
                            "its staging was being ingested again; the next `pgvirt dsource sync {}` ingests it anew",
                            d.name
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(format!(
                "dSource {}: an interrupted sync was repaired ({})",
                d.name,
                if done.is_empty() {
                    "nothing was left".to_owned()
                } else {
                    done.join("; ")
                }
            ))
        }
        JobKind::EnableDsource => {
            finish_enable(store, connector, &d)?;
            Ok(format!(
                "dSource {}: finished an interrupted enable",
                d.name
            ))
        }
        JobKind::DisableDsource => {
            finish_disable(store, connector, &d)?;
            Ok(format!(
                "dSource {}: finished an interrupted disable",
                d.name
            ))
        }
        JobKind::DeleteDsource => {
            finish_delete(store, connector, &pool, &d)?;
            Ok(format!(
                "finished the interrupted delete of dSource {}",
                d.name
            ))
        }
        other => Err(Error::usage(format!(
            "job {} ({other}) is not a dSource job",
            job.id
        ))),
    }
}
