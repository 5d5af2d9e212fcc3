//! The tower's own store (SQLite, a 0600 file): its tokens (hashes only),
//! the engines it knows (URL, and token sealed with the tower's key, a
//! 0600 file beside the store: `tower.key` for `tower.db`), the inventory
//! last seen on each, and every connector version uploaded to it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::host::error::{Error, Result};
use crate::host::secrets::Keyring;

/// What every tower token starts with.
pub const PREFIX: &str = "pgt_";

pub struct TowerStore {
    conn: Connection,
    path: PathBuf,
    /// Seals the engines' tokens at rest (`tower.key` beside the store, 0600).
    keyring: Keyring,
}

/// An engine as registered, with its health.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Engine {
    pub name: String,
    pub url: String,
    /// `up`, `down`, or `unknown` (not polled yet).
    pub health: Health,
    /// The engine's version (from its OpenAPI document).
    pub version: Option<String>,
    pub added_at: i64,
    /// When it last answered.
    pub last_seen: Option<i64>,
    /// When it was last asked.
    pub checked_at: Option<i64>,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Reached over TLS (its URL is `https://`).
    pub tls: bool,
    #[serde(skip)]
    pub token: String,
    /// The CA certificates (PEM) its certificate is checked against.
    #[serde(skip)]
    pub ca_pem: Option<String>,
}

