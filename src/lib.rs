//! pgvirt: PostgreSQL data virtualization.
//!
//! One crate, two sides of a shared-library boundary:
//!
//! - [`abi`]: everything that crosses the boundary — the handshake symbol,
//!   the `abi_stable` root module, the platform callbacks, the JSON
//!   messages, the operation catalogue. Start here.
//! - `connector` (private): the PostgreSQL connector built into the `cdylib`:
//!   `discovery`, the linked lifecycle (`linked/`, one module per ingestion
//!   method), the virtual lifecycle (`virtual_db`). Its operation table is
//!   `src/connector/registry.rs`.
//! - [`host`]: the engine in the `pgvirt` binary, by domain — `connectors`
//!   (package, loader, registry, definitions), `environments`, `storage`,
//!   `lifecycle` (discovery, dSources, VDBs, timeflows, jobs and their
//!   repair), the `store`, and `secrets` sealed at rest.
//! - [`api`]: the HTTP API (`pgvirt serve`), a second face over [`host`]
//!   beside the command line, with jobs, tokens and an OpenAPI document.
//! - [`tower`]: the control tower (`pgvirt tower serve`): one API and a
//!   web UI over several engines, through their HTTP APIs — its own store
//!   and tokens, engine health and inventory, routed operations and jobs,
//!   connector distribution.
//! - [`cli`]: the `pgvirt` command line, one file per command group, a thin
//!   layer over [`host`] (the demo lives there too).
//!
//! `plugin.json` and `schema/` are the contract; `build.rs` embeds them in the
//! library and checks that the manifest and the operation table agree. The
//! host never imports `connector`: it reaches it only through the library.

pub mod abi;
pub mod api;
pub mod cli;
mod connector;
pub mod host;
pub mod tower;
