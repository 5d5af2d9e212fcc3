//! `pgvirt snapshot`: list snapshots, and set how many are kept.

use clap::Subcommand;
use serde_json::json;

use super::{flags, Context};
use crate::host::lifecycle::retention::{self, Retention};
use crate::host::lifecycle::timeflow::{self, ContainerKind};
use crate::host::lifecycle::{dsource, vdb};
use crate::host::Error;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Snapshots of one dSource or VDB, or of all.
    List {
        /// Only this dSource's.
        #[arg(long, conflicts_with = "vdb")]
        dsource: Option<String>,
        /// Only this VDB's.
        #[arg(long)]
        vdb: Option<String>,
    },
    /// Set how many snapshots a dSource or VDB keeps (applied after each
    /// sync or snapshot; never one that a VDB or timeflow stands on).
    Retention {
        /// The dSource whose snapshots to keep.
        #[arg(long, conflicts_with = "vdb")]
        dsource: Option<String>,
        /// The VDB whose snapshots to keep.
        #[arg(long)]
        vdb: Option<String>,
        /// Keep the newest N snapshots.
        #[arg(long)]
        keep: Option<u32>,
        /// Keep snapshots younger than D days.
        #[arg(long)]
        days: Option<u32>,
        /// Keep the WAL (the moments between snapshots) back to the oldest
        /// snapshot younger than D days.
        #[arg(long, value_name = "D")]
        wal_days: Option<u32>,
        /// Keep no more than SIZE of WAL (like 10G, 512M).
        #[arg(long, value_name = "SIZE", value_parser = flags::parse_size)]
        wal_size: Option<u64>,
    },
}

fn container(
    store: &crate::host::store::Store,
    dsource: Option<String>,
    vdb: Option<String>,
) -> anyhow::Result<Option<(ContainerKind, i64, String)>> {
    Ok(match (dsource, vdb) {
        (Some(d), _) => Some((ContainerKind::Dsource, dsource::get(store, &d)?.id, d)),
        (_, Some(v)) => Some((ContainerKind::Vdb, vdb::get(store, &v)?.id, v)),
        _ => None,
    })
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    match cmd {
        Cmd::List { dsource, vdb } => {
            let only = container(&store, dsource, vdb)?.map(|(k, id, _)| (k, id));
            cx.out.snapshots(&timeflow::listing(&store, only)?)
        }
        Cmd::Retention {
            dsource,
            vdb,
            keep,
            days,
            wal_days,
            wal_size,
        } => {
            let (kind, name) = match (dsource, vdb) {
                (Some(d), _) => (ContainerKind::Dsource, d),
                (_, Some(v)) => (ContainerKind::Vdb, v),
                _ => return Err(Error::usage("name a --dsource or a --vdb").into()),
            };
            let r = Retention {
                keep,
                days,
                wal_days,
                wal_size,
            };
            let applied = retention::set(&store, kind, &name, &r, |f| {
                format!("--{}", f.replace('_', "-"))
            })?;
            let mut said = Vec::new();
            if let Some(pruned) = applied.pruned {
                said.push(format!(
                    "WAL kept {} / {}; pruned {pruned} files",
                    wal_days.map_or("for any age".into(), |d| format!(
                        "back to the oldest snapshot younger than {d} days"
                    )),
                    wal_size.map_or("of any size".into(), |b| format!("up to {b} bytes"))
                ));
            }
            if keep.is_some() || days.is_some() {
                said.push(format!(
                    "keeping {} / {}; removed snapshots {:?}",
                    keep.map_or("any number of snapshots".into(), |n| format!(
                        "the newest {n} snapshots"
                    )),
                    days.map_or("of any age".into(), |d| format!(
                        "those younger than {d} days"
                    )),
                    applied.removed
                ));
            }
            cx.out.message(
                &format!("{} {name}: {}", kind.title(), said.join("; ")),
                json!(applied),
            )
        }
    }
}
