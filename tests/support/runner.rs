//! The `pgvirt` binary with a private store, a copy of the connector
//! package to tamper with, and pool directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::*;

/// `pgvirt` with its own metadata store in a temporary directory.
pub struct Pgvirt {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Pgvirt {
    pub fn new() -> Self {
        // Tests run in parallel, each with its own store: give each its own
        // VDB port range so two stores never pick the same free port.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 90;
        let first = 21000 + k * 100;
        Self {
            dir: tempfile::Builder::new()
                .prefix("pgvirt-store-")
                .tempdir()
                .expect("tempdir"),
            envs: vec![("PGVIRT_VDB_PORTS".into(), format!("{first}-{}", first + 99))],
        }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("pgvirt.db")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets a variable for every later command.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgvirt"));
        cmd.args(args)
            .env("PGVIRT_STORE", self.store())
            .env_remove("RUST_LOG");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("pgvirt starts")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pgvirt {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with `--output json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("pgvirt {args:?} printed no JSON ({e}):\n{text}"))
    }

    /// Runs and expects failure with an exit code (not a signal); returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "pgvirt {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            out.status.code().is_some(),
            "pgvirt {args:?} died by a signal ({}) instead of reporting an error:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Installs the connector from the repository and adds the local
    /// environment as the postgres user.
    pub fn with_local_env() -> Self {
        let p = Self::new();
        p.install_and_add_local();
        p
    }

    /// Installs the connector and adds the local environment.
    pub fn install_and_add_local(&self) {
        require_postgres();
        self.ok(&[
            "connector",
            "install",
            repo_root().to_str().expect("utf-8 path"),
        ]);
        self.ok(&["env", "add", "local", "--user", PG_USER]);
    }
}

impl Drop for Pgvirt {
    /// Removes the environments' scratch directories it made (outside the
    /// test's temporary directory: in the environment user's home).
    fn drop(&mut self) {
        let Ok(store) = pgvirt::host::store::Store::open(&self.store()) else {
            return;
        };
        let Ok(mut stmt) = store.conn().prepare("SELECT scratch FROM environments") else {
            return;
        };
        let dirs: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default();
        for dir in dirs.iter().filter(|d| d.contains("/.pgvirt/")) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A copy of the connector package (plugin.json and schema/) to tamper with.
pub fn connector_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgvirt-pkg-")
        .tempdir()
        .expect("tempdir");
    std::fs::copy(
        repo_root().join("plugin.json"),
        dir.path().join("plugin.json"),
    )
    .expect("copy plugin.json");
    std::fs::create_dir(dir.path().join("schema")).expect("mkdir");
    for entry in std::fs::read_dir(repo_root().join("schema")).expect("schema dir") {
        let entry = entry.expect("entry");
        std::fs::copy(
            entry.path(),
            dir.path().join("schema").join(entry.file_name()),
        )
        .expect("copy schema");
    }
    std::fs::copy(library(), dir.path().join("libpgvirt.so")).expect("copy library");
    dir
}

/// Reads, edits and writes back a JSON file.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    edit(&mut doc);
    std::fs::write(path, serde_json::to_string_pretty(&doc).expect("encode")).expect("write");
}

/// A pool directory on the default filesystem that environment users can
/// traverse (the pool itself is made by `pgvirt init`).
pub struct PoolDir {
    dir: tempfile::TempDir,
}

impl PoolDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgvirt-pool-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        Self { dir }
    }

    pub fn pool(&self) -> PathBuf {
        self.dir.path().join("pool")
    }
}

impl Drop for PoolDir {
    fn drop(&mut self) {
        // Unmount anything the test left mounted under it.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}
