//! `pgvirt token`: bearer tokens for the API (`pgvirt serve`). A token is
//! printed once, when made; only its hash is stored.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::Context;
use crate::host::tokens;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Make a token and print it (the only time it is shown).
    Create {
        /// The token's name (to list and revoke it by).
        name: String,
        /// The token may only read (GET requests).
        #[arg(long)]
        read_only: bool,
    },
    /// The tokens, by name (never the tokens themselves).
    List,
    /// Revoke a token: requests with it are refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

pub fn exec(cmd: Cmd, cx: &Context) -> anyhow::Result<()> {
    let store = cx.store()?;
    let out = &cx.out;
    match cmd {
        Cmd::Create { name, read_only } => {
            let (token, secret) = tokens::create(&store, &name, read_only)
                .with_context(|| format!("making token {name}"))?;
            if out.is_json() {
                out.json(
                    &json!({"name": token.name, "read_only": token.read_only, "token": secret}),
                )
            } else {
                // The token alone on standard output, for `$(pgvirt token create ...)`.
                super::print_all(format!("{secret}\n").as_bytes())?;
                eprintln!(
                    "made {}token {name}; it is shown only now: keep it somewhere safe",
                    if read_only { "read-only " } else { "" }
                );
                Ok(())
            }
        }
        Cmd::List => out.tokens(&tokens::list(&store)?),
        Cmd::Revoke { name } => {
            let t =
                tokens::revoke(&store, &name).with_context(|| format!("revoking token {name}"))?;
            out.message(
                &format!("revoked token {}", t.name),
                json!({"revoked": t.name}),
            )
        }
    }
}
