//! `pgvirt repo`: the PostgreSQL installations found on environments.

use clap::Subcommand;

use super::Context;
use crate::host::lifecycle::discovery;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List repositories.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    match cmd {
        Cmd::List { env } => cx
            .out
            .repositories(&discovery::repositories(&store, env.as_deref())?),
    }
}
