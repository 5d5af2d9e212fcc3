//! The platform callbacks: what the host does for a connector during one
//! operation. An `abi_stable` trait object, so it crosses the boundary safely.

// `#[sabi_trait]` expands to impls inside a generated module.
#![allow(non_local_definitions)]

use abi_stable::{
    sabi_trait,
    std_types::{RArc, RResult, RStr, RString},
};

/// Services the host gives the connector during one operation.
///
/// The connector never reaches a host by itself: it asks through this trait.
#[sabi_trait]
pub trait Platform: Send + Sync {
    /// Runs a bash command on an environment as that environment's OS user.
    /// `request` is a JSON [`CommandRequest`]; the answer is a JSON
    /// [`CommandOutput`] (a non-zero exit is an answer, not an error), or an
    /// error text when the command could not be started at all.
    fn run(&self, request: RStr<'_>) -> RResult<RString, RString>;

    /// Logs a record in the host's logger.
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);

    /// Reports progress of long work: `done` of `total` in `unit` (bytes, steps).
    #[sabi(last_prefix_field)]
    fn progress(&self, done: u64, total: u64, unit: RStr<'_>);
}

/// The platform handle as it crosses the boundary: reference counted, so the
/// connector may keep a clone for the length of the operation (its logger does).
pub type PlatformHandle = Platform_TO<'static, RArc<()>>;
