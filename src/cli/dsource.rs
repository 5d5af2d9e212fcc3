//! `pgvirt dsource`: link a source, keep it in sync, snapshot it, and the
//! rest of a dSource's life.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::flags::{self, Given};
use super::Context;
use crate::abi::IngestionMethod;
use crate::host::connectors::registry;
use crate::host::lifecycle::{dsource, teardown};

/// Where the replication password comes from by default.
pub const PASSWORD_ENV: &str = "PGVIRT_REPLICATION_PASSWORD";

#[derive(Args, Debug)]
pub struct LinkedParams {
    /// A whole linked-source parameters document (JSON); flags add to it.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// How to ingest the source.
    #[arg(long, value_enum)]
    method: Option<IngestionMethod>,
    /// Source host (default: 127.0.0.1 for a source on this host).
    #[arg(long)]
    source_host: Option<String>,
    /// Source port (default: the source config's port).
    #[arg(long)]
    source_port: Option<u32>,
    /// Replication user on the source.
    #[arg(long)]
    replication_user: Option<String>,
    /// Environment variable holding the source password (never a flag value):
    /// the replication user's, or for single_database the dump user's.
    #[arg(long, value_name = "VAR", default_value = PASSWORD_ENV)]
    pub password_env: String,
    /// Port of the staging cluster.
    #[arg(long)]
    staging_port: Option<u32>,
    /// Where to mount the staging dataset.
    #[arg(long)]
    mount_path: Option<String>,
    /// Customer base backup directory (backup_* methods).
    #[arg(long)]
    backup_path: Option<String>,
    /// WAL archive directory (backup_log_shipping).
    #[arg(long)]
    wal_archive_path: Option<String>,
    /// The database to ingest (single_database, logical_replication;
    /// repeated, several databases for logical_replication).
    #[arg(long)]
    database: Vec<String>,
    /// User that dumps the database (single_database; default postgres).
    #[arg(long)]
    dump_user: Option<String>,
    /// Parallel jobs of pg_dump (single_database; default 2).
    #[arg(long)]
    dump_jobs: Option<u32>,
    /// Parallel jobs of pg_restore (single_database; default 2).
    #[arg(long)]
    restore_jobs: Option<u32>,
    /// pgBackRest stanza (pgbackrest).
    #[arg(long)]
    stanza: Option<String>,
    /// pgbackrest.conf naming the repository (pgbackrest).
    #[arg(long, value_name = "FILE")]
    pgbackrest_config: Option<String>,
    /// pgBackRest repository path, repo1-path (pgbackrest).
    #[arg(long, value_name = "DIR")]
    repo_path: Option<String>,
    /// pgBackRest backup set to restore (pgbackrest; default the latest).
    #[arg(long)]
    backup_set: Option<String>,
    /// Replication slot name (default pgvirt_<name>).
    #[arg(long)]
    slot: Option<String>,
    /// Staging setting NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Link a source config: ingest it into staging and take the first snapshot.
    Link {
        /// Name of the new dSource (dSources and VDBs share one name space).
        name: String,
        /// Source config id or name (see `pgvirt source list`).
        #[arg(long)]
        source: String,
        /// Staging environment (default: the source's).
        #[arg(long)]
        env: Option<String>,
        #[command(flatten)]
        params: Box<LinkedParams>,
    },
    /// Take a new snapshot (--resync: ingest again from scratch, new timeflow).
    Sync {
        /// The dSource.
        name: String,
        /// Ingest the source again, on a new timeflow.
        #[arg(long)]
        resync: bool,
    },
    /// Start staging again.
    Enable {
        /// The dSource.
        name: String,
    },
    /// Stop staging and unmount.
    Disable {
        /// The dSource.
        name: String,
    },
    /// Delete (refused while VDBs depend on its snapshots, unless --with-vdbs).
    Delete {
        /// The dSource.
        name: String,
        /// Delete the VDBs provisioned from it (and their children) first.
        #[arg(long)]
        with_vdbs: bool,
    },
    /// Hand over the source user's changed password (from an environment
    /// variable): the source must accept it; staging then connects with it.
    Password {
        /// The dSource.
        name: String,
        /// Environment variable holding the new password (never a flag value).
        #[arg(long, value_name = "VAR", default_value = PASSWORD_ENV)]
        password_env: String,
    },
    /// State, replication health and the last snapshot.
    Show {
        /// The dSource.
        name: String,
    },
    /// All dSources.
    List,
}

