//! JSON messages that cross the boundary inside [`super::Platform`] calls and
//! operation errors. Plain data: no I/O here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A bash command to run on an environment as its OS user.
///
/// Secrets belong in `variables` (passed in the process environment), never in
/// `command`, which may be logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Bash source, run with `bash -c`.
    pub command: String,
    /// Variables added to the command's environment.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Names in `variables` whose values are secret: the host masks them
    /// wherever the command or its output is shown.
    #[serde(default)]
    pub secret_variables: Vec<String>,
    /// Working directory; the environment user's home when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds after which the command is killed; none when absent.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// What a command did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandOutput {
    /// Exit code; -1 when killed by a signal or the timeout.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// An operation's failure: what failed, why, and what to do next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperationError {
    /// A stable kind a caller can match on (`invalid_input`, `command_failed`,
    /// `not_found`, `conflict`, `panic`, `internal`, ...).
    pub kind: String,
    /// What failed.
    pub message: String,
    /// Why it failed (tool output, the underlying error), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What the user can do next, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl OperationError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            cause: None,
            action: None,
        }
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Serialises to the JSON text that crosses the boundary.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"kind\":\"internal\",\"message\":{:?}}}",
                self.message.replace('"', "'")
            )
        })
    }

    /// Reads an error that crossed the boundary; text that is not an
    /// [`OperationError`] becomes one of kind `internal`.
    pub fn from_json(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| Self::new("internal", text))
    }
}

impl std::fmt::Display for OperationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        if let Some(action) = &self.action {
            write!(f, " ({action})")?;
        }
        Ok(())
    }
}

impl std::error::Error for OperationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_error_round_trips_and_reads_foreign_text() {
        let e =
            OperationError::new("conflict", "port 5433 is taken").with_action("pick another port");
        assert_eq!(OperationError::from_json(&e.to_json()), e);
        let foreign = OperationError::from_json("boom");
        assert_eq!(foreign.kind, "internal");
        assert_eq!(foreign.message, "boom");
    }

    #[test]
    fn command_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CommandRequest>(r#"{"command":"true","argv":[]}"#);
        assert!(err.is_err());
    }
}
