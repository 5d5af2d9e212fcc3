//! Logical replication ingestion (seed 003): staging is a cluster of its
//! own, initialised in the mount with the source database's encoding and
//! locale; the roles that own objects are copied (`pg_dumpall
//! --roles-only`); a publication on the source (pgvirt's
//! `pgvirt_<dsource>`: all tables, chosen schemas or tables; or one the
//! user names) and a subscription on staging with its own slot, named
//! after the dSource, then apply every change. The subscription's
//! replication origin is the crash-safe record of how far staging has
//! applied. The initial copy (`initial_copy`):
//!
//! - `dump` (the default, [`copy`]): the slot is made exporting its
//!   snapshot, `pg_dump -Fd -j N` of that snapshot is restored by
//!   `pg_restore -j N` (the data before the indexes), and the subscription
//!   starts, without a copy, at the slot's consistent point;
//! - `table_sync`: the schema is copied (`pg_dump --schema-only`), and the
//!   subscription's table synchronisation copies the tables in parallel
//!   into it, indexes and all.
//!
//! - link: checks of the source first, then the above; the first snapshot
//!   waits until every table is synchronised;
//! - snapshot: the apply is paused between transactions (the subscription
//!   disabled, its workers gone) once staging has caught up and its
//!   sequences are set to the source's (logical replication does not carry
//!   them; read after the rows, they never fall behind), the origin's
//!   progress read
//!   (`pg_replication_origin_progress`) as the snapshot's `source_lsn`;
//!   on a pool that snapshots atomically (btrfs, ZFS) the storage snapshot
//!   is taken of the running staging, its WAL flushed (a clone recovers as
//!   after a crash, to exactly that), elsewhere staging is shut down
//!   cleanly ([`super::clean`]) for it; then the apply is enabled again
//!   ([`snapshot`]). A clone holds a disabled subscription,
//!   which the virtual lifecycle detaches and drops before anything may
//!   connect;
//! - delete and disable: the subscription, the slots on the source and the
//!   publication pgvirt made go (from the source alone when staging is gone).
//!
//! The subscription's conninfo names a passfile (`passfile=`, the dSource's
//! private directory, 0600), never the password: `pg_subscription` is in
//! every snapshot. `pgvirt/logical.json` in the mount names the staging
//! cluster's system identifier, which the names of its table
//! synchronisation slots on the source end with.

mod checks;
mod copy;
mod snapshot;
mod subscription;
mod tables;

use serde_json::{json, Value};

use super::method::Ingestion;
use super::single_database::SingleDatabase;
use super::{default_slot_name, has_cluster, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `logical_replication`.
pub struct LogicalReplication;

/// What the subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Scope {
    All,
    Schemas,
    Tables,
    /// A publication the user named.
    Publication,
}

/// How the tables are first copied (`initial_copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitialCopy {
    /// `pg_dump` of the slot's exported snapshot, `pg_restore` ([`copy`]).
    Dump,
    /// The subscription's table synchronisation (`copy_data`).
    TableSync,
}

/// The method's parameters.
struct Logical {
    source: Source,
    scope: Scope,
    /// Schemas or tables, one a line.
    list: String,
    publication: String,
    creates_publication: bool,
    /// The subscription's name, and its slot's on the source.
    subscription: String,
    /// Tables copied in parallel (sync workers, or dump and restore jobs).
    sync_workers: u64,
    initial_copy: InitialCopy,
}

fn path(field: &str) -> String {
    format!("linked-source parameters#/logical_replication/{field}")
}

fn invalid(message: String) -> OperationError {
    OperationError::new(ErrorKind::InvalidInput, message)
}

