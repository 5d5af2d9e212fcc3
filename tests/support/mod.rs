//! Test support: the `pgvirt` binary with a private store, real PostgreSQL
//! clusters run as the environment's OS user, and temporary directories that
//! user can use. Everything made here is torn down on drop, even when a test
//! fails.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "browser.rs"]
pub mod browser;
#[path = "http.rs"]
pub mod http;
#[path = "loopfs.rs"]
mod loopfs;
pub use loopfs::LoopFs;
#[path = "zfs.rs"]
mod zfs;
pub use zfs::ZfsPool;
#[path = "cluster.rs"]
mod cluster;
#[path = "fixture.rs"]
pub mod fixture;
#[path = "netns.rs"]
pub mod netns;
pub use cluster::{free_port, run_ok, stop_clusters_under, try_psql_at, Cluster, PgDir};
#[path = "runner.rs"]
mod runner;
pub use runner::{connector_copy, edit_json, Pgvirt, PoolDir};
#[path = "stack.rs"]
mod stack;
pub use stack::Stack;
#[path = "writer.rs"]
mod writer;
pub use writer::{lsn, Writer};

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
