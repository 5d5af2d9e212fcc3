//! Remote environments over OpenSSH: one control master per environment (a
//! workflow's many commands share one connection), host keys checked
//! against the engine's own known-hosts file, and commands whose script,
//! variables and input all travel on standard input.
//!
//! The remote command is always [`BOOTSTRAP`], the same text for every
//! request: it reads a length line, then that many bytes of bash (the
//! request's variables as `export` lines and its script), and evaluates
//! them in a clean environment; what follows on standard input is the
//! request's own input. So neither the local `ssh` nor any remote process
//! has a variable, a secret or the script in its argv.
//!
//! Files, in a 0700 directory beside the store (`ssh/`): `known_hosts`,
//! `keys/<environment>` (the engine's 0600 copy of the private key), and
//! `control/` (the masters' sockets).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::abi::{CommandOutput, CommandRequest};
use crate::host::error::{Error, Result};
use crate::host::processes;

/// How long a master outlives its last command.
const CONTROL_PERSIST_SECONDS: u64 = 60;

/// The remote command: reads the payload's length, the payload (bash), and
/// runs it in a clean environment; the rest of stdin is the request's.
const BOOTSTRAP: &str = r#"exec env -i HOME="$HOME" USER="$USER" LOGNAME="$USER" PATH="/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 bash -c 'IFS= read -r n || exit 255; p=$(head -c "$n"; printf x); p=${p%x}; unset n; eval "$p"'"#;

/// Starts, in the payload, a watchdog that kills the script's process
/// group (not what left it, as `pg_ctl` servers do) once `BOUND` seconds
/// passed or the SSH session it runs under is gone (its `sshd` ancestor
/// exited: the connection was lost or cut). Its output goes nowhere, so it
/// never holds the session open; the script's exit ends it.
const REMOTE_WATCHDOG: &str = r#"__pgvirt_a=$$
while :; do
  case $(cat "/proc/$__pgvirt_a/comm" 2>/dev/null) in sshd|sshd-session) break;; esac
  __pgvirt_a=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$__pgvirt_a/status" 2>/dev/null)
  { [ -n "$__pgvirt_a" ] && [ "$__pgvirt_a" -gt 1 ]; } || { __pgvirt_a=; break; }
done
(
  end=$((SECONDS + BOUND))
  while [ "$SECONDS" -lt "$end" ] && { [ -z "$__pgvirt_a" ] || [ -d "/proc/$__pgvirt_a" ]; }; do sleep 1; done
  kill -KILL 0
) </dev/null >/dev/null 2>&1 &
__pgvirt_w=$!
unset __pgvirt_a
"#;

/// Time-outs of an environment's connection.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timeouts {
    /// Seconds to wait for the TCP connection and the SSH handshake.
    pub connect: u32,
    /// Seconds between keep-alive probes on a quiet connection.
    pub alive_interval: u32,
    /// Probes without an answer before the connection counts as lost.
    pub alive_count_max: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: 10,
            alive_interval: 5,
            alive_count_max: 3,
        }
    }
}

/// Where and how an environment is reached.
#[derive(Debug, Clone, Serialize)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub ssh_user: String,
    /// The engine's copy of the private key.
    pub key_file: PathBuf,
    pub timeouts: Timeouts,
    /// The engine's `ssh/` directory.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The engine's SSH directory: made 0700 on first use.
pub fn engine_dir(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.join("ssh");
    for d in [dir.clone(), dir.join("keys"), dir.join("control")] {
        crate::host::files::create_private_dir(&d)?;
    }
    Ok(dir)
}