impl Logical {
    fn of(staging: &Staging) -> Result<Self, OperationError> {
        let p = staging.params.get("logical_replication").ok_or_else(|| {
            invalid(
                "linked-source parameters#/logical_replication is required for logical_replication"
                    .into(),
            )
        })?;
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        let database =
            text("database").ok_or_else(|| invalid(format!("{} is required", path("database"))))?;
        let list = |k: &str| -> Vec<String> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (schemas, tables) = (list("schemas"), list("tables"));
        let named = text("publication");
        let (scope, list) = match (&named, schemas.is_empty(), tables.is_empty()) {
            (Some(_), true, true) => (Scope::Publication, String::new()),
            (Some(_), _, _) => {
                return Err(invalid(format!(
                    "{}: a named publication decides the tables; leave out schemas and tables",
                    path("publication")
                )))
            }
            (None, false, false) => {
                return Err(invalid(format!(
                    "{}: give schemas or tables, not both",
                    path("tables")
                )))
            }
            (None, false, true) => (Scope::Schemas, schemas.join("\n")),
            (None, true, false) => {
                if let Some(bad) = tables.iter().find(|t| !t.contains('.')) {
                    return Err(invalid(format!(
                        "{}: {bad:?} is not schema.table",
                        path("tables")
                    )));
                }
                (Scope::Tables, tables.join("\n"))
            }
            (None, true, true) => (Scope::All, String::new()),
        };
        let sync_workers = p.get("sync_workers").and_then(Value::as_u64).unwrap_or(2);
        if !(1..=16).contains(&sync_workers) {
            return Err(invalid(format!(
                "{} must be from 1 to 16, not {sync_workers}",
                path("sync_workers")
            )));
        }
        let initial_copy = match text("initial_copy").as_deref() {
            None | Some("dump") => InitialCopy::Dump,
            Some("table_sync") => InitialCopy::TableSync,
            Some(other) => {
                return Err(invalid(format!(
                    "{} must be \"dump\" or \"table_sync\", not {other:?}",
                    path("initial_copy")
                )))
            }
        };
        let subscription = default_slot_name(&staging.name);
        Ok(Self {
            source: Source {
                host: text("host").unwrap_or_else(|| "127.0.0.1".into()),
                port: p
                    .get("port")
                    .or_else(|| staging.source_config.get("port"))
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(5432),
                user: text("user").unwrap_or_else(|| "postgres".into()),
                password: text("password"),
                database,
                connect_timeout: p
                    .get("connect_timeout_seconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(10),
                bin_dir: Some(staging.cluster.bin_dir.clone()),
                passfile: Some(staging.passfile()),
            },
            scope,
            list,
            creates_publication: named.is_none(),
            publication: named.unwrap_or_else(|| subscription.clone()),
            subscription,
            sync_workers,
            initial_copy,
        })
    }

    /// The subscription's connection: a passfile, never the password.
    fn conninfo(&self, staging: &Staging) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let s = &self.source;
        let mut c = format!(
            "host={} port={} user={} dbname={} connect_timeout={} application_name={}",
            q(&s.host),
            s.port,
            q(&s.user),
            q(&s.database),
            s.connect_timeout.max(2),
            q(&self.subscription)
        );
        if s.password.is_some() {
            c.push_str(&format!(" passfile={}", q(&staging.passfile())));
        }
        c
    }

    /// Staging's settings for the apply.
    fn settings(&self) -> Vec<(String, String)> {
        vec![
            (
                "max_sync_workers_per_subscription".into(),
                self.sync_workers.to_string(),
            ),
            (
                "max_logical_replication_workers".into(),
                (self.sync_workers + 2).to_string(),
            ),
            (
                "max_worker_processes".into(),
                (self.sync_workers + 10).to_string(),
            ),
        ]
    }

    /// The system identifier of the staging cluster link made (recorded
    /// in the mount), or "".
    fn recorded_sysid(platform: &Platform, staging: &Staging) -> String {
        platform
            .run(&request(
                r#"sed -n 's/.*"system_identifier": *"\([0-9]*\)".*/\1/p' -- "$FILES/logical.json" 2>/dev/null | head -n 1"#,
                &[("FILES", staging.files())],
            ))
            .map(|o| o.stdout.trim().to_owned())
            .unwrap_or_default()
    }

    fn record_sysid(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        platform.run_ok(
            "recording the staging cluster's identifier",
            &request(
                r#"set -eu
id=$("$BIN/pg_controldata" -D "$DATA" | sed -n 's/^Database system identifier: *//p')
printf '{"system_identifier": "%s"}\n' "$id" > "$FILES/logical.json""#,
                &[
                    ("BIN", staging.cluster.bin_dir.clone()),
                    ("DATA", staging.cluster.data_dir.clone()),
                    ("FILES", staging.files()),
                ],
            ),
        )?;
        Ok(())
    }

