//! The ingestion methods a user loads or names: staging push (the user
//! fills the mount), single database (parallel dump and restore), and
//! pgBackRest (a restore from the user's repository, then archive-get).

mod logical;
mod pgbackrest;
mod single_database;
pub mod staging_push;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{as_pg_user, run_ok, try_psql_at, PG_BIN};

/// Runs a PostgreSQL program as the postgres user; returns its stdout.
pub fn pg(program: &str, args: &[&str]) -> String {
    let out = run_ok(as_pg_user(Path::new(PG_BIN).join(program)).args(args));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// psql on 127.0.0.1:`port` as postgres; returns trimmed output.
pub fn sql(port: u16, database: &str, query: &str) -> String {
    try_psql_at(Path::new("127.0.0.1"), port, database, query)
        .unwrap_or_else(|e| panic!("psql on 127.0.0.1:{port} failed: {query}\n{e}"))
}

/// The mount path of a dSource.
pub fn mount_of(linked: &Value) -> PathBuf {
    PathBuf::from(
        linked["dsource"]["mount_path"]
            .as_str()
            .expect("mount_path"),
    )
}

/// Starts the cluster the user put in `data` on `port` (its socket in /tmp).
pub fn user_start(data: &Path, port: u16) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| {
            f.write_all(
                format!(
                    "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '/tmp'\narchive_mode = off\n"
                )
                .as_bytes(),
            )
        })
        .expect("append to postgresql.conf");
    let log = data.with_file_name("user.log");
    run_ok(
        as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-w", "-t", "120", "-l"])
            .arg(&log)
            .arg("start"),
    );
}

/// Stops the user's cluster cleanly.
pub fn user_stop(data: &Path) {
    run_ok(
        as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-m", "fast", "-w", "stop"]),
    );
}

/// The dSource's snapshots, oldest first.
pub fn snapshots(p: &crate::support::Pgvirt, name: &str) -> Vec<Value> {
    p.json(&["snapshot", "list", "--dsource", name])
        .as_array()
        .cloned()
        .unwrap_or_default()
}
