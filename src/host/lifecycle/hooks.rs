//! User hooks: shell commands from a dSource's or VDB's parameters, run on
//! its environment as the environment user at fixed points of a workflow,
//! with the object's connection details in their environment.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::abi::CommandRequest;
use crate::host::environments::Environment;
use crate::host::error::{Error, ProcessError, Result};

/// Runs the commands of hook `name` in `hooks` (a JSON object of arrays),
/// in order; the first failure stops the workflow with the hook's output.
pub fn run(
    env: &Environment,
    hooks: Option<&Value>,
    name: &str,
    variables: &BTreeMap<String, String>,
) -> Result<()> {
    let Some(commands) = hooks.and_then(|h| h.get(name)).and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, command) in commands.iter().enumerate() {
        let Some(command) = command.as_str() else {
            continue;
        };
        log::info!("running {name} hook {}", i + 1);
        let mut vars = variables.clone();
        vars.insert("PGVIRT_HOOK".into(), name.into());
        let out = env.run(&CommandRequest {
            command: command.to_owned(),
            variables: vars,
            ..CommandRequest::default()
        })?;
        if out.exit_code != 0 {
            return Err(Error::Process(Box::new(ProcessError {
                command: format!("{name} hook #{}: {command}", i + 1),
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
            })));
        }
    }
    Ok(())
}
