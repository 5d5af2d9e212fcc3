//! The JSON contract: example documents through the connector's schemas,
//! and `pgvirt connector validate` on good and broken packages.

use std::collections::BTreeMap;
use std::path::Path;

use pgvirt::host::connectors::definitions::Definitions;
use pgvirt::host::connectors::package::PLUGIN_SCHEMA;
use serde_json::{json, Value};

use crate::support::{connector_copy, edit_json, repo_root, Pgvirt};

/// Compiles the repository's schemas as the host does.
fn definitions() -> Definitions {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("plugin.json")).expect("plugin.json"),
    )
    .expect("json");
    let mut schemas = serde_json::Map::new();
    for (key, file) in manifest["schemas"].as_object().expect("schemas") {
        let text = std::fs::read_to_string(repo_root().join(file.as_str().expect("path")))
            .expect("schema file");
        schemas.insert(
            key.clone(),
            serde_json::from_str(&text).expect("schema json"),
        );
    }
    Definitions::compile(&Value::Object(schemas), "plugin.json").expect("schemas compile")
}

fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut docs: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.ends_with("expect.json"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            let doc = serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                .expect("example is JSON");
            (name, doc)
        })
        .collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}

/// Problems of a document: the definition's schema, or plugin.schema.json.
fn problems(defs: &Definitions, definition: &str, doc: &Value) -> Vec<String> {
    if definition == "plugin" {
        let schema: Value = serde_json::from_str(PLUGIN_SCHEMA).expect("plugin schema");
        let v = jsonschema::draft7::new(&schema).expect("compiles");
        return v
            .iter_errors(doc)
            .map(|e| pgvirt::host::connectors::definitions::problem("doc", &e).at)
            .collect();
    }
    defs.problems(definition, doc, "doc")
        .into_iter()
        .map(|p| p.at)
        .collect()
}

#[test]
fn every_example_document_validates_as_its_folder_says() {
    let defs = definitions();
    let examples = repo_root().join("tests/examples");
    let mut checked = 0;
    for definition in [
        "repository",
        "source_config",
        "linked_source",
        "virtual_source",
        "snapshot",
        "snapshot_parameters",
        "plugin",
    ] {
        let dir = examples.join(definition);
        let valid = documents(&dir.join("valid"));
        assert!(!valid.is_empty(), "{definition}: no valid examples");
        for (name, doc) in valid {
            let p = problems(&defs, definition, &doc);
            assert!(
                p.is_empty(),
                "{definition}/valid/{name} should be valid: {p:?}"
            );
            checked += 1;
        }
        let expect: BTreeMap<String, String> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("invalid/expect.json")).expect("invalid/expect.json"),
        )
        .expect("expect.json maps file to pointer");
        let invalid = documents(&dir.join("invalid"));
        assert!(!invalid.is_empty(), "{definition}: no invalid examples");
        for (name, doc) in invalid {
            let p = problems(&defs, definition, &doc);
            assert!(
                !p.is_empty(),
                "{definition}/invalid/{name} should be invalid"
            );
            let pointer = expect.get(&name).unwrap_or_else(|| {
                panic!("{definition}/invalid/expect.json has no entry for {name}")
            });
            // Unknown properties are reported at the property itself.
            let at_parent = format!("doc#{pointer}");
            assert!(
                p.iter()
                    .any(|at| at == &at_parent || at.starts_with(&format!("{at_parent}/"))),
                "{definition}/invalid/{name}: expected a problem at {pointer}, got {p:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} examples checked");
}

#[test]
fn secrets_are_marked_password_in_the_schemas() {
    let defs = definitions();
    assert!(defs
        .secret_fields("linked_source")
        .contains(&"replication_password".to_owned()));
    assert!(defs
        .secret_fields("source_config")
        .contains(&"password".to_owned()));
    assert!(defs
        .secret_fields("export")
        .contains(&"password".to_owned()));
}

#[test]
fn the_repository_is_a_valid_connector() {
    let p = Pgvirt::new();
    let out = p.json(&[
        "connector",
        "validate",
        repo_root().to_str().expect("utf-8"),
    ]);
    assert_eq!(out["valid"], json!(true), "{out}");
    assert_eq!(out["problems"], json!([]));
}

fn validate_fails(dir: &Path) -> String {
    Pgvirt::new().fails(&["connector", "validate", dir.to_str().expect("utf-8")])
}

#[test]
fn a_manifest_with_an_unknown_key_is_named() {
    let pkg = connector_copy();
    edit_json(&pkg.path().join("plugin.json"), |m| {
        m["frobnicate"] = json!(true);
    });
    let err = validate_fails(pkg.path());
    assert!(err.contains("plugin.json#/frobnicate"), "{err}");
    assert!(err.contains("unknown property"), "{err}");
}

#[test]
fn a_schema_with_a_wrong_type_is_named() {
    let pkg = connector_copy();
    edit_json(&pkg.path().join("schema/snapshot.json"), |s| {
        s["properties"]["timeline"]["type"] = json!("integr");
    });
    let err = validate_fails(pkg.path());
    assert!(
        err.contains("schema/snapshot.json#/properties/timeline/type"),
        "{err}"
    );
}

#[test]
fn an_operation_exported_but_not_declared_is_named() {
    let pkg = connector_copy();
    edit_json(&pkg.path().join("plugin.json"), |m| {
        m["operations"]["upgrade"] = json!(["snapshot"]);
    });
    let err = validate_fails(pkg.path());
    assert!(
        err.contains("plugin.json#/operations: the library exports operation upgrade.linked_source, which the manifest does not declare"),
        "{err}"
    );
}

