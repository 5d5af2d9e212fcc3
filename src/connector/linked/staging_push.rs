//! Staging push (seed 000): the engine hands the user an empty `data/`
//! directory in the mount; the user loads it (a physical restore with
//! pg_basebackup or pgBackRest, or initdb and pg_restore of a dump), runs
//! and stops the cluster themselves. The connector never starts nor stops
//! that cluster: it refuses what would need it stopped while it runs.
//!
//! - link: the empty `data/` (0700, the environment user's); the first
//!   snapshot holds it and is not provisionable;
//! - sync: refused while a postmaster runs on `data/` or while it is empty;
//!   the cluster must have been shut down cleanly and keep its tablespaces
//!   inside the mount; the snapshot's facts come from its control file;
//! - resync: only with `data/` empty (a new timeflow, again not
//!   provisionable);
//! - disable, delete: refused while the cluster runs.

use serde_json::{json, Value};

use super::clean::{self, Contents};
use super::method::Ingestion;
use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `staging_push`.
pub struct StagingPush;

impl StagingPush {
    /// What the user does to load staging.
    fn how_to_load(staging: &Staging) -> String {
        format!(
            "restore a backup into {} (pg_basebackup or pgBackRest, or initdb and pg_restore of a dump), stop the cluster, then run `pgvirt dsource sync {}`",
            staging.cluster.data_dir, staging.name
        )
    }

    fn running_error(staging: &Staging, pid: &str, what: &str) -> OperationError {
        OperationError::new(
            ErrorKind::InvalidState,
            format!(
                "a PostgreSQL server (pid {pid}) runs on {}: stop the cluster first",
                staging.cluster.data_dir
            ),
        )
        .with_action(format!(
            "run `pg_ctl -D {} stop -m fast` as the environment user, then {what} again",
            staging.cluster.data_dir
        ))
    }
}

impl Ingestion for StagingPush {
    /// The empty `data/` directory (0700) and the connector's directory.
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        platform.run_ok(
            "making the empty staging data directory",
            &request(
                r#"set -e; umask 077; mkdir -p -- "$FILES"; mkdir -p -m 0700 -- "$DATA"; chmod 0700 -- "$DATA"
rm -f -- "$FILES/ingesting""#,
                &[
                    ("FILES", staging.files()),
                    ("DATA", staging.cluster.data_dir.clone()),
                ],
            ),
        )?;
        Ok(())
    }

    fn consistent_point(
        &self,
        platform: &Platform,
        staging: &Staging,
        resync: bool,
    ) -> Result<Value, OperationError> {
        let contents = clean::contents(platform, staging)?;
        if resync {
            if contents != Contents::Empty {
                return Err(OperationError::new(
                    ErrorKind::InvalidState,
                    format!(
                        "a resync needs an empty data directory, and {} holds files",
                        staging.cluster.data_dir
                    ),
                )
                .with_action(format!(
                    "stop the cluster if it runs, empty {} (keep its contents elsewhere if you need them), then resync again",
                    staging.cluster.data_dir
                )));
            }
            self.ingest(platform, staging, None)?;
            let facts = json!({
                "provisionable": false,
                "not_provisionable_reason": format!(
                    "it holds no data yet (staging push): {}",
                    Self::how_to_load(staging)
                ),
                "size_bytes": 0,
                "databases": [],
            });
            clean::write_facts(platform, staging, &facts)?;
            return Ok(json!({}));
        }
        match contents {
            Contents::Empty | Contents::NoCluster => Err(OperationError::new(
                ErrorKind::InvalidState,
                format!(
                    "staging is waiting for data: {} holds no cluster",
                    staging.cluster.data_dir
                ),
            )
            .with_action(Self::how_to_load(staging))),
            Contents::Cluster { running: Some(pid) } => {
                Err(Self::running_error(staging, &pid, "sync"))
            }
            Contents::Cluster { running: None } => clean::record(platform, staging, None),
        }
    }

    fn describe(&self, platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
        let mut meta = staging.recorded_facts(platform)?;
        if meta.get("provisionable").is_none() {
            meta["provisionable"] = json!(true);
        }
        Ok(meta)
    }

    fn replays_wal(&self) -> bool {
        false
    }

    /// The user runs the cluster: nothing to start.
    fn start_staging(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        self.ingest(platform, staging, None)
    }

    fn may_stop(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        if let Contents::Cluster { running: Some(pid) } = clean::contents(platform, staging)? {
            return Err(Self::running_error(staging, &pid, "delete"));
        }
        Ok(())
    }

    fn stop_staging(
        &self,
        platform: &Platform,
        staging: &Staging,
        purpose: &str,
    ) -> Result<(), OperationError> {
        if let Contents::Cluster { running: Some(pid) } = clean::contents(platform, staging)? {
            let what = if purpose == "delete" {
                "delete"
            } else {
                "disable"
            };
            return Err(Self::running_error(staging, &pid, what));
        }
        if purpose == "delete" {
            staging.remove_private(platform)?;
        }
        Ok(())
    }

    fn worker(
        &self,
        platform: &Platform,
        staging: &Staging,
        _input: &Value,
    ) -> Result<Value, OperationError> {
        let contents = clean::contents(platform, staging)?;
        let (running, next) = match &contents {
            Contents::Empty | Contents::NoCluster => (
                false,
                format!("waiting for data: {}", Self::how_to_load(staging)),
            ),
            Contents::Cluster { running: Some(_) } => (
                true,
                format!(
                    "cluster running: stop it before a sync (`pg_ctl -D {} stop -m fast`)",
                    staging.cluster.data_dir
                ),
            ),
            Contents::Cluster { running: None } => (
                false,
                format!(
                    "ready for a sync: `pgvirt dsource sync {}` snapshots the stopped cluster",
                    staging.name
                ),
            ),
        };
        Ok(json!({"running": running, "connected": false, "next": next}))
    }
}
