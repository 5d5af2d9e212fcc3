//! `pgvirt timeflow`: the moments a dSource (or VDB) can be provisioned at.

use clap::Subcommand;
use serde_json::json;

use super::output::key_list;
use super::Context;
use crate::host::connectors::registry;
use crate::host::lifecycle::{dsource, pitr, timeflow, vdb};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The provisionable ranges (from and to, as time and as LSN) of a
    /// dSource or VDB, and the snapshots that hold them.
    Show {
        /// The dSource or VDB.
        name: String,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    match cmd {
        Cmd::Show { name } => {
            let (what, ranges, timeflows, policy) = if let Some(d) = dsource::find(&store, &name)? {
                let connector = registry::open(&store, None)?;
                let ranges = dsource::ranges(&store, &connector, &d)?;
                let tfs = timeflow::list(&store, timeflow::ContainerKind::Dsource, d.id)?;
                let (days, bytes) =
                    timeflow::wal_retention(&store, timeflow::ContainerKind::Dsource, d.id)?;
                let policy = format!(
                    "back to the oldest snapshot{}{}",
                    days.map_or(String::new(), |d| format!(" younger than {d} days")),
                    bytes.map_or(String::new(), |b| format!(", at most {b} bytes"))
                );
                (format!("dSource {name}"), ranges, tfs, policy)
            } else {
                let v = vdb::get(&store, &name)?;
                let connector = registry::open(&store, None)?;
                let ranges = vdb::wal::ranges(&store, &connector, &v)?;
                let tfs = timeflow::list(&store, timeflow::ContainerKind::Vdb, v.id)?;
                // Each timeflow keeps its WAL from its oldest snapshot on.
                let policy = "from the oldest snapshot of each timeflow on".to_owned();
                (format!("VDB {name}"), ranges, tfs, policy)
            };
            if cx.out.is_json() {
                return cx
                    .out
                    .json(&json!({"name": name, "timeflows": timeflows, "ranges": ranges}));
            }
            let rows: Vec<(&str, String)> = vec![
                ("timeflows", timeflows.len().to_string()),
                ("WAL kept", policy),
                ("ranges", format!("\n{}", pitr::describe(&ranges))),
            ];
            println!("{}", key_list(&what, &rows));
            Ok(())
        }
    }
}
