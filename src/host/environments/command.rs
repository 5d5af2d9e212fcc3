//! Commands on an environment's host, as its OS user: bash with a clean
//! environment, the request's variables (secrets there, never in argv), the
//! switch to the user when pgvirt is root, a time-out, and a process group
//! tied to the engine's life ([`crate::host::processes`]).

use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::{Gid, Uid, User};

use crate::abi::{CommandOutput, CommandRequest};
use crate::host::error::{Error, Result};
use crate::host::processes;

/// The bound of a command that names none: every wait ends (a command that
/// hangs is killed, with its process group, after this long).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Variables passed from pgvirt's own environment to every command.
const PASSED_THROUGH: [&str; 4] = ["PGVIRT_PG_PATH", "PGVIRT_PGDATA_PATH", "TZ", "LANG"];

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
    cmd.stdin(if request.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
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
    let mut child = processes::spawn(&mut cmd)
        .map_err(|e| Error::io("cannot start bash for", Path::new(&user.name), e))?;
    let pgid = child.id();
    let writer = match (&request.stdin, child.stdin.take()) {
        (Some(text), Some(input)) => Some(write_stdin(input, text.clone().into_bytes())),
        _ => None,
    };
    let stdout = child.stdout.take().map(reader);
    let stderr = child.stderr.take().map(reader);
    let bound = request
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let status = {
        use wait_timeout::ChildExt;
        match child
            .wait_timeout(bound)
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
    };
    processes::finished(pgid);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let exit_code = match status {
        Some(s) => s.code().unwrap_or(-1),
        None => {
            stderr.push_str(&format!(
                "\n(killed after the {}s timeout)",
                bound.as_secs()
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

/// Writes a command's input from a thread of its own, with SIGPIPE blocked
/// there: a command that does not read it (or an ssh that ended) closes the
/// pipe, which is not an error and must not kill pgvirt (its SIGPIPE is the
/// default, for `| head`). A signal left pending goes with the thread.
pub(super) fn write_stdin(
    mut input: impl std::io::Write + Send + 'static,
    bytes: Vec<u8>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pipe = nix::sys::signal::SigSet::empty();
        pipe.add(nix::sys::signal::Signal::SIGPIPE);
        let _ = pipe.thread_block();
        let _ = input.write_all(&bytes);
    })
}

pub(super) fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Replaces the values of the request's secret variables with `********`.
pub(super) fn mask(text: &str, request: &CommandRequest) -> String {
    let mut out = text.to_owned();
    for name in &request.secret_variables {
        if let Some(value) = request.variables.get(name).filter(|v| !v.is_empty()) {
            out = out.replace(value.as_str(), "********");
        }
    }
    out
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
}
