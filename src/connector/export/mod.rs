//! Table export (seed 004, without its limits): chosen tables of a source
//! database tracked by triggers, their changed rows shipped to target
//! databases, each target's progress kept by a replication origin on it
//! (seed 003) and moved in the same transaction as the rows.
//!
//! - [`ddl`]: what is installed on the source (a schema of the export's
//!   own: change tables, trigger functions, triggers) and the catalog reads.
//! - [`ship`]: one export to one target, and the purge of what every
//!   target holds.
//! - [`db`]: reaching a database with psql through the platform.
//!
//! Every operation takes the export definition (`schema/export.json`) as
//! `export`, and the environment as `environment` (its scratch directory
//! holds the rows in flight, in a private directory).

mod db;
mod ddl;
mod ship;

use serde_json::{json, Value};

use super::platform::{field, str_field, Platform};
use crate::abi::{ErrorKind, OperationError};
use db::Database;
use ddl::{Described, Tracked};

/// Set to a step (`export.locked`, `export.extracted`, `export.applying`,
/// `export.applied`, `export.installing`, `export.removing`) to make an
/// export pause there: the kill tests' hook.
pub const FAULT_PAUSE_ENV: &str = "PGVIRT_FAULT_PAUSE";

/// An export definition, read from the operation's input.
pub struct Export {
    pub name: String,
    pub source: Database,
    /// `{schema, table, key?}` as given.
    pub tables: Vec<Value>,
    pub targets: Vec<Database>,
    pub lock_timeout_seconds: u64,
    pub purge: bool,
    /// The environment's scratch directory.
    pub scratch: String,
}

