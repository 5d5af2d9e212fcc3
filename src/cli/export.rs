//! `pgvirt export`: chosen tables of a source kept fresh in other
//! databases (VDBs or source configs) by trigger-tracked changes, each
//! target's progress a replication origin on it.

use anyhow::Context as _;
use clap::Subcommand;
use comfy_table::{presets::NOTHING, Table};
use serde_json::json;

use super::Context;
use crate::host::connectors::registry;
use crate::host::lifecycle::export::{self, AddRequest};
use crate::host::store::display_time;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Define an export (nothing is installed yet; see `ddl` and `install`).
    Add {
        /// The export's name.
        name: String,
        /// The source config the tables are in (id or name).
        #[arg(long)]
        source: String,
        /// The tables, as SCHEMA.TABLE,SCHEMA.TABLE.
        #[arg(long, value_delimiter = ',', required = true)]
        tables: Vec<String>,
        /// A unique index keying a table without a primary key, as
        /// SCHEMA.TABLE=INDEX (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Where to ship them: a VDB name or a source config (id or name);
        /// repeat for several targets, each with its own progress.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Seconds an export waits for the source's writers in flight.
        #[arg(long)]
        lock_timeout: Option<u64>,
        /// Keep applied changes in the change tables (no purge).
        #[arg(long)]
        no_purge: bool,
    },
    /// List exports.
    List,
    /// Print the SQL `install` would run on the source, for review.
    Ddl {
        /// The export's name.
        name: String,
    },
    /// Install change tracking on the source (one transaction).
    Install {
        /// The export's name.
        name: String,
    },
    /// Ship the changes since each target's progress, now.
    Run {
        /// The export's name.
        name: String,
    },
    /// Per target and table: changes waiting, last export, rows shipped.
    Status {
        /// The export's name.
        name: String,
    },
    /// Forget every target's progress: the next run ships whole tables.
    Reset {
        /// The export's name.
        name: String,
    },
    /// Remove everything the export installed (source and targets), and it.
    Remove {
        /// The export's name.
        name: String,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let out = &cx.out;
    match cmd {
        Cmd::Add {
            name,
            source,
            tables,
            keys,
            targets,
            lock_timeout,
            no_purge,
        } => {
            let connector = registry::open(&store, None)?;
            let mut options = json!({});
            if let Some(t) = lock_timeout {
                options["lock_timeout_seconds"] = json!(t);
            }
            if no_purge {
                options["purge"] = json!(false);
            }
            let e = export::add(
                &store,
                &connector,
                AddRequest {
                    name: &name,
                    source: &source,
                    tables: &tables,
                    keys: &keys,
                    targets: &targets,
                    options,
                },
            )
            .with_context(|| format!("adding export {name}"))?;
            out.message(
                &format!(
                    "added export {} ({} tables); review `pgvirt export ddl {}`, then `pgvirt export install {}`",
                    e.name,
                    export::tables_of(&e).len(),
                    e.name,
                    e.name
                ),
                serde_json::to_value(&e)?,
            )
        }
        Cmd::List => {
            let all = export::list(&store)?;
            if out.is_json() {
                return out.json(&all);
            }
            let mut table = Table::new();
            table.load_preset(NOTHING);
            table.set_header(["name", "state", "tables", "targets"]);
            for e in &all {
                table.add_row([
                    e.name.clone(),
                    e.state.to_string(),
                    export::tables_of(e).join(","),
                    export::targets_of(e).join(", "),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        Cmd::Ddl { name } => {
            let connector = registry::open(&store, None)?;
            let sql = export::ddl(&store, &connector, &name)
                .with_context(|| format!("making the DDL of export {name}"))?;
            out.message(sql.trim_end(), json!({"sql": sql}))
        }
        Cmd::Install { name } => {
            let connector = registry::open(&store, None)?;
            let done = export::install(&store, &connector, &name)
                .with_context(|| format!("installing export {name}"))?;
            let text = if done["installed"] == json!(true) {
                format!("installed export {name} on its source")
            } else {
                format!("export {name} was installed already")
            };
            out.message(&text, done)
        }
        Cmd::Run { name } => {
            let connector = registry::open(&store, None)?;
            let done = export::run(&store, &connector, &name)
                .with_context(|| format!("running export {name}"))?;
            let mut text = String::new();
            for t in done["targets"].as_array().into_iter().flatten() {
                for table in t["tables"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "{} → {}: {} rows{}\n",
                        table["table"].as_str().unwrap_or("?"),
                        t["name"].as_str().unwrap_or("?"),
                        table["rows"],
                        if table["full"] == json!(true) {
                            " (whole table)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            out.message(text.trim_end(), done)
        }
        Cmd::Status { name } => {
            let connector = registry::open(&store, None)?;
            let lines = export::status(&store, &connector, &name)
                .with_context(|| format!("reading the status of export {name}"))?;
            if out.is_json() {
                return out.json(&lines);
            }
            let mut table = Table::new();
            table.load_preset(NOTHING);
            table.set_header([
                "target",
                "table",
                "changes waiting",
                "last export",
                "rows shipped",
            ]);
            for l in &lines {
                table.add_row([
                    l.target.clone(),
                    l.table.clone(),
                    match (&l.error, l.changes_waiting) {
                        (Some(e), _) => format!("? ({e})"),
                        (None, Some(c)) => c.to_string(),
                        (None, None) => "-".into(),
                    },
                    l.last_export_at
                        .map(display_time)
                        .unwrap_or_else(|| "never".into()),
                    l.rows_shipped.to_string(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        Cmd::Reset { name } => {
            let connector = registry::open(&store, None)?;
            let done = export::reset(&store, &connector, &name)
                .with_context(|| format!("resetting export {name}"))?;
            out.message(
                &format!("reset export {name}: the next run ships whole tables"),
                done,
            )
        }
        Cmd::Remove { name } => {
            let connector = registry::open(&store, None)?;
            let done = export::remove(&store, &connector, &name)
                .with_context(|| format!("removing export {name}"))?;
            out.message(&format!("removed export {name}"), done)
        }
    }
}
