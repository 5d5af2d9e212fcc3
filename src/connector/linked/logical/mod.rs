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
//!
//! A dSource may hold several databases of the source ([`databases`]):
//! each is a [`Logical`] of its own (publication, subscription, slot), on
//! the one staging cluster.

mod checks;
mod copy;
mod databases;
mod snapshot;
mod subscription;
mod tables;

use serde_json::Value;

use super::{default_slot_name, Staging};
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
    /// Every subscription's (slot's) name of this dSource, one a line.
    ours: String,
    sync_workers: u64,
    initial_copy: InitialCopy,
}

fn path(field: &str) -> String {
    format!("linked-source parameters#/logical_replication/{field}")
}

/// The subscriptions' (and slots') names: the dSource's slot name for
/// one database; with several, each ends with a digest of its database's
/// name (slot names are source-wide, and database names need not be
/// valid in one).
fn subscription_names(dsource: &str, databases: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let base = default_slot_name(dsource);
    if databases.len() == 1 {
        return vec![base];
    }
    let base = &base[..base.len().min(54)];
    databases
        .iter()
        .map(|d| {
            let digest = Sha256::digest(d.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("{base}_{hex}")
        })
        .collect()
}

fn invalid(message: String) -> OperationError {
    OperationError::new(ErrorKind::InvalidInput, message)
}

impl Logical {
    /// One per database (`database`, or each of `databases`), in the
    /// order given: each has its own publication on the source, its own
    /// subscription on staging and its own slot.
    fn all(staging: &Staging) -> Result<Vec<Self>, OperationError> {
        let p = staging.params.get("logical_replication").ok_or_else(|| {
            invalid(
                "linked-source parameters#/logical_replication is required for logical_replication"
                    .into(),
            )
        })?;
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
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
        let databases = match (text("database"), list("databases")) {
            (Some(one), many) if many.is_empty() => vec![one],
            (None, many) if !many.is_empty() => many,
            (Some(_), _) => {
                return Err(invalid(format!(
                    "{}: give database or databases, not both",
                    path("databases")
                )))
            }
            (None, _) => {
                return Err(invalid(format!(
                    "{} (or {}) is required",
                    path("database"),
                    path("databases")
                )))
            }
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
        let names = subscription_names(&staging.name, &databases);
        let source = Source {
            host: text("host").unwrap_or_else(|| "127.0.0.1".into()),
            port: p
                .get("port")
                .or_else(|| staging.source_config.get("port"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(5432),
            user: text("user").unwrap_or_else(|| "postgres".into()),
            password: text("password"),
            database: String::new(),
            connect_timeout: p
                .get("connect_timeout_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(10),
            bin_dir: Some(staging.cluster.bin_dir.clone()),
            passfile: Some(staging.passfile()),
        };
        let ours = names.join("\n");
        Ok(databases
            .into_iter()
            .zip(names)
            .map(|(database, subscription)| Self {
                source: Source {
                    database,
                    ..source.clone()
                },
                scope,
                list: list.clone(),
                creates_publication: named.is_none(),
                publication: named
                    .clone()
                    .unwrap_or_else(|| default_slot_name(&staging.name)),
                subscription,
                ours: ours.clone(),
                sync_workers,
                initial_copy,
            })
            .collect())
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

    /// Staging's settings for the apply of `subscriptions` subscriptions:
    /// an apply worker and `sync_workers` table synchronisation workers
    /// each, and a replication origin for every one of them.
    fn settings(&self, subscriptions: u64) -> Vec<(String, String)> {
        let workers = subscriptions * (self.sync_workers + 1);
        vec![
            (
                "max_sync_workers_per_subscription".into(),
                self.sync_workers.to_string(),
            ),
            (
                "max_logical_replication_workers".into(),
                (workers + 1).to_string(),
            ),
            ("max_worker_processes".into(), (workers + 9).to_string()),
            ("max_replication_slots".into(), (workers + 10).to_string()),
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
