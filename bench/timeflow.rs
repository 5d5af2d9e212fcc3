//! Timeflow benchmark (issue 10): on each pool, a pgbench source whose
//! checkpoints are minutes apart, linked; a snapshot of the idle source;
//! then `pgbench -c 2` for four minutes with no checkpoint on the source and
//! a snapshot at the end of them. While the load goes on:
//!
//! - provision from the loaded snapshot and from the idle one, alternated,
//!   three each (medians): what a VDB replays at start must not grow with
//!   the write load (snapshots are prepared once);
//! - a point-in-time provision at 60 s after the loaded snapshot, with the
//!   WAL replay part read from the VDB's own log (`redo starts` to
//!   `recovery stopping`).
//!
//! Run as root: `cargo bench --bench timeflow`. `PGVIRT_BENCH_SCALE=20`,
//! `PGVIRT_BENCH_LOAD_SECONDS=60` and `PGVIRT_BENCH_POOLS=xfs` shrink it.
//! `PGVIRT_BENCH_CHECKPOINT_AT_SYNC=1` links with `source.checkpoint_at_sync`
//! (a checkpoint on the source at each sync: the loaded snapshot redoes
//! from its sync) and writes `timeflow-checkpoint.json`.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seconds the VDB's own start (after the last `starting PostgreSQL`:
/// a prepared image's log comes with it) spent replaying WAL: from `redo
/// starts` to its recovery target (`recovery stopping`; paused there, it is
/// then promoted), else the `elapsed` of `redo done`; 0 when it did not
/// recover.
fn replay_seconds(log: &str) -> f64 {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let own = log.rsplit("starting PostgreSQL").next().unwrap_or_default();
    let at = |what: &str| {
        own.lines().find(|l| l.contains(what)).and_then(|l| {
            l.get(..23)?
                .replacen(' ', "T", 1)
                .parse::<jiff::civil::DateTime>()
                .ok()
        })
    };
    if let (Some(start), Some(stop)) = (at("redo starts at"), at("recovery stopping")) {
        return (stop - start).total(jiff::Unit::Second).unwrap_or(0.0);
    }
    own.lines()
        .filter(|l| l.contains("redo done at"))
        .filter_map(|l| l.split("elapsed: ").nth(1))
        .find_map(|e| e.trim_end_matches(" s").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Provisions `name` with `args`, returns (seconds, WAL replay seconds),
/// then deletes it.
fn provision(p: &Pgvirt, name: &str, args: &[&str]) -> (f64, f64) {
    let mut all = vec!["vdb", "provision", name];
    all.extend_from_slice(args);
    let (out, took): (Value, _) = timed(|| p.json(&all));
    let data = out["source_config"]["data_directory"]
        .as_str()
        .expect("data directory")
        .to_owned();
    let log = std::path::Path::new(&data)
        .parent()
        .expect("mount")
        .join("pgvirt/postgres.log");
    let replay = replay_seconds(&log.to_string_lossy());
    p.ok(&["vdb", "delete", name]);
    (took.as_secs_f64(), replay)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale = env_u64("PGVIRT_BENCH_SCALE", 100) as u32;
    let load_for = env_u64("PGVIRT_BENCH_LOAD_SECONDS", 240);
    let checkpoint_at_sync = env_u64("PGVIRT_BENCH_CHECKPOINT_AT_SYNC", 0) == 1;
    let pools: Vec<String> = list_env(
        "PGVIRT_BENCH_POOLS",
        &["btrfs".to_owned(), "xfs".to_owned()],
    );
    let work = scratch("pgvirt-bench-timeflow-");
    println!("making a pgbench source at scale {scale} ...");
    let source = Source::new(work.path(), scale);
    // Checkpoints only when asked: the loaded snapshot comes `load_for`
    // seconds after the last one.
    ok(&mut source.psql("ALTER SYSTEM SET checkpoint_timeout = '1h'"));
    ok(&mut source.psql("ALTER SYSTEM SET max_wal_size = '20GB'"));
    ok(&mut source.psql("SELECT pg_reload_conf()"));

    let mut rows = Vec::new();
    let mut results = Vec::new();
    for kind in &pools {
        let kind: &'static str = match kind.as_str() {
            "btrfs" => "btrfs",
            "zfs" => "zfs",
            _ => "xfs",
        };
        let pool = BenchPool::new(kind, source.bytes() * 4 / 1024 / 1024 + 8192);
        let state = scratch("pgvirt-bench-store-");
        let p = Pgvirt::setup(state.path(), &pool.root.join("pool"));
        let id = p.source_id(&source.data_dir());
        let params = state.path().join("params.json");
        std::fs::write(
            &params,
            json!({"source": {"checkpoint_at_sync": checkpoint_at_sync}}).to_string(),
        )
        .expect("params");
        p.ok(&[
            "dsource",
            "link",
            "tf",
            "--source",
            &id,
            "--staging-port",
            &free_port().to_string(),
            "--params",
            params.to_str().expect("utf-8"),
        ]);
        ok(&mut source.psql("CHECKPOINT"));
        std::thread::sleep(Duration::from_secs(2));
        let idle = p.json(&["dsource", "sync", "tf"]);

        println!("{kind}: {load_for} s of pgbench -c 2 with no checkpoint ...");
        let mut load = as_postgres(format!("{PG_BIN}/pgbench"));
        load.args([
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &(load_for + 600).to_string(),
            "-h",
        ])
        .arg(&source.dir)
        .args(["-p", &source.port.to_string(), "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let mut load = load.spawn().expect("pgbench");
        std::thread::sleep(Duration::from_secs(load_for));
        let (loaded, sync_took) = timed(|| p.json(&["dsource", "sync", "tf"]));
        let at = |s: &Value, k: &str| -> jiff::Timestamp {
            s["metadata"][k]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("snapshot has no {k}: {s}"))
        };
        let redo_behind = |s: &Value| {
            let lsn = |k: &str| {
                let t = s["metadata"][k].as_str().expect("lsn");
                let (hi, lo) = t.split_once('/').expect("lsn form");
                (u64::from_str_radix(hi, 16).expect("hex") << 32)
                    | u64::from_str_radix(lo, 16).expect("hex")
            };
            lsn("replayed_lsn") - lsn("redo_lsn")
        };

        // Plain provisions, alternated, while the load runs.
        let (mut from_loaded, mut from_idle) = (Vec::new(), Vec::new());
        let loaded_ref = format!("tf@{}", loaded["id"]);
        let idle_ref = format!("tf@{}", idle["id"]);
        for i in 0..3 {
            from_loaded.push(provision(&p, &format!("l{i}"), &["--from", &loaded_ref]));
            from_idle.push(provision(&p, &format!("i{i}"), &["--from", &idle_ref]));
        }

        // A moment 60 s after the loaded snapshot: wait until it is past,
        // sync so that the WAL up to it is kept, then provision at it.
        let target = at(&loaded, "taken_at") + jiff::SignedDuration::from_secs(60);
        while jiff::Timestamp::now() < target + jiff::SignedDuration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = load.kill();
        let _ = load.wait();
        p.ok(&["dsource", "sync", "tf"]);
        let target_text = target.to_string();
        // PGVIRT_BENCH_PITR_SET=NAME=VALUE: a setting for those VDBs.
        let mut pitr_args = vec!["--from", "tf", "--at", &target_text];
        let pitr_set = std::env::var("PGVIRT_BENCH_PITR_SET").unwrap_or_default();
        if !pitr_set.is_empty() {
            pitr_args.extend(["--set", &pitr_set]);
        }
        let pitr: Vec<(f64, f64)> = (0..3)
            .map(|i| provision(&p, &format!("t{i}"), &pitr_args))
            .collect();

        let med = |xs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(xs.iter().map(f).collect());
        let (lo, li) = (med(&from_loaded, |x| x.0), med(&from_idle, |x| x.0));
        let (pt, pr) = (med(&pitr, |x| x.0), med(&pitr, |x| x.1));
        let behind_mb = redo_behind(&loaded) as f64 / 1048576.0;
        rows.push(vec![
            pool_label(kind),
            mb(source.bytes()),
            format!("{behind_mb:.0}"),
            format!("{:.2}", sync_took.as_secs_f64()),
            format!("{lo:.3}"),
            format!("{li:.3}"),
            format!("{:.2}x", lo / li),
            format!("{pt:.3}"),
            format!("{pr:.3}"),
        ]);
        results.push(json!({
            "pool": kind, "pgbench_scale": scale, "source_bytes": source.bytes(),
            "checkpoint_at_sync": checkpoint_at_sync,
            "pitr_set": pitr_set,
            "load_seconds_before_snapshot": load_for,
            "loaded_snapshot_wal_since_redo_bytes": redo_behind(&loaded),
            "loaded_sync_with_prepare_seconds": sync_took.as_secs_f64(),
            "provision_from_loaded_seconds": from_loaded.iter().map(|x| x.0).collect::<Vec<_>>(),
            "provision_from_loaded_replay_seconds": from_loaded.iter().map(|x| x.1).collect::<Vec<_>>(),
            "provision_from_idle_seconds": from_idle.iter().map(|x| x.0).collect::<Vec<_>>(),
            "loaded_over_idle": lo / li,
            "pitr_60s_after_snapshot_seconds": pitr.iter().map(|x| x.0).collect::<Vec<_>>(),
            "pitr_replay_seconds": pitr.iter().map(|x| x.1).collect::<Vec<_>>(),
        }));
        p.ok(&["dsource", "delete", "tf"]);
    }
    print_table(
        &format!("timeflow: provision from a snapshot taken under load vs idle; point-in-time provision 60 s past a snapshot (medians of 3, under pgbench -c 2; checkpoint at sync: {checkpoint_at_sync})"),
        &[
            "pool",
            "data MB",
            "WAL since redo MB",
            "loaded sync s",
            "from loaded s",
            "from idle s",
            "ratio",
            "PITR +60 s",
            "of which replay s",
        ],
        &rows,
    );
    write_json(
        if checkpoint_at_sync {
            "timeflow-checkpoint"
        } else {
            "timeflow"
        },
        &json!({"machine": machine(), "results": results}),
    );
}
