//! The connector manifest (`plugin.json`): the fields the host reads, its
//! version order (no downgrades), and its declared data migrations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

    /// Migration ids per definition, from `operations.upgrade`.
    pub fn migrations(&self) -> BTreeMap<String, Vec<String>> {
        self.operations
            .get("upgrade")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, ids)| {
                        let ids = ids
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_owned)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), ids)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
