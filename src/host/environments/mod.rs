//! Environments: hosts the engine runs commands on, each with an OS user.
//!
//! Only `local` exists so far. When pgvirt runs as root, every command for an
//! environment runs as that environment's user (uid, gid, supplementary
//! groups, HOME); otherwise it runs as pgvirt's own user, which must then be
//! the environment's. [`HostPlatform`] is what a connector operation gets as
//! its platform: commands, logging and progress for one environment.

mod command;
mod platform;

use std::path::PathBuf;

use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

pub use command::{run_as, OsUser};
pub use platform::HostPlatform;

use crate::abi::{CommandOutput, CommandRequest};
use crate::host::error::{Error, ProcessError, Result};
use crate::host::store::{self, Store};

/// Where environments are.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum EnvironmentKind {
    /// This host.
    Local,
}

crate::host::store::columns::text_enum_column!(EnvironmentKind);

/// A stored environment.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub id: i64,
    pub name: String,
    pub kind: EnvironmentKind,
    pub os_user: String,
    pub scratch: PathBuf,
    pub added_at: i64,
    pub refreshed_at: Option<i64>,
}

impl Environment {
    /// The JSON the connector sees as `environment`.
    pub fn to_input(&self) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind,
            "user": self.os_user,
            "scratch": self.scratch,
        })
    }

    /// The OS user commands run as.
    pub fn user(&self) -> Result<OsUser> {
        OsUser::lookup(&self.os_user)
    }

    /// Runs a command on this environment as its user.
    pub fn run(&self, request: &CommandRequest) -> Result<CommandOutput> {
        run_as(&self.user()?, request)
    }

    /// Runs a command that must succeed; a failure keeps the command, exit
    /// code and output.
    pub fn run_ok(&self, request: &CommandRequest) -> Result<CommandOutput> {
        let out = self.run(request)?;
        if out.exit_code == 0 {
            Ok(out)
        } else {
            Err(Error::Process(Box::new(ProcessError {
                command: request.command.trim().to_owned(),
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
            })))
        }
    }
}

/// Adds an environment. Its scratch directory (default: `.pgvirt/<engine
/// id>` in the user's home, outside every dataset the engine snapshots) is
/// made, private to its user: connectors keep files there that must not be
/// in a snapshot, such as passfiles. Its name defaults to its kind
/// (`local`).
pub fn add(
    store: &Store,
    kind: EnvironmentKind,
    name: Option<&str>,
    os_user: &str,
    scratch: Option<&std::path::Path>,
) -> Result<Environment> {
    let kind_name = kind.to_string();
    let name = name.unwrap_or(&kind_name);
    check_name(name, "environment name")?;
    let user = OsUser::lookup(os_user)?;
    if user.uid.is_root() {
        return Err(Error::usage(
            "the environment user cannot be root: initdb and pg_ctl refuse to run as root (try --user postgres)",
        ));
    }
    if user.needs_switch() && !nix::unistd::Uid::effective().is_root() {
        return Err(Error::usage(format!(
            "pgvirt runs as uid {} and can only use its own user; run as root to use --user {os_user}",
            nix::unistd::Uid::effective()
        )));
    }
    if find(store, name)?.is_some() {
        return Err(Error::Conflict(format!(
            "environment {name:?} exists already"
        )));
    }
    let scratch = match scratch {
        Some(dir) => {
            if !dir.is_absolute() || crate::host::files::check_plain_path(dir).is_err() {
                return Err(Error::usage(format!(
                    "--scratch {} must be an absolute path of {}",
                    dir.display(),
                    crate::host::files::PLAIN_PATH_CHARACTERS
                )));
            }
            dir.to_owned()
        }
        None => user.home.join(".pgvirt").join(store.engine_id()?),
    };
    make_scratch(&user, &scratch)?;
    store
        .conn()
        .execute(
            "INSERT INTO environments (name, kind, os_user, scratch, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind, os_user, scratch.to_string_lossy(), store::now()],
        )
        .map_err(|e| store.err(e))?;
    get(store, name)
}

/// Makes the scratch directory as the environment user (so it can reach
/// it), mode 0700.
fn make_scratch(user: &OsUser, dir: &std::path::Path) -> Result<()> {
    let mut req = CommandRequest {
        command: r#"umask 077; mkdir -p -- "$DIR" && chmod 0700 -- "$DIR""#.into(),
        ..CommandRequest::default()
    };
    req.variables
        .insert("DIR".into(), dir.to_string_lossy().into_owned());
    let out = run_as(user, &req)?;
    if out.exit_code != 0 {
        return Err(Error::usage(format!(
            "user {} cannot make its scratch directory {} ({}); choose one it can with --scratch",
            user.name,
            dir.display(),
            out.stderr.trim()
        )));
    }
    Ok(())
}

/// All environments, by name.
pub fn list(store: &Store) -> Result<Vec<Environment>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT id, name, kind, os_user, scratch, added_at, refreshed_at FROM environments ORDER BY name")
        .map_err(|e| store.err(e))?;
    let rows = stmt.query_map([], row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn find(store: &Store, name: &str) -> Result<Option<Environment>> {
    store.optional(store.conn().query_row(
        "SELECT id, name, kind, os_user, scratch, added_at, refreshed_at FROM environments WHERE name = ?1",
        [name],
        row,
    ))
}

/// The environment named `name`, or an error listing the known ones.
pub fn get(store: &Store, name: &str) -> Result<Environment> {
    find(store, name)?.ok_or_else(|| {
        let known: Vec<String> = list(store)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect();
        Error::NotFound(if known.is_empty() {
            format!("no environment {name:?}; add one with `pgvirt env add local --user postgres`")
        } else {
            format!("no environment {name:?} (known: {})", known.join(", "))
        })
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Environment> {
    Ok(Environment {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        os_user: r.get(3)?,
        scratch: PathBuf::from(r.get::<_, String>(4)?),
        added_at: r.get(5)?,
        refreshed_at: r.get(6)?,
    })
}

/// Names of things the user makes: letters, digits, `-`, `_`, `.`; 1 to 63
/// characters, starting with a letter or digit.
pub fn check_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{what} {name:?} must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("local", "n").is_ok());
        assert!(check_name("a.b-c_1", "n").is_ok());
        for bad in ["", "-x", "a b", "a/b", "x;rm", &"a".repeat(64)] {
            assert!(check_name(bad, "n").is_err(), "{bad:?}");
        }
    }
}
