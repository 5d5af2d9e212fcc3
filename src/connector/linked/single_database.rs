//! Single-database ingestion: staging is a cluster of its own, initialised
//! in the mount with the source database's encoding and locale; the roles
//! are restored (`pg_dumpall --roles-only`, no passwords unless asked), then
//! the database by a parallel `pg_dump -Fd -j N` and `pg_restore -j N`,
//! with progress in tables. Each sync takes a fresh dump and restores it
//! into a fresh cluster; the snapshot is taken with staging shut down
//! cleanly ([`super::clean`]), so its clones start as they are.
//!
//! The dump directory and the passfile live in the dSource's private
//! directory (the environment's scratch, outside every dataset), and the
//! dump is removed once restored: no snapshot ever holds either.

use serde_json::{json, Value};

use super::method::Ingestion;
use super::{clean, has_cluster, progress, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::cluster::{Cluster, ClusterConfig};
use crate::connector::conf::{conf_quote, conf_value};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `single_database`.
pub struct SingleDatabase;

/// The path of a field in the linked-source parameters, for errors.
fn path(field: &str) -> String {
    format!("linked-source parameters#/single_database/{field}")
}

/// The dump's parameters.
struct Dump {
    source: Source,
    dump_jobs: u64,
    restore_jobs: u64,
    lists: Vec<(&'static str, String)>,
    copy_role_passwords: bool,
}

impl Dump {
    fn of(staging: &Staging) -> Result<Self, OperationError> {
        let p = staging.params.get("single_database").ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                "linked-source parameters#/single_database is required for single_database",
            )
        })?;
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        let database = text("database").ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                format!("{} is required", path("database")),
            )
        })?;
        let jobs = |k: &str| -> Result<u64, OperationError> {
            let n = p.get(k).and_then(Value::as_u64).unwrap_or(2);
            if (1..=64).contains(&n) {
                Ok(n)
            } else {
                Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!("{} must be from 1 to 64, not {n}", path(k)),
                ))
            }
        };
        let list = |k: &str| -> String {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        };
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
            dump_jobs: jobs("dump_jobs")?,
            restore_jobs: jobs("restore_jobs")?,
            lists: vec![
                ("INCLUDE_SCHEMAS", list("include_schemas")),
                ("EXCLUDE_SCHEMAS", list("exclude_schemas")),
                ("INCLUDE_TABLES", list("include_tables")),
                ("EXCLUDE_TABLES", list("exclude_tables")),
                ("EXCLUDE_TABLE_DATA", list("exclude_table_data")),
            ],
            copy_role_passwords: p
                .get("copy_role_passwords")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The source database's facts; a refused login or a missing database
    /// is an error naming its field (the password never shown).
    fn facts(&self) -> Result<Value, OperationError> {
        let s = &self.source;
        self.source.database_facts().map_err(|e| {
            let cause = e.cause.clone().unwrap_or_default();
            if cause.contains("does not exist") && cause.contains("database") {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: database {:?} does not exist on the source {}:{}",
                        path("database"),
                        s.database,
                        s.host,
                        s.port
                    ),
                )
                .with_action("name a database the source holds")
            } else if e.message.contains("authentication failed") {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: the source {}:{} refused the login of user {:?} (authentication failed)",
                        path("password"),
                        s.host,
                        s.port,
                        s.user
                    ),
                )
                .with_action("check single_database.user and the password (handed over in $PGVIRT_REPLICATION_PASSWORD or the variable --password-env names)")
            } else {
                e
            }
        })
    }
}

/// pg_dump, its filters from newline-separated lists; with `SNAPSHOT`, of
/// that exported snapshot, without publications and subscriptions.
pub(super) const DUMP: &str = r#"
set -u
args=(-Fd -j "$DUMP_JOBS" -f "$DUMP_DIR" -h "$SRC_HOST" -p "$SRC_PORT" -U "$SRC_USER" -d "$SRC_DB" -w -v)
if [ -n "${SNAPSHOT:-}" ]; then args+=("--snapshot=$SNAPSHOT" --no-publications --no-subscriptions); fi
while IFS= read -r x; do [ -n "$x" ] && args+=(-n "$x"); done <<< "$INCLUDE_SCHEMAS"
while IFS= read -r x; do [ -n "$x" ] && args+=(-N "$x"); done <<< "$EXCLUDE_SCHEMAS"
while IFS= read -r x; do [ -n "$x" ] && args+=(-t "$x"); done <<< "$INCLUDE_TABLES"
while IFS= read -r x; do [ -n "$x" ] && args+=(-T "$x"); done <<< "$EXCLUDE_TABLES"
while IFS= read -r x; do [ -n "$x" ] && args+=("--exclude-table-data=$x"); done <<< "$EXCLUDE_TABLE_DATA"
exec "$BIN/pg_dump" "${args[@]}"
"#;

/// pg_restore into staging: a database of the dump's name, made by the
/// restore (unless it is `postgres`, which initdb made).
const RESTORE: &str = r#"
set -u
args=(-j "$RESTORE_JOBS" -h "$SOCKET_DIR" -p "$PORT" -U postgres -v)
if [ "$SRC_DB" = postgres ]; then args+=(-d postgres); else args+=(-C -d postgres); fi
exec "$BIN/pg_restore" "${args[@]}" "$DUMP_DIR"
"#;