#[test]
fn migrations_of_a_definition_without_its_upgrade_operation_are_named() {
    let pkg = connector_copy();
    edit_json(&pkg.path().join("plugin.json"), |m| {
        m["operations"]["upgrade"] = json!(["snapshot"]);
        m["upgrade"] = json!({"linked_source": [
            {"id": "1", "steps": [{"remove": {"at": "/x"}}]},
            {"id": "1", "steps": [{"remove": {"at": "/y"}}]}
        ]});
    });
    let err = validate_fails(pkg.path());
    assert!(
        err.contains("plugin.json#/upgrade/linked_source: has migrations, but operations.upgrade does not list \"linked_source\""),
        "{err}"
    );
    assert!(
        err.contains(
            "plugin.json#/upgrade/linked_source/1/id: migration id \"1\" is declared twice"
        ),
        "{err}"
    );
}

#[test]
fn a_malformed_manifest_names_line_and_column() {
    let pkg = connector_copy();
    std::fs::write(pkg.path().join("plugin.json"), "{\n  \"id\": \n}").expect("write");
    let err = validate_fails(pkg.path());
    assert!(err.contains("plugin.json:3:1"), "{err}");
}

#[test]
fn pack_then_install_then_reinstall_the_same_version() {
    let p = Pgvirt::new();
    let out = p.dir().join("dist");
    p.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("connector.json")).expect("connector.json"),
    )
    .expect("json");
    assert_eq!(bundle["format"], json!("pgvirt-connector/1"));
    assert_eq!(bundle["library"]["file"], json!("libpgvirt.so"));
    // The six definitions and the optional `export`.
    assert_eq!(bundle["schemas"].as_object().expect("inlined").len(), 7);
    // Self-contained: the library is inside, nothing beside it.
    assert!(bundle["library"]["base64"]
        .as_str()
        .is_some_and(|b| b.len() > 1000));
    assert!(!out.join("libpgvirt.so").exists());
    // The packed file validates on its own.
    p.ok(&[
        "connector",
        "validate",
        out.join("connector.json").to_str().expect("utf-8"),
    ]);

    let json_path = out.join("connector.json");
    let first = p.json(&["connector", "install", json_path.to_str().expect("utf-8")]);
    assert_eq!(first["previous_version"], Value::Null);
    let again = p.json(&["connector", "install", json_path.to_str().expect("utf-8")]);
    assert_eq!(again["previous_version"], json!("0.1.0+1"));
    let list = p.json(&["connector", "list"]);
    assert_eq!(list.as_array().expect("list").len(), 1, "{list}");
}

#[test]
fn a_tampered_library_fails_the_packed_checksum() {
    let p = Pgvirt::new();
    let out = p.dir().join("dist");
    p.ok(&[
        "connector",
        "pack",
        repo_root().to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    // Three more bytes (zeros) at the end of the embedded library (decoded
    // and encoded again: appending "AAAA" to text that ends in padding
    // would be no base64 at all).
    edit_json(&out.join("connector.json"), |b| {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut lib = engine
            .decode(b["library"]["base64"].as_str().expect("base64"))
            .expect("decodes");
        lib.extend_from_slice(&[0, 0, 0]);
        b["library"]["base64"] = json!(engine.encode(lib));
    });
    let err = p.fails(&[
        "connector",
        "install",
        out.join("connector.json").to_str().expect("utf-8"),
    ]);
    assert!(err.contains("#/library/sha256"), "{err}");
    assert!(p
        .json(&["connector", "list"])
        .as_array()
        .expect("list")
        .is_empty());
}

#[test]
fn a_lower_version_than_the_installed_one_is_refused() {
    let p = Pgvirt::new();
    p.ok(&["connector", "install", repo_root().to_str().expect("utf-8")]);
    // Stand in for a newer release having been installed: the store records
    // version 9.0.0 for this connector id.
    let store = pgvirt::host::store::Store::open(&p.store()).expect("store");
    let manifest: String = store
        .conn()
        .query_row("SELECT manifest FROM connectors", [], |r| r.get(0))
        .expect("row");
    let mut manifest: Value = serde_json::from_str(&manifest).expect("json");
    manifest["version"] = json!("9.0.0");
    store
        .conn()
        .execute(
            "UPDATE connectors SET version = '9.0.0', manifest = ?1",
            [manifest.to_string()],
        )
        .expect("update");
    drop(store);
    let err = p.fails(&["connector", "install", repo_root().to_str().expect("utf-8")]);
    assert!(err.contains("downgrades are not supported"), "{err}");
    assert!(err.contains("9.0.0"), "{err}");
    let list = p.json(&["connector", "list"]);
    assert_eq!(
        list[0]["version"],
        json!("9.0.0"),
        "the installed record is untouched"
    );
}

/// The host reaches the connector only through the loaded library: no
/// module of the engine (or the CLI, or the boundary) names the connector.
#[test]
fn the_host_never_imports_connector_code() {
    let mut stack = vec![
        repo_root().join("src/host"),
        repo_root().join("src/cli"),
        repo_root().join("src/abi"),
    ];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                let code: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                assert!(
                    !code.contains("crate::connector") && !code.contains("super::connector"),
                    "{} uses connector code",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 15, "only {checked} files checked");
}
