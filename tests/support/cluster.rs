//! Real PostgreSQL clusters the tests start as the postgres user, the
//! directories that user owns, free ports, and cleanup of servers left
//! under a directory.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{as_pg_user, pg_user, require_postgres, PG_BIN};

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
        Self::start_in_zone(None)
    }

    /// A cluster made in time zone `tz` (initdb writes it as the cluster's
    /// `timezone` and `log_timezone`).
    pub fn start_in_zone(tz: Option<&str>) -> Self {
        require_postgres();
        let home = PgDir::new("pgvirt-cluster-");
        let data = home.path().join("data");
        let mut initdb = as_pg_user(Path::new(PG_BIN).join("initdb"));
        if let Some(tz) = tz {
            initdb.env("TZ", tz);
        }
        run_ok(
            initdb
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
        try_psql_at(self.socket_dir(), self.port, database, sql)
            .unwrap_or_else(|e| panic!("psql on {database} failed: {sql}\n{e}"))
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

/// SQL through psql on the server at `host` (a socket directory) and
/// `port`, as postgres: its trimmed output, or what it printed on stderr.
pub fn try_psql_at(host: &Path, port: u16, database: &str, sql: &str) -> Result<String, String> {
    let out = as_pg_user(Path::new(PG_BIN).join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(host)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
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

/// Stops every postgres whose data directory is under `root` (test cleanup).
pub fn stop_clusters_under(root: &Path) {
    let root = root.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_postmaster = args.first().is_some_and(|a| a.ends_with("/postgres"));
        if let (true, Some(i)) = (is_postmaster, args.iter().position(|a| a == "-D")) {
            if args.get(i + 1).is_some_and(|d| d.starts_with(&root)) {
                if let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGQUIT,
                    );
                }
            }
        }
    }
}
