//! The `pgvirt` command line: one file per command group, each with its
//! arguments and a short `exec` that calls the engine ([`crate::host`]).
//! [`output`] prints (tables or JSON); [`flags`] turns flags into the
//! documents the engine validates, and names the flag in their problems.
//!
//! Before any command, the store is opened and whatever an interrupted
//! command left is repaired ([`crate::host::lifecycle::repair`]).

mod connector;
mod demo;
mod dsource;
mod env;
mod export;
mod flags;
mod output;
mod pool;
mod repo;
mod serve;
mod snapshot;
mod source;
mod timeflow;
mod token;
mod tower;
mod vdb;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::host::lifecycle::repair;
use crate::host::store::{Store, STORE_ENV};
use crate::host::Error;
use output::{Format, Out};

/// The tower's store, when `--store` is not given.
pub const TOWER_STORE_ENV: &str = "PGVIRT_TOWER_STORE";

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
    Connector(connector::Cmd),
    /// Environments: hosts with PostgreSQL, and their discovery.
    #[command(subcommand)]
    Env(env::Cmd),
    /// Repositories (PostgreSQL installations) found on environments.
    #[command(subcommand)]
    Repo(repo::Cmd),
    /// Source configs (clusters) found on environments or added by hand.
    #[command(subcommand)]
    Source(source::Cmd),
    /// Choose the storage pool (a directory; its filesystem picks the backend).
    Init(pool::InitArgs),
    /// The storage pool: info, datasets, consistency check.
    #[command(subcommand)]
    Pool(pool::Cmd),
    /// Linked sources: ingest a source cluster, keep it in sync, snapshot it.
    #[command(subcommand)]
    Dsource(dsource::Cmd),
    /// Snapshots of dSources and VDBs.
    #[command(subcommand)]
    Snapshot(snapshot::Cmd),
    /// Timeflows: the moments a dSource or VDB can be provisioned at.
    #[command(subcommand)]
    Timeflow(timeflow::Cmd),
    /// Virtual databases: writable thin clones of snapshots.
    #[command(subcommand)]
    Vdb(vdb::Cmd),
    /// Table exports: chosen tables shipped to other databases, exactly once.
    #[command(subcommand)]
    Export(export::Cmd),
    /// Serve the HTTP API (every operation as REST, with jobs; see /openapi.json).
    Serve(serve::ServeArgs),
    /// Bearer tokens for the API: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(token::Cmd),
    /// The control tower: one place (API and web UI) over several engines.
    #[command(subcommand)]
    Tower(tower::Cmd),
    /// The whole story on this machine, start to finish, each step timed:
    /// a source with sample data, link, snapshot, two VDBs, write,
    /// refresh, rewind, tear down. Uses its own store and pool.
    Demo(demo::Args),
    /// Print a shell completion script (e.g. `pgvirt completions bash > /etc/bash_completion.d/pgvirt`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `pgvirt man | man -l -`).
    Man,
}

/// Subcommands that use no store and print no listing: the global flags
/// are not offered there.
const STORELESS: [&str; 3] = ["demo", "completions", "man"];

/// The command line's definition: the one `Cli` derives, with the global
/// flags hidden where they do nothing. Completions and the manual are made
/// from it too.
pub fn definition() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for name in STORELESS {
        // An argument of its own (hidden) keeps the global one out.
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.arg(
                clap::Arg::new("store")
                    .long("store")
                    .hide(true)
                    .help("Not taken here")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                clap::Arg::new("output")
                    .long("output")
                    .short('o')
                    .hide(true)
                    .help("Not taken here")
                    .value_parser(clap::value_parser!(OutputArg)),
            )
        });
    }
    cmd
}

/// What every command gets: how to print, and where the store is.
pub struct Context {
    out: Out,
    store_path: PathBuf,
    /// The replication password, read from its variable (and taken out of
    /// pgvirt's environment, so no child inherits it).
    replication_password: Option<String>,
}

impl Context {
    /// Opens the store as it is.
    fn store_as_is(&self) -> anyhow::Result<Store> {
        Store::open(&self.store_path)
            .with_context(|| format!("opening the metadata store {}", self.store_path.display()))
    }

