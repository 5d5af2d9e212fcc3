//! Ingest benchmark: linking a pgbench source (scale 100 by default) against
//! plain `pg_basebackup -X stream` of the same source; then snapshots of the
//! running staging under a pgbench write load, and how far staging is behind
//! right after each. Run as root: `cargo bench --bench ingest`.
//! `PGVIRT_BENCH_SCALE=20` and `PGVIRT_BENCH_POOLS=xfs` shrink it.

#[path = "support.rs"]
mod support;

use serde_json::json;
use support::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: u32 = std::env::var("PGVIRT_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let pools: Vec<String> = list_env(
        "PGVIRT_BENCH_POOLS",
        &["btrfs".to_owned(), "xfs".to_owned()],
    );
    let work = scratch("pgvirt-bench-ingest-");
    println!("making a pgbench source at scale {scale} ...");
    let source = Source::new(work.path(), scale);

    // Baseline: plain pg_basebackup of the same source.
    let base_parent = work.path().join("baseline");
    std::fs::create_dir(&base_parent).expect("dir");
    let pg = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    nix::unistd::chown(&base_parent, Some(pg.uid), Some(pg.gid)).expect("chown");
    let base_dir = base_parent.join("data");
    let (_, base) = timed(|| {
        ok(as_postgres(format!("{PG_BIN}/pg_basebackup"))
            .arg("-D")
            .arg(&base_dir)
            .args([
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &source.port.to_string(),
                "-U",
                "postgres",
            ]))
    });
    let _ = std::fs::remove_dir_all(&base_dir);
    let base = base.as_secs_f64();

    let mut rows = Vec::new();
    let mut results = Vec::new();
    for kind in &pools {
        let kind: &'static str = if kind == "btrfs" { "btrfs" } else { "xfs" };
        let pool = BenchPool::new(kind, source.bytes() * 3 / 1024 / 1024 + 4096);
        let state = scratch("pgvirt-bench-store-");
        let p = Pgvirt::setup(state.path(), &pool.root.join("pool"));
        let id = p.source_id(&source.data_dir());
        let (_, link) = timed(|| {
            p.ok(&[
                "dsource",
                "link",
                "bench",
                "--source",
                &id,
                "--staging-port",
                &free_port().to_string(),
            ])
        });
        let link = link.as_secs_f64();

        // A write load for the snapshots.
        let mut load = as_postgres(format!("{PG_BIN}/pgbench"));
        load.args(["-c", "2", "-j", "2", "-T", "60", "-h"])
            .arg(&source.dir)
            .args(["-p", &source.port.to_string(), "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut load = load.spawn().expect("pgbench");
        std::thread::sleep(std::time::Duration::from_secs(5));
        let mut syncs = Vec::new();
        let mut snaps = Vec::new();
        let mut lags = Vec::new();
        for _ in 0..5 {
            let (snap, took) = timed(|| p.json(&["dsource", "sync", "bench"]));
            syncs.push(took.as_secs_f64());
            // The snapshot itself: from the backup's start on staging to the
            // point it records (the sync also prepares the image after it).
            let at = |k: &str| {
                snap["metadata"][k]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .unwrap_or_else(|| panic!("snapshot metadata has no {k}: {snap}"))
            };
            snaps.push(at("taken_at").duration_since(at("began_at")).as_secs_f64());
            let shown = p.json(&["dsource", "show", "bench"]);
            lags.push(json!({
                "lag_bytes": shown["replication"]["lag_bytes"],
                "lag_seconds": shown["replication"]["lag_seconds"],
            }));
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        let _ = load.kill();
        let _ = load.wait();
        let max_lag_s = lags
            .iter()
            .filter_map(|l| l["lag_seconds"].as_f64())
            .fold(0.0, f64::max);
        let max_lag_b = lags
            .iter()
            .filter_map(|l| l["lag_bytes"].as_u64())
            .max()
            .unwrap_or(0);
        rows.push(vec![
            kind.to_owned(),
            mb(source.bytes()),
            format!("{link:.2}"),
            format!("{base:.2}"),
            format!("{:.2}x", link / base),
            format!("{:.3}", median(snaps.clone())),
            format!("{:.3}", median(syncs.clone())),
            format!("{max_lag_s:.3}"),
            max_lag_b.to_string(),
        ]);
        results.push(json!({
            "pool": kind, "pgbench_scale": scale, "source_bytes": source.bytes(),
            "link_seconds": link, "pg_basebackup_seconds": base, "link_over_basebackup": link / base,
            "snapshot_under_load_seconds": snaps, "sync_with_prepare_seconds": syncs,
            "lag_after_snapshot": lags,
        }));
        p.ok(&["dsource", "delete", "bench"]);
    }
    print_table(
        "ingest: link vs plain pg_basebackup; snapshot of live staging under pgbench load",
        &[
            "pool",
            "data MB",
            "link s",
            "pg_basebackup s",
            "ratio",
            "snapshot s",
            "sync incl. prepare s",
            "max lag s",
            "max lag bytes",
        ],
        &rows,
    );
    write_json("ingest", &json!({"machine": machine(), "results": results}));
}
