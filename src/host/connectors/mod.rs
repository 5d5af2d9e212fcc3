//! Connectors as the engine knows them: packages on disk, the library
//! loaded through its handshake, the compiled schemas, and the installed ones.
//!
//! - [`manifest`]: the fields of `plugin.json` the host reads; version order.
//! - [`package`]: a connector directory or packed `connector.json`, and its validation.
//! - [`loader`]: the handshake, the `abi_stable` root module, schema-checked calls.
//! - [`definitions`]: the connector's compiled schemas (validation, identity, secrets).
//! - [`registry`]: installed connectors (no downgrades; upgrades in one transaction).
//! - [`upgrade`]: the data migrations an upgrade runs over stored documents.
//! - [`scratch`]: what an install writes before it commits; the sweep after a kill.

pub mod definitions;
pub mod loader;
pub mod manifest;
pub mod package;
pub mod registry;
pub mod scratch;
pub mod upgrade;
