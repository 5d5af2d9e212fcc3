//! Storage benchmark: clone time and extra space per clone for datasets of
//! about 100 MB, 1 GB and 4 GB (PostgreSQL data directories filled by
//! pgbench) on btrfs, XFS-reflink and copy pools.
//! Run as root: `cargo bench --bench storage`.
//! `PGVIRT_BENCH_SCALES=6,66` and `PGVIRT_BENCH_POOLS=xfs` shrink it.

#[path = "support.rs"]
mod support;

use std::path::Path;

use serde_json::json;
use support::*;

fn used_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scales: Vec<u32> = list_env("PGVIRT_BENCH_SCALES", &[6, 66, 270]);
    let pools: Vec<String> = list_env(
        "PGVIRT_BENCH_POOLS",
        &["btrfs".to_owned(), "xfs".to_owned(), "copy".to_owned()],
    );
    let clones = 5;
    let work = scratch("pgvirt-bench-storage-");
    println!("making pgbench data directories at scales {scales:?} ...");
    let sources: Vec<(u32, Source, u64)> = scales
        .iter()
        .map(|s| {
            let src = Source::new(work.path(), *s);
            // Stop it cleanly: the data directory is then a consistent dataset.
            ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(src.data_dir())
                .args(["-m", "fast", "-w", "stop"]));
            let bytes: u64 = ok(std::process::Command::new("du")
                .args(["-sb"])
                .arg(src.data_dir()))
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
            (*s, src, bytes)
        })
        .collect();

    let mut rows = Vec::new();
    let mut results = Vec::new();
    for kind in &pools {
        let kind: &'static str = match kind.as_str() {
            "btrfs" => "btrfs",
            "xfs" => "xfs",
            "zfs" => "zfs",
            _ => "copy",
        };
        let total: u64 = sources.iter().map(|(_, _, b)| *b).sum();
        let image_mb = total * (if kind == "copy" { 1 } else { 3 }) / 1024 / 1024 + 2048;
        let pool = BenchPool::new(kind, image_mb);
        let state = scratch("pgvirt-bench-store-");
        let p = Pgvirt::setup(state.path(), &pool.root.join("pool"));
        let mut first = None;
        for (scale, src, bytes) in &sources {
            let name = format!("d{scale}");
            let ds = p.json(&["pool", "dataset", "create", &name, "--owner", "postgres"]);
            let path = ds["path"].as_str().expect("path").to_owned();
            ok(std::process::Command::new("cp")
                .args(["-a"])
                .arg(src.data_dir())
                .arg(format!("{path}/data")));
            ok(&mut std::process::Command::new("sync"));
            let snap = p.json(&["pool", "dataset", "snapshot", &name, "s"])["id"].to_string();
            let mut times = Vec::new();
            let mut extra = Vec::new();
            for i in 0..clones {
                ok(&mut std::process::Command::new("sync"));
                let before = used_bytes(&pool.root);
                let ((), took) = timed(|| {
                    p.ok(&[
                        "pool",
                        "dataset",
                        "clone",
                        &snap,
                        &format!("{name}-c{i}"),
                        "--owner",
                        "postgres",
                    ]);
                });
                ok(&mut std::process::Command::new("sync"));
                times.push(took.as_secs_f64());
                extra.push(used_bytes(&pool.root).saturating_sub(before));
            }
            let med = median(times.clone());
            let f = *first.get_or_insert(med);
            let extra_med = median(extra.iter().map(|e| *e as f64).collect());
            rows.push(vec![
                pool_label(kind),
                mb(*bytes),
                format!("{med:.3}"),
                format!("{:.2}x", med / f),
                mb(extra_med as u64),
                format!("{:.3}%", extra_med / *bytes as f64 * 100.0),
            ]);
            results.push(json!({
                "pool": kind, "pgbench_scale": scale, "dataset_bytes": bytes,
                "clone_seconds": times, "clone_median_seconds": med, "ratio_to_smallest": med / f,
                "extra_bytes_per_clone": extra, "extra_percent_median": extra_med / *bytes as f64 * 100.0,
            }));
            for i in 0..clones {
                p.ok(&["pool", "dataset", "destroy", &format!("{name}-c{i}")]);
            }
            p.ok(&["pool", "dataset", "destroy-snapshot", &snap]);
            p.ok(&["pool", "dataset", "destroy", &name]);
        }
    }
    print_table(
        "storage: clone of a snapshot (median of 5) and the space a fresh clone adds",
        &[
            "pool",
            "dataset MB",
            "clone s",
            "vs smallest",
            "extra MB/clone",
            "extra %",
        ],
        &rows,
    );
    write_json(
        "storage",
        &json!({"machine": machine(), "results": results}),
    );
}
