//! `pgvirt timeflow`: the moments a dSource (or VDB) can be provisioned at.

use clap::Subcommand;
use serde_json::json;

use super::output::key_list;
use super::Context;
use crate::host::lifecycle::{moments, pitr};

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
            let m = moments::of(&store, &name)?;
            if cx.out.is_json() {
                return cx
                    .out
                    .json(&json!({"name": name, "timeflows": m.timeflows, "ranges": m.ranges}));
            }
            let what = format!("{} {name}", m.kind.title());
            let rows: Vec<(&str, String)> = vec![
                ("timeflows", m.timeflows.len().to_string()),
                ("WAL kept", m.wal_kept),
                ("ranges", format!("\n{}", pitr::describe(&m.ranges))),
            ];
            println!("{}", key_list(&what, &rows));
            Ok(())
        }
    }
}
