//! pgvirt: PostgreSQL data virtualization.
//!
//! One crate, two sides of a shared-library boundary:
//!
//! - [`abi`]: everything that crosses the boundary — the handshake symbol,
//!   the `abi_stable` root module, the platform callbacks, the operation
//!   catalogue. Start here.
//! - `connector` (private): the PostgreSQL connector built into the `cdylib`:
//!   discovery now; the linked (staging) and virtual (VDB) lifecycles follow.
//!   Its operation table is `src/connector/registry.rs`.
//! - [`host`]: the engine in the `pgvirt` binary — loader, installed
//!   connectors, environments, discovery inventory, metadata store.
//! - [`cli`]: the `pgvirt` command line, a thin layer over [`host`].
//!
//! `plugin.json` and `schema/` are the contract; `build.rs` embeds them in the
//! library and checks that the manifest and the operation table agree.

pub mod abi;
pub mod cli;
mod connector;
pub mod host;
