//! API benchmark: 200 concurrent read requests (GET /vdbs, /dsources,
//! /jobs/{id}, /snapshots, each on its own connection; not /pool, whose
//! space accounting walks the datasets) while a provision job
//! runs, against the same burst with nothing running; throughput and
//! p50/p99 latency; and the provision itself through the API against the
//! CLI (alternated, medians). Run as root: `cargo bench --bench api`.
//! `PGVIRT_BENCH_SCALE` (default 10), `PGVIRT_BENCH_ROUNDS` (default 3),
//! `PGVIRT_BENCH_READS` (default 200).

#[path = "support.rs"]
mod support;

#[path = "../tests/support/http.rs"]
#[allow(dead_code)]
mod http;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One burst: (answered, of, reads per second, p50 ms, p99 ms).
fn burst(port: u16, token: &str, paths: &[&str], n: usize) -> (usize, usize, f64, f64, f64) {
    let started = Instant::now();
    let answers = http::concurrent_reads(port, token, paths, n);
    let wall = started.elapsed().as_secs_f64();
    let answered = answers.iter().filter(|(s, _)| *s == 200).count();
    let mut ms: Vec<f64> = answers.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    (
        answered,
        n,
        n as f64 / wall,
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
    )
}

/// Polls a job every 20 ms until it ends.
fn wait(api: &http::Api, job: i64) -> serde_json::Value {
    loop {
        let j = api.get(&format!("/jobs/{job}")).json();
        if j["state"] != "running" {
            return j;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: u32 = list_env("PGVIRT_BENCH_SCALE", &[10])[0];
    let rounds: usize = list_env("PGVIRT_BENCH_ROUNDS", &[3])[0];
    let reads: usize = list_env("PGVIRT_BENCH_READS", &[200])[0];
    let work = scratch("pgvirt-bench-api-");
    println!("making a pgbench source at scale {scale} ...");
    let source = Source::new(work.path(), scale);
    let p = Pgvirt::setup(work.path(), &work.path().join("pool"));
    let id = p.source_id(&source.data_dir());
    p.ok(&[
        "dsource",
        "link",
        "src",
        "--source",
        &id,
        "--staging-port",
        &free_port().to_string(),
    ]);
    let token = p.ok(&["token", "create", "bench"]).trim().to_owned();
    let server = http::Server::start(p.cmd(&[]));
    let api = http::Api {
        port: server.port,
        token: Some(token.clone()),
    };

    let mut idle = Vec::new();
    let mut busy = Vec::new();
    let mut api_secs = Vec::new();
    let mut cli_secs = Vec::new();
    let mut busy_secs = Vec::new();
    for round in 0..rounds {
        // Baseline: the burst with nothing running.
        idle.push(burst(
            server.port,
            &token,
            &["/vdbs", "/dsources", "/jobs", "/snapshots"],
            reads,
        ));
        // CLI provision, timed.
        let name = format!("cli-{round}");
        let ((), took) = timed(|| {
            p.ok(&["vdb", "provision", &name, "--from", "src"]);
        });
        cli_secs.push(took.as_secs_f64());
        p.ok(&["vdb", "delete", &name]);
        // API provision alone, timed (request to job succeeded).
        let name = format!("api-alone-{round}");
        let started = Instant::now();
        let accepted = api.call("POST", "/vdbs", Some(&json!({"name": name, "from": "src"})));
        assert_eq!(accepted.status, 202, "{}", accepted.body);
        let done = wait(&api, accepted.json()["id"].as_i64().expect("job id"));
        api_secs.push(started.elapsed().as_secs_f64());
        assert_eq!(done["state"], "succeeded", "{done}");
        p.ok(&["vdb", "delete", &name]);
        // Candidate: the burst while an API provision runs.
        let name = format!("api-{round}");
        let started = Instant::now();
        let accepted = api.call("POST", "/vdbs", Some(&json!({"name": name, "from": "src"})));
        assert_eq!(accepted.status, 202, "{}", accepted.body);
        let job = accepted.json()["id"].as_i64().expect("job id");
        let job_path = format!("/jobs/{job}");
        busy.push(burst(
            server.port,
            &token,
            &["/vdbs", "/dsources", &job_path, "/snapshots"],
            reads,
        ));
        let running_at_end = api.get(&job_path).json()["state"] == "running";
        let done = wait(&api, job);
        busy_secs.push(started.elapsed().as_secs_f64());
        assert_eq!(done["state"], "succeeded", "{done}");
        if !running_at_end {
            println!("note: round {round}: the provision ended before the burst did");
        }
        p.ok(&["vdb", "delete", &name]);
    }
    let med = |xs: &[(usize, usize, f64, f64, f64)],
               f: fn(&(usize, usize, f64, f64, f64)) -> f64| {
        median(xs.iter().map(f).collect())
    };
    let rows: Vec<Vec<String>> = [("idle", &idle), ("during provision", &busy)]
        .iter()
        .map(|(label, xs)| {
            vec![
                label.to_string(),
                format!(
                    "{}/{}",
                    xs.iter().map(|x| x.0).sum::<usize>(),
                    xs.iter().map(|x| x.1).sum::<usize>()
                ),
                format!("{:.0}", med(xs, |x| x.2)),
                format!("{:.1}", med(xs, |x| x.3)),
                format!("{:.1}", med(xs, |x| x.4)),
            ]
        })
        .collect();
    print_table(
        &format!("api: {reads} concurrent reads (medians of {rounds} rounds)"),
        &["while", "answered", "reads/s", "p50 ms", "p99 ms"],
        &rows,
    );
    let (a, c) = (median(api_secs.clone()), median(cli_secs.clone()));
    print_table(
        "api: provision, request to ready (medians)",
        &["API s", "CLI s", "API/CLI"],
        &[vec![
            format!("{a:.3}"),
            format!("{c:.3}"),
            format!("{:.2}x", a / c),
        ]],
    );
    let as_json = |xs: &[(usize, usize, f64, f64, f64)]| {
        xs.iter()
            .map(|x| json!({"answered": x.0, "sent": x.1, "reads_per_second": x.2, "p50_ms": x.3, "p99_ms": x.4}))
            .collect::<Vec<_>>()
    };
    write_json(
        "api",
        &json!({
            "machine": machine(), "scale": scale, "reads": reads, "rounds": rounds,
            "idle": as_json(&idle), "during_provision": as_json(&busy),
            "provision_api_seconds": api_secs, "provision_cli_seconds": cli_secs,
            "provision_api_under_burst_seconds": busy_secs,
            "provision_api_over_cli": a / c,
        }),
    );
    drop(server);
    p.ok(&["dsource", "delete", "src", "--with-vdbs"]);
    stop_clusters_under(work.path());
}
