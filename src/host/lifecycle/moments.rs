//! The moments a dSource or VDB can be provisioned at: its timeflows, the
//! provisionable ranges (snapshots and kept WAL), and what keeps that WAL.
//! One answer for `pgvirt timeflow show` and `GET /timeflows/{name}`.

use serde::Serialize;

use super::timeflow::{self, ContainerKind, Timeflow};
use super::{dsource, pitr, vdb};
use crate::host::connectors::registry;
use crate::host::error::Result;
use crate::host::store::Store;

/// What `timeflow show` tells.
#[derive(Debug, Clone, Serialize)]
pub struct Moments {
    pub name: String,
    pub kind: ContainerKind,
    pub timeflows: Vec<Timeflow>,
    pub ranges: Vec<pitr::Range>,
    /// What keeps WAL, in words.
    pub wal_kept: String,
}

/// The moments of the dSource or VDB named `name`.
pub fn of(store: &Store, name: &str) -> Result<Moments> {
    let connector = || registry::open(store, None);
    if let Some(d) = dsource::find(store, name)? {
        let ranges = dsource::ranges(store, &connector()?, &d)?;
        let timeflows = timeflow::list(store, ContainerKind::Dsource, d.id)?;
        let (days, bytes) = timeflow::wal_retention(store, ContainerKind::Dsource, d.id)?;
        let wal_kept = format!(
            "back to the oldest snapshot{}{}",
            days.map_or(String::new(), |d| format!(" younger than {d} days")),
            bytes.map_or(String::new(), |b| format!(", at most {b} bytes"))
        );
        return Ok(Moments {
            name: name.to_owned(),
            kind: ContainerKind::Dsource,
            timeflows,
            ranges,
            wal_kept,
        });
    }
    let v = vdb::get(store, name)?;
    let ranges = vdb::wal::ranges(store, &connector()?, &v)?;
    Ok(Moments {
        name: name.to_owned(),
        kind: ContainerKind::Vdb,
        timeflows: timeflow::list(store, ContainerKind::Vdb, v.id)?,
        ranges,
        // Each timeflow keeps its WAL from its oldest snapshot on.
        wal_kept: "from the oldest snapshot of each timeflow on".into(),
    })
}
