//! Timeflows: the line of snapshots of one dSource or VDB. Snapshots belong
//! to a timeflow and carry the connector's metadata; a resync, refresh or
//! rewind opens a new timeflow that records the snapshot it started from.
//! Retention (keep N, or keep D days) never removes a snapshot that
//! something was provisioned from.

use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

use crate::host::error::{Error, Result};
use crate::host::storage::Pool;
use crate::host::store::{self, columns, Store};

/// What a timeflow belongs to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ContainerKind {
    Dsource,
    Vdb,
}

impl ContainerKind {
    /// How people call it.
    pub fn title(self) -> &'static str {
        match self {
            Self::Dsource => "dSource",
            Self::Vdb => "VDB",
        }
    }
}

columns::text_enum_column!(ContainerKind);

#[derive(Debug, Clone, Serialize)]
pub struct Timeflow {
    pub id: i64,
    pub container_kind: ContainerKind,
    pub container_id: i64,
    pub parent_snapshot: Option<i64>,
    /// The dataset this timeflow lives on.
    pub dataset: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: i64,
    pub timeflow_id: i64,
    /// The storage snapshot, as taken.
    pub dataset_snapshot_id: i64,
    pub metadata: Value,
    pub created_at: i64,
    /// The prepared image: recovered to the snapshot's point once and
    /// shut down cleanly, so clones of it start without recovery.
    pub prepared_id: Option<i64>,
}

impl Snapshot {
    /// The storage snapshot a clone of this snapshot is made from: the
    /// prepared image when there is one.
    pub fn image(&self) -> i64 {
        self.prepared_id.unwrap_or(self.dataset_snapshot_id)
    }

    /// Whether a clone of it as taken needs the dSource's kept WAL to be
    /// consistent (it was taken while staging replayed).
    pub fn needs_kept_wal(&self) -> bool {
        self.metadata
            .get("needs_kept_wal")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    }

    /// Every storage snapshot it holds (as taken, and prepared).
    pub fn images(&self) -> Vec<i64> {
        std::iter::once(self.dataset_snapshot_id)
            .chain(self.prepared_id)
            .collect()
    }
}

/// Opens a new timeflow for a container, on `dataset`.
pub fn create(
    store: &Store,
    kind: ContainerKind,
    container: i64,
    parent: Option<i64>,
    dataset: &str,
) -> Result<Timeflow> {
    store
        .conn()
        .execute(
            "INSERT INTO timeflows (container_kind, container_id, parent_snapshot, dataset, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, container, parent, dataset, store::now()],
        )
        .map_err(|e| store.err(e))?;
    let id = store.conn().last_insert_rowid();
    get(store, id)
}

fn get(store: &Store, id: i64) -> Result<Timeflow> {
    store
        .conn()
        .query_row(
            "SELECT id, container_kind, container_id, parent_snapshot, coalesce(dataset, ''), created_at FROM timeflows WHERE id = ?1",
            [id],
            timeflow_row,
        )
        .map_err(|e| store.err(e))
}

fn timeflow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Timeflow> {
    Ok(Timeflow {
        id: r.get(0)?,
        container_kind: r.get(1)?,
        container_id: r.get(2)?,
        parent_snapshot: r.get(3)?,
        dataset: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// The timeflows of a container, oldest first.
pub fn list(store: &Store, kind: ContainerKind, container: i64) -> Result<Vec<Timeflow>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT id, container_kind, container_id, parent_snapshot, coalesce(dataset, ''), created_at FROM timeflows
             WHERE container_kind = ?1 AND container_id = ?2 ORDER BY id",
        )
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map(params![kind, container], timeflow_row)
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

/// The container's current (newest) timeflow.
pub fn current(store: &Store, kind: ContainerKind, container: i64) -> Result<Timeflow> {
    list(store, kind, container)?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("{} {container} has no timeflow", kind.title())))
}

/// Records a snapshot on a timeflow.
pub fn add_snapshot(
    store: &Store,
    timeflow: i64,
    dataset_snapshot: i64,
    metadata: &Value,
) -> Result<Snapshot> {
    store
        .conn()
        .execute(
            "INSERT INTO snapshots (timeflow_id, dataset_snapshot_id, metadata, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![timeflow, dataset_snapshot, metadata.to_string(), store::now()],
        )
        .map_err(|e| store.err(e))?;
    snapshot(store, store.conn().last_insert_rowid())
}