    /// The roles, and with `schema` the schema, of the source database,
    /// into staging.
    fn copy_schema(
        &self,
        platform: &Platform,
        staging: &Staging,
        schema: bool,
    ) -> Result<(), OperationError> {
        let s = &self.source;
        platform.run_ok(
            "copying the roles and the schema",
            &request(
                r#"set -eu -o pipefail
"$BIN/pg_dumpall" -h "$SRC_HOST" -p "$SRC_PORT" -U "$SRC_USER" -l "$SRC_DB" -w --roles-only --no-role-passwords > "$PRIVATE/roles.sql"
# Roles staging has already (its superuser) are errors to pass over.
"$BIN/psql" -X -q -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -f "$PRIVATE/roles.sql" > /dev/null 2> "$PRIVATE/roles.log" || true
rm -f -- "$PRIVATE/roles.sql"
[ -n "$SCHEMA" ] || exit 0
create=(-C); [ "$SRC_DB" = postgres ] && create=()
"$BIN/pg_dump" -h "$SRC_HOST" -p "$SRC_PORT" -U "$SRC_USER" -d "$SRC_DB" -w --schema-only --no-publications --no-subscriptions "${create[@]}" > "$PRIVATE/schema.sql"
if ! "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -f "$PRIVATE/schema.sql" > /dev/null 2> "$PRIVATE/schema.log"; then
  grep -m 3 ERROR -- "$PRIVATE/schema.log" >&2; rm -f -- "$PRIVATE/schema.sql"; exit 1
fi
rm -f -- "$PRIVATE/schema.sql" "$PRIVATE/schema.log""#,
                &[staging.dump_vars(s), vec![("PGPASSFILE", staging.passfile()), ("SCHEMA", if schema { "1" } else { "" }.to_owned())]].concat(),
            ),
        )?;
        Ok(())
    }

    /// A fresh staging, subscribed, every table synchronised. On failure,
    /// staging is stopped and marked, and nothing is left on the source.
    fn ingest(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        // Everything is checked before anything is made.
        let facts = self.check_source()?;
        staging.cluster.stop(platform)?;
        // What an earlier staging made (a resync, a cut-short link).
        Self::clean_copy(platform, staging)?;
        self.drop_on_source(&Self::recorded_sysid(platform, staging), false)?;
        let made = (|| {
            SingleDatabase::init(platform, staging, &facts, &self.settings())?;
            Self::record_sysid(platform, staging)?;
            let dump = self.initial_copy == InitialCopy::Dump;
            self.copy_schema(platform, staging, !dump)?;
            self.create_publication()?;
            if dump {
                self.copy_by_dump(platform, staging, &facts)?;
            } else {
                self.subscribe(platform, staging)?;
            }
            self.wait_synchronised(platform, staging)?;
            staging.finish_ingest(platform)?;
            Ok(())
        })();
        if made.is_err() {
            let _ = staging.cluster.stop(platform);
            let _ = Self::clean_copy(platform, staging);
            let _ = self.drop_on_source(&Self::recorded_sysid(platform, staging), true);
        }
        made.map_err(|e| self.scrub(e))
    }

    /// An error without the password, should anything have echoed it.
    fn scrub(&self, mut e: OperationError) -> OperationError {
        if let Some(pw) = self.source.password.as_deref().filter(|p| !p.is_empty()) {
            e.message = e.message.replace(pw, "********");
            e.cause = e.cause.map(|c| c.replace(pw, "********"));
        }
        e
    }

    fn needs_resync(&self, staging: &Staging, why: &str) -> OperationError {
        OperationError::new(
            ErrorKind::InvalidState,
            format!("dSource {} needs a resync: {why}", staging.name),
        )
        .with_action(format!(
            "run `pgvirt dsource sync {} --resync` (a fresh copy of the source)",
            staging.name
        ))
    }
}

