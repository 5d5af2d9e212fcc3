//! Export benchmark: shipping 100 000 changed rows of `pgbench_accounts`
//! (scale 100 by default: 10 million rows) to a target with `pgvirt export
//! run`, against copying the whole table (`pg_dump -t pgbench_accounts |
//! psql`), alternating the two; then the source's pgbench TPS with the
//! export's tracking triggers enabled and disabled, alternating. Medians.
//! The target is a second plain cluster (a source config). Run as root:
//! `cargo bench --bench export`. `PGVIRT_BENCH_SCALE=10`,
//! `PGVIRT_BENCH_ROUNDS=3`, `PGVIRT_BENCH_SECONDS=10`,
//! `PGVIRT_BENCH_TPS_ROUNDS=5` shrink it. The machine's other load moves
//! pgbench TPS a lot: compare the medians, and run it on a quiet machine.

#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::*;

const CHANGED: u64 = 100_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// An empty cluster (the target), stopped on drop.
struct Target {
    dir: PathBuf,
    port: u16,
}

impl Target {
    fn new(parent: &Path) -> Self {
        let dir = parent.join("target");
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
        Self { dir, port }
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        ok(as_postgres(format!("{PG_BIN}/psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// `pg_dump -t pgbench_accounts source | psql target/baseline`, the table
/// dropped first. The dump carries the export's triggers, whose functions
/// the baseline database lacks: psql goes on past that error, as a user's
/// would, and the rows are counted after.
fn copy_whole_table(source: &Source, target: &Target, rows: u64) {
    target.psql("baseline", "DROP TABLE IF EXISTS pgbench_accounts");
    let script = format!(
        "set -o pipefail; {PG_BIN}/pg_dump -h {} -p {} -t pgbench_accounts postgres | {PG_BIN}/psql -X -q -h {} -p {} -d baseline >/dev/null 2>&1",
        source.dir.display(),
        source.port,
        target.dir.display(),
        target.port
    );
    ok(as_postgres("bash").args(["-c", &script]));
    let copied = target.psql("baseline", "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(
        copied.trim(),
        rows.to_string(),
        "the whole-table copy is short"
    );
}

/// pgbench TPS on the source for `seconds`.
fn tps(source: &Source, seconds: u64) -> f64 {
    let out = ok(as_postgres(format!("{PG_BIN}/pgbench"))
        .args(["-n", "-c", "2", "-j", "2", "-T", &seconds.to_string(), "-h"])
        .arg(&source.dir)
        .args(["-p", &source.port.to_string(), "postgres"]));
    out.lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale = env_num("PGVIRT_BENCH_SCALE", 100);
    let rounds = env_num("PGVIRT_BENCH_ROUNDS", 3).max(1);
    let seconds = env_num("PGVIRT_BENCH_SECONDS", 15);
    let tps_rounds = env_num("PGVIRT_BENCH_TPS_ROUNDS", 5).max(1);
    let work = scratch("pgvirt-bench-export-");
    println!("making a pgbench source at scale {scale} ...");
    let source = Source::new(work.path(), scale as u32);
    let target = Target::new(work.path());
    target.psql("postgres", "CREATE DATABASE baseline");
    // The export's target table: the same definition, empty.
    let schema = format!(
        "set -o pipefail; {PG_BIN}/pg_dump -s -h {} -p {} -t pgbench_accounts postgres | {PG_BIN}/psql -X -q -v ON_ERROR_STOP=1 -h {} -p {} -d postgres >/dev/null",
        source.dir.display(),
        source.port,
        target.dir.display(),
        target.port
    );
    ok(as_postgres("bash").args(["-c", &schema]));

    let p = Pgvirt::new(work.path());
    p.ok(&["connector", "install", env!("CARGO_MANIFEST_DIR")]);
    p.ok(&["env", "add", "local", "--user", "postgres"]);
    let source_id = p.source_id(&source.data_dir());
    let target_id = p.source_id(&target.dir.join("data"));
    p.ok(&[
        "export",
        "add",
        "bench",
        "--source",
        &source_id,
        "--tables",
        "public.pgbench_accounts",
        "--target",
        &target_id,
    ]);
    p.ok(&["export", "install", "bench"]);
    let (_, initial) = timed(|| p.ok(&["export", "run", "bench"]));
    println!(
        "initial export (whole table): {:.2} s",
        initial.as_secs_f64()
    );

    let accounts = scale * 100_000;
    let changed = CHANGED.min(accounts);
    let mut whole = Vec::new();
    let mut shipped = Vec::new();
    for round in 0..rounds {
        // Baseline first in even rounds, the export first in odd ones.
        let baseline = |whole: &mut Vec<f64>| {
            let (_, t) = timed(|| copy_whole_table(&source, &target, accounts));
            whole.push(t.as_secs_f64());
        };
        let candidate = |shipped: &mut Vec<f64>| {
            let first = (round * changed) % accounts + 1;
            ok(&mut source.psql(&format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {first} AND {}",
                first + changed - 1
            )));
            let (out, t) = timed(|| p.json(&["export", "run", "bench"]));
            let rows = out["targets"][0]["tables"][0]["rows"].as_u64().unwrap_or(0);
            assert_eq!(rows, changed, "the export shipped {rows} rows: {out}");
            shipped.push(t.as_secs_f64());
        };
        if round % 2 == 0 {
            baseline(&mut whole);
            candidate(&mut shipped);
        } else {
            candidate(&mut shipped);
            baseline(&mut whole);
        }
        println!(
            "round {}: whole table {:.2} s, export of {changed} rows {:.2} s",
            round + 1,
            whole[whole.len() - 1],
            shipped[shipped.len() - 1]
        );
    }
    let equal = |sql: &str| {
        let a = ok(&mut source.psql(sql));
        let b = target.psql("postgres", sql);
        a == b
    };
    assert!(
        equal("SELECT md5(string_agg(md5(t::text), '' ORDER BY aid)) FROM pgbench_accounts t"),
        "the target differs from the source after the exports"
    );

    // Tracking cost: pgbench with the export's triggers enabled and
    // disabled, alternating.
    let triggers = |enable: bool| {
        let verb = if enable { "ENABLE" } else { "DISABLE" };
        ok(&mut source.psql(&format!(
            "ALTER TABLE pgbench_accounts {verb} TRIGGER \"pgvirt_export_bench\"; ALTER TABLE pgbench_accounts {verb} TRIGGER \"pgvirt_export_bench_truncate\""
        )));
    };
    // A warm-up run first (not counted): caches and the change table's
    // first pages, so the first measured round is not the cold one.
    triggers(true);
    tps(&source, seconds);
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..tps_rounds {
        for tracked in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            triggers(tracked);
            let t = tps(&source, seconds);
            if tracked {
                with.push(t);
            } else {
                without.push(t);
            }
        }
        println!(
            "round {}: TPS without tracking {:.0}, with {:.0}",
            round + 1,
            without[without.len() - 1],
            with[with.len() - 1]
        );
    }
    triggers(true);
    p.ok(&["export", "remove", "bench"]);

    let whole_m = median(whole.clone());
    let shipped_m = median(shipped.clone());
    let without_m = median(without.clone());
    let with_m = median(with.clone());
    let cost = if without_m > 0.0 {
        100.0 * (without_m - with_m) / without_m
    } else {
        0.0
    };
    print_table(
        &format!("export of {changed} changed rows vs the whole table (scale {scale}, {} rows), medians of {rounds}", accounts),
        &["what", "seconds / TPS"],
        &[
            vec!["pg_dump -t | psql (whole table)".into(), format!("{whole_m:.2} s")],
            vec![format!("pgvirt export run ({changed} rows)"), format!("{shipped_m:.2} s")],
            vec!["speed-up".into(), format!("{:.1}x", whole_m / shipped_m.max(1e-9))],
            vec!["pgbench TPS, no tracking".into(), format!("{without_m:.0}")],
            vec!["pgbench TPS, tracking".into(), format!("{with_m:.0}")],
            vec!["tracking cost".into(), format!("{cost:.1} %")],
        ],
    );
    write_json(
        "export",
        &json!({
            "scale": scale,
            "rows": accounts,
            "changed_rows": changed,
            "rounds": rounds,
            "pgbench_seconds": seconds,
            "tps_rounds": tps_rounds,
            "initial_export_seconds": initial.as_secs_f64(),
            "whole_table_seconds": whole,
            "export_seconds": shipped,
            "whole_table_median": whole_m,
            "export_median": shipped_m,
            "speedup": whole_m / shipped_m.max(1e-9),
            "tps_without_tracking": without,
            "tps_with_tracking": with,
            "tps_without_median": without_m,
            "tps_with_median": with_m,
            "tracking_cost_percent": cost,
            "machine": machine(),
        }),
    );
}
