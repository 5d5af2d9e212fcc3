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
            let mut policy = "none (kept for VDBs' snapshots: points only)".to_owned();
            let (what, ranges, timeflows) = if let Some(d) = dsource::find(&store, &name)? {
                let connector = registry::open(&store, None)?;
                let ranges = dsource::ranges(&store, &connector, &d)?;
                let tfs = timeflow::list(&store, timeflow::ContainerKind::Dsource, d.id)?;
                let (days, bytes) =
                    timeflow::wal_retention(&store, timeflow::ContainerKind::Dsource, d.id)?;
                policy = format!(
                    "back to the oldest snapshot{}{}",
                    days.map_or(String::new(), |d| format!(" younger than {d} days")),
                    bytes.map_or(String::new(), |b| format!(", at most {b} bytes"))
                );
                (format!("dSource {name}"), ranges, tfs)
            } else {
                let v = vdb::get(&store, &name)?;
                let snapshots = timeflow::snapshots(&store, timeflow::ContainerKind::Vdb, v.id)?;
                // A VDB's snapshots are points (it keeps no WAL of its own).
                let ranges = pitr::ranges(&snapshots, |_| Ok(pitr::Kept::default()))?;
                let tfs = timeflow::list(&store, timeflow::ContainerKind::Vdb, v.id)?;
                (format!("VDB {name}"), ranges, tfs)
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