const SNAPSHOT_COLUMNS: &str =
    "s.id, s.timeflow_id, s.dataset_snapshot_id, s.metadata, s.created_at, s.prepared_id";

fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Snapshot> {
    let id: i64 = r.get(0)?;
    Ok(Snapshot {
        id,
        timeflow_id: r.get(1)?,
        dataset_snapshot_id: r.get(2)?,
        metadata: columns::json(r, 3, || format!("metadata of snapshot {id}"))?,
        created_at: r.get(4)?,
        prepared_id: r.get(5)?,
    })
}

pub fn snapshot(store: &Store, id: i64) -> Result<Snapshot> {
    store
        .optional(store.conn().query_row(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots s WHERE s.id = ?1"),
            [id],
            snapshot_row,
        ))?
        .ok_or_else(|| Error::NotFound(format!("no snapshot {id}")))
}

/// A container's snapshots, oldest first, across its timeflows.
pub fn snapshots(store: &Store, kind: ContainerKind, container: i64) -> Result<Vec<Snapshot>> {
    let mut stmt = store
        .conn()
        .prepare(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s JOIN timeflows t ON t.id = s.timeflow_id
             WHERE t.container_kind = ?1 AND t.container_id = ?2 ORDER BY s.id"
        ))
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map(params![kind, container], snapshot_row)
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

/// Records a snapshot's prepared image.
pub fn set_prepared(store: &Store, id: i64, image: i64) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE snapshots SET prepared_id = ?2 WHERE id = ?1",
            params![id, image],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Whether anything was cloned from a snapshot (as taken, or prepared).
