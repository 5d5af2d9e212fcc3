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
    /// Text written to the command's standard input (then closed): the way
    /// to hand a command a secret that must not sit in any process's
    /// environment or argv. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// What a command did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandOutput {
    /// Exit code; -1 when killed by a signal or the timeout.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How a dSource ingests its source (the linked-source `ingestion_method`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum IngestionMethod {
    /// The engine runs pg_basebackup; staging streams from the source.
    #[default]
    BasebackupStreaming,
    /// The customer's base backup; staging streams from the source.
    BackupStreaming,
    /// The customer's base backup; staging restores WAL from an archive.
    BackupLogShipping,
    /// The user loads the staging data directory themselves (seed 000).
    StagingPush,
    /// One database, by parallel `pg_dump` and `pg_restore`.
    SingleDatabase,
    /// A restore from the user's pgBackRest repository; staging restores
    /// WAL with `pgbackrest archive-get`.
    Pgbackrest,
    /// A staging cluster of its own, subscribed to the source by native
    /// logical replication; its progress is the subscription's origin.
    LogicalReplication,
}

impl IngestionMethod {
    /// The method a linked-source document names (the default when none).
    /// An unknown name reads as the default here; the schema refuses it.
    pub fn of(linked_source: &serde_json::Value) -> Self {
        linked_source
            .get("ingestion_method")
            .and_then(serde_json::Value::as_str)
            .and_then(|m| m.parse().ok())
            .unwrap_or_default()
    }

    /// Whether staging streams from the source (and so needs to reach it).
    pub fn streams(self) -> bool {
        matches!(self, Self::BasebackupStreaming | Self::BackupStreaming)
    }

    /// Where the linked-source document says how to reach the source over
    /// the network (`host`, `port`), for methods that connect to it.
    pub fn source_pointer(self) -> Option<&'static str> {
        match self {
            Self::BasebackupStreaming | Self::BackupStreaming => Some("/source"),
            Self::SingleDatabase => Some("/single_database"),
            Self::LogicalReplication => Some("/logical_replication"),
            Self::BackupLogShipping | Self::StagingPush | Self::Pgbackrest => None,
        }
    }

    /// Where the linked-source document keeps the source password the user
    /// hands over in an environment variable, for methods that have one.
    pub fn password_pointer(self) -> Option<&'static str> {
        match self {
            Self::BasebackupStreaming | Self::BackupStreaming => {
                Some("/source/replication_password")
            }
            Self::SingleDatabase => Some("/single_database/password"),
            Self::LogicalReplication => Some("/logical_replication/password"),
            Self::BackupLogShipping | Self::StagingPush | Self::Pgbackrest => None,
        }
    }
}

/// What `status` operations answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The cluster runs.
    Active,
    Inactive,
}

impl Status {
    /// `{"status": "ACTIVE"}` and the like.
    pub fn to_output(self) -> serde_json::Value {
        serde_json::json!({ "status": self })
    }

    /// Reads a status operation's output.
    pub fn of(output: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(output.get("status")?.clone()).ok()
    }
}

/// The kinds of operation errors a caller can match on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorKind {
    /// The input does not fit the operation.
    InvalidInput,
    /// The connector's output does not fit its schema.
    InvalidOutput,
    /// The object is not in a state that allows the operation.
    InvalidState,
    /// A command on the environment failed.
    CommandFailed,
    NotFound,
    /// In use, or taken (a port, a slot).
    Conflict,
    /// The snapshot cannot be provisioned.
    NotProvisionable,
    /// The source cannot be reached or refuses the login.
    SourceUnreachable,
    /// The source answered with an error.
    SourceError,
    /// Replication from the source has stopped.
    ReplicationStopped,
    /// The library does not implement the operation.
    UnknownOperation,
    /// The connector panicked (caught before the boundary).
    Panic,
    /// Anything else, including kinds this host does not know.
    #[serde(other)]
    Internal,
}

/// An operation's failure: what failed, why, and what to do next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperationError {
    /// A stable kind a caller can match on.
    pub kind: ErrorKind,
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
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
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
        serde_json::from_str(text).unwrap_or_else(|_| Self::new(ErrorKind::Internal, text))
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
        let e = OperationError::new(ErrorKind::Conflict, "port 5433 is taken")
            .with_action("pick another port");
        assert_eq!(OperationError::from_json(&e.to_json()), e);
        let foreign = OperationError::from_json("boom");
        assert_eq!(foreign.kind, ErrorKind::Internal);
        let unknown = OperationError::from_json(r#"{"kind":"brand_new","message":"m"}"#);
        assert_eq!(
            unknown.kind,
            ErrorKind::Internal,
            "unknown kinds read as internal"
        );
        assert_eq!(foreign.message, "boom");
    }

    #[test]
    fn command_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CommandRequest>(r#"{"command":"true","argv":[]}"#);
        assert!(err.is_err());
    }
}
