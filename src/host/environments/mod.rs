//! Environments: hosts the engine runs commands on, each with an OS user.
//!
//! Only `local` exists so far. When pgvirt runs as root, every command for an
//! environment runs as that environment's user (uid, gid, supplementary
//! groups, HOME); otherwise it runs as pgvirt's own user, which must then be
//! the environment's. [`HostPlatform`] is what a connector operation gets as
//! its platform: commands, logging and progress for one environment.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::{RResult, RStr, RString};
use nix::unistd::{Gid, Uid, User};
use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};

use crate::abi::{level, CommandOutput, CommandRequest, Platform};
use crate::host::error::{Error, ProcessError, Result};
use crate::host::files;
use crate::host::store::{self, Store};

/// Variables passed from pgvirt's own environment to every command.
const PASSED_THROUGH: [&str; 4] = ["PGVIRT_PG_PATH", "PGVIRT_PGDATA_PATH", "TZ", "LANG"];

/// A stored environment.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub id: i64,
    pub name: String,
    pub kind: String,
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

/// A resolved OS user.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

impl OsUser {
    pub fn lookup(name: &str) -> Result<Self> {
        let user = User::from_name(name)
            .map_err(|e| Error::usage(format!("cannot look up OS user {name:?}: {e}")))?
            .ok_or_else(|| Error::usage(format!("OS user {name:?} does not exist on this host")))?;
        let cname =
            CString::new(name).map_err(|_| Error::usage(format!("bad user name {name:?}")))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
        Ok(Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
        })
    }

    /// Whether commands for this user need a switch from pgvirt's own user.
    pub fn needs_switch(&self) -> bool {
        Uid::effective() != self.uid
    }

    /// Gives `path` to this user (when pgvirt is root and it is someone else).
    pub fn chown(&self, path: &Path) -> Result<()> {
        if Uid::effective().is_root() && self.needs_switch() {
            nix::unistd::chown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| Error::io("cannot chown", path, std::io::Error::from(e)))?;
        }
        Ok(())
    }
}

