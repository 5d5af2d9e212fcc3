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
    /// Add an environment: `local --user postgres` (this host), or
    /// `NAME --host ADDR --ssh-user U --key FILE` (another host, over SSH).
    Add {
        /// `local`, or with --host the name of the remote environment.
        #[arg(value_name = "KIND|NAME")]
        kind: String,
        /// OS user that runs PostgreSQL there (never root); for a remote
        /// host, default: the SSH user (another user is reached with `sudo -n`).
        #[arg(long)]
        user: Option<String>,
        /// Address of a remote host (its SSH server).
        #[arg(long, value_name = "ADDR")]
        host: Option<String>,
        /// SSH port of the remote host.
        #[arg(long, default_value_t = 22, requires = "host")]
        port: u16,
        /// User to log in as on the remote host.
        #[arg(long, value_name = "USER", requires = "host")]
        ssh_user: Option<String>,
        /// Private key (no passphrase) to log in with; the engine keeps a copy.
        #[arg(long, value_name = "FILE", requires = "host")]
        key: Option<PathBuf>,
        /// The host key fingerprint (SHA256:...) you checked on the host
        /// and accept; without it an unknown host key is refused.
        #[arg(long, value_name = "SHA256:...", requires = "host")]
        fingerprint: Option<String>,
        /// Seconds to wait for the SSH connection.
        #[arg(long, default_value_t = 10, value_name = "SECONDS", requires = "host")]
        connect_timeout: u32,
        /// Seconds between keep-alive probes of a quiet connection.
        #[arg(long, default_value_t = 5, value_name = "SECONDS", requires = "host")]
        alive_interval: u32,
        /// Unanswered probes after which the connection counts as lost.
        #[arg(long, default_value_t = 3, value_name = "N", requires = "host")]
        alive_count_max: u32,
        /// Name of the environment; default: the kind.
        #[arg(long)]
        name: Option<String>,
        /// A directory private to that user, outside every dataset, for files
        /// that must not be snapshotted; default: ~USER/.pgvirt/<engine id>.
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
    /// Trust the host key a remote environment's host offers now (after a
    /// reinstall), if its fingerprint is the one given.
    Trust {
        /// Environment name.
        name: String,
        /// The fingerprint (SHA256:...) you checked on the host itself.
        #[arg(long, value_name = "SHA256:...")]
        fingerprint: String,
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
            host: Some(host),
            port,
            ssh_user,
            key,
            fingerprint,
            connect_timeout,
            alive_interval,
            alive_count_max,
            name,
            scratch,
        } => {
            if name.is_some() {
                anyhow::bail!("--name: with --host, the environment's name is the first argument");
            }
            let ssh_user = ssh_user.context("--ssh-user is required with --host")?;
            let key = key.context("--key is required with --host")?;
            let spec = environment::remote::RemoteSpec {
                name: &kind,
                host: &host,
                port,
                ssh_user: &ssh_user,
                key: &key,
                os_user: user.as_deref(),
                scratch: scratch.as_deref(),
                timeouts: environment::ssh::Timeouts {
                    connect: connect_timeout,
                    alive_interval,
                    alive_count_max,
                },
                fingerprint: fingerprint.as_deref(),
            };
            let e = environment::remote::add(store, &spec)
                .with_context(|| format!("adding environment {kind}"))?;
            out.message(
                &format!(
                    "added environment {} (ssh {}@{}:{}, commands as {})",
                    e.name, ssh_user, host, port, e.os_user
                ),
                serde_json::to_value(&e)?,
            )
        }
        Cmd::Trust { name, fingerprint } => {
            let (e, key) = environment::remote::trust(store, &name, &fingerprint)
                .with_context(|| format!("trusting the host key of {name}"))?;
            out.message(
                &format!(
                    "environment {}: the engine now trusts host key {} {}",
                    e.name, key.kind, key.fingerprint
                ),
                serde_json::json!({"environment": e.name, "kind": key.kind, "fingerprint": key.fingerprint}),
            )
        }
        Cmd::Add {
            kind,
            user,
            name,
            scratch,
            ..
        } => {
            let kind: environment::EnvironmentKind = kind.parse().map_err(|_| {
                anyhow::anyhow!("environment kind {kind:?}: use `local --user USER`, or `NAME --host ADDR --ssh-user U --key FILE` for another host")
            })?;
            let user = user.context("--user is required for a local environment")?;
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
