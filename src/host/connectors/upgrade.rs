//! Connector upgrades: the data migrations a newer release declares (its
//! manifest's `upgrade` section), run over every stored document of each
//! definition by the new library's `upgrade.<definition>` operation, in
//! migration-id order, each result validated against the new schemas.
//!
//! Which migrations run: for each definition, those with an id above the
//! highest id the installed release declares (all of them when it declares
//! none). [`run`] only writes through the store's connection; the caller
//! ([`super::registry`]) holds the transaction that also switches the
//! installed release, so the documents and the release change together or
//! not at all.
//!
//! Secrets stay sealed: a document's sealed values are opened in memory
//! for the migration (the connector runs in this process; nothing reaches
//! argv, logs or files) and sealed again with the new schemas' secret fields.

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use crate::abi::operations::{compare_migration_ids, MIGRATABLE};
use crate::host::connectors::loader::Connector;
use crate::host::connectors::manifest::Manifest;
use crate::host::environments::{Environment, EnvironmentKind, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::lifecycle::{dsource, vdb};
use crate::host::store::Store;

/// Set `PGVIRT_FAULT_PAUSE` to this to pause 60 s after the migrated
/// documents are written and before the transaction commits: the
/// crash-safety test kills `pgvirt` there.
pub const FAULT_STEP: &str = "upgrade.migrated";

/// The migrations an upgrade runs, per definition, in id order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub migrations: Vec<(String, Vec<String>)>,
}

impl Plan {
    /// What installing `new` over `old` runs.
    pub fn between(old: &Manifest, new: &Manifest) -> Self {
        let (before, after) = (old.migrations(), new.migrations());
        let mut migrations = Vec::new();
        for definition in MIGRATABLE {
            let floor = before.get(definition).and_then(|ids| ids.last());
            let ids: Vec<String> = after
                .get(definition)
                .into_iter()
                .flatten()
                .filter(|id| floor.is_none_or(|f| compare_migration_ids(id, f).is_gt()))
                .cloned()
                .collect();
            if !ids.is_empty() {
                migrations.push((definition.to_owned(), ids));
            }
        }
        Self { migrations }
    }

    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }
}

/// What an upgrade migrated, per definition.
#[derive(Debug, Clone, Serialize)]
pub struct Migrated {
    pub definition: String,
    pub migrations: Vec<String>,
    /// How many stored documents went through them.
    pub documents: usize,
}

/// Runs `plan` with `connector` (the new release) over every stored
/// document, writing the results through the store's connection (the
/// caller's transaction). The first document that fails stops it.
pub fn run(store: &Store, connector: &Connector, plan: &Plan) -> Result<Vec<Migrated>> {
    let env = engine_environment(store);
    let mut done = Vec::new();
    for (definition, ids) in &plan.migrations {
        let m = Migrator {
            store,
            connector,
            env: &env,
            definition,
            ids,
        };
        let documents = match definition.as_str() {
            "repository" => m.documents("repositories", "document", true)?,
            "source_config" => {
                m.documents("source_configs", "document", true)? + m.vdb_source_configs()?
            }
            "linked_source" => m.sealed("dsources", dsource::owner)?,
            "virtual_source" => m.sealed("vdbs", vdb::owner)?,
            "snapshot" => m.documents("snapshots", "metadata", false)?,
            other => {
                return Err(Error::usage(format!(
                    "no stored documents of definition {other:?} to migrate"
                )))
            }
        };
        done.push(Migrated {
            definition: definition.clone(),
            migrations: ids.clone(),
            documents,
        });
    }
    Ok(done)
}

/// The environment an upgrade operation is told about: none of its own
/// (migrations only transform JSON), so this engine's host.
fn engine_environment(store: &Store) -> Environment {
    let os_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    Environment {
        id: 0,
        name: "engine".into(),
        kind: EnvironmentKind::Local,
        os_user,
        scratch: store.data_dir(),
        added_at: 0,
        refreshed_at: None,
        ssh: None,
    }
}

struct Migrator<'a> {
    store: &'a Store,
    connector: &'a Connector,
    env: &'a Environment,
    definition: &'a str,
    ids: &'a [String],
}

