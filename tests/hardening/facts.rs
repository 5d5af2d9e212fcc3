//! True facts in metadata, bounded waits, states the store checks, and
//! children that die with the engine.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::support::{free_port, processes, Cluster, Pgvirt, Stack};

/// Seconds between an RFC 3339 time and now.
fn seconds_from_now(text: &str) -> f64 {
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    match SystemTime::now().duration_since(t) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn times_are_true_in_utc_whatever_the_zone_of_pgvirt_and_of_the_source() {
    // Regression: label times in the server's zone were stamped `Z`, so
    // checkpoint times were hours off wherever the zone was not UTC.
    let source = Cluster::start_in_zone(Some("Asia/Kolkata"));
    let mut pgvirt = Pgvirt::new();
    pgvirt.env("TZ", "America/New_York");
    let s = Stack::with(source, pgvirt);
    assert_eq!(
        s.source.psql("postgres", "SHOW log_timezone"),
        "Asia/Kolkata"
    );
    let linked = s.link("tz");
    let meta = &linked["snapshot"]["metadata"];
    for field in ["checkpoint_time", "taken_at"] {
        let off = seconds_from_now(meta[field].as_str().expect(field));
        assert!(
            (-5.0..300.0).contains(&off),
            "{field} {} is {off:.0} s from now",
            meta[field]
        );
    }
    // A VDB snapshot's times come from pg_controldata: UTC too.
    s.pgvirt.ok(&["vdb", "provision", "v", "--from", "tz"]);
    let snap = s.pgvirt.json(&["vdb", "snapshot", "v"]);
    let off = seconds_from_now(snap["metadata"]["checkpoint_time"].as_str().expect("time"));
    assert!(
        (-5.0..300.0).contains(&off),
        "VDB checkpoint_time is {off:.0} s from now"
    );
}

#[test]
fn the_major_version_of_a_vdb_snapshot_is_read_from_the_cluster() {
    // Regression: it was invented as 15 when the store did not say.
    let s = Stack::new();
    s.link("src");
    let v = s.pgvirt.json(&["vdb", "provision", "v", "--from", "src"]);
    let snap = s.pgvirt.json(&["vdb", "snapshot", "v"]);
    assert_eq!(snap["metadata"]["major_version"], json!(15));
    // What the cluster says wins: a PG_VERSION of 16 reads as 16 (a
    // snapshot of a stopped VDB, so nothing else is asked).
    s.pgvirt.ok(&["vdb", "stop", "v"]);
    let dataset = v["dataset"].as_str().expect("dataset");
    let path = s
        .pgvirt
        .json(&["pool", "list"])
        .as_array()
        .expect("datasets")
        .iter()
        .find(|d| d["name"] == json!(dataset))
        .and_then(|d| d["path"].as_str().map(str::to_owned))
        .expect("the VDB's dataset");
    std::fs::write(format!("{path}/data/PG_VERSION"), "16\n").expect("write");
    let snap = s.pgvirt.json(&["vdb", "snapshot", "v"]);
    assert_eq!(snap["metadata"]["major_version"], json!(16));
    std::fs::write(format!("{path}/data/PG_VERSION"), "15\n").expect("write");
}

#[test]
fn a_corrupt_stored_document_is_an_error_naming_its_object() {
    // Regression: stored JSON that failed to parse became null silently.
    let s = Stack::new();
    s.link("src");
    s.pgvirt
        .ok(&["vdb", "provision", "broken", "--from", "src"]);
    let store = pgvirt::host::store::Store::open(&s.pgvirt.store()).expect("store");
    store
        .conn()
        .execute_batch(
            "PRAGMA ignore_check_constraints = ON;
             UPDATE vdbs SET parameters = '{not json' WHERE name = 'broken';
             PRAGMA ignore_check_constraints = OFF;",
        )
        .expect("corrupt");
    drop(store);
    let err = s.pgvirt.fails(&["vdb", "list"]);
    assert!(
        err.contains("parameters of VDB broken is not valid JSON"),
        "{err}"
    );
}

#[test]
fn states_are_checked_by_the_store() {
    // States and kinds are enums; the store refuses any other text.
    let s = Stack::new();
    s.link("src");
    let store = pgvirt::host::store::Store::open(&s.pgvirt.store()).expect("store");
    for sql in [
        "UPDATE dsources SET state = 'runing'",
        "UPDATE datasets SET state = 'half'",
        "UPDATE timeflows SET container_kind = 'table'",
        "UPDATE mounts SET kind = 'nfs'",
        "INSERT INTO jobs (kind, target_kind, target_id, target_name, state, started_at) VALUES ('reboot', 'vdb', 1, 'x', 'running', 0)",
    ] {
        let err = store.conn().execute(sql, []).expect_err(sql);
        assert!(err.to_string().contains("CHECK constraint failed"), "{sql}: {err}");
    }
}

#[test]
fn a_pg_basebackup_that_dies_without_an_exit_code_ends_the_wait() {
    // Regression: the wait loop had no bound and ignored the PID it was
    // given: a wrapper that died without its exit code hung the link.
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 300000) g",
    );
    let params = s.pgvirt.dir().join("slow.json");
    std::fs::write(&params, r#"{"pg_basebackup": {"max_rate": "1M"}}"#).expect("params");
    let port = free_port().to_string();
    let started = Instant::now();
    let link = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            "hang",
            "--source",
            &s.source_id,
            "--staging-port",
            &port,
            "--params",
            params.to_str().expect("utf-8"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Kill the wrapper first, then pg_basebackup: no exit code is written.
    let mut killed = false;
    while !killed && started.elapsed() < Duration::from_secs(30) {
        for (pid, args, _) in processes() {
            if args.first().is_some_and(|a| a.ends_with("pg_basebackup"))
                && args.iter().any(|a| a.contains("dsource-hang"))
            {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid: i32 = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
                    .expect("ppid");
                for target in [ppid, pid] {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(target),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .expect("kill");
                }
                killed = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(killed, "pg_basebackup was never seen");
    let out = link.wait_with_output().expect("link ends");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended without an exit code"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the wait ended promptly"
    );
    assert_eq!(s.pgvirt.json(&["dsource", "list"]), json!([]));
    s.assert_whole("after the dead pg_basebackup");
}

#[test]
fn children_of_a_killed_pgvirt_die_with_it() {
    // Regression: cp and pg_basebackup outlived a killed engine.
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 300000) g",
    );
    let params = s.pgvirt.dir().join("slow.json");
    std::fs::write(&params, r#"{"pg_basebackup": {"max_rate": "1M"}}"#).expect("params");
    let port = free_port().to_string();
    let mut link = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            "orphan",
            "--source",
            &s.source_id,
            "--staging-port",
            &port,
            "--params",
            params.to_str().expect("utf-8"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let running = |pattern: &str| {
        processes()
            .into_iter()
            .filter(|(_, args, _)| {
                args.first().is_some_and(|a| a.ends_with("pg_basebackup"))
                    && args.iter().any(|a| a.contains(pattern))
            })
            .count()
    };
    let started = Instant::now();
    while running("dsource-orphan") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pg_basebackup never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link.kill().expect("SIGKILL pgvirt");
    link.wait().expect("reaped");
    // No other pgvirt command runs: the engine's own watchdog ends it.
    let killed = Instant::now();
    while running("dsource-orphan") > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "pg_basebackup outlived the killed pgvirt"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the next command repairs the rest.
    s.pgvirt.ok(&["dsource", "list"]);
    s.assert_whole("after the killed link");
}

#[test]
fn a_paused_replay_that_no_snapshot_explains_is_reported() {
    let s = Stack::new();
    s.link("src");
    let shown = s.pgvirt.json(&["dsource", "show", "src"]);
    assert!(shown["replication"].get("problem").is_none(), "{shown}");
    // Someone pauses replay on staging by hand.
    let mount = shown["dsource"]["mount_path"]
        .as_str()
        .expect("mount")
        .to_owned();
    let port = shown["dsource"]["parameters"]["staging_port"].to_string();
    crate::support::run_ok(
        crate::support::as_pg_user(std::path::Path::new(crate::support::PG_BIN).join("psql")).args(
            [
                "-X",
                "-h",
                &format!("{mount}/pgvirt"),
                "-p",
                &port,
                "-U",
                "postgres",
                "-c",
                "SELECT pg_wal_replay_pause()",
            ],
        ),
    );
    let shown = s.pgvirt.json(&["dsource", "show", "src"]);
    assert_eq!(shown["replication"]["replay_paused"], json!(true));
    let problem: &Value = &shown["replication"]["problem"];
    assert!(
        problem
            .as_str()
            .is_some_and(|p| p.contains("no snapshot is being taken")),
        "{shown}"
    );
    // Enabling resumes it.
    s.pgvirt.ok(&["dsource", "enable", "src"]);
    assert_eq!(
        s.pgvirt.json(&["dsource", "show", "src"])["replication"]["replay_paused"],
        json!(false)
    );
}
