//! `pgvirt tower`: the control tower over several engines
//! ([`crate::tower`]): serve it, register engines, make its tokens. Its
//! store is `--store` (default: `tower.db` beside the engine's default
//! store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::Context;
use crate::tower::store::TowerStore;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Serve the tower: its API under /api and the web UI at /.
    Serve {
        /// Address and port to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// Seconds between polls of the engines' health and inventory.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        poll: u64,
    },
    /// Engines the tower manages.
    #[command(subcommand)]
    Engine(EngineCmd),
    /// Bearer tokens for the tower's API and UI.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum EngineCmd {
    /// Register an engine (a `pgvirt serve`), checked first: it must answer.
    Add {
        /// The engine's name in the tower.
        name: String,
        /// Its API URL (`http://host:port`).
        #[arg(long)]
        url: String,
        /// A file holding the engine's token (`pgvirt token create` on the engine).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// For an https:// engine: the CA certificates (PEM) that sign its certificate (default: the system's).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// The engines, with their health as last polled.
    List,
    /// Forget an engine (and what it showed); the engine is not changed.
    Remove {
        /// The engine's name in the tower.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a tower token and print it (the only time it is shown).
    Create {
        /// The token's name.
        name: String,
    },
}

pub fn exec(cmd: Cmd, store_path: PathBuf, cx: &Context) -> anyhow::Result<()> {
    let out = &cx.out;
    match cmd {
        Cmd::Serve { listen, poll } => crate::tower::serve(crate::tower::Options {
            listen,
            store_path,
            poll: Duration::from_secs(poll.max(1)),
        }),
        Cmd::Engine(EngineCmd::Add {
            name,
            url,
            token_file,
            ca_file,
        }) => {
            let ca_pem = match &ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("--ca-file {}: cannot read it", f.display()))?,
                ),
                None => None,
            };
            let token = std::fs::read_to_string(&token_file).with_context(|| {
                format!("--token-file {}: cannot read it", token_file.display())
            })?;
            let token = token.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "--token-file {}: the file is empty",
                token_file.display()
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let added = runtime
                .block_on(crate::tower::engines::add(
                    &store_path,
                    &name,
                    crate::tower::client::Endpoint {
                        url,
                        token: token.to_owned(),
                        ca_pem,
                    },
                ))
                .with_context(|| format!("adding engine {name}"))?;
            out.message(
                &format!(
                    "added engine {name} at {} (pgvirt {})",
                    added["url"].as_str().unwrap_or(""),
                    added["version"].as_str().unwrap_or("?")
                ),
                added,
            )
        }
        Cmd::Engine(EngineCmd::List) => {
            let engines = TowerStore::open(&store_path)?.engines()?;
            if out.is_json() {
                return out.json(&json!(engines));
            }
            let mut text = String::new();
            for e in &engines {
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}{}\n",
                    e.name,
                    e.url,
                    e.health,
                    e.version.as_deref().unwrap_or("-"),
                    e.error
                        .as_deref()
                        .map(|w| format!("\t{w}"))
                        .unwrap_or_default()
                ));
            }
            super::print_all(text.as_bytes())
        }
        Cmd::Engine(EngineCmd::Remove { name }) => {
            let e = TowerStore::open(&store_path)?
                .remove_engine(&name)
                .with_context(|| format!("removing engine {name}"))?;
            out.message(
                &format!("removed engine {}", e.name),
                json!({"removed": e.name}),
            )
        }
        Cmd::Token(TokenCmd::Create { name }) => {
            let secret = TowerStore::open(&store_path)?
                .create_token(&name)
                .with_context(|| format!("making tower token {name}"))?;
            if out.is_json() {
                out.json(&json!({"name": name, "token": secret}))
            } else {
                super::print_all(format!("{secret}\n").as_bytes())?;
                eprintln!("made tower token {name}; it is shown only now: keep it somewhere safe");
                Ok(())
            }
        }
    }
}
