//! Loading a connector library: the `libloading` handshake first, then the
//! `abi_stable` root module, then calls through it.
//!
//! [`Library`] is the raw boundary (JSON text in and out).
//! [`Connector`] adds the contract: every input field named after a
//! definition, and every output, is validated against the connector's schemas.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RStr};
use serde_json::Value;

use crate::abi::operations::{OperationId, Output, DEFINITIONS, OPTIONAL_DEFINITIONS};
use crate::abi::{
    ConnectorModRef, ErrorKind, OperationError, Platform_TO, ABI_VERSION, HANDSHAKE_SYMBOL,
};
use crate::host::connectors::definitions::Definitions;
use crate::host::connectors::manifest::Manifest;
use crate::host::environments::HostPlatform;
use crate::host::error::{Error, Result};

/// Reads the ABI version a library was built for, without trusting anything
/// else in it.
pub fn handshake(path: &Path) -> Result<u32> {
    // SAFETY: loading a shared library runs its initialisers; we only load
    // files the user named as connectors. The symbol is read with the exact
    // signature every connector exports (`extern "C" fn() -> u32`), and the
    // library stays loaded while the function is called.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| Error::load(path, e.to_string()))?;
        let symbol = lib
            .get::<extern "C" fn() -> u32>(HANDSHAKE_SYMBOL)
            .map_err(|_| {
                Error::load(
                    path,
                    format!(
                        "it exports no `{}`: not a pgvirt connector",
                        String::from_utf8_lossy(HANDSHAKE_SYMBOL)
                    ),
                )
            })?;
        Ok(symbol())
    }
}

/// A loaded connector library.
pub struct Library {
    path: PathBuf,
    module: ConnectorModRef,
    operations: BTreeSet<String>,
}

impl Library {
    /// Loads the library at `path`, refusing one built for another ABI version.
    pub fn open(path: &Path) -> Result<Self> {
        let version = handshake(path)?;
        if version != ABI_VERSION {
            return Err(Error::load(
                path,
                format!(
                    "it was built for connector ABI version {version}, but this pgvirt speaks ABI version {ABI_VERSION}; \
                     rebuild the connector against this pgvirt"
                ),
            ));
        }
        let header = abi_stable::library::lib_header_from_path(path)
            .map_err(|e| Error::load(path, e.to_string()))?;
        let module = header
            .init_root_module::<ConnectorModRef>()
            .map_err(|e| Error::load(path, e.to_string()))?;
        let operations = (module.operations())()
            .into_iter()
            .map(|s| s.into_string())
            .collect();
        Ok(Self {
            path: path.to_owned(),
            module,
            operations,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest the library embeds, as text.
    pub fn manifest_text(&self) -> String {
        (self.module.manifest())().into_string()
    }

    /// The schemas the library embeds (definition key to schema).
    pub fn schemas(&self) -> Result<Value> {
        serde_json::from_str((self.module.schemas())().as_str()).map_err(|e| {
            Error::load(
                &self.path,
                format!("its embedded schemas are not JSON: {e}"),
            )
        })
    }

    /// The operations the library exports.
    pub fn operations(&self) -> &BTreeSet<String> {
        &self.operations
    }

    /// Calls an operation with JSON text; no schema checks.
    pub fn invoke_raw(
        &self,
        operation: &str,
        input: &str,
        platform: HostPlatform,
    ) -> Result<String, OperationError> {
        let handle = Platform_TO::from_ptr(RArc::new(platform), TD_Opaque);
        match (self.module.invoke())(RStr::from_str(operation), RStr::from_str(input), handle) {
            RResult::ROk(out) => Ok(out.into_string()),
            RResult::RErr(e) => Err(OperationError::from_json(e.as_str())),
        }
    }
}

/// An installed connector: its manifest, compiled schemas and library.
pub struct Connector {
    pub manifest: Manifest,
    pub definitions: Arc<Definitions>,
    library: Library,
}

impl Connector {
    pub fn new(manifest: Manifest, definitions: Definitions, library: Library) -> Self {
        Self {
            manifest,
            definitions: Arc::new(definitions),
            library,
        }
    }

    pub fn library(&self) -> &Library {
        &self.library
    }

    /// Whether the connector implements `operation`.
    pub fn implements(&self, operation: &str) -> bool {
        self.library.operations().contains(operation)
    }

    /// Runs an operation, validating what goes in and what comes out.
    pub fn invoke(&self, operation: &str, input: &Value, platform: HostPlatform) -> Result<Value> {
        let id = OperationId::parse(operation).map_err(Error::usage)?;
        if !self.implements(operation) {
            return Err(Error::NotFound(format!(
                "connector {} {} does not implement {operation}",
                self.manifest.name, self.manifest.version
            )));
        }
        for key in DEFINITIONS.into_iter().chain(OPTIONAL_DEFINITIONS) {
            if let Some(document) = input.get(key) {
                self.definitions
                    .validate(key, document, &format!("input {key} of {operation}"))?;
            }
        }
        log::debug!("invoking {operation}");
        let text = self
            .library
            .invoke_raw(operation, &input.to_string(), platform)
            .map_err(|error| Error::Operation {
                operation: operation.to_owned(),
                error,
            })?;
        let output: Value = serde_json::from_str(&text).map_err(|e| Error::Operation {
            operation: operation.to_owned(),
            error: OperationError::new(
                ErrorKind::InvalidOutput,
                format!("output is not JSON: {e}"),
            ),
        })?;
        self.check_output(operation, id.output(), &output)?;
        Ok(output)
    }

    fn check_output(&self, operation: &str, kind: Output, output: &Value) -> Result<()> {
        let what = format!("output of {operation}");
        let wrong = |expected: &str| {
            Err(Error::Operation {
                operation: operation.to_owned(),
                error: OperationError::new(
                    ErrorKind::InvalidOutput,
                    format!("{what} must be {expected}, got {output}"),
                ),
            })
        };
        match kind {
            Output::ListOf(key) => {
                let Some(items) = output.as_array() else {
                    return wrong("an array");
                };
                let problems: Vec<_> = items
                    .iter()
                    .enumerate()
                    .flat_map(|(i, item)| {
                        self.definitions
                            .problems(key, item, &format!("{what}#/{i}"))
                    })
                    .collect();
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(Error::invalid(what, problems))
                }
            }
            Output::One(key) => self.definitions.validate(key, output, &what),
            Output::Status => match crate::abi::Status::of(output) {
                Some(_) => Ok(()),
                _ => wrong("{\"status\": \"ACTIVE\" | \"INACTIVE\"}"),
            },
            Output::Size => match output.as_u64() {
                Some(_) => Ok(()),
                None => wrong("a non-negative integer"),
            },
            Output::Object => match output {
                Value::Object(_) | Value::Null => Ok(()),
                _ => wrong("an object"),
            },
        }
    }
}
