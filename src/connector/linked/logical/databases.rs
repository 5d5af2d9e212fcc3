//! One dSource, one or several databases of the source (`database`, or
//! `databases`): one staging cluster, and per database a publication on
//! the source, a subscription on staging and its slot. Link checks every
//! database before anything is made and copies them one after the other;
//! a snapshot pauses every apply; delete and disable clean up every
//! database's. The method's operations ([`Ingestion`]) act on the set.

use serde_json::{json, Value};

use super::super::method::Ingestion;
use super::super::single_database::SingleDatabase;
use super::super::{has_cluster, Staging};
use super::{InitialCopy, Logical, LogicalReplication};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::parse_lsn;
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// Every database's [`Logical`], in the order the parameters give them.
pub(super) struct Databases(pub(super) Vec<Logical>);

impl Databases {
    fn of(staging: &Staging) -> Result<Self, OperationError> {
        Ok(Self(Logical::all(staging)?))
    }

    pub(super) fn first(&self) -> &Logical {
        &self.0[0]
    }

    /// An error without the password (one for every database).
    fn scrub(&self, e: OperationError) -> OperationError {
        self.first().scrub(e)
    }

    /// The slots (and sync slots of staging `sysid`) of every database,
    /// and with `publication` the publications pgvirt made.
    fn drop_on_source(&self, sysid: &str, publication: bool) -> Result<(), OperationError> {
        for l in &self.0 {
            l.drop_on_source(sysid, publication)?;
        }
        Ok(())
    }

    fn set_enabled(
        &self,
        platform: &Platform,
        staging: &Staging,
        on: bool,
    ) -> Result<(), OperationError> {
        for l in &self.0 {
            l.set_enabled(platform, staging, on)?;
        }
        Ok(())
    }

    /// A fresh staging, subscribed to every database, every table
    /// synchronised. On failure, staging is stopped and marked, and
    /// nothing is left on the source.
    fn ingest(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        // Everything is checked before anything is made.
        let facts = self
            .0
            .iter()
            .map(Logical::check_source)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.scrub(e))?;
        staging.cluster.stop(platform)?;
        // What an earlier staging made (a resync, a cut-short link).
        Logical::clean_copy(platform, staging)?;
        self.drop_on_source(&Logical::recorded_sysid(platform, staging), false)?;
        let made = (|| {
            let settings = self.first().settings(self.0.len() as u64);
            SingleDatabase::init(platform, staging, &facts[0], &settings)?;
            Logical::record_sysid(platform, staging)?;
            for (l, f) in self.0.iter().zip(&facts) {
                let dump = l.initial_copy == InitialCopy::Dump;
                l.copy_schema(platform, staging, !dump)?;
                l.create_publication()?;
                if dump {
                    l.copy_by_dump(platform, staging, f)?;
                } else {
                    l.subscribe(platform, staging)?;
                }
            }
            for l in &self.0 {
                l.wait_synchronised(platform, staging)?;
            }
            staging.finish_ingest(platform)?;
            Ok(())
        })();
        if made.is_err() {
            let _ = staging.cluster.stop(platform);
            let _ = Logical::clean_copy(platform, staging);
            let _ = self.drop_on_source(&Logical::recorded_sysid(platform, staging), true);
        }
        made.map_err(|e| self.scrub(e))
    }

    /// One database's subscription as `dsource show` reports it: the
    /// origin, the tables, how far behind the source.
    fn status(
        &self,
        l: &Logical,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Value, OperationError> {
        let mut logical = l.status(platform, staging)?;
        if logical.is_null() {
            return Ok(logical);
        }
        let applied = ["latest_end_lsn", "remote_lsn"]
            .iter()
            .filter_map(|k| logical[*k].as_str())
            .max_by_key(|l| parse_lsn(l).unwrap_or(0))
            .unwrap_or("")
            .to_owned();
        logical["database"] = json!(l.source.database);
        match l.source_position(&applied) {
            Ok((at, lag)) => {
                logical["source_lsn"] = json!(at);
                logical["lag_bytes"] = json!(lag);
                let seconds = if lag > 0 {
                    l.source
                        .seconds_since(&logical["latest_end_time"])
                        .unwrap_or(0.0)
                } else {
                    0.0
                };
                logical["lag_seconds"] = json!(seconds);
            }
            Err(e) => logical["source_error"] = json!(self.scrub(e).message),
        }
        Ok(logical)
    }
}

