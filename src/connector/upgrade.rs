//! Data migrations: `upgrade.<definition>` applies one migration that this
//! release's manifest declares (its top-level `upgrade` section) to one
//! stored document. The migrations are data, not code: each is a list of
//! steps on JSON Pointers (`rename`, `default`, `remove`), so renaming a
//! field in a release is a line of `plugin.json`.
//!
//! Input: `{"migration_id": "1.1", "parameters": {...}}`; output: the
//! migrated document. The host runs them in migration-id order and
//! validates the result against the new schemas.

use serde_json::{Map, Value};

use super::{embedded, Platform};
use crate::abi::{ErrorKind, OperationError};

pub(super) fn repository(_: &Platform, input: &Value) -> Result<Value, OperationError> {
    migrate("repository", input)
}

pub(super) fn source_config(_: &Platform, input: &Value) -> Result<Value, OperationError> {
    migrate("source_config", input)
}

pub(super) fn linked_source(_: &Platform, input: &Value) -> Result<Value, OperationError> {
    migrate("linked_source", input)
}

pub(super) fn virtual_source(_: &Platform, input: &Value) -> Result<Value, OperationError> {
    migrate("virtual_source", input)
}

pub(super) fn snapshot(_: &Platform, input: &Value) -> Result<Value, OperationError> {
    migrate("snapshot", input)
}

fn invalid(message: impl Into<String>) -> OperationError {
    OperationError::new(ErrorKind::InvalidInput, message)
}

fn migrate(definition: &str, input: &Value) -> Result<Value, OperationError> {
    let id = input
        .get("migration_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("input has no migration_id (a string)"))?;
    let mut doc = input
        .get("parameters")
        .cloned()
        .ok_or_else(|| invalid("input has no parameters (the document to migrate)"))?;
    let manifest: Value = serde_json::from_str(embedded::MANIFEST).map_err(|e| {
        OperationError::new(
            ErrorKind::Internal,
            format!("the embedded manifest is not JSON: {e}"),
        )
    })?;
    let migration = manifest
        .pointer(&format!("/upgrade/{definition}"))
        .and_then(Value::as_array)
        .and_then(|all| {
            all.iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
        })
        .ok_or_else(|| {
            invalid(format!(
                "this release declares no {definition} migration {id:?}"
            ))
        })?;
    let steps = migration
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{definition} migration {id} has no steps")))?;
    for (i, step) in steps.iter().enumerate() {
        apply(&mut doc, step)
            .map_err(|e| invalid(format!("{definition} migration {id}, step {i}: {e}")))?;
    }
    Ok(doc)
}

/// Applies one step to `doc`.
pub(super) fn apply(doc: &mut Value, step: &Value) -> Result<(), String> {
    let arg = |kind: &str, key: &str| -> Result<String, String> {
        step.pointer(&format!("/{kind}/{key}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{kind} needs {key:?} (a JSON Pointer)"))
    };
    if step.get("rename").is_some() {
        let (from, to) = (arg("rename", "from")?, arg("rename", "to")?);
        let Some(value) = take(doc, &from)? else {
            return Ok(());
        };
        if doc.pointer(&to).is_some() {
            return Err(format!("cannot rename {from} to {to}: {to} is set already"));
        }
        put(doc, &to, value)
    } else if let Some(default) = step.get("default") {
        let at = arg("default", "at")?;
        let value = default
            .get("value")
            .cloned()
            .ok_or("default needs \"value\"")?;
        if doc.pointer(&at).is_some() {
            return Ok(());
        }
        put(doc, &at, value)
    } else if step.get("remove").is_some() {
        take(doc, &arg("remove", "at")?).map(|_| ())
    } else {
        Err(format!("unknown step {step} (rename, default or remove)"))
    }
}

/// The tokens of a JSON Pointer (`/a/b~1c` is `a`, `b/c`).
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("{pointer:?} is not a JSON Pointer below the root"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn split_last(pointer: &str) -> Result<(String, String), String> {
    let mut parts = tokens(pointer)?;
    let last = parts.pop().unwrap_or_default();
    let parent = parts
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect();
    Ok((parent, last))
}

/// Removes and returns what is at `pointer`, if anything.
fn take(doc: &mut Value, pointer: &str) -> Result<Option<Value>, String> {
    let (parent, last) = split_last(pointer)?;
    Ok(match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&last),
        _ => None,
    })
}

/// Sets `value` at `pointer`, making the objects on the way.
fn put(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let parts = tokens(pointer)?;
    let mut at = doc;
    let count = parts.len();
    for (i, token) in parts.into_iter().enumerate() {
        let Value::Object(map) = at else {
            return Err(format!("cannot set {pointer}: a parent is not an object"));
        };
        if i + 1 == count {
            map.insert(token, value);
            return Ok(());
        }
        at = map
            .entry(token)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_rename_default_and_remove() {
        let mut doc = json!({"source": {"host": "h", "old": 5}, "x": 1});
        apply(
            &mut doc,
            &json!({"rename": {"from": "/source/old", "to": "/source/new"}}),
        )
        .expect("rename");
        apply(&mut doc, &json!({"default": {"at": "/a/b", "value": true}})).expect("default");
        apply(
            &mut doc,
            &json!({"default": {"at": "/source/new", "value": 9}}),
        )
        .expect("kept");
        apply(&mut doc, &json!({"remove": {"at": "/x"}})).expect("remove");
        assert_eq!(
            doc,
            json!({"source": {"host": "h", "new": 5}, "a": {"b": true}})
        );
        // Absent: nothing to rename.
        apply(
            &mut doc,
            &json!({"rename": {"from": "/source/gone", "to": "/source/new2"}}),
        )
        .expect("no-op");
        assert!(doc.pointer("/source/new2").is_none());
    }

    #[test]
    fn a_rename_onto_a_set_field_is_an_error() {
        let mut doc = json!({"a": 1, "b": 2});
        let e =
            apply(&mut doc, &json!({"rename": {"from": "/a", "to": "/b"}})).expect_err("refused");
        assert!(e.contains("/b"), "{e}");
        assert!(apply(&mut doc, &json!({"frobnicate": {}})).is_err());
    }
}
