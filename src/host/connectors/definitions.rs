//! The connector's definition schemas, compiled, and the checks the host runs
//! with them: every document that crosses the boundary, and every schema
//! against the draft-07 meta-schema.

use std::collections::BTreeMap;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::abi::operations::{DEFINITIONS, OPTIONAL_DEFINITIONS};
use crate::host::error::{Error, Problem, Result};

/// The compiled definition schemas of one connector: the six every
/// connector has, and the optional ones it declares.
pub struct Definitions {
    schemas: BTreeMap<String, Value>,
    validators: BTreeMap<String, Validator>,
}

impl Definitions {
    /// Compiles the schemas (a JSON object from definition key to schema).
    /// Each must be a valid draft-07 schema; `origin` names where they came
    /// from in error messages.
    pub fn compile(schemas: &Value, origin: &str) -> Result<Self> {
        let object = schemas
            .as_object()
            .ok_or_else(|| Error::usage(format!("{origin}: schemas must be a JSON object")))?;
        let mut problems = Vec::new();
        let mut validators = BTreeMap::new();
        let optional = OPTIONAL_DEFINITIONS
            .into_iter()
            .filter(|key| object.contains_key(*key));
        for key in DEFINITIONS.into_iter().chain(optional) {
            let Some(schema) = object.get(key) else {
                problems.push(Problem {
                    at: format!("{origin}#/{key}"),
                    message: "definition schema is missing".into(),
                });
                continue;
            };
            let found = check_schema(schema, key, &format!("{origin}#/{key}"));
            if !found.is_empty() {
                problems.extend(found);
                continue;
            }
            match jsonschema::draft7::new(schema) {
                Ok(v) => {
                    validators.insert(key.to_owned(), v);
                }
                Err(e) => problems.push(problem(&format!("{origin}#/{key}"), &e)),
            }
        }
        if !problems.is_empty() {
            return Err(Error::invalid(format!("the schemas of {origin}"), problems));
        }
        Ok(Self {
            schemas: object.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            validators,
        })
    }

