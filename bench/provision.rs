//! Provision benchmark: time from `pgvirt vdb provision` to a VDB accepting
//! connections, for snapshots of pgbench sources at several scales, on
//! btrfs, XFS-reflink and copy pools; against a full copy + start
//! (`pg_basebackup` + `pg_ctl start`); and the memory and extra disk an idle
//! VDB costs. Run as root: `cargo bench --bench provision`.
//! `PGVIRT_BENCH_SCALES=10,100` and `PGVIRT_BENCH_POOLS=xfs` shrink it.

#[path = "support.rs"]
mod support;

use std::path::Path;

use serde_json::json;
use support::*;

/// PSS of the processes of one cluster (by its data directory and name).
fn pss_bytes(data_dir: &str, cluster_name: &str) -> u64 {
    let mut total = 0;
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(p.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        let ours = cmdline.contains(data_dir) || cmdline.contains(&format!("{cluster_name}:"));
        if !ours {
            continue;
        }
        let rollup = std::fs::read_to_string(p.path().join("smaps_rollup")).unwrap_or_default();
        if let Some(kb) = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
        {
            total += kb.parse::<u64>().unwrap_or(0) * 1024;
        }
    }
    total
}

/// Full copy + start, the way to a writable copy without pgvirt.
fn baseline(source: &Source, scratch: &Path) -> f64 {
    let dir = scratch.join(format!("baseline-{}", source.port));
    std::fs::create_dir_all(&dir).expect("dir");
    let pg = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown");
    let data = dir.join("data");
    let port = free_port();
    let ((), took) = timed(|| {
        ok(as_postgres(format!("{PG_BIN}/pg_basebackup"))
            .arg("-D")
            .arg(&data)
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
            ]));
        ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -c unix_socket_directories={} -c listen_addresses=",
                dir.display()
            ))
            .args(["-w", "start"]));
    });
    let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    took.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there are no test cases here.
    }
    let scales: Vec<u32> = list_env("PGVIRT_BENCH_SCALES", &[10, 100, 300]);
    let pools: Vec<String> = list_env(
        "PGVIRT_BENCH_POOLS",
        &["btrfs".to_owned(), "xfs".to_owned(), "copy".to_owned()],
    );
    let work = scratch("pgvirt-bench-provision-");
    println!("making pgbench sources at scales {scales:?} ...");
    let sources: Vec<(u32, Source)> = scales
        .iter()
        .map(|s| (*s, Source::new(work.path(), *s)))
        .collect();
    let baselines: Vec<f64> = sources
        .iter()
        .map(|(_, s)| baseline(s, work.path()))
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
        let image_mb = sources.iter().map(|(_, s)| s.bytes()).sum::<u64>() * 2 / 1024 / 1024 + 3072;
        let pool = BenchPool::new(kind, image_mb);
        let state = scratch("pgvirt-bench-store-");
        let p = Pgvirt::setup(state.path(), &pool.root.join("pool"));
        let mut first_median = None;
        for ((scale, source), base) in sources.iter().zip(&baselines) {
            let id = p.source_id(&source.data_dir());
            let ds = format!("s{scale}");
            p.ok(&[
                "dsource",
                "link",
                &ds,
                "--source",
                &id,
                "--staging-port",
                &free_port().to_string(),
            ]);
            let runs = if kind == "copy" && *scale >= 100 {
                1
            } else {
                3
            };
            let mut times = Vec::new();
            let mut extra = Vec::new();
            let mut pss = Vec::new();
            for i in 0..runs {
                let name = format!("v{scale}-{i}");
                let (out, took) = timed(|| p.json(&["vdb", "provision", &name, "--from", &ds]));
                times.push(took.as_secs_f64());
                std::thread::sleep(std::time::Duration::from_secs(1));
                let data_dir = out["source_config"]["data_directory"]
                    .as_str()
                    .expect("data dir")
                    .to_owned();
                pss.push(pss_bytes(&data_dir, &format!("pgvirt vdb {name}")));
                let dataset = out["dataset"].as_str().expect("dataset").to_owned();
                let list = p.json(&["pool", "list"]);
                let own = list
                    .as_array()
                    .expect("list")
                    .iter()
                    .find(|d| d["name"] == json!(dataset))
                    .map(|d| d["space"]["exclusive"].as_u64().unwrap_or(0))
                    .unwrap_or(0);
                extra.push(own);
            }
            let med = median(times.clone());
            let first = *first_median.get_or_insert(med);
            let extra_mb = extra.iter().copied().max().unwrap_or(0);
            let pss_mb = pss.iter().copied().max().unwrap_or(0);
            rows.push(vec![
                pool_label(kind),
                scale.to_string(),
                mb(source.bytes()),
                format!("{med:.3}"),
                format!("{:.2}x", med / first),
                format!("{base:.2}"),
                format!("{:.1}x", base / med),
                mb(extra_mb),
                mb(pss_mb),
            ]);
            results.push(json!({
                "pool": kind, "scale": scale, "source_bytes": source.bytes(),
                "provision_seconds": times, "provision_median_seconds": med,
                "ratio_to_smallest_scale": med / first,
                "baseline_full_copy_start_seconds": base, "speedup_vs_baseline": base / med,
                "extra_disk_bytes_per_vdb": extra, "pss_bytes_per_idle_vdb": pss,
            }));
            for i in 0..runs {
                p.ok(&["vdb", "delete", &format!("v{scale}-{i}")]);
            }
            p.ok(&["dsource", "delete", &ds]);
        }
    }
    print_table(
        "provision: command to accepting connections (median), vs full copy + start",
        &[
            "pool",
            "scale",
            "data MB",
            "provision s",
            "vs first",
            "full copy+start s",
            "speedup",
            "extra disk MB",
            "idle PSS MB",
        ],
        &rows,
    );
    write_json(
        "provision",
        &json!({"machine": machine(), "results": results}),
    );
}
