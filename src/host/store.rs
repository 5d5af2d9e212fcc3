//! The metadata store: one SQLite file holding what the engine knows
//! (installed connectors, environments, repositories, source configs, and the
//! dSources that use them). Schema changes are append-only [`MIGRATIONS`],
//! applied in order inside a transaction and tracked by `PRAGMA user_version`.
//!
//! The store is opened by every command; other modules take a `&Store` and
//! run their own SQL through [`Store::conn`], keeping each domain's queries in
//! its own module.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};

use super::error::{Error, Result};

/// Environment variable naming the store file (the `--store` flag wins).
pub const STORE_ENV: &str = "PGVIRT_STORE";

/// Schema migrations, in order. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    // 1: connectors, environments, discovery, dSources (as users of source configs).
    r#"
    CREATE TABLE connectors (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        version        TEXT NOT NULL,
        build_number   TEXT NOT NULL,
        manifest       TEXT NOT NULL,
        schemas        TEXT NOT NULL,
        library_path   TEXT NOT NULL,
        library_sha256 TEXT NOT NULL,
        installed_at   INTEGER NOT NULL
    );
    CREATE TABLE environments (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        kind         TEXT NOT NULL CHECK (kind IN ('local')),
        os_user      TEXT NOT NULL,
        scratch      TEXT NOT NULL,
        added_at     INTEGER NOT NULL,
        refreshed_at INTEGER
    );
    CREATE TABLE repositories (
        id             INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        identity       TEXT NOT NULL,
        name           TEXT NOT NULL,
        document       TEXT NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('present', 'missing')),
        UNIQUE (environment_id, identity)
    );
    CREATE TABLE source_configs (
        id             INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        repository_id  INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        identity       TEXT NOT NULL,
        name           TEXT NOT NULL,
        document       TEXT NOT NULL,
        origin         TEXT NOT NULL CHECK (origin IN ('discovered', 'manual')),
        state          TEXT NOT NULL CHECK (state IN ('present', 'missing')),
        UNIQUE (environment_id, identity)
    );
    CREATE TABLE dsources (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        source_config_id INTEGER NOT NULL REFERENCES source_configs(id) ON DELETE RESTRICT,
        parameters       TEXT NOT NULL,
        state            TEXT NOT NULL,
        created_at       INTEGER NOT NULL
    );
    "#,
    // 2: storage (pool, datasets, their snapshots, mounts), timeflows and
    // snapshots with connector metadata, retention, VDBs; where dSources live.
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE datasets (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        path            TEXT NOT NULL,
        owner           TEXT,
        origin_snapshot INTEGER REFERENCES dataset_snapshots(id) ON DELETE RESTRICT,
        state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'destroying')),
        pid             INTEGER,
        created_at      INTEGER NOT NULL
    );
    CREATE TABLE dataset_snapshots (
        id         INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE RESTRICT,
        name       TEXT NOT NULL,
        path       TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'destroying')),
        pid        INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (dataset_id, name)
    );
    CREATE TABLE mounts (
        dataset_id INTEGER PRIMARY KEY REFERENCES datasets(id) ON DELETE RESTRICT,
        path       TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL CHECK (kind IN ('bind', 'direct'))
    );
    CREATE TABLE timeflows (
        id              INTEGER PRIMARY KEY,
        container_kind  TEXT NOT NULL CHECK (container_kind IN ('dsource', 'vdb')),
        container_id    INTEGER NOT NULL,
        parent_snapshot INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        created_at      INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        id                  INTEGER PRIMARY KEY,
        timeflow_id         INTEGER NOT NULL REFERENCES timeflows(id) ON DELETE RESTRICT,
        dataset_snapshot_id INTEGER NOT NULL REFERENCES dataset_snapshots(id) ON DELETE RESTRICT,
        metadata            TEXT NOT NULL,
        created_at          INTEGER NOT NULL
    );
    CREATE TABLE retention (
        container_kind TEXT NOT NULL,
        container_id   INTEGER NOT NULL,
        keep_count     INTEGER,
        keep_days      INTEGER,
        PRIMARY KEY (container_kind, container_id)
    );
    CREATE TABLE vdbs (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
        parent_kind     TEXT NOT NULL CHECK (parent_kind IN ('dsource', 'vdb', 'empty')),
        parent_id       INTEGER NOT NULL,
        parameters      TEXT NOT NULL,
        port            INTEGER NOT NULL UNIQUE,
        dataset         TEXT NOT NULL,
        mount_path      TEXT NOT NULL,
        state           TEXT NOT NULL,
        source_config   TEXT NOT NULL,
        origin_snapshot INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        pid             INTEGER,
        created_at      INTEGER NOT NULL
    );
    ALTER TABLE dsources ADD COLUMN pid INTEGER;
    ALTER TABLE dsources ADD COLUMN environment_id INTEGER REFERENCES environments(id);
    ALTER TABLE dsources ADD COLUMN dataset TEXT NOT NULL DEFAULT '';
    ALTER TABLE dsources ADD COLUMN mount_path TEXT NOT NULL DEFAULT '';
    "#,
];

/// An open metadata store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
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
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(|e| Error::store(path, e))?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
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

    /// The directory beside the store where the engine keeps its files
    /// (installed connector libraries, scratch directories).
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            self.transaction(|tx| {
                tx.execute_batch(sql).map_err(|e| Error::store(&path, e))?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .map_err(|e| Error::store(&path, e))
            })?;
        }
        Ok(())
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