    /// Validates `document` against definition `key`; `what` names the
    /// document in the error (a file, `repository [2]`, a flag).
    pub fn validate(&self, key: &str, document: &Value, what: &str) -> Result<()> {
        let problems = self.problems(key, document, what);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(what.to_owned(), problems))
        }
    }

    /// Every problem of `document` against definition `key`.
    pub fn problems(&self, key: &str, document: &Value, what: &str) -> Vec<Problem> {
        match self.validators.get(key) {
            Some(v) => v.iter_errors(document).map(|e| problem(what, &e)).collect(),
            None => vec![Problem {
                at: what.to_owned(),
                message: format!("no schema for definition {key:?}"),
            }],
        }
    }

    /// The `identityFields` of a definition (repository, source_config).
    pub fn identity_fields(&self, key: &str) -> Vec<String> {
        self.schemas
            .get(key)
            .and_then(|s| s.get("identityFields"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `nameField` of a definition.
    pub fn name_field(&self, key: &str) -> Option<String> {
        self.schemas
            .get(key)
            .and_then(|s| s.get("nameField"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The canonical identity of a document: its identity fields as a JSON
    /// object with sorted keys (equal identity, same object).
    pub fn identity(&self, key: &str, document: &Value) -> String {
        let mut identity = serde_json::Map::new();
        for field in self.identity_fields(key) {
            identity.insert(
                field.clone(),
                document.get(&field).cloned().unwrap_or(Value::Null),
            );
        }
        Value::Object(identity).to_string()
    }

    /// The display name of a document, by its `nameField`.
    pub fn display_name(&self, key: &str, document: &Value) -> String {
        self.name_field(key)
            .and_then(|f| document.get(&f).and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| self.identity(key, document))
    }

    /// A copy of `document` with every password field of definition `key`
    /// replaced by `********`, for showing.
    pub fn masked(&self, key: &str, document: &Value) -> Value {
        let mut doc = document.clone();
        mask_fields(&mut doc, &self.secret_fields(key));
        doc
    }

    /// The property names a schema marks `"format": "password"`, anywhere.
    pub fn secret_fields(&self, key: &str) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(schema) = self.schemas.get(key) {
            collect_secrets(schema, &mut found);
        }
        found
    }
}

fn mask_fields(value: &mut Value, secrets: &[String]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if secrets.contains(k) {
                    *v = Value::String("********".into());
                } else {
                    mask_fields(v, secrets);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_fields(v, secrets)),
        _ => {}
    }
}

fn collect_secrets(schema: &Value, found: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            if sub.get("format").and_then(Value::as_str) == Some("password") {
                found.push(name.clone());
            }
            collect_secrets(sub, found);
        }
    }
    for key in ["definitions", "$defs"] {
        if let Some(defs) = schema.get(key).and_then(Value::as_object) {
            defs.values().for_each(|s| collect_secrets(s, found));
        }
    }
    for key in ["items", "allOf", "anyOf", "oneOf", "then", "else"] {
        match schema.get(key) {
            Some(Value::Array(list)) => list.iter().for_each(|s| collect_secrets(s, found)),
            Some(sub @ Value::Object(_)) => collect_secrets(sub, found),
            _ => {}
        }
    }
}

/// Checks one schema document: against the draft-07 meta-schema, and, for
/// repository and source config, that `identityFields` and `nameField` name
/// declared, required properties.
pub fn check_schema(schema: &Value, key: &str, at: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Err(e) = jsonschema::draft7::meta::validate(schema) {
        problems.push(problem(at, &e));
        return problems;
    }
    if key == "repository" || key == "source_config" {
        let props = schema.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut named = Vec::new();
        match schema.get("identityFields").and_then(Value::as_array) {
            Some(fields) if !fields.is_empty() => {
                for (i, f) in fields.iter().enumerate() {
                    named.push((
                        join_pointer(at, &format!("/identityFields/{i}")),
                        f.as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
            _ => problems.push(Problem {
                at: join_pointer(at, "/identityFields"),
                message: "must be a non-empty array of property names".into(),
            }),
        }
        match schema.get("nameField").and_then(Value::as_str) {
            Some(f) => named.push((join_pointer(at, "/nameField"), f.to_owned())),
            None => problems.push(Problem {
                at: join_pointer(at, "/nameField"),
                message: "must name a property".into(),
            }),
        }
        for (path, name) in named {
            if !props.is_some_and(|p| p.contains_key(&name)) {
                problems.push(Problem {
                    at: path,
                    message: format!("names {name:?}, which is not a declared property"),
                });
            } else if !required.contains(&name.as_str()) {
                problems.push(Problem {
                    at: path,
                    message: format!("names {name:?}, which must also be required"),
                });
            }
        }
    }
    problems
}

/// A validation error as a [`Problem`] at `what#/json/pointer`. For unknown
/// properties the pointer names the property itself.
pub fn problem(what: &str, e: &ValidationError<'_>) -> Problem {
    let mut pointer = e.instance_path().to_string();
    let message = match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } if unexpected.len() == 1 => {
            pointer = format!("{pointer}/{}", unexpected[0]);
            format!("unknown property {:?}", unexpected[0])
        }
        _ => masked_message(e),
    };
    Problem {
        at: join_pointer(what, &pointer),
        message,
    }
}

/// `what#/pointer`, or `what/pointer` when `what` already has a fragment.
pub fn join_pointer(what: &str, pointer: &str) -> String {
    if what.contains('#') {
        format!("{what}{pointer}")
    } else {
        format!("{what}#{pointer}")
    }
}

/// The validator's message, without echoing the value when the schema marks
/// it as a password (the message would otherwise quote the secret).
fn masked_message(e: &ValidationError<'_>) -> String {
    let schema_path = e.schema_path().to_string();
    if schema_path.contains("password") || e.instance_path().to_string().contains("password") {
        return format!("value does not satisfy {schema_path}");
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs() -> Definitions {
        let any = json!({"type": "object"});
        let repo = json!({
            "type": "object",
            "identityFields": ["bin_dir"],
            "nameField": "name",
            "required": ["bin_dir", "name"],
            "additionalProperties": false,
            "properties": {"bin_dir": {"type": "string"}, "name": {"type": "string"},
                           "password": {"type": "string", "format": "password", "minLength": 12}}
        });
        let all = json!({
            "repository": repo, "source_config": repo, "linked_source": any,
            "virtual_source": any, "snapshot": any, "snapshot_parameters": any
        });
        Definitions::compile(&all, "test").expect("compiles")
    }

    #[test]
    fn unknown_property_is_reported_at_its_own_path() {
        let p = defs().problems(
            "repository",
            &json!({"bin_dir": "/x", "name": "x", "extra": 1}),
            "doc",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].at, "doc#/extra");
    }

    #[test]
    fn identity_is_canonical_and_secrets_are_found() {
        let d = defs();
        assert_eq!(
            d.identity("repository", &json!({"name": "a", "bin_dir": "/b"})),
            r#"{"bin_dir":"/b"}"#
        );
        assert_eq!(d.secret_fields("repository"), vec!["password".to_owned()]);
    }

    #[test]
    fn a_password_value_never_appears_in_a_problem() {
        let p = defs().problems(
            "repository",
            &json!({"bin_dir": "/x", "name": "x", "password": "hunter2"}),
            "doc",
        );
        assert_eq!(p.len(), 1);
        assert!(!p[0].to_string().contains("hunter2"), "{}", p[0]);
    }

    #[test]
    fn identity_fields_must_be_declared_and_required() {
        let schema = json!({"type": "object", "identityFields": ["nope"], "nameField": "name",
                            "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let p = check_schema(&schema, "repository", "s#/repository");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].at, "s#/repository/identityFields/0");
    }

    #[test]
    fn a_schema_with_a_wrong_type_fails_the_meta_schema() {
        let p = check_schema(&json!({"type": "strnig"}), "snapshot", "s#/snapshot");
        assert!(!p.is_empty());
        assert!(p[0].at.starts_with("s#/snapshot"), "{p:?}");
    }
}
