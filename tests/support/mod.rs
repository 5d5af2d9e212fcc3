//! Test support: the `pgvirt` binary with a private store, real PostgreSQL
//! clusters run as the environment's OS user, and temporary directories that
//! user can use. Everything made here is torn down on drop, even when a test
//! fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The PostgreSQL 15 binaries the tests use.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The OS user clusters run as (postgres.md: the Debian package's user).
pub const PG_USER: &str = "postgres";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The connector library built next to the `pgvirt` binary.
pub fn library() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pgvirt"));
    let lib = bin.with_file_name("libpgvirt.so");
    assert!(
        lib.is_file(),
        "connector library {} was not built",
        lib.display()
    );
    lib
}

/// Fails loudly when something the tests need is missing: a skipped
/// prerequisite would hide a broken machine, in CI or anywhere else.
pub fn require_postgres() {
    assert!(
        Path::new(PG_BIN).join("postgres").is_file(),
        "PostgreSQL 15 is not installed at {PG_BIN}; run `bash .ci/run` once or apt-get install postgresql-15"
    );
    assert!(
        nix::unistd::User::from_name(PG_USER)
            .ok()
            .flatten()
            .is_some(),
        "OS user {PG_USER} does not exist; install postgresql-15"
    );
}

fn pg_user() -> nix::unistd::User {
    nix::unistd::User::from_name(PG_USER)
        .ok()
        .flatten()
        .expect("postgres user exists (see require_postgres)")
}

/// A command that runs as the postgres user when the tests run as root.
pub fn as_pg_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if nix::unistd::Uid::effective().is_root() {
        let user = pg_user();
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        cmd.env("HOME", &user.dir);
    }
    cmd
}

/// A temporary directory the postgres user owns (0700).
pub struct PgDir {
    dir: tempfile::TempDir,
}

impl PgDir {
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        if nix::unistd::Uid::effective().is_root() {
            let user = pg_user();
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real PostgreSQL 15 cluster, started by the test as the postgres user,
/// stopped and removed on drop.
pub struct Cluster {
    home: PgDir,
    pub port: u16,
}

impl Cluster {
    pub fn start() -> Self {
        require_postgres();
        let home = PgDir::new("pgvirt-cluster-");
        let data = home.path().join("data");
        run_ok(
            as_pg_user(Path::new(PG_BIN).join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "--no-sync"]),
        );
        // Settings go into postgresql.conf, so a restart (and discovery of
        // the stopped cluster) sees the same port. A port picked now could be
        // taken before the server binds it; retry with another.
        for _ in 0..5 {
            let port = free_port();
            let conf = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
                home.path().display()
            );
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .and_then(|mut f| f.write_all(conf.as_bytes()))
                .expect("append to postgresql.conf");
            let out = as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
                .args(["-D"])
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(home.path().join("log"))
                .arg("start")
                .output()
                .expect("pg_ctl runs");
            if out.status.success() {
                return Self { home, port };
            }
        }
        let log = std::fs::read_to_string(home.path().join("log")).unwrap_or_default();
        panic!("test cluster did not start:\n{log}");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.home.path()
    }

    pub fn stop(&self) {
        let _ = as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    pub fn restart(&self) {
        run_ok(
            as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-l"])
                .arg(self.home.path().join("log"))
                .arg("start"),
        );
    }

    /// Runs SQL through psql on the cluster's socket; returns trimmed output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = run_ok(
            as_pg_user(Path::new(PG_BIN).join("psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(self.socket_dir())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-c",
                    sql,
                ]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pgvirt` with its own metadata store in a temporary directory.
pub struct Pgvirt {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Pgvirt {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("pgvirt-store-")
                .tempdir()
                .expect("tempdir"),
            envs: Vec::new(),
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
        require_postgres();
        let p = Self::new();
        p.ok(&[
            "connector",
            "install",
            repo_root().to_str().expect("utf-8 path"),
        ]);
        p.ok(&["env", "add", "local", "--user", PG_USER]);
        p
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
