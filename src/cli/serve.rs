//! `pgvirt serve`: the HTTP API ([`crate::api`]) over the same store.

use std::net::SocketAddr;

use clap::Args;

use super::Context;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR:PORT")]
    listen: SocketAddr,
}

pub fn exec(args: ServeArgs, cx: &Context) -> anyhow::Result<()> {
    crate::api::serve(crate::api::Options {
        listen: args.listen,
        store_path: cx.store_path.clone(),
    })
}
