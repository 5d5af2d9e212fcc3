//! The source cluster of a dSource, reached over the network with the
//! `postgres` crate as the replication user: checks before anything is made,
//! replication slots, and the source's position for lag.

use std::time::Duration;

use serde_json::Value;

use crate::abi::{ErrorKind, OperationError};

/// Connection facts of a source, from the linked-source parameters.
#[derive(Clone)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never logged, never in argv: handed to libpq in memory, to
    /// pg_basebackup in its environment, to staging in a 0600 passfile.
    pub password: Option<String>,
    pub database: String,
    pub connect_timeout: u64,
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
            connect_timeout: s
                .get("connect_timeout_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(10),
        })
    }

    fn where_(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn connect(&self) -> Result<postgres::Client, OperationError> {
        let mut config = postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("pgvirt")
            .connect_timeout(Duration::from_secs(self.connect_timeout));
        if let Some(pw) = &self.password {
            config.password(pw);
        }
        config.connect(postgres::NoTls).map_err(|e| {
            let cause = scrub(&describe(&e), self.password.as_deref());
            let (what, action) = if cause.contains("password authentication failed")
                || cause.contains("authentication")
            {
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
            OperationError::new(
                ErrorKind::SourceUnreachable,
                format!("source {}: {what}", self.where_()),
            )
            .with_cause(cause)
            .with_action(action)
        })
    }

    fn query_err(&self, what: &str, e: postgres::Error) -> OperationError {
        OperationError::new(
            ErrorKind::SourceError,
            format!("source {}: {what}", self.where_()),
        )
        .with_cause(scrub(&describe(&e), self.password.as_deref()))
    }

    /// Connects and checks the user may replicate.
    pub fn check_replication_access(&self) -> Result<(), OperationError> {
        let mut client = self.connect()?;
        let row = client
            .query_one(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .map_err(|e| self.query_err("cannot read the user's role", e))?;
        if !row.get::<_, bool>(0) {
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
        let mut client = self.connect()?;
        let rows = client
            .query(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .map_err(|e| self.query_err("cannot list replication slots", e))?;
        if let Some(row) = rows.first() {
            if row.get::<_, bool>(0) {
                return Err(OperationError::new(
                    ErrorKind::Conflict,
                    format!("replication slot {slot} on source {} is in use", self.where_()),
                )
                .with_action("another standby streams through it; name another slot in replication_slot.name"));
            }
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .map_err(|e| self.query_err("cannot drop a replication slot", e))?;
        }
        Ok(())
    }

    /// Creates a physical replication slot that reserves WAL from now on.
    pub fn create_slot(&self, slot: &str) -> Result<(), OperationError> {
        let mut client = self.connect()?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .map_err(|e| self.query_err("cannot create the replication slot", e))?;
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

    /// The source's current WAL position.
    pub fn current_lsn(&self) -> Result<String, OperationError> {
        let mut client = self.connect()?;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .map_err(|e| self.query_err("cannot read the WAL position", e))?;
        Ok(row.get(0))
    }

    /// Seconds between a timestamp (as JSON text from staging) and the
    /// source's clock.
    pub fn seconds_since(&self, timestamp: &Value) -> Result<f64, OperationError> {
        let Some(ts) = timestamp.as_str() else {
            return Ok(0.0);
        };
        let mut client = self.connect()?;
        let row = client
            .query_one(
                "SELECT extract(epoch FROM now() - $1::text::timestamptz)::float8",
                &[&ts],
            )
            .map_err(|e| self.query_err("cannot compute the lag", e))?;
        Ok(row.get::<_, f64>(0).max(0.0))
    }

    /// Total size of the source's databases, for progress.
    pub fn database_size(&self) -> Result<u64, OperationError> {
        let mut client = self.connect()?;
        let row = client
            .query_one(
                "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
                &[],
            )
            .map_err(|e| self.query_err("cannot read database sizes", e))?;
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64)
    }

    /// What a single-database ingest needs to know of the source's
    /// database: encoding, locale, extensions, how many tables. Connects as
    /// the user given (no replication privilege needed).
    pub fn database_facts(&self) -> Result<Value, OperationError> {
        let mut client = self.connect()?;
        let row = client
            .query_one(
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
            )
            .map_err(|e| self.query_err("cannot read the database's settings", e))?;
        let text: String = row.get(0);
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

/// The server's own message when there is one ("password authentication
/// failed for user ..."), else the error and its causes.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Removes a secret from a message, should a library ever echo it.
fn scrub(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => message.replace(s, "********"),
        _ => message.to_owned(),
    }
}