/// Runs `request` as `user`: bash, a clean environment, the request's
/// variables, and the switch to the user when pgvirt is root.
pub fn run_as(user: &OsUser, request: &CommandRequest) -> Result<CommandOutput> {
    if user.needs_switch() && !Uid::effective().is_root() {
        return Err(Error::usage(format!(
            "pgvirt runs as uid {} and cannot run commands as {}; run pgvirt as {} or as root",
            Uid::effective(),
            user.name,
            user.name
        )));
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&request.command);
    cmd.env_clear();
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
    if std::env::var_os("LANG").is_none() {
        cmd.env("LANG", "C.UTF-8");
    }
    for name in PASSED_THROUGH {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.envs(&request.variables);
    let cwd = request
        .cwd
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            if user.home.is_dir() {
                user.home.clone()
            } else {
                PathBuf::from("/")
            }
        });
    cmd.current_dir(cwd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    if user.needs_switch() {
        let (uid, gid) = (user.uid, user.gid);
        let groups = user.groups.clone();
        // SAFETY: runs in the child between fork and exec; setgroups, setgid
        // and setuid are async-signal-safe system calls, and `groups` was
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
    }
    let shown = mask(&request.command, request);
    log::debug!("running as {}: {}", user.name, shown.trim());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start bash for", Path::new(&user.name), e))?;
    let stdout = child.stdout.take().map(reader);
    let stderr = child.stderr.take().map(reader);
    let status = match request.timeout_seconds {
        Some(secs) => {
            use wait_timeout::ChildExt;
            match child
                .wait_timeout(Duration::from_secs(secs))
                .map_err(|e| Error::io("cannot wait for", Path::new("bash"), e))?
            {
                Some(status) => Some(status),
                None => {
                    // Kill the whole process group the command started.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = child.wait();
                    None
                }
            }
        }
        None => Some(
            child
                .wait()
                .map_err(|e| Error::io("cannot wait for", Path::new("bash"), e))?,
        ),
    };
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let exit_code = match status {
        Some(s) => s.code().unwrap_or(-1),
        None => {
            stderr.push_str(&format!(
                "\n(killed after the {}s timeout)",
                request.timeout_seconds.unwrap_or(0)
            ));
            -1
        }
    };
    Ok(CommandOutput {
        exit_code,
        stdout: mask(&stdout, request),
        stderr: mask(&stderr, request),
    })
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Replaces the values of the request's secret variables with `********`.
fn mask(text: &str, request: &CommandRequest) -> String {
    let mut out = text.to_owned();
    for name in &request.secret_variables {
        if let Some(value) = request.variables.get(name).filter(|v| !v.is_empty()) {
            out = out.replace(value.as_str(), "********");
        }
    }
    out
}

/// The platform a connector operation runs with: one environment's commands,
/// the host's logger, and a progress display.
#[derive(Clone)]
pub struct HostPlatform {
    environment: Arc<Environment>,
    progress: Arc<Mutex<Option<indicatif::ProgressBar>>>,
}

impl HostPlatform {
    pub fn new(environment: &Environment) -> Self {
        Self {
            environment: Arc::new(environment.clone()),
            progress: Arc::new(Mutex::new(None)),
        }
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        if Arc::strong_count(&self.progress) == 1 {
            if let Ok(mut bar) = self.progress.lock() {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

impl Platform for HostPlatform {
    fn run(&self, request: RStr<'_>) -> RResult<RString, RString> {
        let result = serde_json::from_str::<CommandRequest>(request.as_str())
            .map_err(|e| format!("bad command request: {e}"))
            .and_then(|req| self.environment.run(&req).map_err(|e| e.to_string()))
            .and_then(|out| serde_json::to_string(&out).map_err(|e| e.to_string()));
        match result {
            Ok(text) => RResult::ROk(text.into()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        let target = format!("connector::{}", target.as_str());
        log::logger().log(
            &log::Record::builder()
                .level(level::to_log(level))
                .target(&target)
                .args(format_args!("{}", message.as_str()))
                .build(),
        );
    }

    fn progress(&self, done: u64, total: u64, unit: RStr<'_>) {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            log::debug!("progress: {done}/{total} {}", unit.as_str());
            return;
        }
        let Ok(mut guard) = self.progress.lock() else {
            return;
        };
        let bar = guard.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(total);
            let template = if unit.as_str() == "bytes" {
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{bar:40} {pos}/{len} {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
        if done >= total && total > 0 {
            bar.finish_and_clear();
            *guard = None;
        }
    }
}

/// Adds an environment. The scratch directory is made and given to its user.
pub fn add(store: &Store, kind: &str, name: &str, os_user: &str) -> Result<Environment> {
    if kind != "local" {
        return Err(Error::usage(format!(
            "environment kind {kind:?} is not supported (supported: local)"
        )));
    }
    check_name(name, "environment name")?;
    let user = OsUser::lookup(os_user)?;
    if user.uid.is_root() {
        return Err(Error::usage(
            "the environment user cannot be root: initdb and pg_ctl refuse to run as root (try --user postgres)",
        ));
    }
    if user.needs_switch() && !Uid::effective().is_root() {
        return Err(Error::usage(format!(
            "pgvirt runs as uid {} and can only use its own user; run as root to use --user {os_user}",
            Uid::effective()
        )));
    }
    if find(store, name)?.is_some() {
        return Err(Error::Conflict(format!(
            "environment {name:?} exists already"
        )));
    }
    let scratch = store.data_dir().join("scratch").join(name);
    files::create_private_dir(&scratch)?;
    user.chown(&scratch)?;
    store
        .conn()
        .execute(
            "INSERT INTO environments (name, kind, os_user, scratch, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind, os_user, scratch.to_string_lossy(), store::now()],
        )
        .map_err(|e| store.err(e))?;
    get(store, name)
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

    fn me() -> OsUser {
        let name = User::from_uid(Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        OsUser::lookup(&name).expect("current user")
    }

    #[test]
    fn runs_bash_with_variables_in_the_environment_and_masks_secrets() {
        let mut req = CommandRequest {
            command: r#"echo "v=$GREETING"; echo "pw=$PW" >&2; exit 3"#.into(),
            ..Default::default()
        };
        req.variables
            .insert("GREETING".into(), "hello world".into());
        req.variables.insert("PW".into(), "s3cret-value".into());
        req.secret_variables.push("PW".into());
        let out = run_as(&me(), &req).expect("runs");
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout, "v=hello world\n");
        assert_eq!(out.stderr, "pw=********\n");
    }

    #[test]
    fn a_timeout_kills_the_command() {
        let req = CommandRequest {
            command: "sleep 30".into(),
            timeout_seconds: Some(1),
            ..Default::default()
        };
        let out = run_as(&me(), &req).expect("runs");
        assert_eq!(out.exit_code, -1);
        assert!(out.stderr.contains("timeout"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("local", "n").is_ok());
        assert!(check_name("a.b-c_1", "n").is_ok());
        for bad in ["", "-x", "a b", "a/b", "x;rm", &"a".repeat(64)] {
            assert!(check_name(bad, "n").is_err(), "{bad:?}");
        }
    }
}