    /// Opens the store and repairs what interrupted commands left.
    fn store(&self) -> anyhow::Result<Store> {
        let store = self.store_as_is()?;
        for said in repair::repair_interrupted(&store)
            .context("repairing what an interrupted command left")?
        {
            log::warn!("{said}");
        }
        Ok(store)
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    use clap::FromArgMatches;
    // Output into a closed pipe (`| head`) ends pgvirt quietly, as other
    // tools do, instead of a panic; the next command repairs anything cut.
    // SAFETY: setting a signal's disposition to its default, before any
    // thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = definition().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some((name, sub)) = matches.subcommand() {
        for flag in ["store", "output"] {
            if STORELESS.contains(&name)
                && sub.value_source(flag) == Some(clap::parser::ValueSource::CommandLine)
            {
                eprintln!("error: `pgvirt {name}` takes no --{flag} (it uses no store and prints no listing)");
                return 2;
            }
        }
    }
    // Read secrets from the environment once, and take them out of it.
    let password_var = match &cli.command {
        Command::Dsource(dsource::Cmd::Link { params, .. }) => params.password_env.clone(),
        Command::Dsource(dsource::Cmd::Password { password_env, .. }) => password_env.clone(),
        _ => dsource::PASSWORD_ENV.to_owned(),
    };
    let replication_password = take_env(&password_var);
    if password_var != dsource::PASSWORD_ENV {
        take_env(dsource::PASSWORD_ENV);
    }
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
    let store_flag = matches.value_source("store") == Some(clap::parser::ValueSource::CommandLine);
    match run(cli, replication_password, store_flag) {
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

/// Writes to standard output; a reader that went away is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Reads a variable and removes it from this process's environment.
fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty());
    // Single-threaded here (nothing started yet), as remove_var requires.
    std::env::remove_var(name);
    value
}

fn run(cli: Cli, replication_password: Option<String>, store_flag: bool) -> anyhow::Result<()> {
    let store_path = match &cli.store {
        Some(p) => p.clone(),
        None => Store::default_path()?,
    };
    let cx = Context {
        out: Out::new(match cli.output {
            OutputArg::Table => Format::Table,
            OutputArg::Json => Format::Json,
        }),
        store_path,
        replication_password,
    };
    match cli.command {
        Command::Connector(cmd) => connector::exec(cmd, &cx),
        Command::Env(cmd) => env::exec(cmd, &cx),
        Command::Repo(cmd) => repo::exec(cmd, &cx),
        Command::Source(cmd) => source::exec(cmd, &cx),
        Command::Init(args) => pool::init(args, &cx),
        Command::Pool(cmd) => pool::exec(cmd, &cx),
        Command::Dsource(cmd) => dsource::exec(cmd, &cx),
        Command::Snapshot(cmd) => snapshot::exec(cmd, &cx),
        Command::Timeflow(cmd) => timeflow::exec(cmd, &cx),
        Command::Vdb(cmd) => vdb::exec(cmd, &cx),
        Command::Export(cmd) => export::exec(cmd, &cx),
        Command::Serve(args) => serve::exec(args, &cx),
        Command::Token(cmd) => token::exec(cmd, &cx),
        Command::Tower(cmd) => {
            // Its own store: `--store` (never the engine's PGVIRT_STORE),
            // PGVIRT_TOWER_STORE, or tower.db beside the engine's default.
            let path = match (&cli.store, std::env::var_os(TOWER_STORE_ENV)) {
                (Some(p), _) if store_flag => p.clone(),
                (_, Some(p)) if !p.is_empty() => PathBuf::from(p),
                _ => Store::default_path()?.with_file_name("tower.db"),
            };
            tower::exec(cmd, path, &cx)
        }
        Command::Demo(args) => demo::exec(args),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut definition(), "pgvirt", &mut text);
            print_all(&text)
        }
        Command::Man => {
            let mut text = Vec::new();
            clap_mangen::Man::new(definition()).render(&mut text)?;
            print_all(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, argument and flag says what it is for.
    #[test]
    fn everything_has_a_line_of_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&definition(), "pgvirt", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }

    #[test]
    fn the_demo_offers_no_store_or_output_flag() {
        let mut def = definition();
        let demo = def.find_subcommand_mut("demo").expect("demo");
        let help = demo.render_help().to_string();
        assert!(
            !help.contains("--store") && !help.contains("--output"),
            "{help}"
        );
    }
}