/// The linked-source document the flags describe, and which flag set what.
fn linked_params(
    p: &LinkedParams,
    password: Option<&str>,
) -> anyhow::Result<(serde_json::Value, Given)> {
    let mut doc = flags::object_from(&p.params)?;
    let mut given = Given::default();
    if let Some(m) = p.method {
        given.set(&mut doc, "--method", "/ingestion_method", json!(m));
    }
    if let Some(h) = &p.source_host {
        given.set(&mut doc, "--source-host", "/source/host", json!(h));
    }
    if let Some(port) = p.source_port {
        given.set(&mut doc, "--source-port", "/source/port", json!(port));
    }
    if let Some(u) = &p.replication_user {
        given.set(
            &mut doc,
            "--replication-user",
            "/source/replication_user",
            json!(u),
        );
    }
    if let Some(pw) = password {
        if let Some(pointer) = IngestionMethod::of(&doc).password_pointer() {
            given.set(&mut doc, "--password-env", pointer, json!(pw));
        }
    }
    if let Some(port) = p.staging_port {
        given.set(&mut doc, "--staging-port", "/staging_port", json!(port));
    }
    if let Some(v) = &p.mount_path {
        given.set(&mut doc, "--mount-path", "/mount_path", json!(v));
    }
    if let Some(v) = &p.backup_path {
        given.set(&mut doc, "--backup-path", "/backup_path", json!(v));
    }
    if let Some(v) = &p.wal_archive_path {
        given.set(
            &mut doc,
            "--wal-archive-path",
            "/wal_archive_path",
            json!(v),
        );
    }
    // --database names logical_replication's database (or databases) too.
    let logical = IngestionMethod::of(&doc) == IngestionMethod::LogicalReplication;
    let (db_pointer, db_value) = match (logical, p.database.as_slice()) {
        (_, []) => ("", None),
        (true, [one]) => ("/logical_replication/database", Some(json!(one))),
        (true, many) => ("/logical_replication/databases", Some(json!(many))),
        (false, [one]) => ("/single_database/database", Some(json!(one))),
        (false, _) => anyhow::bail!(
            "--database: give one database (several only with --method logical_replication)"
        ),
    };
    let single = [
        ("--database", db_pointer, db_value),
        (
            "--dump-user",
            "/single_database/user",
            p.dump_user.as_ref().map(|v| json!(v)),
        ),
        (
            "--dump-jobs",
            "/single_database/dump_jobs",
            p.dump_jobs.map(|v| json!(v)),
        ),
        (
            "--restore-jobs",
            "/single_database/restore_jobs",
            p.restore_jobs.map(|v| json!(v)),
        ),
        (
            "--stanza",
            "/pgbackrest/stanza",
            p.stanza.as_ref().map(|v| json!(v)),
        ),
        (
            "--pgbackrest-config",
            "/pgbackrest/config_path",
            p.pgbackrest_config.as_ref().map(|v| json!(v)),
        ),
        (
            "--repo-path",
            "/pgbackrest/repo_path",
            p.repo_path.as_ref().map(|v| json!(v)),
        ),
        (
            "--backup-set",
            "/pgbackrest/backup_set",
            p.backup_set.as_ref().map(|v| json!(v)),
        ),
    ];
    for (flag, pointer, value) in single {
        if let Some(v) = value {
            given.set(&mut doc, flag, pointer, v);
        }
    }
    if let Some(slot) = &p.slot {
        given.set(&mut doc, "--slot", "/replication_slot/name", json!(slot));
    }
    if !p.set.is_empty() {
        let set = flags::settings(&p.set, "--set")?;
        given.set(&mut doc, "--set", "/staging_config/set", json!(set));
    }
    Ok((doc, given))
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let out = &cx.out;
    if let Cmd::List = cmd {
        return out.dsources(&dsource::list(&store)?);
    }
    let connector = registry::open(&store, None)?;
    match cmd {
        Cmd::Link {
            name,
            source,
            env,
            params,
        } => {
            let (parameters, given) = linked_params(&params, cx.replication_password.as_deref())?;
            let (d, snap) = dsource::link(
                &store,
                &connector,
                dsource::LinkRequest {
                    name: &name,
                    source_config: &source,
                    environment: env.as_deref(),
                    parameters,
                },
            )
            .map_err(|e| given.name_flags(e))
            .with_context(|| format!("linking dSource {name}"))?;
            out.message(
                &format!(
                    "linked dSource {} (staging in {}), snapshot {}",
                    d.name,
                    d.mount_path.display(),
                    snap.id
                ),
                json!({"dsource": d, "snapshot": snap}),
            )
        }
        Cmd::Sync { name, resync } => {
            let snap = dsource::sync(&store, &connector, &name, resync)
                .with_context(|| format!("syncing dSource {name}"))?;
            out.message(
                &format!("dSource {name}: snapshot {}", snap.id),
                serde_json::to_value(&snap)?,
            )
        }
        Cmd::Enable { name } => {
            let d = dsource::enable(&store, &connector, &name)
                .with_context(|| format!("enabling dSource {name}"))?;
            out.message(&format!("dSource {name} enabled"), serde_json::to_value(d)?)
        }
        Cmd::Disable { name } => {
            let d = dsource::disable(&store, &connector, &name)
                .with_context(|| format!("disabling dSource {name}"))?;
            out.message(
                &format!("dSource {name} disabled"),
                serde_json::to_value(d)?,
            )
        }
        Cmd::Delete { name, with_vdbs } => {
            let vdbs = teardown::delete_dsource(&store, &connector, &name, with_vdbs)
                .with_context(|| format!("deleting dSource {name}"))?;
            let text = if vdbs.is_empty() {
                format!("dSource {name} deleted")
            } else {
                format!("dSource {name} deleted, with VDBs {}", vdbs.join(", "))
            };
            out.message(&text, json!({"deleted": name, "vdbs_deleted": vdbs}))
        }
        Cmd::Password { name, password_env } => {
            let password = cx.replication_password.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "--password-env: the environment variable {password_env} holds no password"
                )
            })?;
            let d = dsource::set_password(&store, &connector, &name, password)
                .with_context(|| format!("changing the password of dSource {name}"))?;
            out.message(
                &format!("dSource {name}: the new password is kept (sealed) and staging uses it"),
                serde_json::to_value(d)?,
            )
        }
        Cmd::Show { name } => out.dsource(&dsource::show(&store, &connector, &name)?),
        Cmd::List => Ok(()),
    }
}
