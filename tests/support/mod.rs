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

#[path = "http.rs"]
pub mod http;
#[path = "loopfs.rs"]
mod loopfs;
pub use loopfs::LoopFs;
#[path = "zfs.rs"]
mod zfs;
pub use zfs::ZfsPool;
#[path = "fixture.rs"]
pub mod fixture;
#[path = "netns.rs"]
pub mod netns;

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

/// A source cluster, a pool and pgvirt set up to link it: what the dSource
/// and VDB tests start from. Everything it started stops on drop.
pub struct Stack {
    pub pgvirt: Pgvirt,
    pub source: Cluster,
    pub pool: PoolDir,
    /// Source config id of the source cluster.
    pub source_id: String,
    fs: Option<PoolFs>,
}

/// A file system of the test's own that the pool lives on.
pub enum PoolFs {
    Loop(LoopFs),
    Zfs(ZfsPool),
}

impl PoolFs {
    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        match self {
            Self::Loop(fs) => fs.path(),
            Self::Zfs(z) => z.path(),
        }
    }

    /// The pool directory on it (a dataset of its own on ZFS).
    fn pool_dir(&self) -> PathBuf {
        match self {
            Self::Loop(fs) => fs.path().join("pool"),
            Self::Zfs(z) => z.dataset("pgvirt"),
        }
    }
}

impl Stack {
    /// On the default filesystem (copy pool).
    pub fn new() -> Self {
        Self::build(None, Cluster::start(), Pgvirt::new())
    }

    /// On a loop-mounted filesystem (`xfs` or `btrfs`), or a ZFS pool
    /// (`zfs`, through zfs-fuse: slow, keep such tests small).
    pub fn on(kind: &str) -> Self {
        let fs = match kind {
            "zfs" => PoolFs::Zfs(ZfsPool::new(1024)),
            // Sparse: room for the WAL a staging keeps between syncs.
            other => PoolFs::Loop(LoopFs::new(other, 4096)),
        };
        Self::build(Some(fs), Cluster::start(), Pgvirt::new())
    }

    /// On a copy pool, with this source and this pgvirt (its environment
    /// set as the test needs).
    pub fn with(source: Cluster, pgvirt: Pgvirt) -> Self {
        Self::build(None, source, pgvirt)
    }