impl SingleDatabase {
    fn dump_dir(staging: &Staging) -> String {
        format!("{}/dump", staging.private)
    }

    /// Removes what an ingest leaves outside the mount: processes of a
    /// killed one, the dump, the passfile.
    fn clean_private(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        progress::stop_left(platform, &staging.private, &["pg_dump", "pg_restore"])?;
        platform.run_ok(
            "removing the dump",
            &request(
                r#"rm -rf -- "$DUMP_DIR"; rm -f -- "$PASSFILE" "$PRIVATE/roles.sql""#,
                &[
                    ("DUMP_DIR", Self::dump_dir(staging)),
                    ("PASSFILE", staging.passfile()),
                    ("PRIVATE", staging.private.clone()),
                ],
            ),
        )?;
        Ok(())
    }

    fn config(staging: &Staging, extra: &[(String, String)]) -> ClusterConfig {
        let mut settings: Vec<(String, String)> = vec![
            ("port".into(), staging.cluster.port.to_string()),
            ("listen_addresses".into(), conf_quote("localhost")),
            (
                "unix_socket_directories".into(),
                conf_quote(&staging.cluster.socket_dir),
            ),
            ("unix_socket_permissions".into(), "0700".into()),
            ("archive_mode".into(), "off".into()),
            (
                "cluster_name".into(),
                conf_quote(&format!("pgvirt staging {}", staging.name)),
            ),
        ];
        settings.extend(extra.iter().cloned());
        let mut comment_out = Vec::new();
        if let Some(config) = staging.params.get("staging_config") {
            if let Some(set) = config.get("set").and_then(Value::as_object) {
                for (name, value) in set {
                    settings.push((name.clone(), conf_value(value)));
                }
            }
            if let Some(list) = config.get("comment_out").and_then(Value::as_array) {
                comment_out.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        ClusterConfig {
            settings,
            comment_out,
            hba: vec!["local all all trust".into()],
            signal: None,
        }
    }

    /// A fresh staging cluster, running, with the source's encoding and
    /// locale, and the extensions the source's database uses; `extra`
    /// settings before the user's (`staging_config`). Marks the mount
    /// `ingesting`.
    pub(super) fn init(
        platform: &Platform,
        staging: &Staging,
        facts: &Value,
        extra: &[(String, String)],
    ) -> Result<(), OperationError> {
        let text = |k: &str| facts[k].as_str().unwrap_or("").to_owned();
        platform.run_ok(
            "initialising the staging cluster",
            &request(
                r#"set -eu
umask 077
mkdir -p -- "$FILES" "$PRIVATE"; chmod 0700 -- "$PRIVATE"
: > "$FILES/ingesting"
rm -rf -- "$DATA"; mkdir -m 0700 -- "$DATA"
"$BIN/initdb" -D "$DATA" -U postgres -A trust -E "$ENCODING" --lc-collate="$COLLATE" --lc-ctype="$CTYPE" --no-sync > "$PRIVATE/initdb.log" 2>&1 || { tail -n 5 -- "$PRIVATE/initdb.log" >&2; exit 1; }"#,
                &[
                    ("FILES", staging.files()),
                    ("PRIVATE", staging.private.clone()),
                    ("DATA", staging.cluster.data_dir.clone()),
                    ("BIN", staging.cluster.bin_dir.clone()),
                    ("ENCODING", text("encoding")),
                    ("COLLATE", text("collate")),
                    ("CTYPE", text("ctype")),
                ],
            ),
        )?;
        staging
            .cluster
            .write_config(platform, &Self::config(staging, extra))?;
        staging.cluster.start(platform)?;
        let available = staging.cluster.psql(
            platform,
            "listing the extensions staging can make",
            "SELECT name FROM pg_available_extensions ORDER BY 1;",
            &[],
        )?;
        let available: Vec<&str> = available.lines().map(str::trim).collect();
        let missing: Vec<&str> = facts["extensions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !available.contains(e))
            .collect();
        if !missing.is_empty() {
            return Err(OperationError::new(
                ErrorKind::InvalidState,
                format!(
                    "the source database uses extensions this environment lacks: {}",
                    missing.join(", ")
                ),
            )
            .with_action("install them on the staging environment, then sync again"));
        }
        Ok(())
    }

    /// Roles, dump, restore; the dump removed after.
    fn load(
        platform: &Platform,
        staging: &Staging,
        dump: &Dump,
        facts: &Value,
    ) -> Result<(), OperationError> {
        let s = &dump.source;
        let mut vars = staging.dump_vars(s);
        vars.extend([
            ("DUMP_DIR", SingleDatabase::dump_dir(staging)),
            ("DUMP_JOBS", dump.dump_jobs.to_string()),
            ("RESTORE_JOBS", dump.restore_jobs.to_string()),
            (
                "ROLE_PASSWORDS",
                if dump.copy_role_passwords { "1" } else { "" }.to_owned(),
            ),
        ]);
        if s.password.is_some() {
            Cluster::write_private_file(platform, &staging.passfile(), &s.pgpass_line())?;
            vars.push(("PGPASSFILE", staging.passfile()));
        }
        vars.extend(dump.lists.iter().map(|(k, v)| (*k, v.clone())));
        platform.run_ok(
            "restoring the source's roles",
            &request(
                r#"set -eu
args=(-h "$SRC_HOST" -p "$SRC_PORT" -U "$SRC_USER" -l "$SRC_DB" -w --roles-only)
[ -n "$ROLE_PASSWORDS" ] || args+=(--no-role-passwords)
"$BIN/pg_dumpall" "${args[@]}" > "$PRIVATE/roles.sql"
# Roles staging has already (its superuser) are errors to pass over.
"$BIN/psql" -X -q -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -f "$PRIVATE/roles.sql" > /dev/null 2> "$PRIVATE/roles.log" || true
rm -f -- "$PRIVATE/roles.sql""#,
                &vars,
            ),
        )?;
        let private = staging.private.clone();
        progress::run(
            platform,
            progress::Watched {
                what: "pg_dump",
                dir: &private,
                name: "pg_dump",
                script: DUMP,
                vars: vars.clone(),
                pattern: "dumping contents of table",
                total: facts["tables"].as_u64().unwrap_or(0),
                unit: "tables dumped",
            },
        )?;
        Self::restore(platform, staging, &vars)?;
        SingleDatabase::clean_private(platform, staging)?;
        staging.finish_ingest(platform)?;
        Ok(())
    }

    /// `pg_restore -j $RESTORE_JOBS` of `$DUMP_DIR` into staging (a
    /// database of the dump's name), progress in tables; `vars` name BIN,
    /// DUMP_DIR, SOCKET_DIR, PORT, SRC_DB and RESTORE_JOBS.
    pub(super) fn restore(
        platform: &Platform,
        staging: &Staging,
        vars: &[(&str, String)],
    ) -> Result<(), OperationError> {
        let private = staging.private.clone();
        let total = platform
            .run_ok(
                "reading the dump's table of contents",
                &request(
                    r#"set -o pipefail; "$BIN/pg_restore" -l -- "$DUMP_DIR" | grep -c ' TABLE DATA ' || true"#,
                    vars,
                ),
            )?
            .stdout
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        progress::run(
            platform,
            progress::Watched {
                what: "pg_restore",
                dir: &private,
                name: "pg_restore",
                script: RESTORE,
                vars: vars.to_vec(),
                pattern: "processing data for table",
                total,
                unit: "tables restored",
            },
        )?;
        Ok(())
    }
}

impl Ingestion for SingleDatabase {
    fn check(&self, _platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        Dump::of(staging)?.facts().map(|_| ())
    }

    /// A fresh cluster holding the source database as it is now.
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        let dump = Dump::of(staging)?;
        // Everything is checked before anything is made.
        let facts = dump.facts()?;
        staging.cluster.stop(platform)?;
        Self::clean_private(platform, staging)?;
        let made = Self::init(platform, staging, &facts, &[])
            .and_then(|()| Self::load(platform, staging, &dump, &facts));
        if made.is_err() {
            // Staging is left empty and marked, for the next sync to ingest.
            let _ = staging.cluster.stop(platform);
            let _ = Self::clean_private(platform, staging);
        }
        made
    }

    /// Every sync takes a fresh dump; then staging is shut down cleanly and
    /// described from its control file.
    fn consistent_point(
        &self,
        platform: &Platform,
        staging: &Staging,
        _resync: bool,
    ) -> Result<Value, OperationError> {
        self.ingest(platform, staging, None)?;
        clean::stop_and_record(platform, staging)
    }

    /// Starts staging again after the snapshot.
    fn describe(&self, platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
        staging.cluster.start(platform)?;
        staging.recorded_facts(platform)
    }

    fn replays_wal(&self) -> bool {
        false
    }

    /// Also what repairs a sync cut short: what it left running goes, and
    /// a cluster it left half-restored is stopped (the next sync ingests).
    fn start_staging(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        Self::clean_private(platform, staging)?;
        if !has_cluster(platform, staging)? {
            staging.cluster.stop(platform)?;
            return Err(OperationError::new(
                ErrorKind::InvalidState,
                "the staging data directory is empty, or its last ingest was cut short",
            )
            .with_action("run a sync to take a fresh dump of the source database"));
        }
        staging.cluster.start(platform)
    }

    fn stop_staging(
        &self,
        platform: &Platform,
        staging: &Staging,
        purpose: &str,
    ) -> Result<(), OperationError> {
        staging.cluster.stop(platform)?;
        if purpose == "delete" {
            Self::clean_private(platform, staging)?;
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
        let running = staging.cluster.is_running(platform)?;
        let next = match Dump::of(staging) {
            Ok(d) => format!(
                "each sync takes a fresh dump of database {} from {}:{}",
                d.source.database, d.source.host, d.source.port
            ),
            Err(e) => e.message,
        };
        Ok(json!({"running": running, "connected": false, "next": next}))
    }
}
