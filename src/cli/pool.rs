//! `pgvirt init` and `pgvirt pool`: the storage pool, its datasets, and its
//! consistency check.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use crate::host::environments as environment;
use crate::host::lifecycle::ownership;
use crate::host::storage::{Backend, Pool};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory of the pool: empty, or an existing pgvirt pool.
    #[arg(long)]
    pool: PathBuf,
    /// Backend; default: the best the filesystem offers.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

/// `pgvirt init`.
pub fn init(args: InitArgs, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let p = Pool::init(&store, &args.pool, args.backend)
        .with_context(|| format!("making the pool {}", args.pool.display()))?;
    let info = p.info(&store)?;
    cx.out.message(
        &format!(
            "pool {} ready: {} ({})",
            info.path.display(),
            info.backend.name(),
            info.why
        ),
        serde_json::to_value(&info)?,
    )
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Which backend is in use and why.
    Info,
    /// Datasets and their snapshots, with space held alone and shared.
    List,
    /// Find drift between the store and the filesystem; --repair fixes it.
    Check {
        /// Fix what it finds (and repair interrupted jobs first); says what.
        #[arg(long)]
        repair: bool,
    },
    /// Low-level dataset operations, for operators and tests.
    #[command(subcommand)]
    Dataset(DatasetCmd),
}

#[derive(Subcommand, Debug)]
pub enum DatasetCmd {
    /// Create an empty dataset (owned by --owner, mode 0700).
    Create {
        /// Name of the new dataset.
        name: String,
        /// OS user who owns it.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Take a read-only snapshot of a dataset.
    Snapshot {
        /// The dataset.
        dataset: String,
        /// Name of the snapshot.
        name: String,
    },
    /// Clone a snapshot (by id) into a new writable dataset.
    Clone {
        /// The snapshot's id (see `pgvirt pool list --output json`).
        snapshot: i64,
        /// Name of the new dataset.
        name: String,
        /// OS user who owns it (it keeps the snapshot's owners).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Destroy a dataset (it must have no snapshots).
    Destroy {
        /// The dataset.
        name: String,
    },
    /// Destroy a snapshot (refused, naming them, while clones depend on it).
    DestroySnapshot {
        /// The snapshot's id.
        snapshot: i64,
    },
    /// Mount a dataset at a path.
    Mount {
        /// The dataset.
        name: String,
        /// Where to mount it (absolute, plain characters).
        path: PathBuf,
    },
    /// Unmount a dataset.
    Unmount {
        /// The dataset.
        name: String,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let out = &cx.out;
    // `pool check` looks at the pool as it is (`--repair` repairs first);
    // other commands tidy first.
    let (store, pool) = match cmd {
        Cmd::Check { repair } => {
            let store = if repair {
                cx.store()?
            } else {
                cx.store_as_is()?
            };
            let pool = Pool::open_unchecked(&store)?;
            (store, pool)
        }
        _ => {
            let store = cx.store()?;
            let pool = Pool::open(&store)?;
            (store, pool)
        }
    };
    let store = &store;
    match cmd {
        Cmd::Info => {
            let info = pool.info(store)?;
            let text = format!(
                "pool {}\n  filesystem {}\n  backend    {} ({})\n  mounts     {}\n  datasets   {}, snapshots {}",
                info.path.display(),
                info.filesystem,
                info.backend.name(),
                info.why,
                info.mounts,
                info.datasets,
                info.snapshots
            );
            out.message(&text, serde_json::to_value(&info)?)
        }
        Cmd::List => out.datasets(&pool.list(store)?),
        Cmd::Dataset(cmd) => {
            let owner =
                |o: &Option<String>| o.as_deref().map(environment::OsUser::lookup).transpose();
            let value = match cmd {
                DatasetCmd::Create { name, owner: o } => {
                    let made = pool.create_dataset(store, &name, owner(&o)?.as_ref())?;
                    pool.hold_for_operator(store, Some(&name), None)?;
                    serde_json::to_value(made)?
                }
                DatasetCmd::Snapshot { dataset, name } => {
                    let taken = pool.snapshot(store, &dataset, &name)?;
                    pool.hold_for_operator(store, None, Some(taken.id))?;
                    serde_json::to_value(taken)?
                }
                DatasetCmd::Clone {
                    snapshot,
                    name,
                    owner: o,
                } => {
                    let made = pool.clone_snapshot(store, snapshot, &name, owner(&o)?.as_ref())?;
                    pool.hold_for_operator(store, Some(&name), None)?;
                    serde_json::to_value(made)?
                }
                DatasetCmd::Destroy { name } => {
                    pool.destroy_dataset(store, &name)?;
                    json!({"destroyed": name})
                }
                DatasetCmd::DestroySnapshot { snapshot } => {
                    pool.destroy_snapshot(store, snapshot)?;
                    json!({"destroyed": snapshot})
                }
                DatasetCmd::Mount { name, path } => {
                    json!({"mounted": pool.mount(store, &name, &path)?})
                }
                DatasetCmd::Unmount { name } => {
                    pool.unmount(store, &name)?;
                    json!({"unmounted": name})
                }
            };
            out.json(&value)
        }
        Cmd::Check { repair } => {
            let report = ownership::check_pool(store, repair)?;
            let mut text = String::new();
            for p in &report.problems {
                text.push_str(&format!("problem: {p}\n"));
            }
            for r in &report.repaired {
                text.push_str(&format!("repaired: {r}\n"));
            }
            if text.is_empty() {
                text = "the store and the filesystem agree".into();
            }
            out.message(text.trim_end(), serde_json::to_value(&report)?)?;
            if !repair && !report.problems.is_empty() {
                anyhow::bail!(
                    "{} problem(s) found; run `pgvirt pool check --repair`",
                    report.problems.len()
                );
            }
            Ok(())
        }
    }
}
