//! Who owns what on the pool: each dSource its dataset, each timeflow its
//! dataset, each recorded snapshot its storage snapshot, and each running
//! job what it is making. `pool check` reports anything else as an orphan,
//! and refusals about dependents name the objects the user made (VDB `dev`),
//! never the datasets under them.

use std::collections::BTreeSet;

use serde_json::Value;

use super::jobs;
use super::timeflow::{self, ContainerKind};
use crate::host::error::Result;
use crate::host::processes;
use crate::host::storage::{CheckReport, Owned, Pool};
use crate::host::store::Store;

/// An object that stands on another's snapshots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependent {
    pub kind: ContainerKind,
    pub name: String,
}

/// The object a dataset belongs to, if any.
pub fn owner_of_dataset(store: &Store, dataset: &str) -> Result<Option<Dependent>> {
    let row: Option<(ContainerKind, String)> = store.optional(store.conn().query_row(
        "SELECT 'dsource', name FROM dsources
             WHERE dataset = ?1 OR dataset || '-wal' = ?1 OR substr(?1, 1, length(dataset) + 6) = dataset || '-prep-'
         UNION ALL SELECT 'vdb', name FROM vdbs WHERE dataset = ?1 OR dataset || '-wal' = ?1
         UNION ALL SELECT t.container_kind, coalesce(v.name, d.name) FROM timeflows t
             LEFT JOIN vdbs v ON t.container_kind = 'vdb' AND v.id = t.container_id
             LEFT JOIN dsources d ON t.container_kind = 'dsource' AND d.id = t.container_id
             WHERE (t.dataset = ?1 OR (t.container_kind = 'vdb' AND t.dataset || '-wal' = ?1))
                 AND coalesce(v.name, d.name) IS NOT NULL
         LIMIT 1",
        [dataset],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ))?;
    Ok(row.map(|(kind, name)| Dependent { kind, name }))
}

/// The objects (other than itself) provisioned from a container's snapshots.
pub fn dependents_of(
    store: &Store,
    pool: &Pool,
    kind: ContainerKind,
    id: i64,
) -> Result<Vec<Dependent>> {
    let own: Option<String> = store.optional(store.conn().query_row(
        if kind == ContainerKind::Dsource {
            "SELECT name FROM dsources WHERE id = ?1"
        } else {
            "SELECT name FROM vdbs WHERE id = ?1"
        },
        [id],
        |r| r.get(0),
    ))?;
    let mut found = BTreeSet::new();
    for s in timeflow::snapshots(store, kind, id)? {
        for dataset in s
            .images()
            .into_iter()
            .map(|image| pool.dependents(store, image))
            .collect::<Result<Vec<_>>>()?
            .concat()
        {
            let dependent = owner_of_dataset(store, &dataset)?.unwrap_or(Dependent {
                kind: ContainerKind::Vdb,
                name: format!("(dataset {dataset})"),
            });
            if dependent.kind == kind && Some(&dependent.name) == own.as_ref() {
                continue;
            }
            found.insert(dependent);
        }
    }
    Ok(found.into_iter().collect())
}

/// "VDB dev depends" / "VDBs dev and test depend".
pub fn depend_phrase(dependents: &[Dependent]) -> String {
    let names: Vec<&str> = dependents.iter().map(|d| d.name.as_str()).collect();
    match names.as_slice() {
        [] => "nothing depends".into(),
        [one] => format!("VDB {one} depends"),
        [rest @ .., last] => format!("VDBs {} and {last} depend", rest.join(", ")),
    }
}

/// Everything the store's objects own, and what running jobs are making.
pub fn owned(store: &Store) -> Result<Owned> {
    let mut owned = Owned::default();
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT dataset FROM dsources
             UNION SELECT dataset || '-wal' FROM dsources
             UNION SELECT name FROM datasets WHERE operator = 1
             UNION SELECT d.name FROM snapshots s JOIN dataset_snapshots i ON i.id = s.prepared_id
                 JOIN datasets d ON d.id = i.dataset_id
             UNION SELECT dataset FROM vdbs WHERE dataset <> ''
             UNION SELECT dataset || '-wal' FROM vdbs WHERE dataset <> ''
             UNION SELECT t.dataset || '-wal' FROM timeflows t JOIN vdbs v
                 ON t.container_kind = 'vdb' AND v.id = t.container_id WHERE t.dataset IS NOT NULL
             UNION SELECT t.dataset FROM timeflows t WHERE t.dataset IS NOT NULL AND (
                 (t.container_kind = 'vdb' AND EXISTS (SELECT 1 FROM vdbs v WHERE v.id = t.container_id))
              OR (t.container_kind = 'dsource' AND EXISTS (SELECT 1 FROM dsources d WHERE d.id = t.container_id)))",
        )
        .map_err(|e| store.err(e))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| store.err(e))?;
    for name in names {
        owned.datasets.insert(name.map_err(|e| store.err(e))?);
    }
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT dataset_snapshot_id FROM snapshots
             UNION SELECT prepared_id FROM snapshots WHERE prepared_id IS NOT NULL
             UNION SELECT id FROM dataset_snapshots WHERE operator = 1",
        )
        .map_err(|e| store.err(e))?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(|e| store.err(e))?;
    for id in ids {
        owned.snapshots.insert(id.map_err(|e| store.err(e))?);
    }
    // What running jobs note as theirs (a provision's or refresh's new
    // dataset, a sync's snapshot), until they end.
    let pool = Pool::open_unchecked(store)?;
    for job in jobs::running(store)? {
        let Value::Object(details) = &job.details else {
            continue;
        };
        for (key, value) in details {
            let Some(text) = value.as_str() else { continue };
            match key.as_str() {
                "dataset" | "new_dataset" | "old_dataset" | "prep_dataset" => {
                    owned.datasets.insert(text.to_owned());
                    // And the WAL dataset a VDB's dataset is made with.
                    owned
                        .datasets
                        .insert(crate::host::lifecycle::placement::wal_dataset(text));
                }
                "snapshot" => {
                    if let Some(dataset) = details.get("snapshot_of").and_then(Value::as_str) {
                        if let Some(s) = pool.find_snapshot(store, dataset, text)? {
                            owned.snapshots.insert(s.id);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(owned)
}

/// `pool check`: the pool against the store and against the objects.
pub fn check_pool(store: &Store, repair: bool) -> Result<CheckReport> {
    let pool = Pool::open_unchecked(store)?;
    let owned = owned(store)?;
    pool.check(store, repair, &owned)
}

/// Destroys a storage snapshot a cut-short job took but never recorded on a
/// timeflow. Returns whether there was one.
pub fn discard_unrecorded(store: &Store, pool: &Pool, dataset: &str, label: &str) -> Result<bool> {
    let Some(snap) = pool.find_snapshot(store, dataset, label)? else {
        return Ok(false);
    };
    let recorded: bool = store
        .conn()
        .query_row(
            "SELECT count(*) > 0 FROM snapshots WHERE dataset_snapshot_id = ?1 OR prepared_id = ?1",
            [snap.id],
            |r| r.get(0),
        )
        .map_err(|e| store.err(e))?;
    if recorded {
        return Ok(false);
    }
    processes::kill_holders(
        std::slice::from_ref(&snap.path),
        std::time::Duration::from_secs(30),
    );
    pool.destroy_snapshot(store, snap.id)?;
    Ok(true)
}
