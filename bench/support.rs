//! What the benchmarks share: the `pgvirt` binary with a private store,
//! PostgreSQL sources filled by pgbench, pools on real filesystems, timing,
//! and the table + JSON every benchmark ends with.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/support/loopfs.rs"]
mod loopfs;
pub use loopfs::LoopFs;
#[path = "../tests/support/zfs.rs"]
mod zfs;
pub use zfs::ZfsPool;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where benchmark files go: big, sparse, on the default filesystem.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let user = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("the postgres user");
    if nix::unistd::Uid::effective().is_root() {
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .env("HOME", &user.dir);
    }
    cmd
}

pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// `pgvirt` with its own store.
pub struct Pgvirt {
    pub store: PathBuf,
}

impl Pgvirt {
    pub fn new(dir: &Path) -> Self {
        Self {
            store: dir.join("pgvirt.db"),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgvirt"));
        cmd.args(args)
            .env("PGVIRT_STORE", &self.store)
            .env_remove("RUST_LOG");
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(&mut self.cmd(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    /// Connector installed, `local` environment (postgres), pool at `pool`.
    pub fn setup(dir: &Path, pool: &Path) -> Self {
        // `cargo bench` builds the binary but not the connector library
        // (the cdylib): a stale one would measure old code.
        let lib = PathBuf::from(env!("CARGO_BIN_EXE_pgvirt")).with_file_name("libpgvirt.so");
        let built = std::fs::metadata(&lib).and_then(|m| m.modified()).ok();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let newest = newest_change(&[
            root.join("src"),
            root.join("schema"),
            root.join("plugin.json"),
        ]);
        assert!(
            built.is_some() && built >= newest,
            "{} is older than the sources (or missing): run `cargo build --release` before `cargo bench`",
            lib.display()
        );
        let p = Self::new(dir);
        p.ok(&["connector", "install", env!("CARGO_MANIFEST_DIR")]);
        p.ok(&["env", "add", "local", "--user", "postgres"]);
        p.ok(&["init", "--pool", pool.to_str().expect("utf-8")]);
        p
    }

    /// Discovers and returns the source config id of `data_dir`.
    pub fn source_id(&self, data_dir: &Path) -> String {
        let refreshed = self.json(&["env", "refresh", "local"]);
        let data = std::fs::canonicalize(data_dir).expect("canonical");
        refreshed["source_configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|s| s["document"]["data_directory"] == serde_json::json!(data))
            .expect("source discovered")["id"]
            .to_string()
    }
}

/// A source cluster filled by `pgbench -i -s scale`, stopped on drop.
pub struct Source {
    pub dir: PathBuf,
    pub port: u16,
}

impl Source {
    pub fn new(parent: &Path, scale: u32) -> Self {
        let dir = parent.join(format!("source-{scale}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let pg = nix::unistd::User::from_name("postgres")
            .expect("lookup")
            .expect("postgres");
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown");
        let data = dir.join("data");
        ok(as_postgres(format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"]));
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_wal_size = '4GB'\nfsync = off\n",
            dir.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("conf");
        ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "start"]));
        let s = Self { dir, port };
        ok(as_postgres(format!("{PG_BIN}/pgbench"))
            .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&s.dir)
            .args(["-p", &s.port.to_string(), "postgres"]));
        ok(&mut s.psql("CHECKPOINT"));
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn psql(&self, sql: &str) -> Command {
        let mut cmd = as_postgres(format!("{PG_BIN}/psql"));
        cmd.args(["-X", "-A", "-t", "-h"]).arg(&self.dir).args([
            "-p",
            &self.port.to_string(),
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        cmd
    }

    pub fn bytes(&self) -> u64 {
        ok(&mut self.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Stops every postgres whose data directory is under `root`.
pub fn stop_clusters_under(root: &Path) {
    let root = root.to_string_lossy().into_owned();
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == "-D") {
            if args.first().is_some_and(|a| a.ends_with("/postgres"))
                && args.get(i + 1).is_some_and(|d| d.starts_with(&root))
            {
                if let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGQUIT,
                    );
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// A pool for a backend: a loop-mounted filesystem, or the default one.
pub struct BenchPool {
    pub kind: &'static str,
    pub root: PathBuf,
    _fs: Option<LoopFs>,
    _zfs: Option<ZfsPool>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchPool {
    pub fn new(kind: &'static str, megabytes: u64) -> Self {
        match kind {
            "copy" => {
                let dir = scratch("pgvirt-bench-copy-");
                Self {
                    kind,
                    root: dir.path().to_owned(),
                    _fs: None,
                    _zfs: None,
                    _dir: Some(dir),
                }
            }
            // zfs-fuse: real ZFS through FUSE, slower than the kernel module.
            "zfs" => {
                let zfs = ZfsPool::new(megabytes);
                // The pool is `root/pool`: a dataset of its own.
                zfs.dataset("pool");
                Self {
                    kind,
                    root: zfs.path().to_owned(),
                    _fs: None,
                    _zfs: Some(zfs),
                    _dir: None,
                }
            }
            fs => {
                let loop_fs = LoopFs::new_in(fs, megabytes, Path::new("/var/tmp"));
                Self {
                    kind,
                    root: loop_fs.path().to_owned(),
                    _fs: Some(loop_fs),
                    _zfs: None,
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for BenchPool {
    fn drop(&mut self) {
        stop_clusters_under(&self.root);
        // Unmount bind mounts below the pool before the filesystem goes.
        let root = self.root.to_string_lossy().into_owned();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root) && *m != root)
            .collect();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}

/// Prints rows as an aligned table.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}");
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

/// Writes `bench/results/<name>.json`.
pub fn write_json(name: &str, value: &Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value).expect("json"))
        .expect("write results");
    println!("\nwrote {}", path.display());
}

/// Machine facts stored with every result.
pub fn machine() -> Value {
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "when_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// A list from an environment variable (`1,2,3`), or the default.
pub fn list_env<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<T>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0 / 1024.0)
}

/// A pool's name in a table: ZFS runs through FUSE here, and says so.
pub fn pool_label(kind: &str) -> String {
    if kind == "zfs" {
        "zfs (FUSE)".to_owned()
    } else {
        kind.to_owned()
    }
}

/// The newest modification time of the files under `paths`.
fn newest_change(paths: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut todo: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(Some(m));
        }
    }
    newest
}