impl Migrator<'_> {
    /// One document through every migration, then checked against the new
    /// schema; `what` names it in errors.
    fn migrate(&self, mut doc: Value, what: &str) -> Result<Value> {
        let op = format!("upgrade.{}", self.definition);
        for id in self.ids {
            doc = self
                .connector
                .invoke(
                    &op,
                    &json!({"migration_id": id, "parameters": doc}),
                    HostPlatform::new(self.env),
                )
                .map_err(|e| Error::usage(format!("migrating {what} (migration {id}): {e}")))?;
        }
        let label = format!(
            "{what} after {} migration{} {} of {}",
            self.definition,
            if self.ids.len() == 1 { "" } else { "s" },
            self.ids.join(", "),
            self.connector.manifest.label()
        );
        self.connector
            .definitions
            .validate(self.definition, &doc, &label)?;
        Ok(doc)
    }

    /// Plain documents in `table.column`; with `identity`, the row's
    /// identity and display name are recomputed with the new schema.
    fn documents(&self, table: &str, column: &str, identity: bool) -> Result<usize> {
        let rows: Vec<(i64, String)> = self.select(&format!("SELECT id, {column} FROM {table}"))?;
        for (id, text) in &rows {
            let what = format!("{} {id}", self.definition.replace('_', " "));
            let doc = self.migrate(parse(text, &what)?, &what)?;
            let conn = self.store.conn();
            let done = if identity {
                let defs = &self.connector.definitions;
                conn.execute(
                    &format!(
                        "UPDATE {table} SET {column} = ?1, identity = ?2, name = ?3 WHERE id = ?4"
                    ),
                    params![
                        doc.to_string(),
                        defs.identity(self.definition, &doc),
                        defs.display_name(self.definition, &doc),
                        id
                    ],
                )
            } else {
                conn.execute(
                    &format!("UPDATE {table} SET {column} = ?1 WHERE id = ?2"),
                    params![doc.to_string(), id],
                )
            };
            done.map_err(|e| self.store.err(e))?;
        }
        Ok(rows.len())
    }

    /// The source config each VDB keeps of its own.
    fn vdb_source_configs(&self) -> Result<usize> {
        let rows: Vec<(i64, String, String)> = {
            let mut stmt = self
                .store
                .conn()
                .prepare("SELECT id, name, source_config FROM vdbs")
                .map_err(|e| self.store.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| self.store.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.store.err(e))?
        };
        for (id, name, text) in &rows {
            let what = format!("the source config of VDB {name}");
            let doc = self.migrate(parse(text, &what)?, &what)?;
            self.store
                .conn()
                .execute(
                    "UPDATE vdbs SET source_config = ?1 WHERE id = ?2",
                    params![doc.to_string(), id],
                )
                .map_err(|e| self.store.err(e))?;
        }
        Ok(rows.len())
    }

    /// Parameters with sealed secrets (dSources, VDBs): opened, migrated,
    /// sealed again with the new schema's secret fields.
    fn sealed(&self, table: &str, owner: fn(&str) -> String) -> Result<usize> {
        type Row = (i64, String, String, Option<Vec<u8>>);
        let rows: Vec<Row> = {
            let mut stmt = self
                .store
                .conn()
                .prepare(&format!("SELECT id, name, parameters, sealed FROM {table}"))
                .map_err(|e| self.store.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| self.store.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.store.err(e))?
        };
        let secret_fields = self.connector.definitions.secret_fields(self.definition);
        for (id, name, text, sealed) in &rows {
            let owner = owner(name);
            let mut doc = parse(text, &owner)?;
            self.store.unseal(&owner, &mut doc, sealed.as_deref())?;
            let doc = self.migrate(doc, &owner)?;
            let (public, sealed) = self.store.seal(&owner, &doc, &secret_fields)?;
            self.store
                .conn()
                .execute(
                    &format!("UPDATE {table} SET parameters = ?1, sealed = ?2 WHERE id = ?3"),
                    params![public.to_string(), sealed, id],
                )
                .map_err(|e| self.store.err(e))?;
        }
        Ok(rows.len())
    }

    fn select(&self, sql: &str) -> Result<Vec<(i64, String)>> {
        let mut stmt = self
            .store
            .conn()
            .prepare(sql)
            .map_err(|e| self.store.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.store.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.store.err(e))
    }
}

fn parse(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::usage(format!("the stored document of {what} is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(upgrade: Value) -> Manifest {
        serde_json::from_value(json!({
            "id": "x", "name": "n", "version": "1.0.0", "build_number": "1", "abi_version": 1,
            "host_types": ["UNIX"], "plugin_type": "STAGED", "library": "l.so",
            "manual_discovery": true, "operations": {}, "schemas": {}, "upgrade": upgrade
        }))
        .expect("manifest")
    }

    fn ids(list: &[&str]) -> Value {
        Value::Array(
            list.iter()
                .map(|id| json!({"id": id, "steps": []}))
                .collect(),
        )
    }

    #[test]
    fn only_migrations_above_the_installed_releases_run_in_id_order() {
        let old = manifest(json!({"linked_source": ids(&["1"]), "snapshot": ids(&["3"])}));
        let new = manifest(json!({
            "linked_source": ids(&["2", "1", "1.10", "1.9"]),
            "snapshot": ids(&["3"]),
            "source_config": ids(&["1"])
        }));
        let plan = Plan::between(&old, &new);
        assert_eq!(
            plan.migrations,
            vec![
                ("source_config".to_owned(), vec!["1".to_owned()]),
                (
                    "linked_source".to_owned(),
                    vec!["1.9".to_owned(), "1.10".to_owned(), "2".to_owned()]
                ),
            ]
        );
        assert!(Plan::between(&new, &new).is_empty());
    }
}
