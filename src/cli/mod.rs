//! The `pgvirt` command line: parse, open the store, call the engine, print.
//! Every command is a thin wrapper around an operation in [`crate::host`].

mod output;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::host::store::{Store, STORE_ENV};
use crate::host::{environment, inventory, package::Package, registry, Error};
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

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .init();
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
