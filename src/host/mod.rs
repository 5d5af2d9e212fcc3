//! The engine: loads connectors through their libraries and runs the
//! workflows of the contract around them.
//!
//! - [`package`]: a connector on disk (directory or `connector.json`) and its validation.
//! - [`loader`]: the handshake, the `abi_stable` root module, schema-checked calls.
//! - [`definitions`]: the connector's compiled schemas.
//! - [`registry`]: installed connectors (no downgrades).
//! - [`environment`]: environments, commands as their OS user, the platform a connector gets.
//! - [`inventory`]: repositories and source configs, merged by identity.
//! - [`storage`]: the pool — datasets, snapshots, clones, mounts (btrfs, reflink, copy).
//! - [`timeflow`]: timeflows and snapshots with connector metadata; retention.
//! - [`dsource`]: link, sync, enable, disable, delete dSources.
//! - [`vdb`]: provision, start, stop, refresh, rewind, snapshot, delete VDBs.
//! - [`hooks`]: user shell hooks around workflows; [`workflow`]: mounting per the connector's specification.
//! - [`demo`]: the whole story on a fresh machine (`pgvirt demo`).
//! - [`store`]: the SQLite metadata store.
//!
//! Nothing here imports `crate::connector`: the engine reaches the connector
//! only through a loaded library.

pub mod definitions;
pub mod demo;
pub mod dsource;
pub mod environment;
pub mod error;
pub mod files;
pub mod hooks;
pub mod inventory;
pub mod loader;
pub mod package;
pub mod registry;
pub mod storage;
pub mod store;
pub mod timeflow;
pub mod vdb;
pub mod workflow;

pub use error::{Error, Problem, Result};
