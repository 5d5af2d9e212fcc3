//! The metadata store: one SQLite file holding what the engine knows
//! (installed connectors, environments, repositories, source configs, and the
//! dSources that use them). Schema changes are append-only [`MIGRATIONS`],
//! applied in order inside a transaction and tracked by `PRAGMA user_version`.
//!
//! The store is opened by every command; other modules take a `&Store` and
//! run their own SQL through [`Store::conn`], keeping each domain's queries in
//! its own module. [`columns`] says how typed values sit in columns.
//!
//! Secrets never reach it in plain text: [`Store::seal`] and
//! [`Store::unseal`] keep them apart from the documents they belong to
//! (see [`crate::host::secrets`]), and SQLite's `secure_delete` overwrites
//! what a deleted row held.

pub mod columns;
mod migrations;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use super::error::{Error, Result};
use super::secrets::{self, Keyring};
use migrations::MIGRATIONS;

/// Environment variable naming the store file (the `--store` flag wins).
pub const STORE_ENV: &str = "PGVIRT_STORE";

/// An open metadata store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    keyring: OnceCell<Keyring>,
}

impl Store {
    /// A setting, if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.optional(self.conn.query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [key],
            |r| r.get(0),
        ))
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                [key, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Opens (creating if needed) the store at `path` and brings its schema
    /// up to date. The file and its directory are private to the user.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::files::create_private_dir(dir)?;
        }
        let conn = Connection::open(path).map_err(|e| Error::store(path, e))?;
        super::files::set_mode(path, 0o600)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| Error::store(path, e))?;
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA secure_delete = ON;",
        )
        .map_err(|e| Error::store(path, e))?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
            keyring: OnceCell::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The default store path: `$XDG_DATA_HOME/pgvirt/pgvirt.db` (or the
    /// platform's data directory).
    pub fn default_path() -> Result<PathBuf> {
        dirs::data_dir()
            .map(|d| d.join("pgvirt").join("pgvirt.db"))
            .ok_or_else(|| {
                Error::usage(
                    "cannot find a data directory for the store; pass --store or set PGVIRT_STORE",
                )
            })
    }

    /// This engine's id (made on first use): tells engines apart that share
    /// a host, as in the default scratch directory of an environment.
    pub fn engine_id(&self) -> Result<String> {
        if let Some(id) = self.setting("engine.id")? {
            return Ok(id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.conn
            .execute(
                "INSERT INTO settings (key, value) VALUES ('engine.id', ?1) ON CONFLICT (key) DO NOTHING",
                [&id],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.setting("engine.id")?.unwrap_or(id))
    }

    /// The directory beside the store where the engine keeps its files
    /// (installed connector libraries, its key).
    pub fn data_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in a transaction: all of its writes land, or none do.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::store(&path, e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| Error::store(&path, e))?;
        Ok(value)
    }

    /// Wraps a SQLite error with the store's path.
    pub fn err(&self, e: rusqlite::Error) -> Error {
        Error::store(&self.path, e)
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let current: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(|e| Error::store(&path, e))?
            .try_into()
            .unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(Error::usage(format!(
                "store {} has schema version {current}, newer than this pgvirt knows ({}); use a newer pgvirt",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        if current == MIGRATIONS.len() {
            return Ok(());
        }
        // Tables others refer to are rebuilt (SQLite cannot change a CHECK):
        // with foreign keys on, dropping the old one would cascade. They are
        // checked whole before each migration commits.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(|e| Error::store(&path, e))?;
        let result = (|| {
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                self.transaction(|tx| {
                    tx.execute_batch(sql).map_err(|e| Error::store(&path, e))?;
                    let broken: Option<String> = tx
                        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                        .optional()
                        .map_err(|e| Error::store(&path, e))?;
                    if let Some(table) = broken {
                        return Err(Error::usage(format!(
                            "store {}: migration {} would break references from table {table}",
                            path.display(),
                            i + 1
                        )));
                    }
                    tx.pragma_update(None, "user_version", (i + 1) as i64)
                        .map_err(|e| Error::store(&path, e))
                })?;
            }
            Ok(())
        })();
        self.conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(|e| Error::store(&path, e))?;
        result
    }

    /// The engine's key (made on first use).
    fn keyring(&self) -> Result<&Keyring> {
        if let Some(k) = self.keyring.get() {
            return Ok(k);
        }
        let ring = Keyring::open(&Keyring::path_for(&self.data_dir()))?;
        Ok(self.keyring.get_or_init(|| ring))
    }

    /// Splits the `fields` (secret property names) off `doc`: returns the
    /// document to store and the sealed secrets (none when it has none).
    pub fn seal(
        &self,
        owner: &str,
        doc: &Value,
        fields: &[String],
    ) -> Result<(Value, Option<Vec<u8>>)> {
        let (public, taken) = secrets::split(doc, fields);
        if taken.is_empty() {
            return Ok((public, None));
        }
        let plain = serde_json::to_vec(&taken).map_err(|e| Error::usage(e.to_string()))?;
        Ok((public, Some(self.keyring()?.seal(owner, &plain)?)))
    }

    /// Puts sealed secrets back into a stored document.
    pub fn unseal(&self, owner: &str, doc: &mut Value, sealed: Option<&[u8]>) -> Result<()> {
        let Some(sealed) = sealed else {
            return Ok(());
        };
        let plain = self.keyring()?.unseal(owner, sealed)?;
        let taken: BTreeMap<String, Value> = serde_json::from_slice(&plain)
            .map_err(|_| Error::usage(format!("the sealed secrets of {owner} are damaged")))?;
        secrets::merge(doc, taken);
        Ok(())
    }

    /// Runs `f` in a transaction on this connection: every write it makes
    /// lands, or none does.
    pub fn atomically<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let value = f()?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    /// Reads one optional row.
    pub fn optional<T>(&self, r: rusqlite::Result<T>) -> Result<Option<T>> {
        r.optional().map_err(|e| self.err(e))
    }
}

/// Seconds since the epoch, as stored.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch (for unique labels).
pub fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A stored time for people: RFC 3339 in UTC.
pub fn display_time(seconds: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_migrates_and_reopens_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("pgvirt.db");
        let store = Store::open(&path).expect("open");
        let version: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version as usize, MIGRATIONS.len());
        drop(store);
        Store::open(&path).expect("reopen is a no-op migration");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_rebuilt_table_keeps_the_rows_that_refer_to_it() {
        // A store of the version before environments were rebuilt, with an
        // environment that repositories and source configs refer to.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgvirt.db");
        let conn = Connection::open(&path).expect("open");
        let before = MIGRATIONS.len() - 1;
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).expect("older migration");
        }
        conn.pragma_update(None, "user_version", before as i64)
            .expect("version");
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             INSERT INTO environments (id, name, kind, os_user, scratch, added_at) VALUES (7, 'local', 'local', 'postgres', '/s', 1);
             INSERT INTO repositories (environment_id, identity, name, document, state) VALUES (7, 'r', 'r', '{}', 'present');",
        )
        .expect("rows");
        drop(conn);
        let store = Store::open(&path).expect("migrates");
        let repos: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM repositories WHERE environment_id = 7",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(repos, 1, "the rebuild cascaded");
        let fk: i64 = store
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(fk, 1, "foreign keys are on again");
        let refused = store.conn().execute(
            "INSERT INTO environments (name, kind, os_user, scratch, added_at) VALUES ('x', 'ssh', 'u', '/s', 1)",
            [],
        );
        assert!(refused.is_err(), "an ssh environment needs its host");
    }

    #[test]
    fn refuses_a_store_from_a_newer_pgvirt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgvirt.db");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 999).expect("set");
        drop(conn);
        let err = Store::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
