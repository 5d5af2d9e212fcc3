//! One database of an export (its source or a target), reached with `psql`
//! run through the platform as the environment user. Connection facts go to
//! psql in its environment (`PGHOST`, ..., the password as `PGPASSWORD`,
//! marked secret), the script on its standard input, inputs as psql
//! variables (`:'name'`, quoted by psql): nothing of the user's reaches
//! argv or script text except identifiers, which [`ident`] quotes.

use serde_json::Value;

use crate::abi::{CommandRequest, ErrorKind, OperationError};
use crate::connector::Platform;

/// Where a database is and how to log in.
#[derive(Clone)]
pub struct Database {
    /// What the user calls it (a source config or VDB name), for messages.
    pub name: String,
    pub bin_dir: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    password: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Database({} {}@{}:{}/{})",
            self.name, self.user, self.host, self.port, self.database
        )
    }
}

impl Database {
    /// Reads a database of the export definition (`what` names it in errors).
    pub fn from_json(value: &Value, what: &str) -> Result<Self, OperationError> {
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let missing =
            |k: &str| OperationError::new(ErrorKind::InvalidInput, format!("{what} has no `{k}`"));
        Ok(Self {
            name: text("name").ok_or_else(|| missing("name"))?,
            bin_dir: text("bin_dir").ok_or_else(|| missing("bin_dir"))?,
            host: text("host").unwrap_or_else(|| "127.0.0.1".into()),
            port: value
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| missing("port"))?,
            database: text("database").unwrap_or_else(|| "postgres".into()),
            user: text("user").unwrap_or_else(|| "postgres".into()),
            password: text("password"),
        })
    }

    /// How a message names it.
    pub fn label(&self) -> String {
        format!(
            "{} ({}:{}/{})",
            self.name, self.host, self.port, self.database
        )
    }

    /// A request running `command` (bash) with psql's connection variables.
    pub fn request(&self, command: &str, vars: &[(&str, &str)]) -> CommandRequest {
        let mut request = CommandRequest {
            command: command.to_owned(),
            ..CommandRequest::default()
        };
        let v = &mut request.variables;
        v.insert("BIN".into(), self.bin_dir.clone());
        v.insert("PGHOST".into(), self.host.clone());
        v.insert("PGPORT".into(), self.port.to_string());
        v.insert("PGUSER".into(), self.user.clone());
        v.insert("PGDATABASE".into(), self.database.clone());
        v.insert("PGAPPNAME".into(), "pgvirt-export".into());
        v.insert("PGCONNECT_TIMEOUT".into(), "10".into());
        if let Some(password) = &self.password {
            v.insert("PGPASSWORD".into(), password.clone());
            request.secret_variables.push("PGPASSWORD".into());
        }
        for (name, value) in vars {
            v.insert((*name).to_owned(), (*value).to_owned());
        }
        request
    }

    /// Runs a psql script (static text; inputs as psql variables `:'name'`),
    /// in `cwd` when given; returns the unaligned, tuples-only output.
    pub fn psql(
        &self,
        platform: &Platform,
        what: &str,
        script: &str,
        vars: &[(&str, &str)],
        cwd: Option<&str>,
    ) -> Result<String, OperationError> {
        let mut env = Vec::new();
        let mut args = String::new();
        let names: Vec<String> = (0..vars.len()).map(|i| format!("PSQL_VAR_{i}")).collect();
        for (i, (name, value)) in vars.iter().enumerate() {
            // The psql variable name is ours (a fixed identifier); the value
            // travels in the environment and psql quotes it at :'name'.
            args.push_str(&format!(" -v \"{name}=${{{}}}\"", names[i]));
            env.push((names[i].as_str(), *value));
        }
        let command = format!(r#"exec "$BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1{args} -f -"#);
        let mut request = self.request(&command, &env);
        request.stdin = Some(script.to_owned());
        request.cwd = cwd.map(str::to_owned);
        let out = platform.run(&request)?;
        if out.exit_code == 0 {
            return Ok(out.stdout);
        }
        Err(self.failure(what, &out.stdout, &out.stderr))
    }

    /// An error for a failed psql: unreachable when it could not connect.
    pub fn failure(&self, what: &str, stdout: &str, stderr: &str) -> OperationError {
        let text = format!("{}\n{}", stderr.trim(), stdout.trim());
        let text = text.trim().to_owned();
        let unreachable = text.contains("could not connect")
            || text.contains("Connection refused")
            || text.contains("connection to server")
            || text.contains("timeout expired");
        if text.contains("authentication failed") || text.contains("no password supplied") {
            OperationError::new(
                ErrorKind::SourceUnreachable,
                format!("{what}: cannot log in to {}", self.label()),
            )
            .with_cause(text)
            .with_action("check the user and password of its source config")
        } else if unreachable && !text.contains("ERROR:") {
            OperationError::new(
                ErrorKind::SourceUnreachable,
                format!("{what}: cannot reach {}", self.label()),
            )
            .with_cause(text)
            .with_action("check that it runs and that its host, port and user are right")
        } else {
            OperationError::new(
                ErrorKind::SourceError,
                format!("{what} on {}", self.label()),
            )
            .with_cause(text)
        }
    }
}

/// A quoted SQL identifier (`"a""b"`).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table`, both quoted.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_doubled_quotes() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("s", "t; drop"), "\"s\".\"t; drop\"");
    }
}
