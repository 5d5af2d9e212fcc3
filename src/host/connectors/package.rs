//! A connector package as it sits on disk, and its validation.
//!
//! Two forms carry the same thing:
//! - a **directory** with `plugin.json`, the schema files it names, and the
//!   library (in the directory, its `target/release` or `target/debug`, or
//!   beside the running `pgvirt`);
//! - a self-contained **`connector.json`** (made by `connector pack`, taken
//!   by `POST /connectors`) with the manifest, the schemas inlined, and the
//!   library itself (`library.base64`, with its file name and sha256). The
//!   engine's own copy of an installed connector leaves the library out
//!   (`library.base64` absent): the file sits beside it.
//!
//! [`Package::validate`] checks everything `pgvirt connector validate`
//! promises and returns every problem with its JSON path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::abi::manifest::declared_operations;
use crate::abi::ABI_VERSION;
use crate::host::connectors::definitions::{check_schema, join_pointer, problem, Definitions};
use crate::host::connectors::loader::{Connector, Library};
use crate::host::connectors::manifest::Manifest;
use crate::host::error::{Error, Problem, Result};
use crate::host::files;

/// The schema of `plugin.json`, as this host understands it.
pub const PLUGIN_SCHEMA: &str = include_str!("../../../schema/plugin.schema.json");

/// The `format` tag of a packed `connector.json`.
pub const BUNDLE_FORMAT: &str = "pgvirt-connector/1";

/// The library inside a `connector.json`, or beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryPlacement {
    /// In `library.base64`: the file alone is the connector (pack, upload).
    Embedded,
    /// Only its name and sha256; the file sits beside (the engine's copy).
    Beside,
}

/// A connector package read from disk.
pub struct Package {
    /// The directory or `connector.json` it was read from.
    pub origin: PathBuf,
    /// How problems name the manifest: `plugin.json` or `connector.json#/manifest`.
    manifest_at: String,
    pub manifest_value: Value,
    /// Definition key to (schema document, how problems name it).
    schemas: BTreeMap<String, (Value, String)>,
    /// The library file, if one was found.
    pub library: Option<PathBuf>,
    /// The sha256 the bundle records for the library.
    recorded_sha256: Option<String>,
    /// Problems found while reading (missing files, bad paths).
    read_problems: Vec<Problem>,
    /// Where an embedded library was written out, kept while the package is.
    _scratch: Option<tempfile::TempDir>,
}

impl Package {
    /// Reads a package from a directory or a `connector.json`.
    /// `library` overrides where the library is looked for.
    pub fn read(origin: &Path, library: Option<&Path>) -> Result<Self> {
        Self::read_in(origin, library, &std::env::temp_dir())
    }

    /// [`Package::read`], writing an embedded library out under `scratch`.
    pub fn read_in(origin: &Path, library: Option<&Path>, scratch: &Path) -> Result<Self> {
        let meta = std::fs::metadata(origin)
            .map_err(|e| Error::io("cannot read connector package", origin, e))?;
        let mut package = if meta.is_dir() {
            Self::read_dir(origin)?
        } else {
            Self::read_bundle(origin, scratch)?
        };
        if let Some(lib) = library {
            package.library = Some(lib.to_owned());
        }
        Ok(package)
    }

