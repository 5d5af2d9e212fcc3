//! `pgvirt source`: source configs (clusters) found by discovery or added
//! by hand.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::flags::{self, Given};
use super::Context;
use crate::host::connectors::registry;
use crate::host::lifecycle::discovery;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List source configs.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
    },
    /// Add a source config by hand (validated against the connector's schema).
    Add(AddArgs),
    /// Remove a source config (refused while a dSource uses it).
    Remove {
        /// Source config id or name.
        source: String,
    },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Environment name.
    #[arg(long)]
    env: String,
    /// Repository id or name; default: the environment's only repository.
    #[arg(long)]
    repo: Option<String>,
    /// A whole source-config document (JSON file); the flags below add to it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Display name; default: data directory and port.
    #[arg(long)]
    name: Option<String>,
    /// The cluster's data directory.
    #[arg(long)]
    data_dir: Option<String>,
    /// The cluster's port.
    #[arg(long)]
    port: Option<u32>,
    /// One database of the cluster, for single-database sources.
    #[arg(long)]
    database: Option<String>,
    /// The database user to connect as.
    #[arg(long = "db-user")]
    db_user: Option<String>,
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let out = &cx.out;
    match cmd {
        Cmd::List { env } => {
            out.source_configs(&discovery::source_configs(&store, env.as_deref())?)
        }
        Cmd::Add(add) => {
            let mut doc = flags::object_from(&add.file)?;
            let mut given = Given::default();
            if let Some(v) = &add.data_dir {
                given.set(&mut doc, "--data-dir", "/data_directory", json!(v));
            }
            if let Some(v) = add.port {
                given.set(&mut doc, "--port", "/port", json!(v));
            }
            if let Some(v) = &add.database {
                given.set(&mut doc, "--database", "/database", json!(v));
            }
            if let Some(v) = &add.db_user {
                given.set(&mut doc, "--db-user", "/user", json!(v));
            }
            if let Some(v) = &add.name {
                given.set(&mut doc, "--name", "/name", json!(v));
            }
            let connector = registry::open(&store, None)?;
            let s = discovery::add_source_config(
                &store,
                &connector,
                &add.env,
                add.repo.as_deref(),
                doc,
            )
            .map_err(|e| given.name_flags(e))
            .context("adding a source config")?;
            out.message(
                &format!("added source config {} ({})", s.id, s.name),
                serde_json::to_value(&s)?,
            )
        }
        Cmd::Remove { source } => {
            let s = discovery::remove_source_config(&store, &source)
                .with_context(|| format!("removing source config {source}"))?;
            out.message(
                &format!("removed source config {} ({})", s.id, s.name),
                serde_json::to_value(&s)?,
            )
        }
    }
}
