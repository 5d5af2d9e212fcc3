//! The connector's side of the host's platform services: run a command on an
//! environment, log, report progress. Also the `log` bridge: inside the
//! library, `log::info!` and friends reach the host's logger through the
//! platform of the operation running on this thread.

use std::cell::RefCell;
use std::sync::{Arc, Once};

use abi_stable::std_types::{RResult, RStr};
use serde_json::Value;

use crate::abi::{level, CommandOutput, CommandRequest, ErrorKind, OperationError, PlatformHandle};

/// The platform services for one operation.
#[derive(Clone)]
pub struct Platform {
    handle: Arc<PlatformHandle>,
}

impl Platform {
    pub(super) fn new(handle: PlatformHandle) -> Self {
        Self {
            handle: Arc::new(handle),
        }
    }

    /// Runs a command; a non-zero exit is returned, not an error.
    pub fn run(&self, request: &CommandRequest) -> Result<CommandOutput, OperationError> {
        let text = serde_json::to_string(request).map_err(|e| {
            OperationError::new(
                ErrorKind::Internal,
                format!("cannot encode command request: {e}"),
            )
        })?;
        match self.handle.run(RStr::from_str(&text)) {
            RResult::ROk(out) => serde_json::from_str(out.as_str()).map_err(|e| {
                OperationError::new(
                    ErrorKind::Internal,
                    format!("host sent an unreadable command result: {e}"),
                )
            }),
            RResult::RErr(e) => Err(OperationError::new(
                ErrorKind::CommandFailed,
                "the host could not run a command",
            )
            .with_cause(e.into_string())),
        }
    }

    /// Runs a command that must succeed; `what` names it in the error, whose
    /// cause carries the exit code and stderr.
    pub fn run_ok(
        &self,
        what: &str,
        request: &CommandRequest,
    ) -> Result<CommandOutput, OperationError> {
        let out = self.run(request)?;
        if out.exit_code == 0 {
            Ok(out)
        } else {
            Err(
                OperationError::new(ErrorKind::CommandFailed, format!("{what} failed")).with_cause(
                    format!("exit code {}: {}", out.exit_code, out.stderr.trim()),
                ),
            )
        }
    }

    /// Reports progress of long work.
    #[allow(dead_code)] // first used by pg_basebackup in the linked lifecycle
    pub fn progress(&self, done: u64, total: u64, unit: &str) {
        self.handle.progress(done, total, RStr::from_str(unit));
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        self.handle.log(
            level::from_log(record.level()),
            RStr::from_str(record.target()),
            RStr::from_str(&message),
        );
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Platform>> = const { RefCell::new(None) };
}

/// The platform of the operation running on this thread.
pub fn current() -> Option<Platform> {
    CURRENT.with(|c| c.try_borrow().ok().and_then(|p| p.clone()))
}

/// Makes a platform the target of this thread's log records until dropped.
pub(super) struct CurrentGuard;

impl CurrentGuard {
    pub(super) fn install(platform: &Platform) -> Self {
        static LOGGER_ONCE: Once = Once::new();
        LOGGER_ONCE.call_once(|| {
            // The library has its own copy of `log`; its records go to the
            // host through the platform. The host filters by level.
            if log::set_logger(&BRIDGE).is_ok() {
                log::set_max_level(log::LevelFilter::Trace);
            }
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(platform.clone()));
        CurrentGuard
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

struct Bridge;
static BRIDGE: Bridge = Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        CURRENT.with(|c| {
            if let Ok(current) = c.try_borrow() {
                if let Some(platform) = current.as_ref() {
                    platform.log(record);
                }
            }
        });
    }

    fn flush(&self) {}
}

/// Reads a required object field of an operation's input.
pub fn field<'a>(input: &'a Value, name: &str) -> Result<&'a Value, OperationError> {
    input.get(name).ok_or_else(|| {
        OperationError::new(ErrorKind::InvalidInput, format!("input has no `{name}`"))
    })
}

/// Reads a required string field of a JSON object.
pub fn str_field<'a>(object: &'a Value, name: &str, what: &str) -> Result<&'a str, OperationError> {
    object.get(name).and_then(Value::as_str).ok_or_else(|| {
        OperationError::new(
            ErrorKind::InvalidInput,
            format!("{what} has no string `{name}`"),
        )
    })
}

/// A command request: bash source and its variables.
pub fn request(command: &str, vars: &[(&str, String)]) -> CommandRequest {
    CommandRequest {
        command: command.to_owned(),
        variables: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..CommandRequest::default()
    }
}
