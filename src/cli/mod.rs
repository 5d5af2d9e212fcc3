//! The `pgvirt` command line: parse, open the store, call the engine, print.
//! Every command is a thin wrapper around an operation in [`crate::host`].

mod demo;
mod output;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::host::connectors::{package::Package, registry};
use crate::host::environments as environment;
use crate::host::lifecycle::{discovery as inventory, dsource, timeflow, vdb};
use crate::host::storage::{Backend, Pool};
use crate::host::store::{Store, STORE_ENV};
use crate::host::Error;
use output::{Format, Out};

#[derive(Parser, Debug)]
#[command(
    name = "pgvirt",
    version,
    about = "PostgreSQL data virtualization: synced copies, snapshots, and writable thin clones"
)]
pub struct Cli {
    /// The metadata store (SQLite file); default: the user's data directory.
    #[arg(long, global = true, env = STORE_ENV, value_name = "FILE")]
    store: Option<PathBuf>,

    /// How list and show commands print.
    #[arg(long, short, global = true, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputArg {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate, pack, install and list connectors.
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// Environments: hosts with PostgreSQL, and their discovery.
    #[command(subcommand)]
    Env(EnvCmd),
    /// Repositories (PostgreSQL installations) found on environments.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Source configs (clusters) found on environments or added by hand.
    #[command(subcommand)]
    Source(SourceCmd),
    /// Choose the storage pool (a directory; its filesystem picks the backend).
    Init {
        /// Directory of the pool: empty, or an existing pgvirt pool.
        #[arg(long)]
        pool: PathBuf,
        /// Backend: auto, btrfs, reflink or copy.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// The storage pool: info, datasets, consistency check.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Linked sources: ingest a source cluster, keep it in sync, snapshot it.
    #[command(subcommand)]
    Dsource(DsourceCmd),
    /// Snapshots of dSources and VDBs.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Virtual databases: writable thin clones of snapshots.
    #[command(subcommand)]
    Vdb(VdbCmd),
    /// The whole story on this machine, start to finish, each step timed:
    /// a source with sample data, link, snapshot, two VDBs, write,
    /// refresh, rewind, tear down. Uses its own store and pool.
    Demo {
        /// Work directory (empty or new); default: a new one under /var/tmp.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// OS user PostgreSQL runs as; default: postgres when root, else you.
        #[arg(long)]
        user: Option<String>,
        /// Keep everything running at the end.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    /// Which backend is in use and why.
    Info,
    /// Datasets and their snapshots, with space held alone and shared.
    List,
    /// Find drift between the store and the filesystem; --repair fixes it.
    Check {
        #[arg(long)]
        repair: bool,
    },
    /// Low-level dataset operations, for operators and tests.
    #[command(subcommand)]
    Dataset(DatasetCmd),
}

#[derive(Subcommand, Debug)]
enum DatasetCmd {
    /// Create an empty dataset (owned by --owner, mode 0700).
    Create {
        name: String,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Take a read-only snapshot of a dataset.
    Snapshot { dataset: String, name: String },
    /// Clone a snapshot (by id) into a new writable dataset.
    Clone {
        snapshot: i64,
        name: String,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Destroy a dataset (it must have no snapshots).
    Destroy { name: String },
    /// Destroy a snapshot (refused, naming them, while clones depend on it).
    DestroySnapshot { snapshot: i64 },
    /// Mount a dataset at a path.
    Mount { name: String, path: PathBuf },
    /// Unmount a dataset.
    Unmount { name: String },
}

#[derive(Args, Debug)]
struct LinkedParams {
    /// A whole linked-source parameters document (JSON); flags add to it.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// basebackup_streaming, backup_streaming or backup_log_shipping.
    #[arg(long)]
    method: Option<String>,
    /// Source host (default: 127.0.0.1 for a source on this host).
    #[arg(long)]
    source_host: Option<String>,
    /// Source port (default: the source config's port).
    #[arg(long)]
    source_port: Option<u16>,
    /// Replication user on the source.
    #[arg(long)]
    replication_user: Option<String>,
    /// Environment variable holding the replication password (never a flag value).
    #[arg(
        long,
        value_name = "VAR",
        default_value = "PGVIRT_REPLICATION_PASSWORD"
    )]
    password_env: String,
    /// Port of the staging cluster.
    #[arg(long)]
    staging_port: Option<u16>,
    /// Where to mount the staging dataset.
    #[arg(long)]
    mount_path: Option<String>,
    /// Customer base backup directory (backup_* methods).
    #[arg(long)]
    backup_path: Option<String>,
    /// WAL archive directory (backup_log_shipping).
    #[arg(long)]
    wal_archive_path: Option<String>,
    /// Replication slot name (default pgvirt_<name>).
    #[arg(long)]
    slot: Option<String>,
    /// Staging setting NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum DsourceCmd {
    /// Link a source config: ingest it into staging and take the first snapshot.
    Link {
        /// Name of the new dSource.
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
        name: String,
        #[arg(long)]
        resync: bool,
    },
    /// Start staging again.
    Enable { name: String },
    /// Stop staging and unmount.
    Disable { name: String },
    /// Delete (refused while VDBs depend on its snapshots, unless --with-vdbs).
    Delete {
        name: String,
        /// Delete the VDBs provisioned from it (and their children) first.
        #[arg(long)]
        with_vdbs: bool,
    },
    /// State, replication health and the last snapshot.
    Show { name: String },
    /// All dSources.
    List,
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Snapshots of one dSource or VDB, or of all.
    List {
        #[arg(long)]
        dsource: Option<String>,
        #[arg(long)]
        vdb: Option<String>,
    },
    /// Set how many snapshots a dSource or VDB keeps (applied after each
    /// sync or snapshot; never one that a VDB or timeflow stands on).
    Retention {
        #[arg(long, conflicts_with = "vdb")]
        dsource: Option<String>,
        #[arg(long)]
        vdb: Option<String>,
        /// Keep the newest N snapshots.
        #[arg(long)]
        keep: Option<u32>,
        /// Keep snapshots younger than D days.
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Args, Debug)]
struct VirtualParams {
    /// A whole virtual-source parameters document (JSON); flags add to it.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// Port (default: the first free one of PGVIRT_VDB_PORTS, 6500-6999).
    #[arg(long)]
    port: Option<u16>,
    /// Target environment (default: the parent's).
    #[arg(long)]
    env: Option<String>,
    /// Where to mount the VDB's dataset.
    #[arg(long)]
    mount_path: Option<String>,
    /// Setting NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum VdbCmd {
    /// Provision a VDB from a dSource's or VDB's snapshot (latest, or NAME@ID).
    Provision {
        name: String,
        #[arg(long)]
        from: String,
        #[command(flatten)]
        params: VirtualParams,
    },
    /// Create an empty VDB (a new cluster).
    CreateEmpty {
        name: String,
        #[command(flatten)]
        params: VirtualParams,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    /// ACTIVE or INACTIVE.
    Status {
        name: String,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    /// Delete the VDB: its processes, mounts and clone.
    Delete {
        name: String,
    },
    /// Refresh to the parent's latest snapshot (or --snapshot ID).
    Refresh {
        name: String,
        #[arg(long)]
        snapshot: Option<i64>,
    },
    /// Rewind to one of the VDB's own snapshots.
    Rewind {
        name: String,
        #[arg(long)]
        snapshot: i64,
    },
    /// Take a snapshot of the VDB.
    Snapshot {
        name: String,
    },
    /// One VDB, with its connection string.
    Show {
        name: String,
    },
    /// All VDBs.
    List,
}

#[derive(Subcommand, Debug)]
enum ConnectorCmd {
    /// Check a connector directory or connector.json: manifest, schemas, library.
    Validate {
        /// Connector directory (with plugin.json) or a packed connector.json.
        path: PathBuf,
        /// The library to check, instead of searching for it.
        #[arg(long)]
        library: Option<PathBuf>,
    },
    /// Write one self-contained connector.json (and the library beside it).
    Pack {
        /// Connector directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "dist")]
        out: PathBuf,
        /// The library to pack, instead of searching for it.
        #[arg(long)]
        library: Option<PathBuf>,
    },
    /// Install a connector (a lower version than the installed one is refused).
    Install {
        /// Connector directory or connector.json.
        path: PathBuf,
    },
    /// List installed connectors.
    List,
    /// Call one operation of the installed connector with a JSON input, for
    /// connector developers (`environment` is filled in from --env).
    Call {
        /// Operation id, like discovery.repository or linked.status.
        operation: String,
        /// Input document (JSON file, or - for standard input).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Environment the operation runs on.
        #[arg(long, default_value = "local")]
        env: String,
        #[command(flatten)]
        connector: ConnectorArg,
    },
}

#[derive(Subcommand, Debug)]
enum EnvCmd {
    /// Add an environment.
    Add {
        /// Kind of environment (local).
        kind: String,
        /// OS user that runs PostgreSQL there (never root).
        #[arg(long)]
        user: String,
        /// Name of the environment; default: the kind.
        #[arg(long)]
        name: Option<String>,
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

#[derive(Args, Debug)]
struct ConnectorArg {
    /// Installed connector to use (name or id); default: the only one.
    #[arg(long)]
    connector: Option<String>,
}

#[derive(Subcommand, Debug)]
enum RepoCmd {
    /// List repositories.
    List {
        #[arg(long)]
        env: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SourceCmd {
    /// List source configs.
    List {
        #[arg(long)]
        env: Option<String>,
    },
    /// Add a source config by hand (validated against the connector's schema).
    Add(SourceAdd),
    /// Remove a source config (refused while a dSource uses it).
    Remove {
        /// Source config id or name.
        source: String,
    },
}

#[derive(Args, Debug)]
struct SourceAdd {
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

/// `postgres` when running as root, else the current user.
fn default_user() -> String {
    if nix::unistd::Uid::effective().is_root() {
        return "postgres".into();
    }
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if cli.verbose >= 2 {
        logger.format_timestamp_millis();
    } else {
        logger.format_timestamp(None);
    }
    logger.init();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.chain()
                .find_map(|c| c.downcast_ref::<Error>())
                .map(Error::exit_code)
                .unwrap_or(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Out::new(match cli.output {
        OutputArg::Table => Format::Table,
        OutputArg::Json => Format::Json,
    });
    let store_path = match &cli.store {
        Some(p) => p.clone(),
        None => Store::default_path()?,
    };
    let open_store = || {
        Store::open(&store_path)
            .with_context(|| format!("opening the metadata store {}", store_path.display()))
    };
    match cli.command {
        Command::Connector(cmd) => connector(cmd, &out, open_store),
        Command::Env(cmd) => {
            let mut store = open_store()?;
            env(cmd, &out, &mut store)
        }
        Command::Repo(RepoCmd::List { env }) => {
            let store = open_store()?;
            out.repositories(&inventory::repositories(&store, env.as_deref())?)
        }
        Command::Source(cmd) => {
            let store = open_store()?;
            source(cmd, &out, &store)
        }
        Command::Init { pool, backend } => {
            let store = open_store()?;
            let p = Pool::init(&store, &pool, Backend::parse(&backend)?)
                .with_context(|| format!("making the pool {}", pool.display()))?;
            let info = p.info(&store)?;
            out.message(
                &format!(
                    "pool {} ready: {} ({})",
                    info.path.display(),
                    info.backend.name(),
                    info.why
                ),
                serde_json::to_value(&info)?,
            )
        }
        Command::Pool(cmd) => {
            let store = open_store()?;
            pool_cmd(cmd, &out, &store)
        }
        Command::Dsource(cmd) => {
            let store = open_store()?;
            dsource_cmd(cmd, &out, &store)
        }
        Command::Snapshot(SnapshotCmd::Retention {
            dsource,
            vdb,
            keep,
            days,
        }) => {
            let store = open_store()?;
            let (kind, id, name) = match (dsource, vdb) {
                (Some(d), _) => ("dsource", dsource::get(&store, &d)?.id, d),
                (_, Some(v)) => ("vdb", vdb::get(&store, &v)?.id, v),
                _ => return Err(Error::usage("name a --dsource or a --vdb").into()),
            };
            if keep.is_none() && days.is_none() {
                return Err(Error::usage("give --keep N, --days D, or both").into());
            }
            timeflow::set_retention(&store, kind, id, keep, days)?;
            let removed = timeflow::apply_retention(&store, &Pool::open(&store)?, kind, id)?;
            out.message(
                &format!("{kind} {name}: keeping {keep:?} snapshots / {days:?} days; removed {removed:?}"),
                json!({"removed": removed}),
            )
        }
        Command::Snapshot(SnapshotCmd::List { dsource, vdb }) => {
            let store = open_store()?;
            let list = snapshot_list(&store, dsource.as_deref(), vdb.as_deref())?;
            out.snapshots(&list)
        }
        Command::Vdb(cmd) => {
            let store = open_store()?;
            vdb_cmd(cmd, &out, &store)
        }
        Command::Demo { dir, user, keep } => {
            let user = user.unwrap_or_else(default_user);
            let started = std::time::Instant::now();
            let mut n = 0;
            let dir = demo::run(&demo::DemoOptions { dir, user, keep }, &mut |what, took| {
                if took.is_zero() {
                    println!("{what}");
                } else {
                    n += 1;
                    println!("{n:>2}. {what:<88} {:>8.2}s", took.as_secs_f64());
                }
            })
            .context("running the demo")?;
            println!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
            if keep {
                println!(
                    "kept in {} (store {}/pgvirt.db)",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

fn pool_cmd(cmd: PoolCmd, out: &Out, store: &Store) -> anyhow::Result<()> {
    // `pool check` looks at the pool as it is; other commands tidy first.
    let pool = match cmd {
        PoolCmd::Check { .. } => Pool::open_unchecked(store)?,
        _ => Pool::open(store)?,
    };
    match cmd {
        PoolCmd::Info => {
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
        PoolCmd::List => out.datasets(&pool.list(store)?),
        PoolCmd::Dataset(cmd) => {
            let owner =
                |o: &Option<String>| o.as_deref().map(environment::OsUser::lookup).transpose();
            let value = match cmd {
                DatasetCmd::Create { name, owner: o } => {
                    serde_json::to_value(pool.create_dataset(store, &name, owner(&o)?.as_ref())?)?
                }
                DatasetCmd::Snapshot { dataset, name } => {
                    serde_json::to_value(pool.snapshot(store, &dataset, &name)?)?
                }
                DatasetCmd::Clone {
                    snapshot,
                    name,
                    owner: o,
                } => serde_json::to_value(pool.clone_snapshot(
                    store,
                    snapshot,
                    &name,
                    owner(&o)?.as_ref(),
                )?)?,
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
        PoolCmd::Check { repair } => {
            let report = pool.check(store, repair)?;
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

/// NAME=VALUE pairs as a JSON object of settings (numbers stay numbers).
fn settings(pairs: &[String], flag: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("{flag} {pair:?} must be NAME=VALUE")))?;
        let value = v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(v));
        map.insert(k.trim().to_owned(), value);
    }
    Ok(map)
}

fn object_from(file: &Option<PathBuf>) -> anyhow::Result<Value> {
    let doc = match file {
        Some(f) => read_document(f)?,
        None => json!({}),
    };
    if !doc.is_object() {
        return Err(Error::usage("--params must hold a JSON object").into());
    }
    Ok(doc)
}

fn linked_params(p: &LinkedParams, store: &Store, source: &str) -> anyhow::Result<Value> {
    let mut doc = object_from(&p.params)?;
    let config = inventory::find_source_config(store, source)?;
    if let Some(m) = &p.method {
        doc["ingestion_method"] = json!(m);
    }
    let method = doc
        .get("ingestion_method")
        .and_then(Value::as_str)
        .unwrap_or("basebackup_streaming")
        .to_owned();
    if method != "backup_log_shipping" || p.source_host.is_some() {
        let mut src = doc.get("source").cloned().unwrap_or_else(|| json!({}));
        if let Some(h) = &p.source_host {
            src["host"] = json!(h);
        } else if src.get("host").is_none() {
            src["host"] = json!("127.0.0.1");
        }
        if let Some(port) = p.source_port {
            src["port"] = json!(port);
        } else if src.get("port").is_none() {
            src["port"] = config.document.get("port").cloned().unwrap_or(json!(5432));
        }
        if let Some(u) = &p.replication_user {
            src["replication_user"] = json!(u);
        }
        if let Ok(pw) = std::env::var(&p.password_env) {
            if !pw.is_empty() {
                src["replication_password"] = json!(pw);
            }
        }
        doc["source"] = src;
    }
    if let Some(port) = p.staging_port {
        doc["staging_port"] = json!(port);
    }
    for (key, val) in [
        ("mount_path", &p.mount_path),
        ("backup_path", &p.backup_path),
        ("wal_archive_path", &p.wal_archive_path),
    ] {
        if let Some(v) = val {
            doc[key] = json!(v);
        }
    }
    if let Some(slot) = &p.slot {
        doc["replication_slot"] = json!({"name": slot});
    }
    if !p.set.is_empty() {
        doc["staging_config"] = json!({"set": settings(&p.set, "--set")?});
    }
    Ok(doc)
}

fn dsource_cmd(cmd: DsourceCmd, out: &Out, store: &Store) -> anyhow::Result<()> {
    if let DsourceCmd::List = cmd {
        let list = dsource::list(store)?;
        if list.is_empty() {
            return out.dsources(&list);
        }
        let connector = registry::open(store, None)?;
        let masked: Vec<_> = list
            .iter()
            .map(|d| dsource::masked(d, &connector))
            .collect();
        return out.dsources(&masked);
    }
    let connector = registry::open(store, None)?;
    recover(store, &connector)?;
    match cmd {
        DsourceCmd::Link {
            name,
            source,
            env,
            params,
        } => {
            let parameters = linked_params(&params, store, &source)?;
            let (d, snap) = dsource::link(
                store,
                &connector,
                dsource::LinkRequest {
                    name: &name,
                    source_config: &source,
                    environment: env.as_deref(),
                    parameters,
                },
            )
            .with_context(|| format!("linking dSource {name}"))?;
            out.message(
                &format!(
                    "linked dSource {} (staging in {}), snapshot {}",
                    d.name,
                    d.mount_path.display(),
                    snap.id
                ),
                json!({"dsource": dsource::masked(&d, &connector), "snapshot": snap}),
            )
        }
        DsourceCmd::Sync { name, resync } => {
            let snap = dsource::sync(store, &connector, &name, resync)
                .with_context(|| format!("syncing dSource {name}"))?;
            out.message(
                &format!("dSource {name}: snapshot {}", snap.id),
                serde_json::to_value(&snap)?,
            )
        }
        DsourceCmd::Enable { name } => {
            let d = dsource::enable(store, &connector, &name)
                .with_context(|| format!("enabling dSource {name}"))?;
            out.message(
                &format!("dSource {name} enabled"),
                serde_json::to_value(dsource::masked(&d, &connector))?,
            )
        }
        DsourceCmd::Disable { name } => {
            let d = dsource::disable(store, &connector, &name)
                .with_context(|| format!("disabling dSource {name}"))?;
            out.message(
                &format!("dSource {name} disabled"),
                serde_json::to_value(dsource::masked(&d, &connector))?,
            )
        }
        DsourceCmd::Delete { name, with_vdbs } => {
            let vdbs = dsource::delete(store, &connector, &name, with_vdbs)
                .with_context(|| format!("deleting dSource {name}"))?;
            let text = if vdbs.is_empty() {
                format!("dSource {name} deleted")
            } else {
                format!("dSource {name} deleted, with VDBs {}", vdbs.join(", "))
            };
            out.message(&text, json!({"deleted": name, "vdbs_deleted": vdbs}))
        }
        DsourceCmd::Show { name } => {
            let shown = dsource::show(store, &connector, &name)?;
            out.json(&shown)
        }
        DsourceCmd::List => Ok(()),
    }
}

/// Cleans up after interrupted links and provisions before a new command.
fn recover(
    store: &Store,
    connector: &crate::host::connectors::loader::Connector,
) -> anyhow::Result<()> {
    if store.setting("pool.path")?.is_some() {
        vdb::recover(store, connector).context("cleaning up interrupted provisions")?;
        dsource::recover(store, connector).context("cleaning up interrupted links")?;
    }
    Ok(())
}

fn snapshot_list(
    store: &Store,
    dsource: Option<&str>,
    vdb: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let mut containers = Vec::new();
    match (dsource, vdb) {
        (Some(d), _) => containers.push(("dsource", dsource::get(store, d)?.id, d.to_owned())),
        (_, Some(v)) => containers.push(("vdb", vdb::get(store, v)?.id, v.to_owned())),
        _ => {
            containers.extend(
                dsource::list(store)?
                    .into_iter()
                    .map(|d| ("dsource", d.id, d.name)),
            );
            containers.extend(vdb::list(store)?.into_iter().map(|v| ("vdb", v.id, v.name)));
        }
    }
    let mut list = Vec::new();
    for (kind, id, name) in containers {
        for s in timeflow::snapshots(store, kind, id)? {
            list.push(json!({
                "id": s.id, "of": kind, "name": name, "timeflow": s.timeflow_id,
                "created_at": s.created_at, "metadata": s.metadata,
            }));
        }
    }
    Ok(list)
}

fn virtual_params(p: &VirtualParams) -> anyhow::Result<Value> {
    let mut doc = object_from(&p.params)?;
    if let Some(m) = &p.mount_path {
        doc["mount_path"] = json!(m);
    }
    if !p.set.is_empty() {
        doc["config"] = json!({"set": settings(&p.set, "--set")?});
    }
    Ok(doc)
}

fn vdb_cmd(cmd: VdbCmd, out: &Out, store: &Store) -> anyhow::Result<()> {
    if let VdbCmd::List = cmd {
        let list = vdb::list(store)?;
        if list.is_empty() {
            return out.vdbs(&list);
        }
        let connector = registry::open(store, None)?;
        let masked: Vec<_> = list.iter().map(|v| vdb::masked(v, &connector)).collect();
        return out.vdbs(&masked);
    }
    let connector = registry::open(store, None)?;
    recover(store, &connector)?;
    let shown = |v: &vdb::Vdb, what: &str| -> anyhow::Result<()> {
        let mut value = serde_json::to_value(vdb::masked(v, &connector))?;
        value["connection"] = json!(v.connection_string());
        out.message(
            &format!("VDB {} {what}: {}", v.name, v.connection_string()),
            value,
        )
    };
    match cmd {
        VdbCmd::Provision { name, from, params } => {
            let started = std::time::Instant::now();
            let v = vdb::provision(
                store,
                &connector,
                vdb::ProvisionRequest {
                    name: &name,
                    from: &from,
                    port: params.port,
                    environment: params.env.as_deref(),
                    parameters: virtual_params(&params)?,
                },
            )
            .with_context(|| format!("provisioning VDB {name} from {from}"))?;
            log::info!("provisioned {name} in {:.2?}", started.elapsed());
            shown(&v, "is ready")
        }
        VdbCmd::CreateEmpty { name, params } => {
            let v = vdb::create_empty(
                store,
                &connector,
                vdb::ProvisionRequest {
                    name: &name,
                    from: "",
                    port: params.port,
                    environment: params.env.as_deref(),
                    parameters: virtual_params(&params)?,
                },
            )
            .with_context(|| format!("creating empty VDB {name}"))?;
            shown(&v, "is ready")
        }
        VdbCmd::Start { name } => shown(
            &vdb::start(store, &connector, &name)
                .with_context(|| format!("starting VDB {name}"))?,
            "started",
        ),
        VdbCmd::Stop { name } => shown(
            &vdb::stop(store, &connector, &name).with_context(|| format!("stopping VDB {name}"))?,
            "stopped",
        ),
        VdbCmd::Status { name } => {
            let status = vdb::status(store, &connector, &name)?;
            out.message(&status, json!({"name": name, "status": status}))
        }
        VdbCmd::Enable { name } => shown(
            &vdb::enable(store, &connector, &name)
                .with_context(|| format!("enabling VDB {name}"))?,
            "enabled",
        ),
        VdbCmd::Disable { name } => shown(
            &vdb::disable(store, &connector, &name)
                .with_context(|| format!("disabling VDB {name}"))?,
            "disabled",
        ),
        VdbCmd::Delete { name } => {
            vdb::delete(store, &connector, &name)
                .with_context(|| format!("deleting VDB {name}"))?;
            out.message(&format!("VDB {name} deleted"), json!({"deleted": name}))
        }
        VdbCmd::Refresh { name, snapshot } => shown(
            &vdb::refresh(store, &connector, &name, snapshot)
                .with_context(|| format!("refreshing VDB {name}"))?,
            "refreshed",
        ),
        VdbCmd::Rewind { name, snapshot } => shown(
            &vdb::rewind(store, &connector, &name, snapshot)
                .with_context(|| format!("rewinding VDB {name}"))?,
            "rewound",
        ),
        VdbCmd::Snapshot { name } => {
            let s = vdb::snapshot(store, &connector, &name)
                .with_context(|| format!("snapshotting VDB {name}"))?;
            out.message(
                &format!("VDB {name}: snapshot {}", s.id),
                serde_json::to_value(&s)?,
            )
        }
        VdbCmd::Show { name } => {
            let v = vdb::get(store, &name)?;
            shown(&v, "")
        }
        VdbCmd::List => Ok(()),
    }
}

fn connector(
    cmd: ConnectorCmd,
    out: &Out,
    open_store: impl Fn() -> anyhow::Result<Store>,
) -> anyhow::Result<()> {
    match cmd {
        ConnectorCmd::Validate { path, library } => {
            let package = Package::read(&path, library.as_deref())
                .with_context(|| format!("reading connector {}", path.display()))?;
            let problems = package.validate();
            out.validation(&package, &problems)?;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(Error::invalid(format!("connector {}", path.display()), problems).into())
            }
        }
        ConnectorCmd::Pack {
            dir,
            out: out_dir,
            library,
        } => {
            let package = Package::read(&dir, library.as_deref())
                .with_context(|| format!("reading connector {}", dir.display()))?;
            let path = package
                .pack(&out_dir)
                .with_context(|| format!("packing connector {}", dir.display()))?;
            out.message(
                &format!("wrote {}", path.display()),
                json!({"connector_json": path}),
            )
        }
        ConnectorCmd::Install { path } => {
            let store = open_store()?;
            let outcome = registry::install(&store, &path)
                .with_context(|| format!("installing connector {}", path.display()))?;
            let i = &outcome.installed;
            let text = match &outcome.previous_version {
                Some(prev) => format!(
                    "installed {} {}+{} (replacing {prev})",
                    i.name, i.version, i.build_number
                ),
                None => format!("installed {} {}+{}", i.name, i.version, i.build_number),
            };
            out.message(&text, serde_json::to_value(&outcome)?)
        }
        ConnectorCmd::List => out.connectors(&registry::list(&open_store()?)?),
        ConnectorCmd::Call {
            operation,
            input,
            env,
            connector,
        } => {
            let store = open_store()?;
            let environment = environment::get(&store, &env)?;
            let c = registry::open(&store, connector.connector.as_deref())?;
            let mut input = if input.as_os_str() == "-" {
                serde_json::from_reader(std::io::stdin())
                    .context("reading the input from standard input")?
            } else {
                read_document(&input)?
            };
            let obj = input
                .as_object_mut()
                .ok_or_else(|| Error::usage("the input must be a JSON object"))?;
            obj.insert("environment".into(), environment.to_input());
            let output = c
                .invoke(
                    &operation,
                    &input,
                    environment::HostPlatform::new(&environment),
                )
                .with_context(|| format!("calling {operation}"))?;
            out.json(&output)
        }
    }
}

fn env(cmd: EnvCmd, out: &Out, store: &mut Store) -> anyhow::Result<()> {
    match cmd {
        EnvCmd::Add { kind, user, name } => {
            let name = name.unwrap_or_else(|| kind.clone());
            let e = environment::add(store, &kind, &name, &user)
                .with_context(|| format!("adding environment {name}"))?;
            out.message(
                &format!("added environment {} ({} as {})", e.name, e.kind, e.os_user),
                serde_json::to_value(&e)?,
            )
        }
        EnvCmd::List => out.environments(&environment::list(store)?),
        EnvCmd::Refresh { name, connector } => {
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

fn source(cmd: SourceCmd, out: &Out, store: &Store) -> anyhow::Result<()> {
    match cmd {
        SourceCmd::List { env } => {
            out.source_configs(&inventory::source_configs(store, env.as_deref())?)
        }
        SourceCmd::Add(add) => {
            let document = source_document(&add)?;
            let connector = registry::open(store, None)?;
            let s = inventory::add_source_config(
                store,
                &connector,
                &add.env,
                add.repo.as_deref(),
                &document,
            )
            .context("adding a source config")?;
            out.message(
                &format!("added source config {} ({})", s.id, s.name),
                serde_json::to_value(&s)?,
            )
        }
        SourceCmd::Remove { source } => {
            let s = inventory::remove_source_config(store, &source)
                .with_context(|| format!("removing source config {source}"))?;
            out.message(
                &format!("removed source config {} ({})", s.id, s.name),
                serde_json::to_value(&s)?,
            )
        }
    }
}

/// The source-config document from `--file` and the flags.
fn source_document(add: &SourceAdd) -> anyhow::Result<Value> {
    let mut doc = match &add.file {
        Some(f) => read_document(f)?,
        None => json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| Error::usage("--file must hold a JSON object"))?;
    if let Some(v) = &add.data_dir {
        obj.insert("data_directory".into(), json!(v));
    }
    if let Some(v) = add.port {
        obj.insert("port".into(), json!(v));
    }
    if let Some(v) = &add.database {
        obj.insert("database".into(), json!(v));
    }
    if let Some(v) = &add.db_user {
        obj.insert("user".into(), json!(v));
    }
    if let Some(v) = &add.name {
        obj.insert("name".into(), json!(v));
    } else if !obj.contains_key("name") {
        let dir = obj
            .get("data_directory")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let port = obj
            .get("port")
            .map(Value::to_string)
            .unwrap_or_else(|| "?".into());
        obj.insert("name".into(), json!(format!("{dir} (port {port})")));
    }
    Ok(doc)
}

fn read_document(path: &Path) -> anyhow::Result<Value> {
    Ok(crate::host::files::read_json(path)?)
}
