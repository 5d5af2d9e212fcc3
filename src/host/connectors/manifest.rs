//! The connector manifest (`plugin.json`): the fields the host reads, its
//! version order (no downgrades), and its declared data migrations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::abi::operations::compare_migration_ids;
use crate::host::error::{Error, Result};

/// The fields of `plugin.json` the host reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub version: String,
    pub build_number: String,
    pub abi_version: u32,
    pub host_types: Vec<String>,
    pub plugin_type: String,
    pub library: String,
    pub manual_discovery: bool,
    pub operations: Value,
    pub schemas: BTreeMap<String, String>,
    /// Data migrations per definition (see [`Manifest::migrations`]).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub upgrade: Value,
}

impl Manifest {
    /// The version as semver, with the build number to order equal versions.
    pub fn version_key(&self) -> Result<(semver::Version, Vec<u64>)> {
        let v = semver::Version::parse(&self.version).map_err(|e| {
            Error::usage(format!(
                "connector version {:?} is not semver: {e}",
                self.version
            ))
        })?;
        let build = self
            .build_number
            .split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect();
        Ok((v, build))
    }

    /// Migration ids per definition, from the `upgrade` section, each list
    /// in migration-id order.
    pub fn migrations(&self) -> BTreeMap<String, Vec<String>> {
        let mut all = BTreeMap::new();
        for (definition, list) in self.upgrade.as_object().into_iter().flatten() {
            let mut ids: Vec<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            ids.sort_by(|a, b| compare_migration_ids(a, b));
            all.insert(definition.clone(), ids);
        }
        all
    }

    /// `name version+build`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}+{}", self.name, self.version, self.build_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn migrations_come_in_id_order() {
        let m: Manifest = serde_json::from_value(json!({
            "id": "x", "name": "n", "version": "0.2.0", "build_number": "1", "abi_version": 1,
            "host_types": ["UNIX"], "plugin_type": "STAGED", "library": "l.so",
            "manual_discovery": true, "operations": {}, "schemas": {},
            "upgrade": {"linked_source": [{"id": "1.10", "steps": []}, {"id": "1.9", "steps": []}, {"id": "1", "steps": []}]}
        }))
        .expect("manifest");
        assert_eq!(m.migrations()["linked_source"], vec!["1", "1.9", "1.10"]);
    }
}
