//! The catalogue of connector operations: their ids, and which definition
//! schema each input field and each output is checked against.
//!
//! Operation ids are `group.name` (`discovery.repository`,
//! `linked.pre_snapshot`, `virtual.start`). Data migrations go through one
//! operation per definition, `upgrade.<definition>` (`upgrade.linked_source`),
//! whose input is `{"migration_id": "1.1", "parameters": {...}}` and whose
//! output is the migrated document; the migrations themselves are data in
//! the manifest's top-level `upgrade` section.
//!
//! Inputs are JSON objects. A field named after a definition (`repository`,
//! `source_config`, `linked_source`, `virtual_source`, `snapshot`,
//! `snapshot_parameters`) holds a document of that definition; other fields
//! (`environment`, `mount`, ...) are host-owned.

/// The six definitions a connector declares schemas for, by manifest key.
pub const DEFINITIONS: [&str; 6] = [
    "repository",
    "source_config",
    "linked_source",
    "virtual_source",
    "snapshot",
    "snapshot_parameters",
];

/// Definitions a connector may declare besides the six: `export`, the
/// definition of a table export (seed 004), for connectors with the
/// `export` operations.
pub const OPTIONAL_DEFINITIONS: [&str; 1] = ["export"];

/// The operation groups and the operations each may hold.
pub const GROUPS: [(&str, &[&str]); 5] = [
    ("discovery", &["repository", "source_config"]),
    (
        "linked",
        &[
            "mount_specification",
            "pre_snapshot",
            "post_snapshot",
            "start_staging",
            "stop_staging",
            "status",
            "worker",
            "source_size",
            "wal_range",
            "wal_prune",
        ],
    ),
    (
        "virtual",
        &[
            "mount_specification",
            "configure",
            "reconfigure",
            "unconfigure",
            "cleanup",
            "start",
            "stop",
            "status",
            "pre_snapshot",
            "post_snapshot",
            "initialize",
            "source_size",
            "archive_wal",
            "wal_range",
            "wal_prune",
        ],
    ),
    (
        "export",
        &["ddl", "install", "export", "status", "reset", "uninstall"],
    ),
    ("upgrade", &MIGRATABLE),
];

/// Definitions that can carry data migrations (`upgrade.<definition>`).
pub const MIGRATABLE: [&str; 5] = [
    "repository",
    "source_config",
    "linked_source",
    "virtual_source",
    "snapshot",
];

/// What an operation's output must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// An array of documents of a definition (discovery).
    ListOf(&'static str),
    /// One document of a definition.
    One(&'static str),
    /// `{"status": "ACTIVE" | "INACTIVE"}`.
    Status,
    /// A non-negative integer (bytes).
    Size,
    /// Any JSON object (host-owned shape, checked by the workflow using it).
    Object,
}

/// A parsed operation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationId {
    pub group: String,
    pub name: String,
}

impl OperationId {
    /// Parses `group.name`, checking it against the catalogue. The error
    /// says what is wrong with the id.
    pub fn parse(id: &str) -> Result<Self, String> {
        let (group, rest) = id
            .split_once('.')
            .ok_or_else(|| format!("operation id {id:?} is not of the form group.name"))?;
        let names = GROUPS
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, names)| *names)
            .ok_or_else(|| {
                format!("operation {id:?} is in unknown group {group:?} (discovery, linked, virtual, export, upgrade)")
            })?;
        if !names.contains(&rest) {
            return Err(format!(
                "operation {id:?}: {group} has no operation {rest:?} (known: {})",
                names.join(", ")
            ));
        }
        Ok(Self {
            group: group.into(),
            name: rest.into(),
        })
    }

    /// What the output of this operation must be.
    pub fn output(&self) -> Output {
        match (self.group.as_str(), self.name.as_str()) {
            ("discovery", "repository") => Output::ListOf("repository"),
            ("discovery", "source_config") => Output::ListOf("source_config"),
            ("upgrade" | "export", _) => Output::Object,
            (_, "post_snapshot") => Output::One("snapshot"),
            ("virtual", "configure" | "reconfigure" | "initialize") => Output::One("source_config"),
            (_, "status") => Output::Status,
            (_, "source_size") => Output::Size,
            _ => Output::Object,
        }
    }
}

/// A migration id is dotted numeric: `1`, `1.2`, `2024.3.1`.
pub fn check_migration_id(id: &str) -> Result<(), String> {
    if !id.is_empty()
        && id
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!(
            "migration id {id:?} is not dotted numeric (like 1.2.0)"
        ))
    }
}

/// Orders migration ids numerically part by part (`1.10` after `1.9`).
pub fn compare_migration_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_operations_and_migrations() {
        let op = OperationId::parse("linked.pre_snapshot").expect("known op");
        assert_eq!(op.output(), Output::Object);
        assert_eq!(
            OperationId::parse("virtual.post_snapshot")
                .expect("known")
                .output(),
            Output::One("snapshot")
        );
        let m = OperationId::parse("upgrade.source_config").expect("migration");
        assert_eq!(m.output(), Output::Object);
    }

    #[test]
    fn rejects_unknown_groups_names_and_bad_migration_ids() {
        assert!(OperationId::parse("linked.configure").is_err());
        assert!(OperationId::parse("foo.bar").is_err());
        assert!(OperationId::parse("nodot").is_err());
        assert!(OperationId::parse("upgrade.environment").is_err());
        assert!(OperationId::parse("upgrade.snapshot@1").is_err());
        assert!(check_migration_id("1.x").is_err());
    }

    #[test]
    fn migration_ids_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_migration_ids("1.9", "1.10"), Less);
        assert_eq!(compare_migration_ids("2", "1.99"), Greater);
        assert_eq!(compare_migration_ids("1.0", "1.0"), Equal);
    }
}