    /// A package made from a library alone: the manifest and schemas it
    /// embeds. What `pgvirt demo` installs on a fresh machine.
    pub fn from_library(library: &Path) -> Result<Self> {
        let lib = Library::open(library)?;
        let manifest_value: Value = serde_json::from_str(&lib.manifest_text())
            .map_err(|e| Error::load(library, format!("its embedded manifest is not JSON: {e}")))?;
        let schemas = lib.schemas()?;
        let schemas = schemas
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            (v.clone(), format!("{}#/schemas/{k}", library.display())),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            origin: library.to_owned(),
            manifest_at: format!("{}#/manifest", library.display()),
            manifest_value,
            schemas,
            library: Some(library.to_owned()),
            recorded_sha256: None,
            read_problems: Vec::new(),
            _scratch: None,
        })
    }

    fn read_dir(dir: &Path) -> Result<Self> {
        let manifest_value = files::read_json(&dir.join("plugin.json"))?;
        let mut read_problems = Vec::new();
        let mut schemas = BTreeMap::new();
        if let Some(map) = manifest_value.get("schemas").and_then(Value::as_object) {
            for (key, file) in map {
                let Some(file) = file.as_str() else { continue };
                let rel = Path::new(file);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| c == std::path::Component::ParentDir)
                {
                    read_problems.push(Problem {
                        at: format!("plugin.json#/schemas/{key}"),
                        message: format!(
                            "{file:?} must be a relative path inside the connector directory"
                        ),
                    });
                    continue;
                }
                match files::read_json(&dir.join(rel)) {
                    Ok(doc) => {
                        schemas.insert(key.clone(), (doc, file.to_owned()));
                    }
                    Err(e) => read_problems.push(Problem {
                        at: format!("plugin.json#/schemas/{key}"),
                        message: e.to_string(),
                    }),
                }
            }
        }
        let library = manifest_value
            .get("library")
            .and_then(Value::as_str)
            .and_then(|name| find_library(dir, name));
        Ok(Self {
            origin: dir.to_owned(),
            manifest_at: "plugin.json".into(),
            manifest_value,
            schemas,
            library,
            recorded_sha256: None,
            read_problems,
            _scratch: None,
        })
    }

    fn read_bundle(file: &Path, scratch: &Path) -> Result<Self> {
        let bundle = files::read_json(file)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let beside = file.parent().unwrap_or(Path::new("."));
        let mut package = Self::from_bundle(bundle, &name, beside, scratch)?;
        package.origin = file.to_owned();
        Ok(package)
    }

    /// A package from the JSON of a `connector.json` (`name` names it in
    /// problems). An embedded library is written out to a directory of this
    /// process under `scratch` (see [`scratch`](super::scratch)), removed
    /// with the package; a library not embedded is looked for in `beside`.
    pub fn from_bundle(bundle: Value, name: &str, beside: &Path, scratch: &Path) -> Result<Self> {
        let mut read_problems = Vec::new();
        if bundle.get("format").and_then(Value::as_str) != Some(BUNDLE_FORMAT) {
            read_problems.push(Problem {
                at: format!("{name}#/format"),
                message: format!("must be {BUNDLE_FORMAT:?} (made by `pgvirt connector pack`)"),
            });
        }
        let manifest_value = bundle.get("manifest").cloned().unwrap_or(Value::Null);
        let mut schemas = BTreeMap::new();
        if let Some(map) = bundle.get("schemas").and_then(Value::as_object) {
            for (key, doc) in map {
                schemas.insert(key.clone(), (doc.clone(), format!("{name}#/schemas/{key}")));
            }
        }
        let lib_name = bundle.pointer("/library/file").and_then(Value::as_str);
        let mut kept = None;
        let library = match (lib_name, bundle.pointer("/library/base64")) {
            (Some(n), _) if n.contains('/') || n.is_empty() => {
                read_problems.push(Problem {
                    at: format!("{name}#/library/file"),
                    message: "must be the library's file name".into(),
                });
                None
            }
            (Some(n), Some(encoded)) => {
                let bytes = encoded
                    .as_str()
                    .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok());
                match bytes {
                    Some(bytes) => {
                        files::create_private_dir(scratch)?;
                        let tmp = tempfile::Builder::new()
                            .prefix(&super::scratch::prefix())
                            .tempdir_in(scratch)
                            .map_err(|e| Error::io("cannot make a directory in", scratch, e))?;
                        let path = tmp.path().join(n);
                        files::write_atomic(&path, &bytes, 0o700)?;
                        kept = Some(tmp);
                        Some(path)
                    }
                    None => {
                        read_problems.push(Problem {
                            at: format!("{name}#/library/base64"),
                            message: "must be the library's bytes in base64 (as `pgvirt connector pack` writes)".into(),
                        });
                        None
                    }
                }
            }
            (Some(n), None) => Some(beside.join(n)),
            (None, _) => {
                read_problems.push(Problem {
                    at: format!("{name}#/library/file"),
                    message: "must be the library's file name".into(),
                });
                None
            }
        };
        Ok(Self {
            origin: PathBuf::from(name),
            manifest_at: format!("{name}#/manifest"),
            manifest_value,
            schemas,
            library,
            recorded_sha256: bundle
                .pointer("/library/sha256")
                .and_then(Value::as_str)
                .map(str::to_owned),
            read_problems,
            _scratch: kept,
        })
    }

    /// The schemas as one JSON object (definition key to schema).
    pub fn schemas_value(&self) -> Value {
        Value::Object(
            self.schemas
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Every problem with the package; empty when it is valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = self.read_problems.clone();
        let at = self.manifest_at.as_str();
        // 1. The manifest against plugin.schema.json.
        let plugin_schema: Value = serde_json::from_str(PLUGIN_SCHEMA).unwrap_or(Value::Null);
        match jsonschema::draft7::new(&plugin_schema) {
            Ok(v) => problems.extend(v.iter_errors(&self.manifest_value).map(|e| problem(at, &e))),
            Err(e) => problems.push(Problem {
                at: "schema/plugin.schema.json".into(),
                message: format!("the host's manifest schema does not compile: {e}"),
            }),
        }
        if !problems.is_empty() {
            return problems;
        }
        problems.extend(check_upgrade(&self.manifest_value, at));
        // 2. Each definition schema against draft-07, with identity fields.
        for (key, (doc, name)) in &self.schemas {
            problems.extend(check_schema(doc, key, name));
        }
        // 3. The library: present, unchanged, right ABI, same manifest and
        //    schemas, same operations.
        let Some(lib_path) = &self.library else {
            problems.push(Problem {
                at: join_pointer(at, "/library"),
                message: format!(
                    "library {:?} not found (looked in the package, its target/release and target/debug, and beside pgvirt); build it with `cargo build --release`",
                    self.manifest_value.get("library").and_then(Value::as_str).unwrap_or_default()
                ),
            });
            return problems;
        };
        if let Some(recorded) = &self.recorded_sha256 {
            match files::sha256_file(lib_path) {
                Ok(actual) if &actual == recorded => {}
                Ok(actual) => problems.push(Problem {
                    at: format!("{}#/library/sha256", self.origin.display()),
                    message: format!(
                        "library {} has sha256 {actual}, the package records {recorded}",
                        lib_path.display()
                    ),
                }),
                Err(e) => problems.push(Problem {
                    at: lib_path.display().to_string(),
                    message: e.to_string(),
                }),
            }
        }
        if let Some(declared) = self
            .manifest_value
            .get("abi_version")
            .and_then(Value::as_u64)
        {
            if declared != u64::from(ABI_VERSION) {
                problems.push(Problem {
                    at: join_pointer(at, "/abi_version"),
                    message: format!("declares ABI version {declared}, this pgvirt speaks ABI version {ABI_VERSION}"),
                });
            }
        }
        let library = match Library::open(lib_path) {
            Ok(l) => l,
            Err(e) => {
                problems.push(Problem {
                    at: lib_path.display().to_string(),
                    message: e.to_string(),
                });
                return problems;
            }
        };
        let embedded: Value = serde_json::from_str(&library.manifest_text()).unwrap_or(Value::Null);
        for path in json_differences(&embedded, &self.manifest_value, "") {
            problems.push(Problem {
                at: join_pointer(at, &path),
                message: format!(
                    "differs from the manifest embedded in {}; rebuild the library",
                    lib_path.display()
                ),
            });
        }
        match library.schemas() {
            Ok(embedded) => {
                for (key, (doc, name)) in &self.schemas {
                    let name = if name.contains('#') {
                        name.clone()
                    } else {
                        format!("{name}#")
                    };
                    for path in json_differences(embedded.get(key).unwrap_or(&Value::Null), doc, "")
                    {
                        problems.push(Problem {
                            at: format!("{name}{path}"),
                            message: format!(
                                "differs from the schema embedded in {}; rebuild the library",
                                lib_path.display()
                            ),
                        });
                    }
                }
            }
            Err(e) => problems.push(Problem {
                at: lib_path.display().to_string(),
                message: e.to_string(),
            }),
        }
        match declared_operations(&self.manifest_value) {
            Ok(declared) => {
                for (op, path) in &declared {
                    if !library.operations().contains(op) {
                        problems.push(Problem {
                            at: join_pointer(at, path),
                            message: format!(
                                "declares operation {op}, which the library does not export"
                            ),
                        });
                    }
                }
                for op in library.operations() {
                    if !declared.iter().any(|(d, _)| d == op) {
                        problems.push(Problem {
                            at: join_pointer(at, "/operations"),
                            message: format!("the library exports operation {op}, which the manifest does not declare"),
                        });
                    }
                }
            }
            Err(e) => problems.push(Problem {
                at: at.to_owned(),
                message: e,
            }),
        }
        problems
    }

    /// Validates, then opens the connector ready for calls.
    pub fn open(&self) -> Result<Connector> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(Error::invalid(
                format!("connector {}", self.origin.display()),
                problems,
            ));
        }
        let manifest: Manifest = serde_json::from_value(self.manifest_value.clone())
            .map_err(|e| Error::usage(format!("{}: {e}", self.manifest_at)))?;
        let definitions =
            Definitions::compile(&self.schemas_value(), &self.origin.display().to_string())?;
        let lib_path = self
            .library
            .as_deref()
            .ok_or_else(|| Error::usage("connector library not found"))?;
        Ok(Connector::new(
            manifest,
            definitions,
            Library::open(lib_path)?,
        ))
    }

    /// The `connector.json` for this (valid) package, with its library
    /// embedded or only named.
    pub fn bundle(&self, placement: LibraryPlacement) -> Result<Value> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(Error::invalid(
                format!("connector {}", self.origin.display()),
                problems,
            ));
        }
        let lib = self
            .library
            .as_deref()
            .ok_or_else(|| Error::usage("connector library not found"))?;
        let file = self
            .manifest_value
            .get("library")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::usage("the manifest names no library"))?;
        let mut library = json!({"file": file, "sha256": files::sha256_file(lib)?});
        if placement == LibraryPlacement::Embedded {
            let bytes = std::fs::read(lib).map_err(|e| Error::io("cannot read", lib, e))?;
            library["base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Ok(json!({
            "format": BUNDLE_FORMAT,
            "manifest": self.manifest_value,
            "schemas": self.schemas_value(),
            "library": library,
        }))
    }

    /// Writes the self-contained `connector.json` into `out` and returns
    /// its path.
    pub fn pack(&self, out: &Path) -> Result<PathBuf> {
        let bundle = self.bundle(LibraryPlacement::Embedded)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
        let path = out.join("connector.json");
        let text = serde_json::to_vec_pretty(&bundle).map_err(|e| Error::usage(e.to_string()))?;
        files::write_atomic(&path, &text, 0o644)?;
        Ok(path)
    }
}

