//! The subscription on staging: made once per ingest (its slot on the
//! source named after the dSource), waited for until every table is
//! synchronised, paused for a snapshot (disabled, its workers gone: the
//! apply stops between transactions), resumed after, and read for
//! `dsource show`. Its progress is its replication origin (`pg_<oid>`).
//!
//! Every script connects to the replicated database (`\c :"db"`); values
//! travel as psql variables, identifiers are quoted by `format('%I')`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::super::Staging;
use super::Logical;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::parse_lsn;
use crate::connector::platform::{request, Platform};

/// A table's synchronisation state (`pg_subscription_rel.srsubstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SyncState {
    Initialize,
    DataCopy,
    FinishedCopy,
    Synchronized,
    Ready,
    Unknown,
}

impl SyncState {
    fn of(code: &str) -> Self {
        match code {
            "i" => Self::Initialize,
            "d" => Self::DataCopy,
            "f" => Self::FinishedCopy,
            "s" => Self::Synchronized,
            "r" => Self::Ready,
            _ => Self::Unknown,
        }
    }
}

const CREATE: &str = r#"\c :"db"
SELECT format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I WITH (slot_name = %L, create_slot = true, copy_data = true)', :'sub', :'conninfo', :'pub', :'sub') \gexec"#;

const SET_ENABLED: &str = r#"\c :"db"
SELECT format('ALTER SUBSCRIPTION %I %s', subname, CASE WHEN :'on' = 'on' THEN 'ENABLE' ELSE 'DISABLE' END)
  FROM pg_subscription WHERE subname = :'sub' AND subslotname IS NOT NULL AND subenabled <> (:'on' = 'on') \gexec"#;

/// Detaches the subscription from its slot and drops it (staging only).
const DETACH: &str = r#"\c :"db"
SELECT format('ALTER SUBSCRIPTION %I DISABLE', subname) FROM pg_subscription WHERE subname = :'sub' AND subenabled \gexec
SELECT format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', subname) FROM pg_subscription WHERE subname = :'sub' \gexec
SELECT format('DROP SUBSCRIPTION %I', subname) FROM pg_subscription WHERE subname = :'sub' \gexec"#;

const SYNC_STATE: &str = r#"\c :"db"
SELECT (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid AND r.srsubstate = 'r') || ' '
    || (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid) || ' '
    || coalesce((SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats WHERE subid = s.oid), 0) || ' '
    || (coalesce((SELECT sum(pg_table_size(r.srrelid)) FROM pg_subscription_rel r
                  WHERE r.srsubid = s.oid AND r.srsubstate IN ('f', 's', 'r')), 0)
        + coalesce((SELECT sum(bytes_processed) FROM pg_stat_progress_copy), 0))::bigint
  FROM pg_subscription s WHERE s.subname = :'sub'"#;

const STATUS: &str = r#"\c :"db"
SELECT json_build_object(
  'subscription', s.subname, 'enabled', s.subenabled, 'slot', s.subslotname,
  'origin', 'pg_' || s.oid,
  'remote_lsn', pg_replication_origin_progress('pg_' || s.oid, false)::text,
  'apply_pid', (SELECT pid FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.relid IS NULL),
  'received_lsn', (SELECT received_lsn::text FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.relid IS NULL),
  'latest_end_lsn', (SELECT latest_end_lsn::text FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.relid IS NULL),
  'latest_end_time', (SELECT latest_end_time FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.relid IS NULL),
  'errors', coalesce((SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats ss WHERE ss.subid = s.oid), 0),
  'tables', (SELECT coalesce(json_agg(json_build_object('table', format('%I.%I', n.nspname, c.relname), 'state', r.srsubstate) ORDER BY n.nspname, c.relname), '[]')
             FROM pg_subscription_rel r JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE r.srsubid = s.oid))
FROM pg_subscription s WHERE s.subname = :'sub'"#;

impl Logical {
    pub(super) fn psql(
        &self,
        platform: &Platform,
        staging: &Staging,
        what: &str,
        script: &str,
        more: &[(&str, &str)],
    ) -> Result<String, OperationError> {
        let mut vars = vec![
            ("db", self.source.database.as_str()),
            ("sub", self.subscription.as_str()),
        ];
        vars.extend_from_slice(more);
        staging.cluster.psql(platform, what, script, &vars)
    }