impl Ingestion for LogicalReplication {
    fn check(&self, _platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        let set = Databases::of(staging)?;
        for l in &set.0 {
            l.check_source().map_err(|e| set.scrub(e))?;
        }
        Ok(())
    }

    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        Databases::of(staging)?.ingest(platform, staging)
    }

    fn consistent_point(
        &self,
        platform: &Platform,
        staging: &Staging,
        resync: bool,
    ) -> Result<Value, OperationError> {
        let set = Databases::of(staging)?;
        if resync || !has_cluster(platform, staging)? {
            set.ingest(platform, staging)?;
        }
        let paused = set.pause_caught_up(platform, staging);
        if paused.is_err() && has_cluster(platform, staging)? {
            // Staging goes on applying whatever failed.
            let _ = staging.cluster.start(platform);
            for l in &set.0 {
                let _ = l.set_enabled(platform, staging, true);
            }
        }
        paused.map_err(|e| set.scrub(e))
    }

    /// Staging started again, the apply resumed.
    fn describe(&self, platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
        let set = Databases::of(staging)?;
        staging.cluster.start(platform)?;
        set.set_enabled(platform, staging, true)?;
        let mut meta = staging.recorded_facts(platform)?;
        // How long the apply was paused (the snapshot's cost to staging).
        let paused = platform
            .run(&request(
                r#"a=$(cat -- "$FILES/apply-paused-at" 2>/dev/null) && b=$(date +%s.%N) && awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f\n", b - a }'; rm -f -- "$FILES/apply-paused-at""#,
                &[("FILES", staging.files())],
            ))
            .ok()
            .and_then(|o| o.stdout.trim().parse::<f64>().ok());
        if let Some(p) = paused {
            meta["apply_paused_seconds"] = json!((p * 1000.0).round() / 1000.0);
        }
        Ok(meta)
    }

    fn replays_wal(&self) -> bool {
        false
    }

    fn follows_with_password(&self, staging: &Staging) -> Result<Option<Source>, OperationError> {
        let set = Databases::of(staging)?;
        Ok(Some(set.first().source.clone()).filter(|s| s.password.is_some()))
    }

    /// Also what repairs a sync or resync cut short: a half-made staging
    /// is stopped and its slots on the source dropped (the next sync
    /// ingests); a paused subscription is resumed.
    fn start_staging(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        let set = Databases::of(staging)?;
        if !has_cluster(platform, staging)? {
            staging.cluster.stop(platform)?;
            Logical::clean_copy(platform, staging)?;
            set.drop_on_source(&Logical::recorded_sysid(platform, staging), false)?;
            return Err(OperationError::new(
                ErrorKind::InvalidState,
                "the staging data directory is empty, or its last ingest was cut short",
            )
            .with_action(format!(
                "run `pgvirt dsource sync {} --resync` to subscribe again",
                staging.name
            )));
        }
        staging.cluster.start(platform)?;
        set.set_enabled(platform, staging, true)
    }

    fn stop_staging(
        &self,
        platform: &Platform,
        staging: &Staging,
        purpose: &str,
    ) -> Result<(), OperationError> {
        let set = Databases::of(staging)?;
        if purpose != "delete" && staging.cluster.is_running(platform)? {
            // Disabled, staging keeps its data but no slot on the source.
            for l in &set.0 {
                l.detach(platform, staging)?;
            }
        }
        staging.cluster.stop(platform)?;
        Logical::clean_copy(platform, staging)?;
        let sysid = Logical::recorded_sysid(platform, staging);
        for l in &set.0 {
            match l.drop_on_source(&sysid, true) {
                Err(e) if purpose == "delete" && e.kind == ErrorKind::SourceUnreachable => {
                    log::warn!(
                        "{}: drop replication slot {} (and publication {} in database {} if pgvirt made it) on the source by hand",
                        e.message,
                        l.subscription,
                        l.publication,
                        l.source.database
                    );
                }
                other => other.map_err(|e| set.scrub(e))?,
            }
        }
        if purpose == "delete" {
            staging.remove_private(platform)?;
        }
        Ok(())
    }

    /// For one database, its subscription's state (`logical`); for
    /// several, the first's with every database's in
    /// `logical.databases`, and the greatest lag.
    fn worker(
        &self,
        platform: &Platform,
        staging: &Staging,
        _input: &Value,
    ) -> Result<Value, OperationError> {
        let set = Databases::of(staging)?;
        let running = staging.cluster.is_running(platform)?;
        if !running || !has_cluster(platform, staging)? {
            return Ok(json!({"running": running, "connected": false,
                "next": format!("staging is stopped: `pgvirt dsource sync {}` (--resync if it was disabled)", staging.name)}));
        }
        let mut each = Vec::new();
        for l in &set.0 {
            each.push(set.status(l, platform, staging)?);
        }
        if each.iter().any(Value::is_null) {
            return Ok(json!({"running": true, "connected": false,
                "next": format!("staging has no subscription: `pgvirt dsource sync {} --resync`", staging.name)}));
        }
        let connected = each.iter().all(|s| !s["apply_pid"].is_null());
        let origins: Vec<&str> = each.iter().filter_map(|s| s["origin"].as_str()).collect();
        let mut logical = each[0].clone();
        if each.len() > 1 {
            let most = |k: &str| {
                each.iter()
                    .filter_map(|s| s[k].as_f64())
                    .fold(0.0_f64, f64::max)
            };
            logical["lag_bytes"] = json!(most("lag_bytes") as i64);
            logical["lag_seconds"] = json!(most("lag_seconds"));
            logical["databases"] = json!(each);
        }
        Ok(json!({
            "running": true,
            "connected": connected,
            "logical": logical,
            "next": format!("each sync pauses the apply for a snapshot of what staging applied (origin {})", origins.join(", ")),
        }))
    }
}
