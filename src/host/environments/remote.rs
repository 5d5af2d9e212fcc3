//! Adding a remote (SSH) environment and trusting its host key. Nothing is
//! stored until the host is reached with a key the engine trusts and the
//! OS user is checked there; a failed add leaves no key copy, no
//! known-hosts entry and no row.

use std::path::{Path, PathBuf};

use rusqlite::params;

use super::ssh::{self, HostKey, SshTarget, Timeouts};
use super::{check_name, find, get, Environment, EnvironmentKind};
use crate::abi::CommandRequest;
use crate::host::error::{Error, Result};
use crate::host::store::{self, Store};

/// What `env add NAME --host ...` asks for.
pub struct RemoteSpec<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub ssh_user: &'a str,
    pub key: &'a Path,
    /// The OS user commands run as; default: the SSH user.
    pub os_user: Option<&'a str>,
    pub scratch: Option<&'a Path>,
    pub timeouts: Timeouts,
    /// The host key fingerprint the operator checked and accepts.
    pub fingerprint: Option<&'a str>,
}

/// Adds a remote environment.
pub fn add(store: &Store, spec: &RemoteSpec<'_>) -> Result<Environment> {
    check_name(spec.name, "environment name")?;
    check_host(spec.host)?;
    check_user(spec.ssh_user, "--ssh-user")?;
    let os_user = spec.os_user.unwrap_or(spec.ssh_user);
    check_user(os_user, "--user")?;
    if os_user == "root" {
        return Err(Error::usage(
            "--user cannot be root: initdb and pg_ctl refuse to run as root (try --user postgres)",
        ));
    }
    for (value, flag) in [
        (spec.timeouts.connect, "--connect-timeout"),
        (spec.timeouts.alive_interval, "--alive-interval"),
        (spec.timeouts.alive_count_max, "--alive-count-max"),
    ] {
        if value == 0 || value > 3600 {
            return Err(Error::usage(format!("{flag} must be 1 to 3600")));
        }
    }
    if let Some(dir) = spec.scratch {
        if !dir.is_absolute() || crate::host::files::check_plain_path(dir).is_err() {
            return Err(Error::usage(format!(
                "--scratch {} must be an absolute path of {}",
                dir.display(),
                crate::host::files::PLAIN_PATH_CHARACTERS
            )));
        }
    }
    check_key(spec.key)?;
    if find(store, spec.name)?.is_some() {
        return Err(Error::Conflict(format!(
            "environment {:?} exists already",
            spec.name
        )));
    }
    let dir = ssh::engine_dir(&store.data_dir())?;
    sweep_keys(store, &dir.join("keys"))?;
    let key_file = dir.join("keys").join(spec.name);
    let target = SshTarget {
        host: spec.host.to_owned(),
        port: spec.port,
        ssh_user: spec.ssh_user.to_owned(),
        key_file: key_file.clone(),
        timeouts: spec.timeouts,
        dir,
    };
    let known_before = std::fs::read(target.known_hosts()).ok();
    let result = (|| {
        copy_key(spec.key, &key_file)?;
        check_host_key(&target, spec.name, spec)?;
        let (home, scratch) = reach(&target, os_user, spec.scratch, &store.engine_id()?)?;
        log::debug!("{} reached; home of {os_user} is {home}", spec.name);
        store
            .conn()
            .execute(
                "INSERT INTO environments (name, kind, os_user, scratch, added_at, host, ssh_port, ssh_user, key_file, connect_timeout, alive_interval, alive_count_max)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    spec.name,
                    EnvironmentKind::Ssh,
                    os_user,
                    scratch,
                    store::now(),
                    spec.host,
                    spec.port,
                    spec.ssh_user,
                    key_file.to_string_lossy(),
                    spec.timeouts.connect,
                    spec.timeouts.alive_interval,
                    spec.timeouts.alive_count_max,
                ],
            )
            .map_err(|e| store.err(e))?;
        get(store, spec.name)
    })();
    if result.is_err() {
        target.close();
        let _ = std::fs::remove_file(&key_file);
        let known = target.known_hosts();
        match known_before {
            Some(text) => {
                let _ = std::fs::write(&known, text);
            }
            None => {
                let _ = std::fs::remove_file(&known);
            }
        }
    }
    result
}

