//! Table exports: chosen tables of a source config, tracked by triggers on
//! it and shipped to targets (VDBs or source configs), through the
//! connector's `export.*` operations.
//!
//! The store keeps what the user asked (source, tables, targets by name,
//! options) and what the runs shipped; the truth about what each target
//! holds is its replication origin, read by the connector on every run. So
//! nothing here needs repair after a kill: the next command asks the
//! databases again (an interrupted run loses only its line in `stats`).
//!
//! Each operation gets the definition resolved now (`schema/export.json`):
//! where the source and each target are (a VDB's port and socket as they
//! are today), with which psql.

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::discovery::{self, Presence};
use super::vdb;
use crate::host::connectors::loader::Connector;
use crate::host::environments::{self, Environment, HostPlatform};
use crate::host::error::{Error, Result};
use crate::host::store::{self, columns, Store};

/// Where an export is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ExportState {
    /// Defined; nothing on the source yet (or not known to be).
    Added,
    /// Tracking installed on the source.
    Installed,
}

columns::text_enum_column!(ExportState);

/// An export as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRecord {
    pub id: i64,
    pub name: String,
    pub source_config_id: i64,
    /// `{"tables": [...], "targets": [{"vdb": NAME} | {"source_config": ID}], "options": {...}}`.
    pub definition: Value,
    pub state: ExportState,
    /// Per target and table: `last_export_at`, `rows_shipped`, `runs`.
    pub stats: Value,
    pub created_at: i64,
}

/// What `export add` asks for.
pub struct AddRequest<'a> {
    pub name: &'a str,
    /// Source config id or name.
    pub source: &'a str,
    /// `schema.table`, in order.
    pub tables: &'a [String],
    /// `schema.table=index`: a unique index keying that table.
    pub keys: &'a [String],
    /// VDB names or source config ids/names.
    pub targets: &'a [String],
    pub options: Value,
}

/// One line of `export status`: a table on a target.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub target: String,
    pub table: String,
    /// Changes recorded on the source after the target's progress.
    pub changes_waiting: Option<u64>,
    /// The target's progress (the ordering number of the last change it holds).
    pub progress: Option<u64>,
    pub last_export_at: Option<i64>,
    pub rows_shipped: u64,
    /// Why the target could not be read, when it could not.
    pub error: Option<String>,
}

/// Defines an export; nothing is installed yet. Every table and target is
/// checked to resolve, and the whole definition against the connector's
/// `export` schema, before anything is stored.
pub fn add(store: &Store, connector: &Connector, req: AddRequest<'_>) -> Result<ExportRecord> {
    environments::check_name(req.name, "export name")?;
    if find(store, req.name)?.is_some() {
        return Err(Error::Conflict(format!("export {} exists", req.name)));
    }
    let source = discovery::find_source_config(store, req.source)?;
    let mut tables = Vec::new();
    for (i, t) in req.tables.iter().enumerate() {
        let (schema, table) = t.split_once('.').ok_or_else(|| {
            Error::usage(format!(
                "--tables: {t:?} (item {}) is not SCHEMA.TABLE",
                i + 1
            ))
        })?;
        if req.tables[..i].contains(t) {
            return Err(Error::usage(format!("--tables: {t:?} is given twice")));
        }
        tables.push(json!({"schema": schema, "table": table}));
    }
    for k in req.keys {
        let (table, index) = k
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("--key: {k:?} is not SCHEMA.TABLE=INDEX")))?;
        let entry = tables
            .iter_mut()
            .find(|t| {
                format!(
                    "{}.{}",
                    t["schema"].as_str().unwrap_or(""),
                    t["table"].as_str().unwrap_or("")
                ) == table
            })
            .ok_or_else(|| {
                Error::usage(format!("--key: table {table:?} is not one of --tables"))
            })?;
        entry["key"] = json!(index);
    }
    let mut targets = Vec::new();
    for (i, t) in req.targets.iter().enumerate() {
        if req.targets[..i].contains(t) {
            return Err(Error::usage(format!("--target {t:?} is given twice")));
        }
        if vdb::find(store, t)?.is_some() {
            targets.push(json!({"vdb": t}));
        } else {
            let config = discovery::find_source_config(store, t).map_err(|_| {
                Error::NotFound(format!(
                    "--target {t:?} is neither a VDB nor a source config; see `pgvirt vdb list` and `pgvirt source list`"
                ))
            })?;
            if config.id == source.id {
                return Err(Error::usage(format!("--target {t:?} is the source itself")));
            }
            targets.push(json!({"source_config": config.id}));
        }
    }
    let definition = json!({"tables": tables, "targets": targets, "options": req.options});
    let record = ExportRecord {
        id: 0,
        name: req.name.to_owned(),
        source_config_id: source.id,
        definition,
        state: ExportState::Added,
        stats: json!({}),
        created_at: store::now(),
    };
    // The whole definition, as the connector will get it.
    let (document, _) = resolve(store, &record, false)?;
    connector
        .definitions
        .validate("export", &document, "export definition")?;
    store
        .conn()
        .execute(
            "INSERT INTO exports (name, source_config_id, definition, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.name,
                record.source_config_id,
                record.definition.to_string(),
                record.state,
                record.created_at
            ],
        )
        .map_err(|e| store.err(e))?;
    get(store, req.name)
}

