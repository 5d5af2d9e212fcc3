//! Ingest benchmark: linking a pgbench source (scale 100 by default) by each
//! method against the plain tool doing the same work — `pg_basebackup -X
//! stream`, `pg_dump -Fd -j2` + `pg_restore -j2` into a fresh cluster, a
//! `pgbackrest restore` of the same backup. Each baseline writes to the same
//! filesystem as its candidate (the pool's), the two alternate, `runs` times
//! each (3 by default), and medians are reported. Then snapshots of the
//! running (pg_basebackup-linked) staging under a pgbench write load, and
//! how far staging is behind right after each.
//!
//! Run as root: `cargo bench --bench ingest`. `PGVIRT_BENCH_SCALE=20`,
//! `PGVIRT_BENCH_POOLS=xfs`, `PGVIRT_BENCH_RUNS=1` and
//! `PGVIRT_BENCH_INGEST=basebackup,single_database,pgbackrest,logical` shrink it.

#[path = "support.rs"]
mod support;

#[path = "ingest_logical.rs"]
mod logical;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

/// One method's rows: medians of alternating baseline and candidate runs.
struct Compared {
    method: &'static str,
    baseline: &'static str,
    base: Vec<f64>,
    link: Vec<f64>,
}

/// Alternates `baseline` and `candidate` (`candidate(last)` is told when it
/// runs for the last time), `runs` times each; their seconds.
fn alternate(
    runs: usize,
    mut baseline: impl FnMut(usize),
    mut candidate: impl FnMut(usize, bool),
) -> (Vec<f64>, Vec<f64>) {
    let (mut base, mut link) = (Vec::new(), Vec::new());
    for i in 0..runs {
        base.push(timed(|| baseline(i)).1.as_secs_f64());
        link.push(timed(|| candidate(i, i + 1 == runs)).1.as_secs_f64());
    }
    (base, link)
}

/// An empty directory the postgres user owns, on the pool's filesystem.
fn pg_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let pg = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown");
    dir
}

fn link(p: &Pgvirt, id: &str, name: &str, extra: &[&str]) {
    let port = free_port().to_string();
    let mut args = vec![
        "dsource",
        "link",
        name,
        "--source",
        id,
        "--staging-port",
        &port,
    ];
    args.extend_from_slice(extra);
    p.ok(&args);
}

/// Plain pg_basebackup into `dir` (on the pool's filesystem).
fn basebackup(source: &Source, dir: &Path) {
    ok(as_postgres(format!("{PG_BIN}/pg_basebackup"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p"])
        .arg(source.port.to_string())
        .args(["-U", "postgres"]));
}

/// What a single-database link does, by hand: initdb in `dir`, start,
/// `pg_dump -Fd -j2` into `dump`, `pg_restore -j2`, stop.
fn dump_and_restore(source: &Source, dir: &Path, dump: &Path) {
    let data = dir.join("data");
    ok(as_postgres(format!("{PG_BIN}/initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync"]));
    let port = free_port();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| {
            f.write_all(
                format!(
                    "\nport = {port}\nlisten_addresses = 'localhost'\nunix_socket_directories = '{}'\n",
                    dir.display()
                )
                .as_bytes(),
            )
        })
        .expect("conf");
    ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "start"]));
    ok(as_postgres(format!("{PG_BIN}/pg_dump"))
        .args(["-Fd", "-j", "2", "-f"])
        .arg(dump)
        .args(["-h", "127.0.0.1", "-p", &source.port.to_string()])
        .args(["-U", "postgres", "postgres"]));
    ok(as_postgres(format!("{PG_BIN}/pg_restore"))
        .args(["-j", "2", "-d", "postgres", "-h"])
        .arg(dir)
        .args(["-p", &port.to_string(), "-U", "postgres"])
        .arg(dump));
    ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "fast", "-w", "stop"]));
    let _ = std::fs::remove_dir_all(dump);
}

