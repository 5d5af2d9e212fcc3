//! The logical replication rows of the ingest benchmark: a logical link of
//! the pgbench source (one database, `postgres`) against `pg_dump -Fd -j2`
//! and `pg_restore -j2` into a fresh cluster, alternating; then the apply lag
//! while `pgbench -c 2` writes (sampled from `dsource show` every 0.5 s),
//! and syncs (apply paused, snapshot — of the running staging on btrfs and
//! ZFS, after a clean stop elsewhere — resumed) under that load, with how
//! long each paused the apply.

use std::path::Path;

use serde_json::{json, Value};

use super::support::*;

/// Makes the source fit for logical replication: wal_level = logical, and
/// a replica identity for pgbench_history (it has no primary key).
pub fn prepare_source(source: &Source) {
    ok(&mut source.psql("ALTER SYSTEM SET wal_level = logical"));
    ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(source.data_dir())
        .arg("-l")
        .arg(source.dir.join("log"))
        .args(["-w", "-m", "fast", "restart"]));
    ok(&mut source.psql("ALTER TABLE pgbench_history REPLICA IDENTITY FULL"));
}

/// The linked-source parameters file of the logical dSource.
pub fn params(dir: &Path) -> String {
    let path = dir.join("logical-params.json");
    std::fs::write(
        &path,
        json!({"logical_replication": {"database": "postgres", "sync_workers": 2}}).to_string(),
    )
    .expect("params");
    path.to_str().expect("utf-8").to_owned()
}

pub fn link_args<'a>(id: &'a str, port: &'a str, params: &'a str) -> Vec<&'a str> {
    vec![
        "dsource",
        "link",
        "lr",
        "--source",
        id,
        "--staging-port",
        port,
        "--method",
        "logical_replication",
        "--params",
        params,
    ]
}

/// Apply lag under `pgbench -c 2` (for `seconds`), and three syncs under
/// that load; of dSource `lr`.
pub fn under_load(p: &Pgvirt, source: &Source, kind: &str, seconds: u64) -> (Vec<String>, Value) {
    let mut load = as_postgres(format!("{PG_BIN}/pgbench"));
    load.args(["-c", "2", "-j", "2", "-T", &seconds.to_string(), "-h"])
        .arg(&source.dir)
        .args(["-p", &source.port.to_string(), "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut load = load.spawn().expect("pgbench");
    let start = std::time::Instant::now();
    let (mut lag_b, mut lag_s) = (Vec::new(), Vec::new());
    let (mut syncs, mut pauses) = (Vec::new(), Vec::new());
    std::thread::sleep(std::time::Duration::from_secs(2));
    while start.elapsed().as_secs() + 2 < seconds {
        let shown = p.json(&["dsource", "show", "lr"]);
        let l = &shown["replication"]["logical"];
        if let (Some(b), Some(s)) = (l["lag_bytes"].as_f64(), l["lag_seconds"].as_f64()) {
            lag_b.push(b);
            lag_s.push(s);
        }
        if lag_b.len() % 8 == 4 && syncs.len() < 3 {
            let (snap, took) = timed(|| p.json(&["dsource", "sync", "lr"]));
            syncs.push(took.as_secs_f64());
            pauses.push(
                snap["metadata"]["apply_paused_seconds"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let _ = load.kill();
    let _ = load.wait();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    (
        vec![
            kind.to_owned(),
            format!("{:.0}", median(lag_b.clone())),
            format!("{:.0}", max(&lag_b)),
            format!("{:.3}", median(lag_s.clone())),
            format!("{:.3}", max(&lag_s)),
            format!("{:.3}", median(syncs.clone())),
            format!("{:.3}", median(pauses.clone())),
        ],
        json!({
            "pool": kind, "samples": lag_b.len(),
            "lag_bytes": lag_b, "lag_seconds": lag_s, "sync_under_load_seconds": syncs,
            "apply_paused_seconds": pauses,
        }),
    )
}