/// Removes key copies no environment owns: what an add killed midway left
/// (the next add repairs it).
fn sweep_keys(store: &Store, keys: &Path) -> Result<()> {
    let known: Vec<String> = super::list(store)?.into_iter().map(|e| e.name).collect();
    let Ok(entries) = std::fs::read_dir(keys) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Trusts the key the host of `name` offers now, if its fingerprint is
/// `fingerprint` (after the operator checked it on the host itself).
pub fn trust(store: &Store, name: &str, fingerprint: &str) -> Result<(Environment, HostKey)> {
    let env = get(store, name)?;
    let target = env.ssh.clone().ok_or_else(|| {
        Error::usage(format!("environment {name:?} is local: it has no host key"))
    })?;
    let offered = target.scan()?;
    let key = target.trust(&offered, fingerprint)?;
    // A master from before speaks to whoever it spoke to: start afresh.
    target.close();
    Ok((env, key))
}

/// The offered host key must be one the engine trusts, or the one the
/// operator names with `--fingerprint`.
fn check_host_key(target: &SshTarget, name: &str, spec: &RemoteSpec<'_>) -> Result<()> {
    let offered = target.scan()?;
    if let Some(fp) = spec.fingerprint {
        target.trust(&offered, fp)?;
        return Ok(());
    }
    let trusted = target.trusted();
    let listed = offered
        .iter()
        .map(|k| format!("  {} {}", k.kind, k.fingerprint))
        .collect::<Vec<_>>()
        .join("\n");
    let best = offered
        .iter()
        .find(|k| k.kind == "ED25519")
        .or_else(|| offered.first())
        .map(|k| k.fingerprint.clone())
        .unwrap_or_default();
    if trusted.is_empty() {
        return Err(Error::usage(format!(
            "REFUSED: the host key of {}:{} is unknown to the engine. It offers:\n{listed}\n\
             Check it on the host itself (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); if it is the same, accept it with:\n  \
             pgvirt env add {name} --host {} --port {} --ssh-user {} --key {} --fingerprint {best}",
            spec.host,
            spec.port,
            spec.host,
            spec.port,
            spec.ssh_user,
            spec.key.display()
        )));
    }
    if !offered.iter().any(|k| trusted.contains(&k.key)) {
        return Err(Error::usage(format!(
            "REFUSED: the host key of {}:{} has CHANGED since the engine trusted it; this may be an attack \
             (or the host was reinstalled). It now offers:\n{listed}\n\
             Check it on the host itself; only if it is the same, accept it with --fingerprint {best}",
            spec.host, spec.port
        )));
    }
    Ok(())
}

/// Reaches the host as the OS user: not root, its home, and the scratch
/// directory made there (0700).
fn reach(
    target: &SshTarget,
    os_user: &str,
    scratch: Option<&Path>,
    engine_id: &str,
) -> Result<(String, String)> {
    let mut req = CommandRequest {
        command: r#"set -e; [ "$(id -u)" != 0 ] || { echo "runs as root" >&2; exit 3; }
dir=${SCRATCH:-$HOME/.pgvirt/$ENGINE}
umask 077; mkdir -p -- "$dir"; chmod 0700 -- "$dir"
printf '%s\n%s\n' "$HOME" "$dir""#
            .into(),
        ..CommandRequest::default()
    };
    req.variables.insert("ENGINE".into(), engine_id.into());
    if let Some(dir) = scratch {
        req.variables
            .insert("SCRATCH".into(), dir.to_string_lossy().into_owned());
    }
    let out = target.run(os_user, &req)?;
    if out.exit_code != 0 {
        return Err(Error::usage(format!(
            "on {}, user {os_user} cannot run commands or make its scratch directory: {}",
            target.host,
            out.stderr.trim()
        )));
    }
    let mut lines = out.stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(home), Some(dir)) => Ok((home.to_owned(), dir.to_owned())),
        _ => Err(Error::usage(format!(
            "on {}, user {os_user}: unexpected answer {:?}",
            target.host, out.stdout
        ))),
    }
}

/// The key must be a private key without a passphrase (the engine runs
/// unattended).
fn check_key(key: &Path) -> Result<()> {
    if !key.is_file() {
        return Err(Error::usage(format!(
            "--key {}: no such file",
            key.display()
        )));
    }
    let ok = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-P")
        .arg("")
        .arg("-f")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "--key {} is not a private key without a passphrase (the engine runs unattended)",
            key.display()
        )))
    }
}

/// The engine keeps its own copy of the key, 0600, so the operator's file
/// may move.
fn copy_key(from: &Path, to: &PathBuf) -> Result<()> {
    let text = std::fs::read(from).map_err(|e| Error::io("cannot read", from, e))?;
    let tmp = to.with_extension("new");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        f.write_all(&text)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| Error::io("cannot write", to, e))
}

fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "--host {host:?} must be a host name or address (letters, digits, '.', '-', ':')"
        )))
    }
}

fn check_user(user: &str, flag: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{flag} {user:?} must be an OS user name (lower-case letters, digits, '_', '-', '.')"
        )))
    }
}
