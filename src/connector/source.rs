//! The source cluster of a dSource, reached through the platform: `psql`
//! runs on the operation's environment (the staging host) and connects over
//! the network to the source as the replication user. The password travels
//! on the command's stdin into a 0600 passfile (the staging's own, in its
//! private directory, or a temporary one removed at the end), so it is in
//! no argv and no process environment; SQL and its values follow on psql's
//! stdin (`\getenv`).
//! Checks before anything is made, replication slots, and the source's
//! position for lag.

use std::time::Duration;

use serde_json::Value;

use crate::abi::{CommandRequest, ErrorKind, OperationError};
use crate::connector::platform::{self, Platform};

/// Runs psql on SQL from stdin; with a password, the first line of stdin is
/// the passfile line, kept in a 0600 file (never in argv or an environment).
const QUERY_SCRIPT: &str = r#"
if [ -n "${HAS_PASSWORD:-}" ]; then
  IFS= read -r line || exit 1
  if [ -n "${PASSFILE:-}" ]; then
    f=$PASSFILE
    (umask 077; mkdir -p -- "${f%/*}") || exit 1
  else
    d=$(umask 077; mktemp -d) || exit 1
    trap 'rm -rf -- "$d"' EXIT
    f=$d/pgpass
  fi
  (umask 077; printf '%s\n' "$line" > "$f.tmp" && mv -f -- "$f.tmp" "$f") || exit 1
  unset line
  export PGPASSFILE=$f
fi
"${PSQL_BIN:-psql}" -X -A -t -q -v ON_ERROR_STOP=1 -f -
"#;

/// Connection facts of a source, from the linked-source parameters.
#[derive(Clone)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never logged, never in argv: handed to psql and pg_basebackup in
    /// their environment, to staging in a 0600 passfile.
    pub password: Option<String>,
    pub database: String,
    pub connect_timeout: u64,
    /// Where `psql` is (the staging's installation); `psql` on PATH if unset.
    pub bin_dir: Option<String>,
    /// The staging's passfile (0600, in its private directory), written by
    /// the queries too; a temporary one per query if unset.
    pub passfile: Option<String>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Source({}@{}:{}/{})",
            self.user, self.host, self.port, self.database
        )
    }
}

