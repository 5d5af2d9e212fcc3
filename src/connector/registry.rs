//! Every operation this connector implements, by id.
//!
//! `build.rs` reads this table (one `("group.name", handler)` per line) and
//! fails the build when it and `plugin.json` disagree. Add an operation here
//! and in `plugin.json` together.

use serde_json::Value;

use super::{discovery, linked, Platform};
use crate::abi::OperationError;

/// An operation: JSON input in, JSON output or an error out.
pub(super) type Handler = fn(&Platform, &Value) -> Result<Value, OperationError>;

pub(super) const REGISTRY: &[(&str, Handler)] = &[
    ("discovery.repository", discovery::repository),
    ("discovery.source_config", discovery::source_config),
    ("linked.mount_specification", linked::mount_specification),
    ("linked.pre_snapshot", linked::pre_snapshot),
    ("linked.post_snapshot", linked::post_snapshot),
    ("linked.start_staging", linked::start_staging),
    ("linked.stop_staging", linked::stop_staging),
    ("linked.status", linked::status),
    ("linked.worker", linked::worker),
    ("linked.source_size", linked::source_size),
];