/// A pgBackRest repository of the source (stanza `bench`), archiving into
/// it, with one full backup.
struct Repo {
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Repo {
    fn new(source: &Source) -> Self {
        let dir = scratch("pgvirt-bench-pgbr-");
        let root = pg_dir(dir.path(), "r");
        let conf = root.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-path={r}/repo\nlog-path={r}/log\nlock-path={r}/lock\nlog-level-file=off\nlog-level-console=warn\nstart-fast=y\n\n[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={sock}\n",
                r = root.display(),
                data = source.data_dir().display(),
                port = source.port,
                sock = source.dir.display()
            ),
        )
        .expect("conf");
        ok(&mut source.psql(&format!(
            "ALTER SYSTEM SET archive_command = 'pgbackrest --config={} --stanza=bench archive-push %p'",
            conf.display()
        )));
        ok(&mut source.psql("ALTER SYSTEM SET archive_mode = on"));
        ok(as_postgres(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(source.data_dir())
            .arg("-l")
            .arg(source.dir.join("log"))
            .args(["-w", "-m", "fast", "restart"]));
        let repo = Self { _dir: dir, conf };
        repo.run(&["stanza-create"]);
        repo.run(&["--type=full", "backup"]);
        repo
    }

    fn run(&self, args: &[&str]) {
        ok(as_postgres("pgbackrest")
            .arg(format!("--config={}", self.conf.display()))
            .arg("--stanza=bench")
            .args(args));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: u32 = std::env::var("PGVIRT_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("PGVIRT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let pools: Vec<String> = list_env(
        "PGVIRT_BENCH_POOLS",
        &["btrfs".to_owned(), "xfs".to_owned()],
    );
    let methods: Vec<String> = list_env(
        "PGVIRT_BENCH_INGEST",
        &[
            "basebackup".to_owned(),
            "single_database".to_owned(),
            "pgbackrest".to_owned(),
            "logical".to_owned(),
        ],
    );
    let wants = |m: &str| methods.iter().any(|x| x == m);
    let work = scratch("pgvirt-bench-ingest-");
    println!("making a pgbench source at scale {scale} ...");
    let source = Source::new(work.path(), scale);
    let bytes = source.bytes();
    let kinds: Vec<&'static str> = pools
        .iter()
        .map(|k| if k == "btrfs" { "btrfs" } else { "xfs" })
        .collect();
    let new_pool = |kind: &'static str| {
        // Room for the kept WAL of minutes of `pgbench -c 2` (some 15 MB/s)
        // beside the snapshots (a sparse file: only what is written).
        let pool = BenchPool::new(kind, bytes * 8 / 1024 / 1024 + 12288);
        let state = scratch("pgvirt-bench-store-");
        let p = Pgvirt::setup(state.path(), &pool.root.join("pool"));
        let id = p.source_id(&source.data_dir());
        (pool, state, p, id)
    };

    let mut compared: Vec<(&'static str, Compared)> = Vec::new();
    let mut load_rows = Vec::new();
    let mut load_results = Vec::new();
    for &kind in &kinds {
        if !wants("basebackup") && !wants("single_database") {
            break;
        }
        let (pool, _state, p, id) = new_pool(kind);
        if wants("basebackup") {
            println!("{kind}: link vs pg_basebackup, {runs} runs each ...");
            let (base, linked) = alternate(
                runs,
                |i| {
                    let dir = pg_dir(&pool.root, &format!("base-bb-{i}"));
                    basebackup(&source, &dir);
                    let _ = std::fs::remove_dir_all(&dir);
                },
                |_, last| {
                    link(&p, &id, "bench", &[]);
                    if !last {
                        p.ok(&["dsource", "delete", "bench"]);
                    }
                },
            );
            compared.push((
                kind,
                Compared {
                    method: "basebackup_streaming",
                    baseline: "pg_basebackup -X stream",
                    base,
                    link: linked,
                },
            ));
            let (row, result) = under_load(&p, &source, kind);
            load_rows.push(row);
            load_results.push(result);
            p.ok(&["dsource", "delete", "bench"]);
        }
        if wants("single_database") {
            println!("{kind}: single-database link vs pg_dump -j2 + pg_restore -j2, {runs} runs each ...");
            let dumps = scratch("pgvirt-bench-dump-");
            let dump_root = pg_dir(dumps.path(), "d");
            let (base, linked) = alternate(
                runs,
                |i| {
                    let dir = pg_dir(&pool.root, &format!("base-sd-{i}"));
                    dump_and_restore(&source, &dir, &dump_root.join("dump"));
                    let _ = std::fs::remove_dir_all(&dir);
                },
                |_, _| {
                    link(
                        &p,
                        &id,
                        "onedb",
                        &[
                            "--method",
                            "single_database",
                            "--database",
                            "postgres",
                            "--dump-jobs",
                            "2",
                            "--restore-jobs",
                            "2",
                        ],
                    );
                    p.ok(&["dsource", "delete", "onedb"]);
                },
            );
            compared.push((
                kind,
                Compared {
                    method: "single_database",
                    baseline: "initdb + pg_dump -Fd -j2 + pg_restore -j2",
                    base,
                    link: linked,
                },
            ));
        }
    }
    if wants("pgbackrest") {
        println!("pgBackRest: archiving into a repository, one full backup ...");
        let repo = Repo::new(&source);
        let conf = repo.conf.to_str().expect("utf-8").to_owned();
        for &kind in &kinds {
            let (pool, _state, p, id) = new_pool(kind);
            println!("{kind}: pgBackRest link vs pgbackrest restore, {runs} runs each ...");
            let (base, linked) = alternate(
                runs,
                |i| {
                    let dir = pg_dir(&pool.root, &format!("base-br-{i}"));
                    let data = pg_dir(&dir, "data");
                    repo.run(&[&format!("--pg1-path={}", data.display()), "restore"]);
                    let _ = std::fs::remove_dir_all(&dir);
                },
                |_, _| {
                    link(
                        &p,
                        &id,
                        "br",
                        &[
                            "--method",
                            "pgbackrest",
                            "--stanza",
                            "bench",
                            "--pgbackrest-config",
                            &conf,
                        ],
                    );
                    p.ok(&["dsource", "delete", "br"]);
                },
            );
            compared.push((
                kind,
                Compared {
                    method: "pgbackrest",
                    baseline: "pgbackrest restore",
                    base,
                    link: linked,
                },
            ));
        }
    }

    let mut logical_rows = Vec::new();
    let mut logical_results = Vec::new();
    if wants("logical") {
        println!("logical replication: wal_level = logical on the source ...");
        logical::prepare_source(&source);
        let dumps = scratch("pgvirt-bench-dump-");
        let dump_root = pg_dir(dumps.path(), "d");
        let params = logical::params(dump_root.as_path());
        for &kind in &kinds {
            let (pool, _state, p, id) = new_pool(kind);
            println!("{kind}: logical link vs pg_dump -j2 + pg_restore -j2, {runs} runs each ...");
            let (base, linked) = alternate(
                runs,
                |i| {
                    let dir = pg_dir(&pool.root, &format!("base-lr-{i}"));
                    dump_and_restore(&source, &dir, &dump_root.join("dump"));
                    let _ = std::fs::remove_dir_all(&dir);
                },
                |_, last| {
                    let port = free_port().to_string();
                    p.ok(&logical::link_args(&id, &port, &params));
                    if !last {
                        p.ok(&["dsource", "delete", "lr"]);
                    }
                },
            );
            compared.push((
                kind,
                Compared {
                    method: "logical_replication",
                    baseline: "initdb + pg_dump -Fd -j2 + pg_restore -j2",
                    base,
                    link: linked,
                },
            ));
            let (row, result) = logical::under_load(&p, &source, kind, 30);
            logical_rows.push(row);
            logical_results.push(result);
            p.ok(&["dsource", "delete", "lr"]);
        }
    }

    let mut rows = Vec::new();
    let mut results = Vec::new();
    for (kind, c) in &compared {
        let (b, l) = (median(c.base.clone()), median(c.link.clone()));
        rows.push(vec![
            (*kind).to_owned(),
            c.method.to_owned(),
            mb(bytes),
            format!("{l:.2}"),
            format!("{b:.2}"),
            c.baseline.to_owned(),
            format!("{:.2}x", l / b),
        ]);
        results.push(json!({
            "pool": kind, "method": c.method, "pgbench_scale": scale, "source_bytes": bytes,
            "baseline": c.baseline, "runs": runs,
            "link_seconds": c.link, "baseline_seconds": c.base,
            "link_median": l, "baseline_median": b, "link_over_baseline": l / b,
        }));
    }
    print_table(
        &format!("ingest: link vs the plain tool on the same filesystem ({runs} alternating runs each, medians)"),
        &["pool", "method", "data MB", "link s", "baseline s", "baseline", "ratio"],
        &rows,
    );
    if !load_rows.is_empty() {
        print_table(
            "snapshots of live staging under pgbench load",
            &[
                "pool",
                "snapshot s (median)",
                "cp -a --reflink s",
                "sync incl. prepare s",
                "max lag s",
                "max lag bytes",
            ],
            &load_rows,
        );
    }
    if !logical_rows.is_empty() {
        print_table(
            "logical replication under pgbench -c 2: apply lag (dsource show every 0.5 s) and syncs",
            &[
                "pool",
                "lag bytes (median)",
                "lag bytes (max)",
                "lag s (median)",
                "lag s (max)",
                "sync s (median)",
                "apply paused s (median)",
            ],
            &logical_rows,
        );
    }
    write_json(
        "ingest",
        &json!({"machine": machine(), "results": results, "under_load": load_results,
                "logical_under_load": logical_results}),
    );
}

/// Five snapshots of dSource `bench` while pgbench writes; how long each
/// took, and how far staging was behind right after.
fn under_load(p: &Pgvirt, source: &Source, kind: &str) -> (Vec<String>, Value) {
    let mut load = as_postgres(format!("{PG_BIN}/pgbench"));
    load.args(["-c", "2", "-j", "2", "-T", "3600", "-h"])
        .arg(&source.dir)
        .args(["-p", &source.port.to_string(), "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut load = load.spawn().expect("pgbench");
    std::thread::sleep(std::time::Duration::from_secs(5));
    let mut syncs = Vec::new();
    let mut snaps = Vec::new();
    let mut lags = Vec::new();
    let mut cps = Vec::new();
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
        // The baseline, alternating: what a user would run for a file
        // clone of the same live staging, `cp -a --reflink=always`, into
        // the same pool.
        let dataset = shown["dsource"]["dataset"].clone();
        let pool = p.json(&["pool", "list"]);
        let mount = std::path::PathBuf::from(
            pool.as_array()
                .and_then(|all| all.iter().find(|d| d["name"] == dataset))
                .and_then(|d| d["path"].as_str())
                .unwrap_or_else(|| panic!("no dataset {dataset} in {pool}")),
        );
        let copy = mount.with_file_name(format!("bench-cp-{}", cps.len()));
        // The copy's directory made first, NOCOW on btrfs as pgvirt's
        // datasets are (btrfs refuses a reflink between NOCOW and COW files).
        std::fs::create_dir(&copy).expect("copy directory");
        if kind == "btrfs" {
            ok(std::process::Command::new("chattr").arg("+C").arg(&copy));
        }
        let (out, took) = timed(|| {
            std::process::Command::new("cp")
                .args(["-a", "--reflink=always"])
                .arg(mount.join("."))
                .arg(&copy)
                .output()
                .expect("cp")
        });
        // A file vanishing under the running staging fails cp: counted all
        // the same (it copied the rest), and said.
        if !out.status.success() {
            println!("note: cp: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        cps.push(took.as_secs_f64());
        let _ = std::fs::remove_dir_all(&copy);
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
    (
        vec![
            kind.to_owned(),
            format!("{:.3}", median(snaps.clone())),
            format!("{:.3}", median(cps.clone())),
            format!("{:.3}", median(syncs.clone())),
            format!("{max_lag_s:.3}"),
            max_lag_b.to_string(),
        ],
        json!({
            "pool": kind, "snapshot_under_load_seconds": snaps,
            "sync_with_prepare_seconds": syncs, "lag_after_snapshot": lags,
            "cp_reflink_baseline_seconds": cps,
        }),
    )
}
