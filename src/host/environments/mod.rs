//! Environments: hosts the engine runs commands on, each with an OS user.
//!
//! `local` is this host: when pgvirt runs as root, every command for it
//! runs as that environment's user (uid, gid, supplementary groups, HOME);
//! otherwise as pgvirt's own user, which must then be the environment's.
//! `ssh` is another host, reached with OpenSSH ([`ssh`]): commands run there
//! as the environment's user, their script and variables on stdin. [`HostPlatform`] is what a connector operation gets as
//! its platform: commands, logging and progress for one environment.

mod command;
mod platform;
pub mod remote;
pub mod ssh;

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
    /// Another host, over SSH.
    Ssh,
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
    /// How a remote environment is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<ssh::SshTarget>,
}

impl Environment {
    /// The JSON the connector sees as `environment`.
    pub fn to_input(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "kind": self.kind,
            "user": self.os_user,
            "scratch": self.scratch,
        });
        if let Some(t) = &self.ssh {
            v["host"] = json!(t.host);
        }
        v
    }

    /// The OS user commands run as.
    /// Only a local environment's: a remote one's user is on its host.
    pub fn user(&self) -> Result<OsUser> {
        if let Some(t) = &self.ssh {
            return Err(Error::usage(format!(
                "environment {} is remote ({}): its files cannot be given to {} on this host",
                self.name, t.host, self.os_user
            )));
        }
        OsUser::lookup(&self.os_user)
    }

    /// Runs a command on this environment as its user.
    pub fn run(&self, request: &CommandRequest) -> Result<CommandOutput> {
        match &self.ssh {
            Some(target) => target.run(&self.os_user, request),
            None => run_as(&self.user()?, request),
        }
    }

    /// Whether this environment is the engine's own host.
    pub fn is_local(&self) -> bool {
        self.ssh.is_none()
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
    if kind != EnvironmentKind::Local {
        return Err(Error::usage(
            "an ssh environment needs --host, --ssh-user and --key",
        ));
    }
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
    let dir = store.data_dir().join("ssh");
    let mut stmt = store
        .conn()
        .prepare(&format!("SELECT {COLUMNS} FROM environments ORDER BY name"))
        .map_err(|e| store.err(e))?;
    let rows = stmt
        .query_map([], |r| row(r, &dir))
        .map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| store.err(e))
}

pub fn find(store: &Store, name: &str) -> Result<Option<Environment>> {
    let dir = store.data_dir().join("ssh");
    store.optional(store.conn().query_row(
        &format!("SELECT {COLUMNS} FROM environments WHERE name = ?1"),
        [name],
        |r| row(r, &dir),
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

const COLUMNS: &str = "id, name, kind, os_user, scratch, added_at, refreshed_at, host, ssh_port, \
                       ssh_user, key_file, connect_timeout, alive_interval, alive_count_max";

fn row(r: &rusqlite::Row<'_>, ssh_dir: &std::path::Path) -> rusqlite::Result<Environment> {
    let host: Option<String> = r.get(7)?;
    let ssh = match host {
        Some(host) => Some(ssh::SshTarget {
            host,
            port: r.get(8)?,
            ssh_user: r.get(9)?,
            key_file: PathBuf::from(r.get::<_, String>(10)?),
            timeouts: ssh::Timeouts {
                connect: r.get(11)?,
                alive_interval: r.get(12)?,
                alive_count_max: r.get(13)?,
            },
            dir: ssh_dir.to_owned(),
        }),
        None => None,
    };
    Ok(Environment {
        ssh,
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