/// Every export.
pub fn list(store: &Store) -> Result<Vec<ExportRecord>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT id, name, source_config_id, definition, state, stats, created_at
             FROM exports ORDER BY name",
        )
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ExportRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                source_config_id: r.get(2)?,
                definition: columns::json(r, 3, || "definition of an export".into())?,
                state: r.get(4)?,
                stats: columns::json(r, 5, || "stats of an export".into())?,
                created_at: r.get(6)?,
            })
        })
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn find(store: &Store, name: &str) -> Result<Option<ExportRecord>> {
    Ok(list(store)?.into_iter().find(|e| e.name == name))
}

pub fn get(store: &Store, name: &str) -> Result<ExportRecord> {
    find(store, name)?
        .ok_or_else(|| Error::NotFound(format!("no export {name:?}; see `pgvirt export list`")))
}

/// The SQL `install` would run on the source.
pub fn ddl(store: &Store, connector: &Connector, name: &str) -> Result<String> {
    let out = invoke(store, connector, name, "export.ddl")?;
    Ok(out["sql"].as_str().unwrap_or_default().to_owned())
}

/// Installs tracking on the source (nothing when it is there already).
pub fn install(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let out = invoke(store, connector, name, "export.install")?;
    set_state(store, name, ExportState::Installed)?;
    Ok(out)
}

/// One export to every target now. Records what each target got; fails
/// (after recording) when a target failed.
pub fn run(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let out = invoke(store, connector, name, "export.export")?;
    let record = get(store, name)?;
    let mut stats = record.stats.as_object().cloned().unwrap_or_default();
    let now = store::now();
    let mut failures = Vec::new();
    for target in out["targets"].as_array().into_iter().flatten() {
        let target_name = target["name"].as_str().unwrap_or("?").to_owned();
        if let Some(error) = target["error"].as_str() {
            let mut text = format!("target {target_name}: {error}");
            if let Some(cause) = target["cause"].as_str() {
                text.push_str(&format!("\n  cause: {cause}"));
            }
            if let Some(action) = target["action"].as_str() {
                text.push_str(&format!("\n  action: {action}"));
            }
            failures.push(text);
            continue;
        }
        let entry = stats
            .entry(target_name)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut entry: Map<String, Value> = entry;
        for table in target["tables"].as_array().into_iter().flatten() {
            let key = table["table"].as_str().unwrap_or("?").to_owned();
            let old = entry.get(&key).cloned().unwrap_or(json!({}));
            let rows = table["rows"].as_u64().unwrap_or(0);
            entry.insert(
                key,
                json!({
                    "last_export_at": now,
                    "rows_shipped": old["rows_shipped"].as_u64().unwrap_or(0) + rows,
                    "last_rows": rows,
                    "last_keys": table["keys"].as_u64().unwrap_or(0),
                    "last_full": table["full"].as_bool().unwrap_or(false),
                }),
            );
        }
        stats.insert(
            target["name"].as_str().unwrap_or("?").to_owned(),
            Value::Object(entry),
        );
    }
    store
        .conn()
        .execute(
            "UPDATE exports SET stats = ?1, state = 'installed' WHERE name = ?2",
            params![Value::Object(stats).to_string(), name],
        )
        .map_err(|e| store.err(e))?;
    if failures.is_empty() {
        Ok(out)
    } else {
        Err(Error::Conflict(format!(
            "export {name} did not reach every target:\n{}",
            failures.join("\n")
        )))
    }
}

