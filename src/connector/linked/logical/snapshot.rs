//! A snapshot of a logical staging: the apply paused between transactions
//! once staging has caught up, the origin's progress read as the
//! snapshot's `source_lsn`; then either the running staging is left as it
//! is for a pool that snapshots atomically (its WAL flushed: a clone
//! recovers as after a crash, to exactly what was applied), or it is shut
//! down cleanly for a file-by-file one.

use std::time::Duration;

use serde_json::{json, Value};

use super::super::{clean, Staging};
use super::databases::Databases;
use super::Logical;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::parse_lsn;
use crate::connector::platform::{request, Platform};

/// The facts of a running staging with its apply paused, its WAL flushed
/// first: a transaction given an id commits synchronously, and flushing its
/// commit record flushes every record before it (the apply's asynchronous
/// commits, the sequences set). Everything a snapshot taken now holds.
const LIVE_FACTS: &str = r#"\c :"db"
SET synchronous_commit = on;
SELECT txid_current() IS NOT NULL AS flushed \gset
SELECT json_build_object(
  'source_lsn', (SELECT pg_replication_origin_progress('pg_' || oid, true)::text FROM pg_subscription WHERE subname = :'sub'),
  'postgres_version', split_part(current_setting('server_version'), ' ', 1),
  'major_version', current_setting('server_version_num')::int / 10000,
  'system_identifier', (SELECT system_identifier::text FROM pg_control_system()),
  'timeline', (SELECT timeline_id FROM pg_control_checkpoint()),
  'checkpoint_lsn', (SELECT checkpoint_lsn::text FROM pg_control_checkpoint()),
  'redo_lsn', (SELECT redo_lsn::text FROM pg_control_checkpoint()),
  'replayed_lsn', pg_current_wal_flush_lsn()::text,
  'checkpoint_time', (SELECT to_char(checkpoint_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') FROM pg_control_checkpoint()),
  'wal_segment_size', current_setting('wal_segment_size'),
  'databases', (SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate),
  'size_bytes', (SELECT sum(pg_database_size(oid))::bigint FROM pg_database),
  'taken_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
"#;

impl Logical {
    /// This database's subscription enabled, its new tables picked up,
    /// caught up with the source's current position (as far as 60 s
    /// allow), and its sequences set to the source's.
    pub(super) fn catch_up_for_snapshot(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<(), OperationError> {
        if !self.subscribed(platform, staging)? {
            return Err(self.needs_resync(staging, "staging has no subscription (it was disabled)"));
        }
        match self.slot_exists() {
            Ok(false) => Err(self.needs_resync(
                staging,
                &format!(
                    "its replication slot {} is gone from the source {}:{}",
                    self.subscription, self.source.host, self.source.port
                ),
            )),
            // A source that does not answer: staging holds what it has.
            Err(e)
                if e.kind == ErrorKind::SourceUnreachable
                    && !e.message.contains("authentication") =>
            {
                log::warn!("{}; the snapshot holds what staging applied", e.message);
                Ok(())
            }
            Err(e) => Err(e),
            Ok(true) => {
                self.set_enabled(platform, staging, true)?;
                let added = self.pick_up_new_tables(platform, staging)?;
                if !added.is_empty() {
                    log::info!("new tables on staging: {}", added.join(", "));
                }
                let (target, _) = self.source_position("")?;
                self.catch_up(platform, staging, &target, Duration::from_secs(60))?;
                // Read after the rows staging holds: never behind them.
                let sequences = self.sequences()?;
                self.set_sequences(platform, staging, &sequences)
            }
        }
    }

    /// The facts of the running staging, paused, its WAL flushed (this
    /// database's origin as `source_lsn`).
    pub(super) fn live_facts(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Value, OperationError> {
        let out = self.psql(
            platform,
            staging,
            "reading the paused staging's position",
            LIVE_FACTS,
            &[],
        )?;
        let mut facts: Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
            .ok_or_else(|| {
                OperationError::new(
                    ErrorKind::CommandFailed,
                    format!("unexpected answer from staging: {}", out.trim()),
                )
            })?;
        facts["wal_segment_size"] = json!(crate::connector::conf::parse_size(
            facts["wal_segment_size"].as_str().unwrap_or("16MB")
        ));
        facts["provisionable"] = json!(true);
        facts["taken_running"] = json!(true);
        Ok(facts)
    }

    /// What a snapshot records of this database's subscription.
    pub(super) fn recorded(&self, lsn: &Value) -> Value {
        json!({
            "subscription": self.subscription,
            "slot": self.subscription,
            "publication": self.publication,
            "publication_created": self.creates_publication,
            "database": self.source.database,
            "origin_lsn": lsn,
        })
    }
}

impl Databases {
    /// Staging running, every database's subscription caught up; then
    /// every apply paused for the snapshot. The snapshot's `source_lsn`
    /// is the least of the databases' origins (each database holds
    /// exactly the source's transactions up to its own, recorded in
    /// `logical.databases`).
    pub(super) fn pause_caught_up(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Value, OperationError> {
        staging.cluster.start(platform)?;
        for l in &self.0 {
            l.catch_up_for_snapshot(platform, staging)?;
        }
        // Most dirty pages are written while the apply still runs: the
        // shutdown checkpoint in the pause is then short.
        staging
            .cluster
            .psql(platform, "checkpointing staging", "CHECKPOINT;", &[])?;
        platform.run_ok(
            "noting when the apply paused",
            &request(
                r#"date +%s.%N > "$FILES/apply-paused-at""#,
                &[("FILES", staging.files())],
            ),
        )?;
        for l in &self.0 {
            l.set_enabled(platform, staging, false)?;
        }
        let mut facts = if staging.atomic_snapshots {
            // The first database's flush is the whole cluster's.
            self.first().live_facts(platform, staging)?
        } else {
            Value::Null
        };
        let mut origins = Vec::new();
        for l in &self.0 {
            origins.push(match facts["source_lsn"].as_str() {
                Some(lsn) if origins.is_empty() => Some(lsn.to_owned()),
                _ => l.origin_lsn(platform, staging)?,
            });
        }
        if !staging.atomic_snapshots {
            facts = clean::stop_and_record(platform, staging)?;
        }
        let least = origins
            .iter()
            .flatten()
            .min_by_key(|l| parse_lsn(l).unwrap_or(0))
            .cloned();
        facts["source_lsn"] = json!(least);
        let mut logical = self.first().recorded(&json!(origins[0]));
        logical["databases"] = json!(self
            .0
            .iter()
            .zip(&origins)
            .map(|(l, o)| l.recorded(&json!(o)))
            .collect::<Vec<_>>());
        facts["logical"] = logical;
        clean::write_facts(platform, staging, &facts)?;
        Ok(facts)
    }
}
