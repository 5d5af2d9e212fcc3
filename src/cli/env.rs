//! `pgvirt env`: add, list and refresh (discover) environments.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::flags::ConnectorArg;
use super::Context;
use crate::host::connectors::registry;
use crate::host::environments as environment;
use crate::host::lifecycle::discovery as inventory;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Add an environment.
    Add {
        /// Kind of environment.
        #[arg(value_enum)]
        kind: environment::EnvironmentKind,
        /// OS user that runs PostgreSQL there (never root).
        #[arg(long)]
        user: String,
        /// Name of the environment; default: the kind.
        #[arg(long)]
        name: Option<String>,
        /// A directory private to that user, outside every dataset, for files
        /// that must not be snapshotted; default: ~USER/.pgvirt/<engine id>.
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
    /// List environments.
    List,
    /// Discover repositories and source configs on an environment.
    Refresh {
        /// Environment name.
        name: String,
        #[command(flatten)]
        connector: ConnectorArg,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let out = &cx.out;
    let mut store = cx.store()?;
    let store = &mut store;
    match cmd {
        Cmd::Add {
            kind,
            user,
            name,
            scratch,
        } => {
            let e = environment::add(store, kind, name.as_deref(), &user, scratch.as_deref())
                .with_context(|| format!("adding environment {}", name.as_deref().unwrap_or("")))?;
            out.message(
                &format!("added environment {} ({} as {})", e.name, e.kind, e.os_user),
                serde_json::to_value(&e)?,
            )
        }
        Cmd::List => out.environments(&environment::list(store)?),
        Cmd::Refresh { name, connector } => {
            let e = environment::get(store, &name)?;
            let c = registry::open(store, connector.connector.as_deref())?;
            let summary = inventory::refresh(store, &c, &e)
                .with_context(|| format!("refreshing environment {name}"))?;
            if out.is_json() {
                out.json(&json!({
                    "summary": summary,
                    "repositories": inventory::repositories(store, Some(&name))?,
                    "source_configs": inventory::source_configs(store, Some(&name))?,
                }))
            } else {
                println!(
                    "refreshed {name}: repositories +{} ~{} missing {}; source configs +{} ~{} missing {}",
                    summary.repositories_added,
                    summary.repositories_updated,
                    summary.repositories_missing,
                    summary.source_configs_added,
                    summary.source_configs_updated,
                    summary.source_configs_missing
                );
                out.repositories(&inventory::repositories(store, Some(&name))?)?;
                out.source_configs(&inventory::source_configs(store, Some(&name))?)
            }
        }
    }
}