impl Ingestion for LogicalReplication {
    fn check(&self, _platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        let l = Logical::of(staging)?;
        l.check_source().map(|_| ()).map_err(|e| l.scrub(e))
    }

    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        Logical::of(staging)?.ingest(platform, staging)
    }

    fn consistent_point(
        &self,
        platform: &Platform,
        staging: &Staging,
        resync: bool,
    ) -> Result<Value, OperationError> {
        let l = Logical::of(staging)?;
        if resync || !has_cluster(platform, staging)? {
            l.ingest(platform, staging)?;
        }
        let paused = l.pause_caught_up(platform, staging);
        if paused.is_err() && has_cluster(platform, staging)? {
            // Staging goes on applying whatever failed.
            let _ = staging.cluster.start(platform);
            let _ = l.set_enabled(platform, staging, true);
        }
        paused.map_err(|e| l.scrub(e))
    }

    /// Staging started again, the apply resumed.
    fn describe(&self, platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
        let l = Logical::of(staging)?;
        staging.cluster.start(platform)?;
        l.set_enabled(platform, staging, true)?;
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
        Ok(Some(Logical::of(staging)?.source).filter(|s| s.password.is_some()))
    }

    /// Also what repairs a sync or resync cut short: a half-made staging
    /// is stopped and its slots on the source dropped (the next sync
    /// ingests); a paused subscription is resumed.
    fn start_staging(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        let l = Logical::of(staging)?;
        if !has_cluster(platform, staging)? {
            staging.cluster.stop(platform)?;
            Logical::clean_copy(platform, staging)?;
            l.drop_on_source(&Logical::recorded_sysid(platform, staging), false)?;
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
        l.set_enabled(platform, staging, true)
    }

    fn stop_staging(
        &self,
        platform: &Platform,
        staging: &Staging,
        purpose: &str,
    ) -> Result<(), OperationError> {
        let l = Logical::of(staging)?;
        if purpose != "delete" && staging.cluster.is_running(platform)? {
            // Disabled, staging keeps its data but no slot on the source.
            l.detach(platform, staging)?;
        }
        staging.cluster.stop(platform)?;
        Logical::clean_copy(platform, staging)?;
        let sysid = Logical::recorded_sysid(platform, staging);
        match l.drop_on_source(&sysid, true) {
            Err(e) if purpose == "delete" && e.kind == ErrorKind::SourceUnreachable => {
                log::warn!(
                    "{}: drop replication slot {} (and publication {} if pgvirt made it) on the source by hand",
                    e.message,
                    l.subscription,
                    l.publication
                );
            }
            other => other.map_err(|e| l.scrub(e))?,
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
        let l = Logical::of(staging)?;
        let running = staging.cluster.is_running(platform)?;
        if !running || !has_cluster(platform, staging)? {
            return Ok(json!({"running": running, "connected": false,
                "next": format!("staging is stopped: `pgvirt dsource sync {}` (--resync if it was disabled)", staging.name)}));
        }
        let status = l.status(platform, staging)?;
        if status.is_null() {
            return Ok(json!({"running": true, "connected": false,
                "next": format!("staging has no subscription: `pgvirt dsource sync {} --resync`", staging.name)}));
        }
        let applied = ["latest_end_lsn", "remote_lsn"]
            .iter()
            .filter_map(|k| status[*k].as_str())
            .max_by_key(|l| crate::connector::conf::parse_lsn(l).unwrap_or(0))
            .unwrap_or("")
            .to_owned();
        let mut logical = status.clone();
        match l.source_position(&applied) {
            Ok((at, lag)) => {
                logical["source_lsn"] = json!(at);
                logical["lag_bytes"] = json!(lag);
                let seconds = if lag > 0 {
                    l.source
                        .seconds_since(&status["latest_end_time"])
                        .unwrap_or(0.0)
                } else {
                    0.0
                };
                logical["lag_seconds"] = json!(seconds);
            }
            Err(e) => logical["source_error"] = json!(l.scrub(e).message),
        }
        Ok(json!({
            "running": true,
            "connected": !status["apply_pid"].is_null(),
            "logical": logical,
            "next": format!("each sync pauses the apply for a snapshot of what staging applied (origin {})", status["origin"].as_str().unwrap_or("")),
        }))
    }
}
