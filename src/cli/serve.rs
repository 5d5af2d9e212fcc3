//! `pgvirt serve`: the HTTP API ([`crate::api`]) over the same store.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::Context;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, readable only by pgvirt's user).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub fn exec(args: ServeArgs, cx: &Context) -> anyhow::Result<()> {
    crate::api::serve(crate::api::Options {
        listen: args.listen,
        store_path: cx.store_path.clone(),
        tls: args.tls_cert.zip(args.tls_key),
    })
}
