//! The engine: loads connectors through their libraries and runs the
//! workflows of the contract around them. By domain:
//!
//! - [`connectors`]: packages, the loader, compiled schemas, installed connectors.
//! - [`environments`]: hosts and their OS users; commands run as that user;
//!   the platform a connector operation gets.
//! - [`storage`]: the pool — datasets, snapshots, clones, mounts, space
//!   (btrfs, XFS reflink, copy).
//! - [`lifecycle`]: discovery, dSources, VDBs, timeflows, hooks — the
//!   workflows that call the connector.
//! - [`store`]: the SQLite metadata store; [`secrets`]: secrets sealed at rest.
//!
//! Imports run one way, down this list's reverse: lifecycle uses storage,
//! environments and connectors; connectors use environments (for the
//! platform); everything uses the store. Nothing here imports
//! `crate::connector`: the engine reaches the connector only through a
//! loaded library.

pub mod connectors;
pub mod environments;
pub mod error;
pub mod files;
pub mod lifecycle;
pub mod processes;
pub mod secrets;
pub mod storage;
pub mod store;
pub mod tokens;

pub use error::{Error, Problem, Result};
