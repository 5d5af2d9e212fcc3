//! What a dSource or VDB keeps: its newest snapshots, those younger than
//! some days, and (dSources) the WAL between them — set by `pgvirt
//! snapshot retention` and `PUT /{dsources,vdbs}/{name}/retention` alike,
//! and applied at once.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::timeflow::{self, ContainerKind};
use super::{dsource, vdb};
use crate::host::connectors::registry;
use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::Store;

/// A retention policy; what is left out is not changed (snapshot counts and
/// days are set together).
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N snapshots.
    #[serde(default)]
    pub keep: Option<u32>,
    /// Keep snapshots younger than D days.
    #[serde(default)]
    pub days: Option<u32>,
    /// Keep the WAL back to the oldest snapshot younger than D days
    /// (dSources).
    #[serde(default)]
    pub wal_days: Option<u32>,
    /// Keep no more than this many bytes of WAL (dSources).
    #[serde(default)]
    pub wal_size: Option<u64>,
}

/// What setting a retention did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Applied {
    /// Snapshots removed now, by the new policy.
    pub removed: Vec<i64>,
    /// Files of kept WAL pruned now (dSources, when a WAL policy was set).
    pub pruned: Option<u64>,
}

/// Sets the retention of the dSource or VDB `name` and applies it now.
/// `flag` names how the caller spells the fields (`--keep` or `keep`).
pub fn set(
    store: &Store,
    kind: ContainerKind,
    name: &str,
    r: &Retention,
    flag: impl Fn(&str) -> String,
) -> Result<Applied> {
    let id = match kind {
        ContainerKind::Dsource => dsource::get(store, name)?.id,
        ContainerKind::Vdb => vdb::get(store, name)?.id,
    };
    let wal = r.wal_days.is_some() || r.wal_size.is_some();
    let snapshots = r.keep.is_some() || r.days.is_some();
    if !snapshots && !wal {
        return Err(Error::usage(format!(
            "give {}, {}, {} or {}",
            flag("keep"),
            flag("days"),
            flag("wal_days"),
            flag("wal_size")
        )));
    }
    let mut applied = Applied::default();
    if wal {
        if kind != ContainerKind::Dsource {
            return Err(Error::usage(format!(
                "only dSources keep WAL ({}, {})",
                flag("wal_days"),
                flag("wal_size")
            )));
        }
        timeflow::set_wal_retention(store, kind, id, r.wal_days, r.wal_size)?;
        let connector = registry::open(store, None)?;
        applied.pruned = Some(dsource::prune_wal(
            store,
            &connector,
            &dsource::get(store, name)?,
        )?);
    }
    if snapshots {
        timeflow::set_retention(store, kind, id, r.keep, r.days)?;
        applied.removed = timeflow::apply_retention(store, &Pool::open(store)?, kind, id)?;
    }
    Ok(applied)
}
