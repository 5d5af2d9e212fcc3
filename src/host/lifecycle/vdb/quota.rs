//! VDB quotas: how much a VDB may add on its clone (`vdb provision --quota`,
//! `vdb quota`), and what it has added. The store holds the quota; the pool
//! enforces it. A change is written to the store first and then to the pool
//! (put back if the pool refuses); `vdb start` applies the stored quota
//! again, so a change cut short is finished by the next start.

use rusqlite::params;

use super::{get, Vdb};
use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// What a VDB under a quota has added on its clone (where the pool counts
/// it), and its quota.
pub fn quota_usage(store: &Store, vdb: &Vdb) -> Result<Option<(Option<u64>, u64)>> {
    let Some(quota) = vdb.quota_bytes else {
        return Ok(None);
    };
    let pool = Pool::open(store)?;
    Ok(Some((pool.quota_used(store, &vdb.dataset)?, quota)))
}

/// Sets (or with `None` lifts) a VDB's quota.
pub fn set_quota(store: &Store, name: &str, quota: Option<u64>) -> Result<Vdb> {
    let vdb = get(store, name)?;
    let pool = Pool::open(store)?;
    if let Some(bytes) = quota {
        pool.check_quota()?;
        if let Some(used) = pool.quota_used(store, &vdb.dataset)?.filter(|u| *u > bytes) {
            return Err(Error::Conflict(format!(
                "VDB {name} already holds {} MiB on its clone, more than {} MiB; \
                 choose a larger quota, or refresh the VDB first",
                mib(used),
                mib(bytes)
            )));
        }
    }
    record(store, vdb.id, quota)?;
    if let Err(e) = apply(store, &pool, &vdb.dataset, quota) {
        record(store, vdb.id, vdb.quota_bytes)?;
        return Err(e);
    }
    get(store, name)
}

/// Puts the stored quota on the VDB's dataset again.
pub(super) fn reapply(store: &Store, vdb: &Vdb) -> Result<()> {
    if vdb.quota_bytes.is_none() {
        return Ok(());
    }
    apply(store, &Pool::open(store)?, &vdb.dataset, vdb.quota_bytes)
}

/// An error from starting a VDB, with the likely cause when its quota is
/// (nearly) used up: PostgreSQL stops when it cannot write its WAL, and
/// cannot log why.
pub(super) fn explain(store: &Store, vdb: &Vdb, err: Error) -> Error {
    let Ok(Some((Some(used), quota))) = quota_usage(store, vdb) else {
        return err;
    };
    if used + quota / 20 < quota {
        return err;
    }
    Error::Conflict(format!(
        "{err}\nlikely cause: VDB {name} has used its quota ({} of {} MiB); \
         raise it with `pgvirt vdb quota {name} SIZE` (or lift it with --none), \
         or refresh the VDB",
        mib(used),
        mib(quota),
        name = vdb.name
    ))
}

fn apply(store: &Store, pool: &Pool, dataset: &str, quota: Option<u64>) -> Result<()> {
    match quota {
        Some(bytes) => pool.set_quota(store, dataset, bytes),
        None => pool.clear_quota(store, dataset),
    }
}

fn record(store: &Store, id: i64, quota: Option<u64>) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE vdbs SET quota_bytes = ?2 WHERE id = ?1",
            params![id, quota.map(|q| q as i64)],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// A VDB as `vdb show --output json` and `GET /vdbs/{name}` give it: the
/// stored VDB, how to connect, and what it used of its quota.
pub fn described(vdb: &Vdb, usage: Option<(Option<u64>, u64)>) -> serde_json::Value {
    let mut value = serde_json::to_value(vdb).unwrap_or_default();
    value["connection"] = serde_json::Value::String(vdb.connection_string());
    if let Some((used, quota)) = usage {
        value["quota"] = serde_json::json!({"bytes": quota, "used_bytes": used});
    }
    value
}