impl Engine {
    pub fn endpoint(&self) -> super::client::Endpoint {
        super::client::Endpoint {
            url: self.url.clone(),
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::Display, strum::EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Health {
    Unknown,
    Up,
    Down,
}

/// A connector version kept by the tower.
#[derive(Debug, Clone, Serialize)]
pub struct KeptConnector {
    pub id: String,
    pub name: String,
    /// `version+build`, as engines show it.
    pub version: String,
    pub sha256: String,
    pub uploaded_at: i64,
    #[serde(skip)]
    pub bundle: Value,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

impl TowerStore {
    /// Opens (or makes) the store: the file readable by its owner only.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::host::files::create_private_dir(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("cannot open the tower store", path, e))?;
        let conn = Connection::open(path).map_err(|e| Self::error(path, e))?;
        let key = path.with_file_name(format!(
            "{}.key",
            path.file_stem()
                .map_or("tower".into(), |s| s.to_string_lossy())
        ));
        let store = Self {
            conn,
            path: path.to_owned(),
            keyring: Keyring::open(&key)?,
        };
        store.migrate()?;
        Ok(store)
    }

    fn error(path: &Path, e: rusqlite::Error) -> Error {
        Error::Store {
            path: path.to_owned(),
            source: e,
        }
    }

    pub fn err(&self, e: rusqlite::Error) -> Error {
        Self::error(&self.path, e)
    }

    /// Where the tower keeps files beside its store (connector libraries).
    pub fn data_dir(&self) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map_or("tower".into(), |s| s.to_string_lossy().into_owned());
        self.path.with_file_name(format!("{stem}.d"))
    }

    fn migrate(&self) -> Result<()> {
        let engine_store: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'vdbs'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if engine_store {
            return Err(Error::usage(format!(
                "{} is an engine's store, not a tower's; give the tower a store of its own (--store)",
                self.path.display()
            )));
        }
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA busy_timeout = 10000;
                 CREATE TABLE IF NOT EXISTS tower_tokens (
                    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS tower_engines (
                    name TEXT PRIMARY KEY, url TEXT NOT NULL, token BLOB NOT NULL,
                    added_at INTEGER NOT NULL, version TEXT, health TEXT NOT NULL DEFAULT 'unknown',
                    last_seen INTEGER, checked_at INTEGER, error TEXT, ca_pem TEXT);
                 CREATE TABLE IF NOT EXISTS tower_inventory (
                    engine TEXT NOT NULL REFERENCES tower_engines (name) ON DELETE CASCADE,
                    kind TEXT NOT NULL, body TEXT NOT NULL, seen_at INTEGER NOT NULL,
                    PRIMARY KEY (engine, kind));
                 CREATE TABLE IF NOT EXISTS tower_connectors (
                    id TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
                    sha256 TEXT NOT NULL, bundle TEXT NOT NULL, uploaded_at INTEGER NOT NULL,
                    PRIMARY KEY (id, version));
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| self.err(e))
    }

    // ---- tokens

    /// Makes a token; returns it (the only time it is seen).
    pub fn create_token(&self, name: &str) -> Result<String> {
        crate::host::environments::check_name(name, "token name")?;
        let mut bytes = [0u8; 32];
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| Error::io("cannot read", Path::new("/dev/urandom"), e))?;
        let secret = format!("{PREFIX}{}", hex(&bytes));
        let done = self.conn.execute(
            "INSERT INTO tower_tokens (name, sha256, created_at) VALUES (?1, ?2, ?3)",
            params![name, digest(&secret), now()],
        );
        match done {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::Conflict(format!(
                    "a tower token named {name:?} exists already"
                )))
            }
            other => other.map(|_| secret).map_err(|e| self.err(e)),
        }
    }

    /// The name of the token a presented secret is, if any.
    pub fn verify_token(&self, secret: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT name FROM tower_tokens WHERE sha256 = ?1",
                [digest(secret)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    // ---- engines

    pub fn add_engine(
        &self,
        name: &str,
        to: &super::client::Endpoint,
        version: &str,
    ) -> Result<()> {
        let (url, token) = (to.url.as_str(), to.token.as_str());
        let t = now();
        let token = self
            .keyring
            .seal(&format!("engine {name}"), token.as_bytes())?;
        let done = self.conn.execute(
            "INSERT INTO tower_engines (name, url, token, added_at, version, health, last_seen, checked_at, ca_pem)
             VALUES (?1, ?2, ?3, ?4, ?5, 'up', ?4, ?4, ?6)",
            params![name, url, token, t, version, to.ca_pem],
        );
        match done {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::Conflict(format!(
                    "an engine named {name:?} is registered already; remove it first or choose another name"
                )))
            }
            other => other.map(|_| ()).map_err(|e| self.err(e)),
        }
    }

    pub fn remove_engine(&self, name: &str) -> Result<Engine> {
        let engine = self.engine(name)?;
        self.conn
            .execute("DELETE FROM tower_inventory WHERE engine = ?1", [name])
            .and_then(|_| {
                self.conn
                    .execute("DELETE FROM tower_engines WHERE name = ?1", [name])
            })
            .map_err(|e| self.err(e))?;
        Ok(engine)
    }

    pub fn engines(&self) -> Result<Vec<Engine>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, url, token, health, version, added_at, last_seen, checked_at, error, ca_pem
                 FROM tower_engines ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], engine_row).map_err(|e| self.err(e))?;
        let rows: Vec<(Engine, Vec<u8>)> = rows
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(mut e, sealed)| {
                let plain = self
                    .keyring
                    .unseal(&format!("engine {}", e.name), &sealed)?;
                e.token = String::from_utf8_lossy(&plain).into_owned();
                Ok(e)
            })
            .collect()
    }

    pub fn engine(&self, name: &str) -> Result<Engine> {
        self.engines()?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no engine named {name:?}; see GET /api/engines (or `pgvirt tower engine list`)"
                ))
            })
    }

    /// Records that the engine answered (with its version).
    pub fn engine_up(&self, name: &str, version: Option<&str>) -> Result<()> {
        let t = now();
        self.conn
            .execute(
                "UPDATE tower_engines SET health = 'up', error = NULL, last_seen = ?2, checked_at = ?2,
                 version = coalesce(?3, version) WHERE name = ?1",
                params![name, t, version],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records that the engine did not answer, and why.
    pub fn engine_down(&self, name: &str, why: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE tower_engines SET health = 'down', error = ?2, checked_at = ?3 WHERE name = ?1",
                params![name, why, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    // ---- inventory

    pub fn put_inventory(&self, engine: &str, kind: &str, body: &Value) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO tower_inventory (engine, kind, body, seen_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (engine, kind) DO UPDATE SET body = ?3, seen_at = ?4",
                params![engine, kind, body.to_string(), now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// What each engine last showed of `kind`: (engine, body, seen at).
    pub fn inventory(&self, kind: &str) -> Result<Vec<(String, Value, i64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT engine, body, seen_at FROM tower_inventory WHERE kind = ?1 ORDER BY engine",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([kind], |r| {
                let body: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    serde_json::from_str(&body).unwrap_or(Value::Null),
                    r.get(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    // ---- connectors

    pub fn keep_connector(&self, c: &KeptConnector) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO tower_connectors (id, name, version, sha256, bundle, uploaded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c.id, c.name, c.version, c.sha256, c.bundle.to_string(), c.uploaded_at],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn connectors(&self) -> Result<Vec<KeptConnector>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, version, sha256, bundle, uploaded_at FROM tower_connectors
                 ORDER BY id, uploaded_at",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let bundle: String = r.get(4)?;
                Ok(KeptConnector {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get(2)?,
                    sha256: r.get(3)?,
                    bundle: serde_json::from_str(&bundle).unwrap_or(Value::Null),
                    uploaded_at: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }
}

fn engine_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Engine, Vec<u8>)> {
    let health: String = r.get(3)?;
    let url: String = r.get(1)?;
    let engine = Engine {
        name: r.get(0)?,
        tls: url.starts_with("https://"),
        url,
        token: String::new(),
        ca_pem: r.get(9)?,
        health: health.parse().unwrap_or(Health::Unknown),
        version: r.get(4)?,
        added_at: r.get(5)?,
        last_seen: r.get(6)?,
        checked_at: r.get(7)?,
        error: r.get(8)?,
    };
    Ok((engine, r.get(2)?))
}