pub fn has_clones(pool: &Pool, store: &Store, s: &Snapshot) -> Result<bool> {
    // The dataset the prepared image was made on is the snapshot's own.
    let own = s
        .prepared_id
        .and_then(|p| pool.snapshot_by_id(store, p).ok())
        .map(|image| image.dataset);
    for image in s.images() {
        if pool
            .dependents(store, image)?
            .iter()
            .any(|d| Some(d) != own.as_ref())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Forgets a snapshot and destroys its storage: the prepared image (and the
/// dataset it was made on), then the snapshot as taken.
pub fn discard(store: &Store, pool: &Pool, s: &Snapshot) -> Result<()> {
    remove_snapshot(store, s.id)?;
    if let Some(prepared) = s.prepared_id {
        // (Gone already when its dataset went first.)
        if let Ok(image) = pool.snapshot_by_id(store, prepared) {
            pool.destroy_snapshot(store, prepared)?;
            pool.release(store, &image.dataset)?;
            pool.destroy_dataset_tree(store, &image.dataset)?;
        }
    }
    pool.destroy_snapshot(store, s.dataset_snapshot_id)
}

/// Forgets a snapshot record (its storage snapshot is the caller's, who
/// checked nothing is cloned from it). Timeflows that started from it keep
/// their history but lose the pointer.
pub fn remove_snapshot(store: &Store, id: i64) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE timeflows SET parent_snapshot = NULL WHERE parent_snapshot = ?1",
            [id],
        )
        .map_err(|e| store.err(e))?;
    store
        .conn()
        .execute(
            "UPDATE vdbs SET origin_snapshot = NULL WHERE origin_snapshot = ?1",
            [id],
        )
        .map_err(|e| store.err(e))?;
    store
        .conn()
        .execute("DELETE FROM snapshots WHERE id = ?1", [id])
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Forgets a container's timeflows (after its snapshots are gone).
pub fn remove_container(store: &Store, kind: ContainerKind, container: i64) -> Result<()> {
    store
        .conn()
        .execute(
            "DELETE FROM timeflows WHERE container_kind = ?1 AND container_id = ?2",
            params![kind, container],
        )
        .map_err(|e| store.err(e))?;
    store
        .conn()
        .execute(
            "DELETE FROM retention WHERE container_kind = ?1 AND container_id = ?2",
            params![kind, container],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Sets a container's retention: keep the newest `keep_count` snapshots,
/// and/or those younger than `keep_days`.
pub fn set_retention(
    store: &Store,
    kind: ContainerKind,
    container: i64,
    keep_count: Option<u32>,
    keep_days: Option<u32>,
) -> Result<()> {
    store
        .conn()
        .execute(
            "INSERT INTO retention (container_kind, container_id, keep_count, keep_days) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (container_kind, container_id) DO UPDATE SET keep_count = ?3, keep_days = ?4",
            params![kind, container, keep_count, keep_days],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Sets how much kept WAL a container keeps: back to its oldest snapshot
/// younger than `days`, and/or no more than `bytes` (never WAL a kept
/// snapshot needs to be consistent).
pub fn set_wal_retention(
    store: &Store,
    kind: ContainerKind,
    container: i64,
    days: Option<u32>,
    bytes: Option<u64>,
) -> Result<()> {
    store
        .conn()
        .execute(
            "INSERT INTO retention (container_kind, container_id, wal_keep_days, wal_keep_bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (container_kind, container_id) DO UPDATE SET wal_keep_days = ?3, wal_keep_bytes = ?4",
            params![kind, container, days, bytes.map(|b| b as i64)],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// The WAL policy of a container: (days, bytes), each when set.
pub fn wal_retention(
    store: &Store,
    kind: ContainerKind,
    container: i64,
) -> Result<(Option<u32>, Option<u64>)> {
    Ok(store
        .optional(store.conn().query_row(
            "SELECT wal_keep_days, wal_keep_bytes FROM retention WHERE container_kind = ?1 AND container_id = ?2",
            params![kind, container],
            |r| Ok((r.get::<_, Option<u32>>(0)?, r.get::<_, Option<i64>>(1)?.map(|b| b as u64))),
        ))?
        .unwrap_or((None, None)))
}

/// Applies retention: removes snapshots beyond the policy, except any that
/// something depends on (a clone, a timeflow started from it) and the
/// newest one. Returns the ids removed.
pub fn apply_retention(
    store: &Store,
    pool: &Pool,
    kind: ContainerKind,
    container: i64,
) -> Result<Vec<i64>> {
    let policy: Option<(Option<u32>, Option<u32>)> = store.optional(store.conn().query_row(
        "SELECT keep_count, keep_days FROM retention WHERE container_kind = ?1 AND container_id = ?2",
        params![kind, container],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ))?;
    let Some((keep_count, keep_days)) = policy else {
        return Ok(Vec::new());
    };
    if keep_count.is_none() && keep_days.is_none() {
        return Ok(Vec::new()); // a WAL policy only
    }
    let all = snapshots(store, kind, container)?;
    let now = store::now();
    let mut removed = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let from_newest = all.len() - 1 - i;
        if from_newest == 0 {
            continue;
        }
        let kept_by_count = keep_count.is_some_and(|n| from_newest < n as usize);
        let kept_by_age = keep_days.is_some_and(|d| now - s.created_at < i64::from(d) * 86_400);
        if kept_by_count || kept_by_age {
            continue;
        }
        let parent_of_timeflow: bool = store
            .conn()
            .query_row(
                "SELECT count(*) > 0 FROM timeflows WHERE parent_snapshot = ?1",
                [s.id],
                |r| r.get(0),
            )
            .map_err(|e| store.err(e))?;
        if parent_of_timeflow || has_clones(pool, store, s)? {
            continue;
        }
        discard(store, pool, s)?;
        removed.push(s.id);
    }
    Ok(removed)
}

/// A snapshot as listed: with the name of what it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: i64,
    /// `dsource` or `vdb`.
    pub of: ContainerKind,
    /// The dSource's or VDB's name.
    pub name: String,
    pub timeflow: i64,
    pub created_at: i64,
    pub metadata: Value,
}

/// Snapshots of one container (`kind` and `name`), or of all, oldest first.
pub fn listing(store: &Store, only: Option<(ContainerKind, i64)>) -> Result<Vec<Listed>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT s.id, t.container_kind, coalesce(d.name, v.name), t.id, s.created_at, s.metadata
             FROM snapshots s JOIN timeflows t ON t.id = s.timeflow_id
             LEFT JOIN dsources d ON t.container_kind = 'dsource' AND d.id = t.container_id
             LEFT JOIN vdbs v ON t.container_kind = 'vdb' AND v.id = t.container_id
             WHERE ?1 IS NULL OR (t.container_kind = ?1 AND t.container_id = ?2)
             ORDER BY t.container_kind, coalesce(d.name, v.name), s.id",
        )
        .map_err(|e| store.err(e))?;
    let (kind, id) = only.map_or((None, None), |(k, i)| (Some(k), Some(i)));
    let rows = stmt
        .query_map(params![kind, id], |r| {
            let id: i64 = r.get(0)?;
            Ok(Listed {
                id,
                of: r.get(1)?,
                name: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                timeflow: r.get(3)?,
                created_at: r.get(4)?,
                metadata: columns::json(r, 5, || format!("metadata of snapshot {id}"))?,
            })
        })
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}