/// Per target and table: changes waiting, progress, last export, rows shipped.
pub fn status(store: &Store, connector: &Connector, name: &str) -> Result<Vec<StatusLine>> {
    let out = invoke(store, connector, name, "export.status")?;
    let record = get(store, name)?;
    if out["installed"] == json!(false) {
        return Err(Error::Conflict(format!(
            "export {name} is not installed on its source; run `pgvirt export install {name}`"
        )));
    }
    let mut lines = Vec::new();
    for target in out["targets"].as_array().into_iter().flatten() {
        let target_name = target["name"].as_str().unwrap_or("?").to_owned();
        let error = target["error"]
            .as_str()
            .map(|e| match target["cause"].as_str() {
                Some(c) => format!("{e}: {}", c.lines().next().unwrap_or_default()),
                None => e.to_owned(),
            });
        let progress = target["progress"].as_u64();
        let waiting: Vec<(String, u64)> = target["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["table"].as_str().unwrap_or("?").to_owned(),
                    t["changes_waiting"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        for t in tables_of(&record) {
            let stat = &record.stats[&target_name][&t];
            lines.push(StatusLine {
                target: target_name.clone(),
                table: t.clone(),
                changes_waiting: waiting.iter().find(|(n, _)| *n == t).map(|(_, c)| *c),
                progress,
                last_export_at: stat["last_export_at"].as_i64(),
                rows_shipped: stat["rows_shipped"].as_u64().unwrap_or(0),
                error: error.clone(),
            });
        }
    }
    Ok(lines)
}

/// Drops every target's progress: the next run ships the whole tables.
pub fn reset(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let out = invoke(store, connector, name, "export.reset")?;
    let record = get(store, name)?;
    let mut stats = record.stats.clone();
    if let Some(map) = stats.as_object_mut() {
        map.clear();
    }
    store
        .conn()
        .execute(
            "UPDATE exports SET stats = ?1 WHERE name = ?2",
            params![stats.to_string(), name],
        )
        .map_err(|e| store.err(e))?;
    Ok(out)
}

/// Removes everything the export installed (on the source, and its origins
/// on the targets), then the export itself. The row stays until the
/// databases are clean, so a failed or killed remove is run again.
pub fn remove(store: &Store, connector: &Connector, name: &str) -> Result<Value> {
    let out = invoke(store, connector, name, "export.uninstall")?;
    store
        .conn()
        .execute("DELETE FROM exports WHERE name = ?1", [name])
        .map_err(|e| store.err(e))?;
    Ok(out)
}

fn set_state(store: &Store, name: &str, state: ExportState) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE exports SET state = ?1 WHERE name = ?2",
            params![state, name],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// The targets, as people name them (`vdb dev`, `source config 3`).
pub fn targets_of(record: &ExportRecord) -> Vec<String> {
    record.definition["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| match (t["vdb"].as_str(), t["source_config"].as_i64()) {
            (Some(name), _) => format!("vdb {name}"),
            (None, Some(id)) => format!("source config {id}"),
            _ => "?".to_owned(),
        })
        .collect()
}

/// `schema.table` of each table, in order.
pub fn tables_of(record: &ExportRecord) -> Vec<String> {
    record.definition["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}.{}",
                t["schema"].as_str().unwrap_or("?"),
                t["table"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn invoke(store: &Store, connector: &Connector, name: &str, operation: &str) -> Result<Value> {
    let record = get(store, name)?;
    // A target that is gone (a deleted VDB) took its origin with it:
    // removing the export goes on without it.
    let lenient = operation == "export.uninstall";
    let (document, env) = resolve(store, &record, lenient)?;
    let input = json!({"environment": env.to_input(), "export": document});
    connector.invoke(operation, &input, HostPlatform::new(&env))
}

/// The definition as the connector gets it, and the source's environment
/// (where psql runs). `lenient`: targets that are gone are left out.
fn resolve(store: &Store, record: &ExportRecord, lenient: bool) -> Result<(Value, Environment)> {
    let source = discovery::source_configs(store, None)?
        .into_iter()
        .find(|s| s.id == record.source_config_id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "the source config {} of export {} is gone",
                record.source_config_id, record.name
            ))
        })?;
    let env = environments::get(store, &source.environment)?;
    let repository = discovery::repositories(store, Some(&env.name))?
        .into_iter()
        .find(|r| r.id == source.repository_id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "the repository of source config {} is gone",
                source.name
            ))
        })?;
    let bin_dir = repository.document["bin_dir"].clone();
    let source_db = database(&source.name, &source.document, &bin_dir, None);
    let default_db = source_db["database"].clone();
    let mut targets = Vec::new();
    for t in record.definition["targets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(name) = t["vdb"].as_str() {
            let Some(v) = vdb::find(store, name)? else {
                if lenient {
                    log::warn!("target VDB {name} of export {} is gone", record.name);
                    continue;
                }
                return Err(Error::NotFound(format!(
                    "target VDB {name} of export {} is gone",
                    record.name
                )));
            };
            let repo = discovery::repositories(store, Some(&v.environment))?
                .into_iter()
                .filter(|r| r.state == Presence::Present)
                .find(|r| {
                    v.source_config.get("major_version").is_none()
                        || r.document.get("major_version") == v.source_config.get("major_version")
                })
                .map(|r| r.document["bin_dir"].clone())
                .unwrap_or_else(|| bin_dir.clone());
            let mut doc = v.source_config.clone();
            if doc.get("port").is_none() {
                doc["port"] = json!(v.port);
            }
            targets.push(database(
                &format!("VDB {name}"),
                &doc,
                &repo,
                Some(&default_db),
            ));
        } else if let Some(id) = t["source_config"].as_i64() {
            let config = match discovery::find_source_config(store, &id.to_string()) {
                Ok(config) => config,
                Err(e) if lenient => {
                    log::warn!("a target of export {}: {e}", record.name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let repo = discovery::repositories(store, Some(&config.environment))?
                .into_iter()
                .find(|r| r.id == config.repository_id)
                .map(|r| r.document["bin_dir"].clone())
                .unwrap_or_else(|| bin_dir.clone());
            targets.push(database(
                &config.name,
                &config.document,
                &repo,
                Some(&default_db),
            ));
        }
    }
    let mut document = json!({
        "name": record.name,
        "source": source_db,
        "tables": record.definition["tables"],
        "targets": targets,
    });
    if let Some(options) = record.definition["options"].as_object() {
        if !options.is_empty() {
            document["options"] = Value::Object(options.clone());
        }
    }
    Ok((document, env))
}

/// A database of the definition from a source config document.
fn database(name: &str, config: &Value, bin_dir: &Value, default_db: Option<&Value>) -> Value {
    let mut db = json!({
        "name": name,
        "bin_dir": bin_dir,
        "port": config["port"],
        "host": config.get("socket_directory").cloned().unwrap_or(json!("127.0.0.1")),
        "database": config
            .get("database")
            .cloned()
            .or_else(|| default_db.cloned())
            .unwrap_or(json!("postgres")),
    });
    for key in ["user", "password"] {
        if let Some(v) = config.get(key) {
            db[key] = v.clone();
        }
    }
    db
}