impl SshTarget {
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The name `known_hosts` lists the host under.
    pub fn host_entry(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    fn where_(&self) -> String {
        format!("{}@{}:{}", self.ssh_user, self.host, self.port)
    }

    /// `ssh` with the engine's options: the key, strict host keys against
    /// the engine's file, the control master, the time-outs.
    fn ssh(&self) -> Command {
        let mut cmd = Command::new("ssh");
        let o = |k: &str, v: String| format!("{k}={v}");
        let t = self.timeouts;
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .arg("-F")
            .arg("/dev/null")
            .arg("-T")
            .arg("-i")
            .arg(&self.key_file)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-l")
            .arg(&self.ssh_user);
        for opt in [
            o("BatchMode", "yes".into()),
            o("IdentitiesOnly", "yes".into()),
            o("PasswordAuthentication", "no".into()),
            o("KbdInteractiveAuthentication", "no".into()),
            o("StrictHostKeyChecking", "yes".into()),
            o("UpdateHostKeys", "no".into()),
            o(
                "UserKnownHostsFile",
                self.known_hosts().to_string_lossy().into_owned(),
            ),
            o("GlobalKnownHostsFile", "/dev/null".into()),
            o("ControlMaster", "auto".into()),
            o(
                "ControlPath",
                self.dir
                    .join("control")
                    .join("%C")
                    .to_string_lossy()
                    .into_owned(),
            ),
            o("ControlPersist", CONTROL_PERSIST_SECONDS.to_string()),
            o("ConnectTimeout", t.connect.to_string()),
            o("ServerAliveInterval", t.alive_interval.to_string()),
            o("ServerAliveCountMax", t.alive_count_max.to_string()),
            o("LogLevel", "ERROR".into()),
        ] {
            cmd.arg("-o").arg(opt);
        }
        cmd
    }

    /// Runs `request` on the host as `os_user` (through `sudo -n` when that
    /// is not the SSH user). A lost or refused connection is an error that
    /// says so; the script's own exit code (even 255) is an answer.
    pub fn run(&self, os_user: &str, request: &CommandRequest) -> Result<CommandOutput> {
        let mut payload = String::new();
        for (name, value) in &request.variables {
            if !is_variable_name(name) {
                return Err(Error::usage(format!("bad variable name {name:?}")));
            }
            payload.push_str(&format!("export {name}={}\n", quote(value)));
        }
        if let Some(cwd) = &request.cwd {
            payload.push_str(&format!("cd -- {} 2>/dev/null || cd\n", quote(cwd)));
        } else {
            payload.push_str("cd\n");
        }
        let bound = request
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(super::command::DEFAULT_TIMEOUT);
        // Bounded there too: the watchdog ends the script when its bound
        // passes or its SSH session is gone. The marker says the script
        // ran to an exit of its own.
        payload.push_str(&REMOTE_WATCHDOG.replace("BOUND", &bound.as_secs().to_string()));
        payload.push_str(&format!(
            "trap 'rc=$?; kill \"$__pgvirt_w\" 2>/dev/null || :; printf \"\\n%s%s\\n\" {MARK} \"$rc\" >&2' EXIT\n"
        ));
        payload.push_str(&request.command);
        payload.push('\n');
        let mut input = format!("{}\n{payload}", payload.len()).into_bytes();
        if let Some(text) = &request.stdin {
            input.extend_from_slice(text.as_bytes());
        }
        let mut cmd = self.ssh();
        cmd.arg("--").arg(&self.host);
        if os_user != self.ssh_user {
            cmd.arg(format!(
                "sudo -n -H -u {} -- bash -c {}",
                quote(os_user),
                quote(BOOTSTRAP)
            ));
        } else {
            cmd.arg(BOOTSTRAP);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        log::debug!(
            "running on {} as {os_user}: {}",
            self.where_(),
            request.command.trim()
        );
        let mut child = processes::spawn(&mut cmd)
            .map_err(|e| Error::io("cannot start ssh for", Path::new(&self.host), e))?;
        let pgid = child.id();
        // An ssh that ended (the host refused or went away) closes the
        // pipe: EPIPE there, never a SIGPIPE that kills pgvirt.
        let writer = child
            .stdin
            .take()
            .map(|w| super::command::write_stdin(w, input));
        let stdout = child.stdout.take().map(super::command::reader);
        let stderr = child.stderr.take().map(super::command::reader);
        let status = {
            use wait_timeout::ChildExt;
            match child
                .wait_timeout(bound)
                .map_err(|e| Error::io("cannot wait for", Path::new("ssh"), e))?
            {
                Some(s) => Some(s),
                None => {
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
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        let (stderr, marked) = split_marker(&stderr);
        let exit_code = match (status, marked) {
            (None, _) => {
                return Ok(CommandOutput {
                    exit_code: -1,
                    stdout: super::command::mask(&stdout, request),
                    stderr: super::command::mask(
                        &format!("{stderr}\n(killed after the {}s timeout)", bound.as_secs()),
                        request,
                    ),
                })
            }
            (Some(_), Some(code)) => code,
            (Some(s), None) if s.code() == Some(255) || s.code().is_none() => {
                return Err(self.connection_error(&stderr));
            }
            (Some(s), None) => s.code().unwrap_or(-1),
        };
        Ok(CommandOutput {
            exit_code,
            stdout: super::command::mask(&stdout, request),
            stderr: super::command::mask(&stderr, request),
        })
    }

    /// What went wrong with the connection, in words, with what to do.
    pub fn connection_error(&self, stderr: &str) -> Error {
        let said = stderr.trim();
        if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            Error::usage(format!(
                "REFUSED: the host key of {} has CHANGED since the engine trusted it; \
                 this may be an attack (or the host was reinstalled). Nothing was run. \
                 Check the new key on the host itself (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) \
                 and only then accept it with `pgvirt env trust NAME --fingerprint SHA256:...`",
                self.where_()
            ))
        } else if said.contains("No ") && said.contains("host key is known")
            || said.contains("Host key verification failed")
        {
            Error::usage(format!(
                "the host key of {} is not known to the engine; nothing was run (see `pgvirt env trust`)",
                self.where_()
            ))
        } else if said.contains("Permission denied") {
            Error::usage(format!(
                "{} refused the key {}: {said}",
                self.where_(),
                self.key_file.display()
            ))
        } else {
            Error::usage(format!(
                "lost the SSH connection to {} (or could not open it within {} s): {}",
                self.where_(),
                self.timeouts.connect,
                if said.is_empty() {
                    "ssh ended without saying why"
                } else {
                    said
                }
            ))
        }
    }

    /// Stops this environment's control master, if one runs.
    pub fn close(&self) {
        let mut cmd = self.ssh();
        cmd.arg("-O")
            .arg("exit")
            .arg(&self.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }

    /// The host's keys as the host offers them now, with their fingerprints.
    pub fn scan(&self) -> Result<Vec<HostKey>> {
        let out = Command::new("ssh-keyscan")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-T")
            .arg(self.timeouts.connect.to_string())
            .arg("--")
            .arg(&self.host)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("cannot run ssh-keyscan for", Path::new(&self.host), e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut keys = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut child = Command::new("ssh-keygen")
                .arg("-l")
                .arg("-f")
                .arg("-")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error::io("cannot run", Path::new("ssh-keygen"), e))?;
            if let Some(mut w) = child.stdin.take() {
                let _ = w.write_all(format!("{line}\n").as_bytes());
            }
            let fp = child
                .wait_with_output()
                .map_err(|e| Error::io("cannot run", Path::new("ssh-keygen"), e))?;
            let fp = String::from_utf8_lossy(&fp.stdout).into_owned();
            // "256 SHA256:... host (ED25519)"
            let mut words = fp.split_whitespace();
            let (Some(_bits), Some(fingerprint)) = (words.next(), words.next()) else {
                continue;
            };
            let kind = fp
                .rsplit_once('(')
                .map(|(_, k)| k.trim().trim_end_matches(')').to_owned())
                .unwrap_or_default();
            let key = line.split_once(' ').map(|(_, k)| k).unwrap_or(line);
            keys.push(HostKey {
                kind,
                fingerprint: fingerprint.to_owned(),
                key: key.to_owned(),
            });
        }
        if keys.is_empty() {
            return Err(Error::usage(format!(
                "cannot reach the SSH server at {}:{} within {} s (no host key could be read{})",
                self.host,
                self.port,
                self.timeouts.connect,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .find(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )));
        }
        Ok(keys)
    }

    /// The keys the engine trusts for this host.
    pub fn trusted(&self) -> Vec<String> {
        let entry = self.host_entry();
        std::fs::read_to_string(self.known_hosts())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(names, _)| names.split(',').any(|n| n == entry))
            .map(|(_, key)| key.trim().to_owned())
            .collect()
    }

    /// Trusts the offered key whose fingerprint is `fingerprint`, replacing
    /// whatever the engine trusted for this host before.
    pub fn trust(&self, offered: &[HostKey], fingerprint: &str) -> Result<HostKey> {
        let key = offered
            .iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| {
                Error::usage(format!(
                    "--fingerprint {fingerprint} is not a key {}:{} offers (it offers: {})",
                    self.host,
                    self.port,
                    offered
                        .iter()
                        .map(|k| format!("{} {}", k.kind, k.fingerprint))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let entry = self.host_entry();
        let path = self.known_hosts();
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_once(' ')
                    .is_none_or(|(names, _)| !names.split(',').any(|n| n == entry))
            })
            .map(str::to_owned)
            .collect();
        lines.push(format!("{entry} {}", key.key));
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, lines.join("\n") + "\n")
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        crate::host::files::set_mode(&tmp, 0o600)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(key.clone())
    }
}

/// A host key as offered by the host.
#[derive(Debug, Clone, Serialize)]
pub struct HostKey {
    /// ED25519, ECDSA, RSA.
    pub kind: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// Type and base64, as `known_hosts` holds it.
    #[serde(skip)]
    pub key: String,
}

/// Ends the stderr of a script that ran to an exit of its own.
const MARK: &str = "__pgvirt_exit_7f3a__";

/// Splits the exit marker off a remote stderr: the text before it and the
/// script's exit code.
fn split_marker(stderr: &str) -> (String, Option<i32>) {
    match stderr.rfind(MARK) {
        Some(at) => {
            let code = stderr[at + MARK.len()..].trim().parse().ok();
            let before = stderr[..at].strip_suffix('\n').unwrap_or(&stderr[..at]);
            (before.to_owned(), code)
        }
        None => (stderr.to_owned(), None),
    }
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Single-quotes `s` for bash.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_split_off() {
        let (text, code) = split_marker(&format!("oops\n\n{MARK}3\n"));
        assert_eq!((text.as_str(), code), ("oops\n", Some(3)));
        assert_eq!(split_marker("ssh: gone").1, None);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert!(is_variable_name("PG_PW1") && !is_variable_name("1A") && !is_variable_name("A-B"));
    }
}