    /// Creates the subscription (and its slot on the source); the copy of
    /// every table starts at once.
    pub(super) fn subscribe(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<(), OperationError> {
        let conninfo = self.conninfo(staging);
        self.psql(
            platform,
            staging,
            "creating the subscription on staging",
            CREATE,
            &[("conninfo", &conninfo), ("pub", &self.publication)],
        )
        .map_err(|e| self.explain(platform, staging, e, "subscribing to the source"))?;
        Ok(())
    }

    /// Waits until every table is synchronised ('r'), reporting progress;
    /// fails with staging's last replication error when a worker fails.
    pub(super) fn wait_synchronised(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<(), OperationError> {
        let mut last = (u64::MAX, u64::MAX);
        loop {
            let row = self.psql(
                platform,
                staging,
                "reading the synchronisation",
                SYNC_STATE,
                &[],
            )?;
            let n: Vec<u64> = row
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let [ready, total, errors, bytes] = n[..] else {
                return Err(OperationError::new(
                    ErrorKind::InvalidState,
                    format!("staging has no subscription {}", self.subscription),
                ));
            };
            if errors > 0 {
                return Err(self.explain(
                    platform,
                    staging,
                    OperationError::new(
                        ErrorKind::CommandFailed,
                        "the initial copy of the source's tables failed",
                    ),
                    "copying the tables",
                ));
            }
            if (ready, bytes) != last {
                platform.progress(
                    ready,
                    total.max(1),
                    &format!("tables synchronised ({} MiB copied)", bytes >> 20),
                );
                last = (ready, bytes);
            }
            if ready == total {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits (at most `limit`) until the apply has confirmed the source's
    /// position `target`; fails when the apply keeps failing.
    pub(super) fn catch_up(
        &self,
        platform: &Platform,
        staging: &Staging,
        target: &str,
        limit: Duration,
    ) -> Result<(), OperationError> {
        let start = Instant::now();
        let first = self.status(platform, staging)?;
        let errors0 = first["errors"].as_u64().unwrap_or(0);
        let goal = parse_lsn(target).unwrap_or(0);
        loop {
            let s = self.status(platform, staging)?;
            let at = ["latest_end_lsn", "remote_lsn"]
                .iter()
                .filter_map(|k| s[*k].as_str().and_then(parse_lsn))
                .max()
                .unwrap_or(0);
            if at >= goal {
                return Ok(());
            }
            let errors = s["errors"].as_u64().unwrap_or(0);
            if errors > errors0 || (errors > 0 && start.elapsed() >= limit) {
                return Err(self.explain(
                    platform,
                    staging,
                    OperationError::new(
                        ErrorKind::CommandFailed,
                        "staging cannot apply the source's changes",
                    ),
                    "applying",
                ));
            }
            if start.elapsed() >= limit {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Enables (`true`) or disables the subscription; disabling waits until
    /// none of its workers runs (the apply stops between transactions).
    pub(super) fn set_enabled(
        &self,
        platform: &Platform,
        staging: &Staging,
        on: bool,
    ) -> Result<(), OperationError> {
        let flag = if on { "on" } else { "off" };
        self.psql(
            platform,
            staging,
            "switching the subscription",
            SET_ENABLED,
            &[("on", flag)],
        )?;
        if on {
            return Ok(());
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let n = self.psql(
                platform,
                staging,
                "waiting for the apply to stop",
                "SELECT count(*) FROM pg_stat_subscription WHERE subname = :'sub' AND pid IS NOT NULL",
                &[],
            )?;
            if n.trim() == "0" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(OperationError::new(
            ErrorKind::CommandFailed,
            "the subscription's workers did not stop within 120 s",
        )
        .with_action(format!("see {}", staging.cluster.log_file)))
    }

    /// The source LSN staging holds: its origin's progress, flushed.
    pub(super) fn origin_lsn(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Option<String>, OperationError> {
        let lsn = self.psql(
            platform,
            staging,
            "reading the subscription's origin",
            "SELECT coalesce(pg_replication_origin_progress('pg_' || oid, true)::text, '') FROM pg_subscription WHERE subname = :'sub'",
            &[],
        )?;
        Ok(Some(lsn.trim().to_owned()).filter(|l| !l.is_empty()))
    }

    /// Sets staging's sequences to the source's values (taken after the
    /// rows staging holds: a VDB's next values never collide with them).
    pub(super) fn set_sequences(
        &self,
        platform: &Platform,
        staging: &Staging,
        sequences: &str,
    ) -> Result<(), OperationError> {
        self.psql(
            platform,
            staging,
            "setting staging's sequences",
            r#"\c :"db"
SELECT count(setval((x->>'s')::regclass, (x->>'v')::bigint))
  FROM json_array_elements(:'seqs'::json) x WHERE to_regclass(x->>'s') IS NOT NULL"#,
            &[("seqs", sequences)],
        )?;
        Ok(())
    }

    /// Whether staging has the subscription (attached to its slot).
    pub(super) fn subscribed(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<bool, OperationError> {
        Ok(self
            .psql(
                platform,
                staging,
                "looking for the subscription",
                "SELECT count(*) FROM pg_subscription WHERE subname = :'sub' AND subslotname IS NOT NULL",
                &[],
            )?
            .trim()
            == "1")
    }

    /// Detaches the subscription from its slot and drops it, on staging.
    pub(super) fn detach(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<(), OperationError> {
        self.psql(
            platform,
            staging,
            "dropping the subscription on staging",
            DETACH,
            &[],
        )?;
        Ok(())
    }

    /// The subscription as it is: origin, apply worker, tables.
    pub(super) fn status(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Value, OperationError> {
        let text = self.psql(platform, staging, "reading the subscription", STATUS, &[])?;
        let mut v: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        if let Some(tables) = v.get_mut("tables").and_then(Value::as_array_mut) {
            for t in tables {
                let state = SyncState::of(t["state"].as_str().unwrap_or(""));
                t["state"] = json!(state);
            }
        }
        Ok(v)
    }

    /// `e`, with staging's last logical replication error (its table and
    /// the change that failed) and what to do.
    pub(super) fn explain(
        &self,
        platform: &Platform,
        staging: &Staging,
        e: OperationError,
        doing: &str,
    ) -> OperationError {
        let tail = platform
            .run(&request(
                r#"grep -E 'ERROR:|CONTEXT:|DETAIL:' -- "$LOG" 2>/dev/null | grep -v 'terminating logical replication worker due to administrator' | tail -n 20 | awk '/ERROR:/ { last = $0; next } last != "" { last = last "\n" $0 } END { print last }'"#,
                &[("LOG", staging.cluster.log_file.clone())],
            ))
            .map(|o| o.stdout.trim().to_owned())
            .unwrap_or_default();
        let message = tail
            .lines()
            .map(|l| {
                l.split_once("ERROR:")
                    .or_else(|| l.split_once("CONTEXT:"))
                    .or_else(|| l.split_once("DETAIL:"))
                    .map_or(l, |(_, m)| m)
                    .trim()
            })
            .collect::<Vec<_>>()
            .join("; ");
        let action = if message.contains("authentication failed") || message.contains("password") {
            "check logical_replication.user and its password (handed over in $PGVIRT_REPLICATION_PASSWORD or the variable --password-env names)".to_owned()
        } else if message.contains("replication slot") && message.contains("does not exist") {
            format!(
                "the slot {} is gone from the source: the dSource needs a resync (`pgvirt dsource sync {} --resync`)",
                self.subscription, staging.name
            )
        } else {
            format!(
                "run the same DDL on staging (`psql -h {} -p {} -d {}` as the environment user): the apply then resumes; or resync the dSource (`pgvirt dsource sync {} --resync`); see {}",
                staging.cluster.socket_dir, staging.cluster.port, self.source.database, staging.name, staging.cluster.log_file
            )
        };
        let mut out = OperationError::new(
            e.kind,
            if message.is_empty() {
                format!("{doing}: {}", e.message)
            } else {
                format!("{doing}: {}: {message}", e.message)
            },
        )
        .with_action(action);
        if let Some(cause) = e.cause {
            out = out.with_cause(cause);
        }
        out
    }
}
