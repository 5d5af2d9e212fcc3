//! The PostgreSQL connector, as built into the `cdylib`.
//!
//! Start at [`registry`], the table of operations this library implements
//! (`build.rs` checks it against `plugin.json`). Each operation is a plain
//! function from JSON to JSON that reaches hosts only through [`platform`].
//! This module exports the handshake symbol and the `abi_stable` root module,
//! and turns every panic into an [`OperationError`] before it can reach the
//! boundary.

mod cluster;
mod conf;
mod discovery;
mod export;
mod linked;
mod platform;
mod registry;
mod source;
mod upgrade;
mod virtual_db;

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    std_types::{RResult, RStr, RString, RVec},
};
use serde_json::Value;

use crate::abi::{
    ConnectorMod, ConnectorModRef, ErrorKind, OperationError, PlatformHandle, ABI_VERSION,
};

pub use platform::Platform;

/// The manifest and schemas, embedded by `build.rs`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// Set to an operation id to make that operation panic: a fault-injection
/// hook for the tests that prove a panic never crosses the boundary.
pub const FAULT_PANIC_ENV: &str = "PGVIRT_FAULT_PANIC";

/// The handshake the host reads with `libloading` before trusting any layout.
#[no_mangle]
pub extern "C" fn pgvirt_connector_abi_version() -> u32 {
    ABI_VERSION
}

#[export_root_module]
fn instantiate_root_module() -> ConnectorModRef {
    ConnectorMod {
        abi_version: pgvirt_connector_abi_version,
        manifest,
        schemas,
        operations,
        invoke,
    }
    .leak_into_prefix()
}

extern "C" fn manifest() -> RString {
    embedded::MANIFEST.into()
}

extern "C" fn schemas() -> RString {
    let mut all = serde_json::Map::new();
    for (key, text) in embedded::SCHEMAS {
        // build.rs parsed every schema already; a failure here means the
        // embedded text changed underneath us, which cannot happen.
        let doc = serde_json::from_str(text).unwrap_or(Value::Null);
        all.insert((*key).to_owned(), doc);
    }
    Value::Object(all).to_string().into()
}

extern "C" fn operations() -> RVec<RString> {
    registry::REGISTRY
        .iter()
        .map(|(id, _)| RString::from(*id))
        .collect()
}

extern "C" fn invoke(
    operation: RStr<'_>,
    input: RStr<'_>,
    platform: PlatformHandle,
) -> RResult<RString, RString> {
    let platform = Platform::new(platform);
    let _current = platform::CurrentGuard::install(&platform);
    let result = catch_unwind(AssertUnwindSafe(|| {
        dispatch(operation.as_str(), input.as_str(), &platform)
    }));
    match result {
        Ok(Ok(value)) => RResult::ROk(value.to_string().into()),
        Ok(Err(error)) => RResult::RErr(error.to_json().into()),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_owned());
            let error = OperationError::new(
                ErrorKind::Panic,
                format!("connector operation {operation} panicked"),
            )
            .with_cause(what)
            .with_action(
                "this is a bug in the connector; the host is unaffected, please report it",
            );
            RResult::RErr(error.to_json().into())
        }
    }
}

fn dispatch(operation: &str, input: &str, platform: &Platform) -> Result<Value, OperationError> {
    let handler = registry::REGISTRY
        .iter()
        .find(|(id, _)| *id == operation)
        .map(|(_, handler)| *handler)
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::UnknownOperation,
                format!("this connector does not implement {operation}"),
            )
        })?;
    let input: Value = serde_json::from_str(input).map_err(|e| {
        OperationError::new(
            ErrorKind::InvalidInput,
            format!("input of {operation} is not JSON: {e}"),
        )
    })?;
    if std::env::var(FAULT_PANIC_ENV).is_ok_and(|v| v == operation) {
        panic!("fault injected by {FAULT_PANIC_ENV}={operation}");
    }
    handler(platform, &input)
}
