//! Every operation this connector implements, by id.
//!
//! `build.rs` reads this table (one `("group.name", handler)` per line) and
//! fails the build when it and `plugin.json` disagree. Add an operation here
//! and in `plugin.json` together.

use serde_json::Value;

use super::{discovery, export, linked, upgrade, virtual_db, Platform};
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
    ("linked.wal_range", linked::wal_range),
    ("linked.wal_prune", linked::wal_prune),
    (
        "virtual.mount_specification",
        virtual_db::mount_specification,
    ),
    ("virtual.configure", virtual_db::configure),
    ("virtual.reconfigure", virtual_db::reconfigure),
    ("virtual.unconfigure", virtual_db::unconfigure),
    ("virtual.cleanup", virtual_db::cleanup),
    ("virtual.start", virtual_db::start),
    ("virtual.stop", virtual_db::stop),
    ("virtual.status", virtual_db::status),
    ("virtual.pre_snapshot", virtual_db::pre_snapshot),
    ("virtual.post_snapshot", virtual_db::post_snapshot),
    ("virtual.initialize", virtual_db::initialize),
    ("virtual.source_size", virtual_db::source_size),
    ("virtual.archive_wal", virtual_db::archive_wal),
    ("virtual.wal_range", linked::wal_range),
    ("virtual.wal_prune", linked::wal_prune),
    ("export.ddl", export::ddl),
    ("export.install", export::install),
    ("export.export", export::export),
    ("export.status", export::status),
    ("export.reset", export::reset),
    ("export.uninstall", export::uninstall),
    ("upgrade.repository", upgrade::repository),
    ("upgrade.source_config", upgrade::source_config),
    ("upgrade.linked_source", upgrade::linked_source),
    ("upgrade.virtual_source", upgrade::virtual_source),
    ("upgrade.snapshot", upgrade::snapshot),
];