/// The `upgrade` section: each definition with migrations has its
/// `upgrade.<definition>` operation, and no migration id twice.
fn check_upgrade(manifest: &Value, at: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let declared: Vec<&str> = manifest
        .pointer("/operations/upgrade")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(sections) = manifest.get("upgrade").and_then(Value::as_object) else {
        return problems;
    };
    for (definition, migrations) in sections {
        let list = migrations.as_array().map(Vec::as_slice).unwrap_or_default();
        if !list.is_empty() && !declared.contains(&definition.as_str()) {
            problems.push(Problem {
                at: join_pointer(at, &format!("/upgrade/{definition}")),
                message: format!(
                    "has migrations, but operations.upgrade does not list {definition:?}"
                ),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in list.iter().enumerate() {
            let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
            let parts: Vec<u64> = id.split('.').filter_map(|p| p.parse().ok()).collect();
            if !seen.insert(parts) {
                problems.push(Problem {
                    at: join_pointer(at, &format!("/upgrade/{definition}/{i}/id")),
                    message: format!("migration id {id:?} is declared twice"),
                });
            }
        }
    }
    problems
}

/// Where a library named `name` is looked for, for a package directory.
fn find_library(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    let mut candidates = vec![
        dir.join(name),
        dir.join("target/release").join(name),
        dir.join("target/debug").join(name),
    ];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        candidates.push(exe_dir.join(name));
        if let Some(up) = exe_dir.parent() {
            candidates.push(up.join(name)); // target/debug/deps -> target/debug
        }
    }
    // The freshest build wins when several exist.
    candidates
        .into_iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// JSON Pointers where `a` and `b` differ (at most 20).
fn json_differences(a: &Value, b: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(a, b, at, &mut out);
    out.truncate(20);
    out
}

fn diff_into(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_into(va, vb, &path, out),
                    _ => out.push(path),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff_into(va, vb, &format!("{at}/{i}"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(if at.is_empty() { "/".into() } else { at.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_json_pointers() {
        let a = json!({"a": 1, "b": [1, 2], "c": {"d": true}});
        let b = json!({"a": 1, "b": [1, 3], "c": {"d": true, "e": 0}});
        assert_eq!(json_differences(&a, &b, ""), vec!["/b/1", "/c/e"]);
        assert!(json_differences(&a, &a, "").is_empty());
    }

    #[test]
    fn the_hosts_plugin_schema_compiles() {
        let schema: Value =
            serde_json::from_str(PLUGIN_SCHEMA).expect("plugin.schema.json is JSON");
        jsonschema::draft7::new(&schema).expect("plugin.schema.json compiles");
    }
}
