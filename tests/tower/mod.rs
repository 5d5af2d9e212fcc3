//! The control tower over two real engines (`pgvirt serve`, each with its
//! own store, pool and source), driven through its API and its web UI in a
//! real headless Chromium: log in, both engines up, provision a VDB from a
//! dSource's timeline, watch its job, copy its connection string and
//! connect with it, delete it. Then one engine stopped: shown down, its
//! objects as last seen, operations on them refused with a clear error
//! while the other engine works; and a lower connector version refused
//! with no engine changed. Screenshots of the main pages are taken; with
//! `PGVIRT_SCREENSHOTS=1` they replace those in `docs/screenshots/`.
//!
//! `story` is the test; this file has its helpers.

mod story;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::http::{Api, Reply};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgvirt");

pub fn tower(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--store")
        .arg(store)
        .arg("tower")
        .args(args)
        .env_remove("PGVIRT_STORE")
        .env_remove("RUST_LOG");
    cmd
}

pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("pgvirt runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, secret).expect("token file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

pub fn error_body(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let body = reply.json();
    for key in ["what", "why", "action"] {
        assert!(body[key].is_string(), "no {key} in {body}");
    }
    body
}

/// Polls until `check` holds on the tower's inventory.
pub fn wait_inventory(api: &Api, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inv = api.get("/api/inventory").json();
        if check(&inv) {
            return inv;
        }
        assert!(Instant::now() < deadline, "{what} never came: {inv}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Follows a job through the tower until it ends.
pub fn wait_job(api: &Api, accepted: &Reply) -> Value {
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let job = accepted.json();
    let engine = job["engine"]
        .as_str()
        .expect("the job names its engine")
        .to_owned();
    let location = format!("/api/jobs/{engine}/{}", job["id"]);
    assert!(
        accepted
            .headers
            .to_ascii_lowercase()
            .contains(&format!("location: {location}")),
        "{}",
        accepted.headers
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = api.get(&location).json();
        if now["state"] != "running" {
            assert_eq!(now["engine"], json!(engine), "{now}");
            return now;
        }
        assert!(Instant::now() < deadline, "job never ended: {now}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn engine_of<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == json!(name)))
        .unwrap_or_else(|| panic!("no engine {name} in {inv}"))
}

pub fn has(inv: &Value, kind: &str, engine: &str, name: &str) -> bool {
    inv[kind].as_array().is_some_and(|a| {
        a.iter()
            .any(|o| o["engine"] == json!(engine) && o["name"] == json!(name))
    })
}

/// A CA of the test's own, and a certificate it signs for 127.0.0.1 with
/// its key: (CA, certificate, key), PEM files.
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let [ca, ca_key, cert, key, csr, ext] = [
        "ca.pem", "ca.key", "cert.pem", "key.pem", "cert.csr", "cert.ext",
    ]
    .map(|f| dir.join(f));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let steps: [Vec<&std::ffi::OsStr>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=pgvirt test CA",
            "-keyout",
        ]
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([ca_key.as_os_str(), "-out".as_ref(), ca.as_os_str()])
        .collect(),
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ]
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([key.as_os_str(), "-out".as_ref(), csr.as_os_str()])
        .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial", "-in"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([
                csr.as_os_str(),
                "-CA".as_ref(),
                ca.as_os_str(),
                "-CAkey".as_ref(),
                ca_key.as_os_str(),
            ])
            .chain([
                "-extfile".as_ref(),
                ext.as_os_str(),
                "-out".as_ref(),
                cert.as_os_str(),
            ])
            .collect(),
    ];
    for args in steps {
        let made = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    (ca, cert, key)
}