impl Export {
    fn from_input(input: &Value) -> Result<Self, OperationError> {
        let def = field(input, "export")?;
        let name = str_field(def, "name", "export")?.to_owned();
        let source = Database::from_json(field(def, "source")?, "export source")?;
        let tables = field(def, "tables")?
            .as_array()
            .cloned()
            .unwrap_or_default();
        let targets = field(def, "targets")?
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Database::from_json(t, &format!("export target {i}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let options = def.get("options").cloned().unwrap_or(json!({}));
        let scratch = input
            .get("environment")
            .and_then(|e| e.get("scratch"))
            .and_then(Value::as_str)
            .unwrap_or("/tmp")
            .to_owned();
        Ok(Self {
            name,
            source,
            tables,
            targets,
            lock_timeout_seconds: options
                .get("lock_timeout_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(10),
            purge: options
                .get("purge")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            scratch,
        })
    }

    fn schema(&self) -> String {
        ddl::schema_name(&self.name)
    }

    /// The tables as the source's catalog has them now, checked.
    fn describe_source(&self, platform: &Platform) -> Result<Vec<Tracked>, OperationError> {
        ddl::tracked(&self.describe(platform, &self.source)?)
    }

    /// The wanted tables as `db`'s catalog has them.
    fn describe(
        &self,
        platform: &Platform,
        db: &Database,
    ) -> Result<Vec<Described>, OperationError> {
        let tables = Value::Array(self.tables.clone()).to_string();
        let out = db.psql(
            platform,
            "reading the tables' columns and keys",
            ddl::DESCRIBE_SQL,
            &[("tables", &tables)],
            None,
        )?;
        serde_json::from_str(out.trim()).map_err(|e| {
            OperationError::new(
                ErrorKind::Internal,
                format!("the catalog of {} answered unreadably: {e}", db.label()),
            )
        })
    }

    /// The install id when the export is installed on the source.
    fn install_id(&self, platform: &Platform) -> Result<Option<String>, OperationError> {
        let script = format!(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = :'schema') AS installed \\gset\n\
             \\if :installed\nSELECT install_id FROM {}.export;\n\\endif\n",
            db::ident(&self.schema())
        );
        let out = self.source.psql(
            platform,
            "reading the export's install",
            &script,
            &[("schema", &self.schema())],
            None,
        )?;
        Ok(Some(out.trim().to_owned()).filter(|s| !s.is_empty()))
    }

    /// The replication origin of this install on every target.
    fn origin(&self, install_id: &str) -> String {
        format!("{}{install_id}", self.origin_prefix())
    }

    fn origin_prefix(&self) -> String {
        format!("pgvirt_export.{}.", self.name)
    }

    fn not_installed(&self) -> OperationError {
        OperationError::new(
            ErrorKind::InvalidState,
            format!(
                "export {} is not installed on its source {}",
                self.name,
                self.source.label()
            ),
        )
        .with_action(format!("run `pgvirt export install {}`", self.name))
    }
}

/// `export.ddl`: the SQL an install would run, for review.
pub fn ddl(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    let tables = export.describe_source(platform)?;
    Ok(json!({"sql": ddl::install_sql(&export.name, &tables)}))
}

/// `export.install`: tracking on the source, in one transaction. Installing
/// an installed export changes nothing.
pub fn install(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    if let Some(id) = export.install_id(platform)? {
        return Ok(json!({"installed": false, "install_id": id}));
    }
    let tables = export.describe_source(platform)?;
    let mut sql = ddl::install_sql(&export.name, &tables);
    if let Some(at) = sql.rfind("COMMIT;") {
        sql.insert_str(at, fault_sleep_sql("export.installing"));
    }
    export.source.psql(
        platform,
        &format!("installing export {}", export.name),
        &sql,
        &[],
        None,
    )?;
    let id = export
        .install_id(platform)?
        .ok_or_else(|| export.not_installed())?;
    Ok(json!({"installed": true, "install_id": id}))
}

/// `export.uninstall`: every origin of the export on every target, then
/// everything on the source. Removing what is gone is not an error.
pub fn uninstall(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    let mut dropped = 0;
    for target in &export.targets {
        dropped += ship::drop_origins(platform, target, &export.origin_prefix())?;
    }
    fault_pause("export.removing");
    export.source.psql(
        platform,
        &format!("removing export {}", export.name),
        &ddl::uninstall_sql(&export.name),
        &[],
        None,
    )?;
    // What a killed export left in its work directories (one per target;
    // sixteen at most).
    let base = ship::work_dir_base(&export);
    platform.run_ok(
        "removing the export's work directories",
        &export.source.request(
            r#"for i in $(seq 0 15); do rm -rf -- "$BASE$i"; done"#,
            &[("BASE", &base)],
        ),
    )?;
    Ok(json!({"origins_dropped": dropped}))
}

/// `export.reset`: every target's origin dropped, so the next export ships
/// the whole tables again.
pub fn reset(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    let mut dropped = 0;
    for target in &export.targets {
        dropped += ship::drop_origins(platform, target, &export.origin_prefix())?;
    }
    Ok(json!({"origins_dropped": dropped}))
}

/// `export.export`: one export to every target, then the purge of what
/// they all hold. A target that fails is reported in the output (the others
/// still get theirs).
pub fn export(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    let install_id = export
        .install_id(platform)?
        .ok_or_else(|| export.not_installed())?;
    let tables = export.describe_source(platform)?;
    let mut results = Vec::new();
    // The least progress of all targets (a lower bound when one failed
    // after its progress was read); none when one could not be read.
    let mut least: Option<Option<u64>> = None;
    for (i, target) in export.targets.iter().enumerate() {
        let pass = ship::Pass {
            export: &export,
            tables: &tables,
            target,
            target_index: i,
            origin: export.origin(&install_id),
        };
        let (result, progress) = pass.run(platform);
        least = Some(match (least, progress) {
            (Some(None), _) | (_, None) => None,
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            (None, Some(b)) => Some(b),
        });
        results.push(result);
    }
    let purged = match least.flatten() {
        Some(through) if export.purge && through > 0 => {
            ship::purge(platform, &export, &tables, through)?;
            Some(through)
        }
        _ => None,
    };
    Ok(json!({"install_id": install_id, "targets": results, "purged_through": purged}))
}

/// `export.status`: per target and table, the changes waiting.
pub fn status(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let export = Export::from_input(input)?;
    let Some(install_id) = export.install_id(platform)? else {
        return Ok(json!({"installed": false, "targets": []}));
    };
    let tables = export.describe_source(platform)?;
    let mut targets = Vec::new();
    for target in &export.targets {
        let origin = export.origin(&install_id);
        targets.push(match ship::progress(platform, target, &origin) {
            Ok(progress) => {
                let waiting = ship::waiting(platform, &export, &tables, progress.unwrap_or(0))?;
                json!({"name": target.name, "progress": progress, "tables": waiting})
            }
            Err(e) => json!({"name": target.name, "error": e.message, "cause": e.cause}),
        });
    }
    Ok(json!({"installed": true, "install_id": install_id, "targets": targets}))
}

/// When the fault hook names `step`: SQL that keeps the transaction it is
/// put in open for three seconds, and, once psql is well inside it, the
/// "pausing" line the kill tests wait for. Otherwise nothing.
fn fault_sleep_sql(step: &str) -> &'static str {
    if !std::env::var(FAULT_PAUSE_ENV).is_ok_and(|v| v == step) {
        return "";
    }
    let step = step.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        eprintln!("{FAULT_PAUSE_ENV}={step}: pausing");
    });
    "SELECT pg_sleep(3) \\g /dev/null\n"
}

/// Pauses forever (until killed) when the fault hook names `step`.
fn fault_pause(step: &str) {
    if std::env::var(FAULT_PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("{FAULT_PAUSE_ENV}={step}: pausing");
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}
