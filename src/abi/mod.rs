//! What crosses the shared-library boundary, and nothing else.
//!
//! The host and the connector share only this module and the JSON contract
//! (`plugin.json`, `schema/`). Three layers, read in this order:
//!
//! 1. [`HANDSHAKE_SYMBOL`]: a plain `extern "C"` function the host reads with
//!    `libloading` before anything else, so a library built for another ABI
//!    version is refused with both versions named, before any layout is trusted.
//! 2. [`ConnectorMod`]: the `abi_stable` root module. Operations take and give
//!    JSON text; errors come back as a JSON [`OperationError`].
//! 3. [`Platform`]: the callbacks the host hands the connector for the length of
//!    one operation (run a command on an environment, log, report progress).
//!
//! [`operations`] is the catalogue of operation names and which schema each
//! input field and each output is validated against.

pub mod manifest;
pub mod operations;
mod platform;
pub mod wire;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString, RVec},
    StableAbi,
};

pub use platform::{Platform, PlatformHandle, Platform_TO};
pub use wire::{CommandOutput, CommandRequest, ErrorKind, IngestionMethod, OperationError, Status};

/// Version of the boundary. Bump it whenever [`ConnectorMod`], [`Platform`] or
/// the meaning of the JSON passed through them changes incompatibly.
pub const ABI_VERSION: u32 = 1;

/// Name of the `extern "C" fn() -> u32` every connector library exports.
/// It returns the [`ABI_VERSION`] the library was built with.
pub const HANDSHAKE_SYMBOL: &[u8] = b"pgvirt_connector_abi_version";

/// Log levels as they cross the boundary (the `log` crate's order).
pub mod level {
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;

    /// The `log` level for a wire level; unknown values read as `Trace`.
    pub fn to_log(level: u8) -> log::Level {
        match level {
            ERROR => log::Level::Error,
            WARN => log::Level::Warn,
            INFO => log::Level::Info,
            DEBUG => log::Level::Debug,
            _ => log::Level::Trace,
        }
    }

    /// The wire level for a `log` level.
    pub fn from_log(level: log::Level) -> u8 {
        match level {
            log::Level::Error => ERROR,
            log::Level::Warn => WARN,
            log::Level::Info => INFO,
            log::Level::Debug => DEBUG,
            log::Level::Trace => TRACE,
        }
    }
}

/// The connector's root module.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ConnectorModRef)))]
#[sabi(missing_field(panic))]
pub struct ConnectorMod {
    /// The ABI version the library was built with (same as the handshake).
    pub abi_version: extern "C" fn() -> u32,
    /// The embedded `plugin.json`, verbatim.
    pub manifest: extern "C" fn() -> RString,
    /// The embedded definition schemas: a JSON object from the manifest's
    /// schema key (`repository`, ...) to the schema document.
    pub schemas: extern "C" fn() -> RString,
    /// The operations this library implements, as `group.name` ids.
    pub operations: extern "C" fn() -> RVec<RString>,
    /// Runs one operation. `input` is a JSON object; the answer is the JSON
    /// output, or a JSON [`OperationError`]. Never unwinds.
    #[sabi(last_prefix_field)]
    pub invoke: extern "C" fn(
        operation: RStr<'_>,
        input: RStr<'_>,
        platform: PlatformHandle,
    ) -> RResult<RString, RString>,
}

impl RootModule for ConnectorModRef {
    declare_root_module_statics! {ConnectorModRef}
    const BASE_NAME: &'static str = "pgvirt";
    const NAME: &'static str = "pgvirt connector";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
