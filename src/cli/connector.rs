//! `pgvirt connector`: validate, pack, install, list, and call connectors.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::flags::{self, ConnectorArg};
use super::Context;
use crate::host::connectors::{package::Package, registry};
use crate::host::environments as environment;
use crate::host::Error;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check a connector directory or connector.json: manifest, schemas, library.
    Validate {
        /// Connector directory (with plugin.json) or a packed connector.json.
        path: PathBuf,
        /// The library to check, instead of searching for it.
        #[arg(long)]
        library: Option<PathBuf>,
    },
    /// Write one self-contained connector.json (manifest, schemas, and the library in base64).
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
    /// Install or upgrade a connector (a lower version than the installed one
    /// is refused; a higher one runs its data migrations, all or nothing).
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

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let out = &cx.out;
    match cmd {
        Cmd::Validate { path, library } => {
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
        Cmd::Pack {
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
        Cmd::Install { path } => {
            let store = cx.store()?;
            let outcome = registry::install(&store, &path)
                .with_context(|| format!("installing connector {}", path.display()))?;
            let i = &outcome.installed;
            let text = match &outcome.previous_version {
                Some(_) if outcome.unchanged => format!(
                    "{} {}+{} is installed already; nothing to do",
                    i.name, i.version, i.build_number
                ),
                Some(prev) => {
                    let mut text = format!(
                        "installed {} {}+{} (replacing {prev})",
                        i.name, i.version, i.build_number
                    );
                    for m in &outcome.migrated {
                        text.push_str(&format!(
                            "\nmigrated {} {} document{} (migration{} {})",
                            m.documents,
                            m.definition,
                            if m.documents == 1 { "" } else { "s" },
                            if m.migrations.len() == 1 { "" } else { "s" },
                            m.migrations.join(", ")
                        ));
                    }
                    text
                }
                None => format!("installed {} {}+{}", i.name, i.version, i.build_number),
            };
            out.message(&text, serde_json::to_value(&outcome)?)
        }
        Cmd::List => out.connectors(&registry::list(&cx.store()?)?),
        Cmd::Call {
            operation,
            input,
            env,
            connector,
        } => {
            let store = cx.store()?;
            let environment = environment::get(&store, &env)?;
            let c = registry::open(&store, connector.connector.as_deref())?;
            let mut input = if input.as_os_str() == "-" {
                serde_json::from_reader(std::io::stdin())
                    .context("reading the input from standard input")?
            } else {
                flags::read_document(&input)?
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