    fn build(fs: Option<PoolFs>, source: Cluster, pgvirt: Pgvirt) -> Self {
        pgvirt.install_and_add_local();
        let pool = PoolDir::new();
        let pool_path = match &fs {
            Some(fs) => fs.pool_dir(),
            None => pool.pool(),
        };
        pgvirt.ok(&["init", "--pool", pool_path.to_str().expect("utf-8")]);
        let refreshed = pgvirt.json(&["env", "refresh", "local"]);
        let data = std::fs::canonicalize(source.data_dir()).expect("canonical");
        let source_id = refreshed["source_configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|s| s["document"]["data_directory"] == serde_json::json!(data))
            .expect("source discovered")["id"]
            .to_string();
        Self {
            pgvirt,
            source,
            pool,
            source_id,
            fs,
        }
    }

    /// Links the source as dSource `name`.
    pub fn link(&self, name: &str) -> Value {
        let port = free_port().to_string();
        self.pgvirt.json(&[
            "dsource",
            "link",
            name,
            "--source",
            &self.source_id,
            "--staging-port",
            &port,
        ])
    }

    /// Runs SQL on a VDB (by its connection details) as the postgres user.
    pub fn vdb_sql(&self, vdb: &str, sql: &str) -> String {
        self.try_vdb_sql(vdb, sql)
            .unwrap_or_else(|e| panic!("SQL on VDB {vdb} failed: {sql}\n{e}"))
    }

    /// Runs SQL on a VDB; what psql printed on stderr if it failed.
    pub fn try_vdb_sql(&self, vdb: &str, sql: &str) -> Result<String, String> {
        let v = self.pgvirt.json(&["vdb", "show", vdb]);
        let host = v["source_config"]["socket_directory"]
            .as_str()
            .expect("socket")
            .to_owned();
        let port = v["port"].to_string();
        let out = as_pg_user(Path::new(PG_BIN).join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
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
}

impl Drop for Stack {
    fn drop(&mut self) {
        let root = match &self.fs {
            Some(fs) => fs.path().to_owned(),
            None => self.pool.pool(),
        };
        stop_clusters_under(&root);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// An order-independent checksum of a table's rows.
pub const CHECKSUM_SQL: &str =
    "SELECT md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM {} t";

pub fn checksum_sql(table: &str) -> String {
    CHECKSUM_SQL.replace("{}", table)
}

/// Starts `cmd` with `PGVIRT_FAULT_PAUSE=step` and returns once it is paused
/// inside that step (its stderr says so), ready to be killed.
pub fn spawn_paused(mut cmd: Command, step: &str) -> std::process::Child {
    let mut child = cmd
        .env("PGVIRT_FAULT_PAUSE", step)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("pausing") {
        use std::io::Read;
        let n = stderr.read(&mut buf).expect("read");
        assert!(n > 0, "ended before pausing in {step}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child
}

/// The pids, command lines and working directories of every process.
pub fn processes() -> Vec<(i32, Vec<String>, Option<PathBuf>)> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.is_empty() {
            continue; // a zombie, or a kernel thread
        }
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push((pid, args, std::fs::read_link(p.path().join("cwd")).ok()));
    }
    found
}

impl Stack {
    /// The root everything of this stack's pool lives under.
    pub fn pool_root(&self) -> PathBuf {
        match &self.fs {
            Some(fs) => fs.path().to_owned(),
            None => self.pool.pool(),
        }
    }

    /// Asserts the state is whole: `pool check` finds nothing; listings are
    /// true (a running VDB runs, a stopped one does not; an enabled dSource
    /// replays WAL, unpaused); no server, copy or pg_basebackup runs on the
    /// pool for an object that is not listed as running; nothing is mounted
    /// under the pool that is not listed as such; the source holds only the
    /// listed dSources' slots. `what` says when, for the messages.
    pub fn assert_whole(&self, what: &str) {
        let check = self.pgvirt.run(&["pool", "check"]);
        assert!(
            check.status.success(),
            "{what}: pool check found problems:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let root = self.pool_root();
        let dsources = self.pgvirt.json(&["dsource", "list"]);
        let vdbs = self.pgvirt.json(&["vdb", "list"]);
        let mut serving: Vec<PathBuf> = Vec::new();
        let mut mounted_ok: Vec<PathBuf> = Vec::new();
        for d in dsources.as_array().expect("dsources") {
            let name = d["name"].as_str().expect("name");
            let state = d["state"].as_str().expect("state");
            assert!(
                ["enabled", "disabled", "resync_needed"].contains(&state),
                "{what}: dSource {name} is left {state}"
            );
            let mount = PathBuf::from(d["mount_path"].as_str().expect("mount"));
            let shown = self.pgvirt.json(&["dsource", "show", name]);
            if state == "enabled" {
                assert_eq!(
                    shown["status"],
                    serde_json::json!("ACTIVE"),
                    "{what}: {shown}"
                );
                assert_eq!(
                    shown["replication"]["replay_paused"],
                    serde_json::json!(false),
                    "{what}: replay of {name} is left paused: {shown}"
                );
                serving.push(mount.join("data"));
                // And its WAL dataset, beside it.
                mounted_ok.push(PathBuf::from(format!("{}-wal", mount.display())));
                mounted_ok.push(mount);
            }
        }
        for v in vdbs.as_array().expect("vdbs") {
            let name = v["name"].as_str().expect("name");
            let state = v["state"].as_str().expect("state");
            let status = self.pgvirt.json(&["vdb", "status", name])["status"].clone();
            match state {
                "running" => {
                    assert_eq!(
                        status,
                        serde_json::json!("ACTIVE"),
                        "{what}: VDB {name} is listed running"
                    );
                    let mount = PathBuf::from(v["mount_path"].as_str().expect("mount"));
                    serving.push(mount.join("data"));
                    // Its WAL dataset, where it archives.
                    let dataset = v["dataset"].as_str().expect("dataset");
                    mounted_ok.push(root.join("mounts").join(format!("{dataset}-wal")));
                    mounted_ok.push(PathBuf::from(format!("{}-wal", mount.display())));
                    mounted_ok.push(mount);
                }
                "stopped" | "disabled" => {
                    assert_eq!(
                        status,
                        serde_json::json!("INACTIVE"),
                        "{what}: VDB {name} is listed {state}"
                    );
                }
                other => panic!("{what}: VDB {name} is left {other}"),
            }
        }
        let root_text = root.to_string_lossy().into_owned();
        for (pid, args, cwd) in processes() {
            let line = args.join(" ");
            if !line.contains(&root_text) && !cwd.as_ref().is_some_and(|c| c.starts_with(&root)) {
                continue;
            }
            let program = args.first().map(String::as_str).unwrap_or("");
            if program.ends_with("/postgres") {
                let data = args
                    .iter()
                    .position(|a| a == "-D")
                    .and_then(|i| args.get(i + 1))
                    .map(PathBuf::from);
                assert!(
                    data.as_ref().is_some_and(|d| serving.contains(d)),
                    "{what}: a server (pid {pid}) runs on {data:?}, which nothing listed serves"
                );
            } else if program.ends_with("cp")
                || program.contains("pg_basebackup")
                || program.ends_with("btrfs")
            {
                panic!("{what}: {line} (pid {pid}) still runs");
            }
        }
        for mount in std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
        {
            let mount = PathBuf::from(mount);
            if mount.starts_with(root.join("mounts")) {
                assert!(
                    mounted_ok.contains(&mount),
                    "{what}: {} is mounted, and nothing listed running uses it",
                    mount.display()
                );
            }
        }
        let slots = self.source.psql(
            "postgres",
            "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
        );
        for slot in slots.split(',').filter(|s| !s.is_empty()) {
            let owner = slot.trim_start_matches("pgvirt_");
            assert!(
                dsources
                    .as_array()
                    .expect("dsources")
                    .iter()
                    .any(|d| d["name"]
                        .as_str()
                        .map(|n| n.to_lowercase().replace(['-', '.'], "_"))
                        == Some(owner.to_owned())),
                "{what}: slot {slot} on the source belongs to no dSource"
            );
        }
    }
}
