//! Reading the operations a `plugin.json` declares. Shared, file for file, by
//! `build.rs` (through `#[path]`) and the host, so both read a manifest the
//! same way. Depends on `serde_json` only.

use std::collections::BTreeSet;

use serde_json::Value;

/// `(operation id, JSON Pointer in plugin.json)` for every declared operation:
/// `group.name` for every group (`upgrade.<definition>` is the one generic
/// data-migration operation of a definition; the migrations themselves are
/// data, in the manifest's top-level `upgrade` section).
pub fn declared_operations(manifest: &Value) -> Result<Vec<(String, String)>, String> {
    let ops = manifest
        .get("operations")
        .and_then(Value::as_object)
        .ok_or("/operations must be an object")?;
    let mut declared = Vec::new();
    for (group, names) in ops {
        let at = format!("/operations/{group}");
        for (i, name) in string_list(names, &at)?.into_iter().enumerate() {
            declared.push((format!("{group}.{name}"), format!("{at}/{i}")));
        }
    }
    Ok(declared)
}

fn string_list(value: &Value, at: &str) -> Result<Vec<String>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("{at} must be an array"))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{at}/{i} must be a string"))
        })
        .collect()
}

/// The operation ids of a connector's `REGISTRY` table: the one string
/// literal of each `("group.name", handler)` entry, however rustfmt wraps it.
/// Comment lines do not count.
pub fn implemented_operations(registry_source: &str) -> Result<BTreeSet<String>, String> {
    let start = registry_source
        .find("REGISTRY")
        .ok_or("no REGISTRY table")?;
    let body = &registry_source[start..];
    let open = body
        .find("= &[")
        .ok_or("the REGISTRY table has no `= &[`")?;
    let close = body
        .find("];")
        .ok_or("the REGISTRY table has no closing `];`")?;
    let mut ops = BTreeSet::new();
    for line in body[open + 4..close].lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(begin) = rest.find('"') {
            let after = &rest[begin + 1..];
            let end = after
                .find('"')
                .ok_or_else(|| format!("unterminated literal in REGISTRY: {line}"))?;
            let op = &after[..end];
            if !ops.insert(op.to_owned()) {
                return Err(format!("operation {op:?} is registered twice"));
            }
            rest = &after[end + 1..];
        }
    }
    Ok(ops)
}

/// Every disagreement between the declared and the implemented operations,
/// as messages naming the operation and where it is (or is not) declared.
pub fn operation_drift(
    declared: &[(String, String)],
    implemented: &BTreeSet<String>,
    registry: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (op, at) in declared {
        if !implemented.contains(op) {
            problems.push(format!(
                "plugin.json#{at} declares operation {op:?} but {registry} does not implement it"
            ));
        }
    }
    for op in implemented {
        if !declared.iter().any(|(d, _)| d == op) {
            problems.push(format!(
                "{registry} implements operation {op:?} but plugin.json does not declare it"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REGISTRY: &str = r#"
        pub(super) const REGISTRY: &[(&str, Handler)] = &[
            (
                "discovery.repository",
                discovery::repository,
            ),
            // ("linked.status", linked::status),
            ("upgrade.snapshot", upgrade::snapshot),
        ];
    "#;

    #[test]
    fn reads_declared_operations_with_their_paths() {
        let manifest = json!({"operations": {
            "discovery": ["repository"], "linked": ["status"], "upgrade": ["snapshot"]
        }});
        let declared = declared_operations(&manifest).expect("reads");
        assert!(declared.contains(&("linked.status".into(), "/operations/linked/0".into())));
        assert!(declared.contains(&("upgrade.snapshot".into(), "/operations/upgrade/0".into())));
    }

    #[test]
    fn drift_names_the_operation_both_ways() {
        let implemented = implemented_operations(REGISTRY).expect("reads");
        assert_eq!(implemented.len(), 2, "commented-out entries do not count");
        let declared = vec![
            (
                "discovery.repository".to_owned(),
                "/operations/discovery/0".to_owned(),
            ),
            (
                "linked.status".to_owned(),
                "/operations/linked/0".to_owned(),
            ),
        ];
        let drift = operation_drift(&declared, &implemented, "registry.rs");
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert!(drift[0].contains("/operations/linked/0") && drift[0].contains("linked.status"));
        assert!(drift[1].contains("upgrade.snapshot") && drift[1].contains("does not declare"));
    }

    #[test]
    fn a_duplicate_registration_is_an_error() {
        let twice = "REGISTRY: &[(&str, H)] = &[\n(\"a.b\", x),\n(\n\"a.b\",\n y),\n];";
        assert!(implemented_operations(twice).is_err());
    }
}
