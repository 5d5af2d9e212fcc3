//! API tokens: made once and shown once; only their SHA-256 is stored.
//! A read-only token may read (GET) and nothing else.

use std::io::Read as _;

use rusqlite::params;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::host::error::{Error, Result};
use crate::host::store::{self, Store};

/// What every token starts with (so a leaked one is recognisable).
pub const PREFIX: &str = "pgv_";

/// A stored token: its name and rights, never the token.
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub name: String,
    pub read_only: bool,
    pub created_at: i64,
}

/// Makes a token named `name`; returns it (the only time it is seen).
pub fn create(store: &Store, name: &str, read_only: bool) -> Result<(Token, String)> {
    crate::host::environments::check_name(name, "token name")?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("cannot read", std::path::Path::new("/dev/urandom"), e))?;
    let secret = format!("{PREFIX}{}", hex(&bytes));
    let inserted = store.conn().execute(
        "INSERT INTO api_tokens (name, sha256, read_only, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, digest(&secret), read_only, store::now()],
    );
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(Error::Conflict(format!(
                "a token named {name:?} exists already; revoke it first or choose another name"
            )))
        }
        other => other.map_err(|e| store.err(e))?,
    };
    Ok((get(store, name)?, secret))
}

pub fn list(store: &Store) -> Result<Vec<Token>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT name, read_only, created_at FROM api_tokens ORDER BY name")
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map([], row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

fn get(store: &Store, name: &str) -> Result<Token> {
    store
        .optional(store.conn().query_row(
            "SELECT name, read_only, created_at FROM api_tokens WHERE name = ?1",
            [name],
            row,
        ))?
        .ok_or_else(|| Error::NotFound(format!("no token named {name:?}; see `pgvirt token list`")))
}

/// Revokes (deletes) a token by name.
pub fn revoke(store: &Store, name: &str) -> Result<Token> {
    let token = get(store, name)?;
    store
        .conn()
        .execute("DELETE FROM api_tokens WHERE name = ?1", [name])
        .map_err(|e| store.err(e))?;
    Ok(token)
}

/// The token a presented secret is, if any.
pub fn verify(store: &Store, secret: &str) -> Result<Option<Token>> {
    if !secret.starts_with(PREFIX) {
        return Ok(None);
    }
    store.optional(store.conn().query_row(
        "SELECT name, read_only, created_at FROM api_tokens WHERE sha256 = ?1",
        [digest(secret)],
        row,
    ))
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    Ok(Token {
        name: r.get(0)?,
        read_only: r.get(1)?,
        created_at: r.get(2)?,
    })
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hash_is_kept_and_the_token_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("store");
        let (t, secret) = create(&store, "ci", true).expect("create");
        assert!(t.read_only && secret.starts_with(PREFIX));
        let kept: String = store
            .conn()
            .query_row("SELECT sha256 FROM api_tokens", [], |r| r.get(0))
            .expect("row");
        assert_ne!(kept, secret);
        assert_eq!(
            verify(&store, &secret).expect("verify").map(|t| t.name),
            Some("ci".into())
        );
        assert!(verify(&store, "pgv_nope").expect("verify").is_none());
        assert!(matches!(
            create(&store, "ci", false),
            Err(Error::Conflict(_))
        ));
        revoke(&store, "ci").expect("revoke");
        assert!(verify(&store, &secret).expect("verify").is_none());
    }
}