impl Source {
    pub fn from_params(params: &Value) -> Result<Self, OperationError> {
        let s = params.get("source").ok_or_else(|| {
            OperationError::new(ErrorKind::InvalidInput, "linked_source has no source")
        })?;
        let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            host: text("host").ok_or_else(|| {
                OperationError::new(ErrorKind::InvalidInput, "source has no host")
            })?,
            port: s
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(5432),
            user: text("replication_user").unwrap_or_else(|| "postgres".into()),
            password: text("replication_password"),
            database: text("database").unwrap_or_else(|| "postgres".into()),
            // `timeout_seconds` from 0.2.0 of the test fixture on.
            connect_timeout: s
                .get("connect_timeout_seconds")
                .or_else(|| s.get("timeout_seconds"))
                .and_then(Value::as_u64)
                .unwrap_or(10),
            bin_dir: None,
            passfile: None,
        })
    }

    /// Uses the `psql` of this installation.
    pub fn with_bin_dir(mut self, bin_dir: &str) -> Self {
        self.bin_dir = Some(bin_dir.to_owned());
        self
    }

    /// Keeps the password in this passfile (the staging's own).
    pub fn with_passfile(mut self, passfile: &str) -> Self {
        self.passfile = Some(passfile.to_owned());
        self
    }

    fn where_(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs `sql` on the source through the platform; its values come from
    /// `vars` (read into psql variables with `\getenv`, used as `:'name'`).
    /// Returns psql's unaligned, tuples-only output lines.
    pub(crate) fn query(
        &self,
        what: &str,
        sql: &str,
        vars: &[(&str, &str)],
    ) -> Result<Vec<String>, OperationError> {
        let platform: Platform = platform::current().ok_or_else(|| {
            OperationError::new(
                ErrorKind::Internal,
                "no platform to reach the source through",
            )
        })?;
        let mut input = String::new();
        let mut req = CommandRequest {
            command: QUERY_SCRIPT.into(),
            timeout_seconds: Some(self.connect_timeout + 600),
            ..CommandRequest::default()
        };
        let mut set = |k: &str, v: String| {
            req.variables.insert(k.to_owned(), v);
        };
        if let Some(dir) = &self.bin_dir {
            set("PSQL_BIN", format!("{dir}/psql"));
        }
        set("PGHOST", self.host.clone());
        set("PGPORT", self.port.to_string());
        set("PGUSER", self.user.clone());
        set("PGDATABASE", self.database.clone());
        set("PGAPPNAME", "pgvirt".into());
        set("PGCONNECT_TIMEOUT", self.connect_timeout.max(1).to_string());
        // No passfile of the OS user's: a path that cannot exist (libpq
        // warns of /dev/null itself, "not a plain file", on every query).
        set("PGPASSFILE", "/dev/null/none".into());
        if self.password.is_some() {
            set("HAS_PASSWORD", "1".into());
            input.push_str(&self.pgpass_line());
            input.push('\n');
            if let Some(file) = &self.passfile {
                set("PASSFILE", file.clone());
            }
        }
        for (i, (name, value)) in vars.iter().enumerate() {
            let var = format!("PGVIRT_Q{i}");
            input.push_str(&format!("\\getenv {name} {var}\n"));
            set(&var, (*value).to_owned());
        }
        input.push_str(sql);
        input.push_str(";\n");
        req.stdin = Some(input);
        let out = platform.run(&req).map_err(|e| {
            OperationError::new(
                ErrorKind::SourceUnreachable,
                format!("source {}: {what}: cannot run psql", self.where_()),
            )
            .with_cause(scrub(&e.to_string(), self.password.as_deref()))
        })?;
        let cause = scrub(out.stderr.trim(), self.password.as_deref());
        match out.exit_code {
            0 => Ok(out.stdout.lines().map(str::to_owned).collect()),
            // psql: 2 is a lost or refused connection, 3 an SQL error.
            2 => {
                let (problem, action) = if cause.contains("authentication") {
                    (
                        "authentication failed",
                        "check the replication user and password",
                    )
                } else {
                    (
                        "cannot connect",
                        "check that the source runs and that host and port are right",
                    )
                };
                Err(OperationError::new(
                    ErrorKind::SourceUnreachable,
                    format!("source {}: {problem}", self.where_()),
                )
                .with_cause(cause)
                .with_action(action))
            }
            _ => Err(OperationError::new(
                ErrorKind::SourceError,
                format!("source {}: {what}", self.where_()),
            )
            .with_cause(cause)),
        }
    }

    /// The one value a query returns.
    pub(crate) fn value(
        &self,
        what: &str,
        sql: &str,
        vars: &[(&str, &str)],
    ) -> Result<String, OperationError> {
        self.query(what, sql, vars)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                OperationError::new(
                    ErrorKind::SourceError,
                    format!("source {}: {what}: no answer", self.where_()),
                )
            })
    }

    /// Connects and checks the user may replicate.
    pub fn check_replication_access(&self) -> Result<(), OperationError> {
        let may = self.value(
            "cannot read the user's role",
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )?;
        if may != "t" {
            return Err(OperationError::new(
                ErrorKind::SourceError,
                format!(
                    "source {}: user {} has no REPLICATION privilege",
                    self.where_(),
                    self.user
                ),
            )
            .with_action(format!(
                "ALTER ROLE {} REPLICATION on the source, or use another user",
                self.user
            )));
        }
        Ok(())
    }

    /// Drops a replication slot if it exists and is not active.
    pub fn drop_slot_if_exists(&self, slot: &str) -> Result<(), OperationError> {
        let rows = self.query(
            "cannot list replication slots",
            "SELECT active FROM pg_replication_slots WHERE slot_name = :'slot'",
            &[("slot", slot)],
        )?;
        if let Some(active) = rows.first() {
            if active == "t" {
                return Err(OperationError::new(
                    ErrorKind::Conflict,
                    format!("replication slot {slot} on source {} is in use", self.where_()),
                )
                .with_action("another standby streams through it; name another slot in replication_slot.name"));
            }
            self.query(
                "cannot drop a replication slot",
                "SELECT pg_drop_replication_slot(:'slot')",
                &[("slot", slot)],
            )?;
        }
        Ok(())
    }

    /// Creates a physical replication slot that reserves WAL from now on.
    pub fn create_slot(&self, slot: &str) -> Result<(), OperationError> {
        self.query(
            "cannot create the replication slot",
            "SELECT pg_create_physical_replication_slot(:'slot', true)",
            &[("slot", slot)],
        )?;
        Ok(())
    }

    /// Drops a replication slot (waiting briefly for its walsender to go).
    pub fn drop_slot(&self, slot: &str) -> Result<(), OperationError> {
        for _ in 0..50 {
            match self.drop_slot_if_exists(slot) {
                Err(e) if e.kind == ErrorKind::Conflict => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => return other,
            }
        }
        self.drop_slot_if_exists(slot)
    }

    /// Drops a slot this dSource made: after waiting for its walsender to
    /// notice a client that died (a killed pg_basebackup), the walsender
    /// still holding it is ended. Never for a slot the user named and
    /// pgvirt did not make.
    pub fn drop_own_slot(&self, slot: &str) -> Result<(), OperationError> {
        match self.drop_slot(slot) {
            Err(e) if e.kind == ErrorKind::Conflict => {
                self.query(
                    "cannot end the walsender holding the replication slot",
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = :'slot' AND active",
                    &[("slot", slot)],
                )?;
                self.drop_slot(slot)
            }
            other => other,
        }
    }

    /// The source's current WAL position.
    pub fn current_lsn(&self) -> Result<String, OperationError> {
        self.value(
            "cannot read the WAL position",
            "SELECT pg_current_wal_lsn()::text",
            &[],
        )
    }

    /// Seconds between a timestamp (as JSON text from staging) and the
    /// source's clock.
    pub fn seconds_since(&self, timestamp: &Value) -> Result<f64, OperationError> {
        let Some(ts) = timestamp.as_str() else {
            return Ok(0.0);
        };
        let age = self.value(
            "cannot compute the lag",
            "SELECT extract(epoch FROM now() - :'ts'::timestamptz)::float8",
            &[("ts", ts)],
        )?;
        Ok(age.trim().parse::<f64>().unwrap_or(0.0).max(0.0))
    }

    /// Total size of the source's databases, for progress.
    pub fn database_size(&self) -> Result<u64, OperationError> {
        let size = self.value(
            "cannot read database sizes",
            "SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database",
            &[],
        )?;
        Ok(size.trim().parse::<u64>().unwrap_or(0))
    }

    /// What a single-database ingest needs to know of the source's
    /// database: encoding, locale, extensions, how many tables. Connects as
    /// the user given (no replication privilege needed).
    pub fn database_facts(&self) -> Result<Value, OperationError> {
        let text = self.value(
            "cannot read the database's settings",
            "SELECT json_build_object(
               'encoding', pg_encoding_to_char(d.encoding),
               'collate', d.datcollate,
               'ctype', d.datctype,
               'server_version_num', current_setting('server_version_num')::int,
               'extensions', (SELECT coalesce(json_agg(extname ORDER BY extname), '[]') FROM pg_extension),
               'tables', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                            AND n.nspname NOT LIKE 'pg_toast%'))::text
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )?;
        serde_json::from_str(&text)
            .map_err(|e| OperationError::new(ErrorKind::Internal, e.to_string()))
    }

    /// The `.pgpass` line for the replication connection.
    pub fn pgpass_line(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        format!(
            "{}:{}:*:{}:{}",
            esc(&self.host),
            self.port,
            esc(&self.user),
            esc(self.password.as_deref().unwrap_or(""))
        )
    }
}

/// Removes a secret from a message, should a library ever echo it.
fn scrub(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => message.replace(s, "********"),
        _ => message.to_owned(),
    }
}
