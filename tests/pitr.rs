//! Point-in-time VDBs (issue 10): any moment between snapshots, from the
//! WAL each dSource keeps; a moment outside every range refused, with the
//! ranges printed.

use std::time::Duration;

use serde_json::Value;

use crate::support::Stack;

/// One committed row: its id, a time before and after its commit, and the
/// WAL insert position after it.
struct Row {
    id: i64,
    before: String,
    after: String,
    lsn_after: String,
}

/// Writes `n` rows, one transaction each, `gap` apart.
fn write(port: u16, from: i64, n: i64, gap: Duration) -> Vec<Row> {
    let mut client = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(postgres::NoTls)
        .expect("writer connects");
    let mut rows = Vec::new();
    for id in from..from + n {
        let before: String = client
            .query_one(
                "INSERT INTO w VALUES ($1) RETURNING to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[&id],
            )
            .expect("insert")
            .get(0);
        let row = client
            .query_one(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), pg_current_wal_insert_lsn()::text",
                &[],
            )
            .expect("after");
        rows.push(Row {
            id,
            before,
            after: row.get(0),
            lsn_after: row.get(1),
        });
        std::thread::sleep(gap);
    }
    rows
}

/// A time strictly between two commits: the midpoint of the gap after `a`.
fn between(a: &Row, b: &Row) -> String {
    let t0: jiff::Timestamp = a.after.parse().expect("time");
    let t1: jiff::Timestamp = b.before.parse().expect("time");
    let half = t0.duration_until(t1) / 2;
    (t0 + half).to_string()
}

#[test]
fn a_vdb_at_any_moment_between_two_snapshots_holds_exactly_what_was_committed_by_then() {
    let s = Stack::new();
    s.source
        .psql("postgres", "CREATE TABLE w (id bigint PRIMARY KEY)");
    let first = s.link("pit")["snapshot"].clone();
    let rows = write(s.source.port, 1, 60, Duration::from_millis(25));
    let second = s.pgvirt.json(&["dsource", "sync", "pit"]);
    // After the second snapshot, more; then the segment completes.
    let later = write(s.source.port, 61, 20, Duration::from_millis(10));
    s.source.psql("postgres", "SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(2));

    let shown = s.pgvirt.json(&["timeflow", "show", "pit"]);
    let ranges = shown["ranges"].as_array().expect("ranges");
    assert_eq!(
        ranges.len(),
        1,
        "one range from the first snapshot on: {shown}"
    );
    assert_eq!(ranges[0]["from_lsn"], first["metadata"]["replayed_lsn"]);
    let table = s.pgvirt.ok(&["timeflow", "show", "pit"]);
    assert!(table.contains("held by snapshots"), "{table}");

    // Ten moments between the snapshots, by time: each VDB exactly right.
    let picks: Vec<usize> = (0..10).map(|k| 2 + k * 5).collect();
    for (n, i) in picks.iter().enumerate() {
        let at = between(&rows[*i], &rows[i + 1]);
        let name = format!("t{n}");
        let v = s
            .pgvirt
            .json(&["vdb", "provision", &name, "--from", "pit", "--at", &at]);
        let want = rows[*i].id.to_string();
        assert_eq!(
            s.vdb_sql(&name, "SELECT count(*) FROM w"),
            want,
            "{name} at {at}: rows committed by then ({v})"
        );
        assert_eq!(s.vdb_sql(&name, "SELECT max(id) FROM w"), want);
        if n == 0 {
            // Paused at the target and promoted: an end-of-recovery record,
            // no whole checkpoint waited for before the VDB is ready.
            let log = own_log(&s, &name);
            assert!(
                log.contains("received promote request") && !log.contains("end-of-recovery"),
                "{name} promoted at its target without an end-of-recovery checkpoint:\n{log}"
            );
        }
        s.pgvirt.ok(&["vdb", "delete", &name]);
    }
    // By LSN, and past the second snapshot.
    for row in [&rows[7], &later[5]] {
        let v = s.pgvirt.json(&[
            "vdb",
            "provision",
            "bylsn",
            "--from",
            "pit",
            "--at-lsn",
            &row.lsn_after,
        ]);
        assert_eq!(
            s.vdb_sql("bylsn", "SELECT max(id) FROM w"),
            row.id.to_string(),
            "{v}"
        );
        s.pgvirt.ok(&["vdb", "delete", "bylsn"]);
    }
    let _ = second;

    // A moment one second before the first snapshot, and one past the
    // last WAL kept: refused, with the ranges.
    let taken: jiff::Timestamp = first["metadata"]["taken_at"]
        .as_str()
        .expect("taken_at")
        .parse()
        .expect("time");
    for at in [
        (taken - jiff::SignedDuration::from_secs(1)).to_string(),
        (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)).to_string(),
    ] {
        let err = s
            .pgvirt
            .fails(&["vdb", "provision", "never", "--from", "pit", "--at", &at]);
        assert!(
            err.contains("outside every provisionable range") && err.contains("held by snapshot"),
            "{at}: {err}"
        );
    }
    assert_eq!(s.pgvirt.json(&["vdb", "list"]), Value::Array(Vec::new()));

    // Refresh to a moment, too.
    s.pgvirt.ok(&["vdb", "provision", "r", "--from", "pit"]);
    let at = between(&rows[30], &rows[31]);
    s.pgvirt.ok(&["vdb", "refresh", "r", "--at", &at]);
    assert_eq!(
        s.vdb_sql("r", "SELECT max(id) FROM w"),
        rows[30].id.to_string()
    );
    s.assert_whole("after point-in-time provisions");
}

#[test]
fn kept_wal_is_pruned_by_size_but_never_what_the_newest_range_needs() {
    let s = Stack::new();
    s.source
        .psql("postgres", "CREATE TABLE w (id bigint PRIMARY KEY)");
    s.link("kept");
    // Several segments of WAL, then a second snapshot.
    for _ in 0..4 {
        s.source.psql(
            "postgres",
            "INSERT INTO w SELECT g FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM w), (SELECT coalesce(max(id), 0) + 100000 FROM w)) g; SELECT pg_switch_wal()",
        );
    }
    // A checkpoint on the source moves the redo point of the next snapshot
    // (taken while staging replays, it needs the WAL from its redo) past
    // the first snapshot's WAL.
    s.source.psql("postgres", "CHECKPOINT");
    std::thread::sleep(Duration::from_secs(2));
    let second = s.pgvirt.json(&["dsource", "sync", "kept"]);
    let wal_dir = |s: &Stack| {
        let list = s.pgvirt.json(&["pool", "list"]);
        let ds = list
            .as_array()
            .expect("list")
            .iter()
            .find(|d| d["name"] == serde_json::json!("dsource-kept-wal"))
            .expect("a WAL dataset")
            .clone();
        std::fs::read_dir(ds["path"].as_str().expect("path"))
            .expect("read")
            .count()
    };
    let before = wal_dir(&s);
    let ranges = s.pgvirt.json(&["timeflow", "show", "kept"]);
    assert_eq!(
        ranges["ranges"][0]["snapshots"]
            .as_array()
            .expect("held")
            .len(),
        2,
        "{ranges}"
    );
    // At most 1 byte: only the newest snapshot's range stays.
    let out = s.pgvirt.json(&[
        "snapshot",
        "retention",
        "--dsource",
        "kept",
        "--wal-size",
        "1",
    ]);
    assert!(out["pruned"].as_u64().expect("pruned") > 0, "{out}");
    assert!(wal_dir(&s) < before, "WAL files were removed");
    let ranges = s.pgvirt.json(&["timeflow", "show", "kept"]);
    let ranges = ranges["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(
        ranges[0]["to_lsn"], ranges[0]["from_lsn"],
        "the oldest snapshot is a point now, its WAL after it gone: {ranges:?}"
    );
    assert_eq!(
        ranges[1]["from_lsn"], second["metadata"]["replayed_lsn"],
        "the newest range starts at the newest snapshot: {ranges:?}"
    );
    // The older snapshot is still a point one can provision (its own WAL is in it).
    let first = s.pgvirt.json(&["snapshot", "list", "--dsource", "kept"])[0]["id"].to_string();
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "old",
        "--from",
        &format!("kept@{first}"),
    ]);
    assert_eq!(s.vdb_sql("old", "SELECT count(*) FROM w"), "0");
    s.pgvirt.ok(&["vdb", "provision", "new", "--from", "kept"]);
    assert_eq!(s.vdb_sql("new", "SELECT count(*) FROM w"), "400000");
}

/// Writes `n` rows into a VDB, one transaction each.
fn write_vdb(s: &Stack, vdb: &str, from: i64, n: i64) -> Vec<Row> {
    let now = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
    (from..from + n)
        .map(|id| {
            let out = s.vdb_sql(
                vdb,
                &format!(
                    // One query string is one transaction unless it says
                    // otherwise: the commit comes before the second time.
                    "BEGIN; SELECT {now}; INSERT INTO w VALUES ({id}); COMMIT; SELECT {now} || ' ' || pg_current_wal_insert_lsn()::text"
                ),
            );
            // The two times (psql also prints the INSERT's tag between them).
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            let (after, lsn) = lines[1].split_once(' ').expect("time and lsn");
            std::thread::sleep(Duration::from_millis(10));
            Row {
                id,
                before: lines[0].trim().to_owned(),
                after: after.to_owned(),
                lsn_after: lsn.trim().to_owned(),
            }
        })
        .collect()
}

#[test]
fn a_vdb_rewound_to_a_moment_after_its_snapshot_holds_exactly_what_it_had_committed_by_then() {
    let s = Stack::new();
    s.source
        .psql("postgres", "CREATE TABLE w (id bigint PRIMARY KEY)");
    s.link("vsrc");
    s.pgvirt.ok(&["vdb", "provision", "dev", "--from", "vsrc"]);
    let before = write_vdb(&s, "dev", 1, 5);
    let snap = s.pgvirt.json(&["vdb", "snapshot", "dev"]);
    let rows = write_vdb(&s, "dev", 6, 30);

    // A moment by time, then by LSN, each after the VDB's own snapshot.
    let at = between(&rows[11], &rows[12]);
    s.pgvirt.ok(&["vdb", "rewind", "dev", "--at", &at]);
    assert_eq!(
        s.vdb_sql("dev", "SELECT max(id) FROM w"),
        rows[11].id.to_string()
    );
    assert_eq!(
        s.vdb_sql("dev", "SELECT count(*) FROM w"),
        rows[11].id.to_string()
    );
    // The rewound VDB goes on (a new timeline, its own WAL kept again).
    let more = write_vdb(&s, "dev", 100, 3);
    s.pgvirt.ok(&["vdb", "snapshot", "dev"]);
    let after = write_vdb(&s, "dev", 200, 5);
    s.pgvirt
        .ok(&["vdb", "rewind", "dev", "--at-lsn", &after[2].lsn_after]);
    assert_eq!(
        s.vdb_sql(
            "dev",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM w WHERE id >= 100"
        ),
        "100,101,102,200,201,202"
    );
    let _ = more;

    // A moment before the VDB's first snapshot: refused, with its ranges.
    let err = s.pgvirt.fails(&[
        "vdb",
        "rewind",
        "dev",
        "--at",
        &between(&before[1], &before[2]),
    ]);
    assert!(
        err.contains("outside every provisionable range of VDB dev"),
        "{err}"
    );
    // A child of the VDB refreshes to a moment of its parent's too.
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "kid",
        "--from",
        &format!("dev@{}", snap["id"]),
    ]);
    let shown = s.pgvirt.json(&["timeflow", "show", "dev"]);
    assert!(
        shown["ranges"].as_array().expect("ranges").len() >= 2,
        "{shown}"
    );
    s.pgvirt.ok(&["vdb", "delete", "kid"]);
    s.pgvirt.ok(&["vdb", "delete", "dev"]);
    s.assert_whole("after rewinds to moments");
}

/// Issue 10: what a VDB replays at start does not grow with the write
/// load. A snapshot far from its redo point (here ~90 MB of WAL since the
/// last checkpoint) is prepared once at sync; its VDBs start from the
/// prepared image without replaying anything, and hold its data exactly.
#[test]
fn a_snapshot_far_from_its_redo_point_is_prepared_once_and_its_vdbs_replay_nothing() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text)",
    );
    let first = s.link("far")["snapshot"].clone();
    assert!(
        first["prepared_id"].is_null(),
        "a snapshot right after the link's checkpoint is not worth preparing: {first}"
    );
    s.source.psql(
        "postgres",
        "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g",
    );
    std::thread::sleep(Duration::from_secs(1));
    let snap = s.pgvirt.json(&["dsource", "sync", "far"]);
    assert!(snap["prepared_id"].is_i64(), "prepared: {snap}");
    s.pgvirt.ok(&["vdb", "provision", "quick", "--from", "far"]);
    assert_eq!(s.vdb_sql("quick", "SELECT count(*) FROM big"), "300000");
    let shown = s.pgvirt.json(&["vdb", "show", "quick"]);
    let data = shown["source_config"]["data_directory"]
        .as_str()
        .expect("data");
    let log = whole_log(&s, "quick");
    // The log came with the image (its preparation recovered); the VDB's
    // own start is the last.
    let own = own_log(&s, "quick");
    assert!(
        log.contains("redo starts at"),
        "the preparation recovered:\n{log}"
    );
    assert!(
        !own.contains("redo starts at") && own.contains("database system was shut down"),
        "the VDB replayed WAL at start:\n{own}"
    );
    // The image carries only the segment of its shutdown checkpoint, not
    // those its recovery copied in or recycled for later use.
    let segments = std::fs::read_dir(std::path::Path::new(data).join("pg_wal"))
        .expect("pg_wal")
        .flatten()
        .filter(|e| e.file_name().len() == 24)
        .count();
    assert!(segments <= 2, "{segments} WAL segments in the VDB");
    // A moment between the two snapshots still recovers from the snapshot
    // as taken, with the kept WAL.
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "mid",
        "--from",
        "far",
        "--at-lsn",
        snap["metadata"]["replayed_lsn"].as_str().expect("lsn"),
    ]);
    assert_eq!(s.vdb_sql("mid", "SELECT count(*) FROM big"), "300000");
    s.assert_whole("after provisions from a prepared image");
}

/// Links `name` with linked-source parameters `params`; the CLI's output.
/// The server log in a VDB's dataset (a clone's starts with its parent's).
fn whole_log(s: &Stack, vdb: &str) -> String {
    let shown = s.pgvirt.json(&["vdb", "show", vdb]);
    let data = shown["source_config"]["data_directory"]
        .as_str()
        .expect("data");
    let log = std::path::Path::new(data)
        .parent()
        .expect("mount")
        .join("pgvirt/postgres.log");
    std::fs::read_to_string(&log).expect("VDB log")
}

/// The log of the VDB's own (last) start.
fn own_log(s: &Stack, vdb: &str) -> String {
    let log = whole_log(s, vdb);
    log.rsplit("starting PostgreSQL")
        .next()
        .expect("a start")
        .to_owned()
}

fn link_with(s: &Stack, name: &str, params: Value) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("params.json");
    std::fs::write(&path, params.to_string()).expect("params");
    let port = crate::support::free_port().to_string();
    s.pgvirt
        .command(&[
            "dsource",
            "link",
            name,
            "--source",
            &s.source_id,
            "--staging-port",
            &port,
            "--params",
            path.to_str().expect("utf-8"),
            "--output",
            "json",
        ])
        .output()
        .expect("runs")
}

#[test]
fn with_checkpoint_at_sync_a_snapshot_redoes_from_the_sync_not_from_the_sources_last_checkpoint() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text)",
    );
    s.link("plain");
    let out = link_with(
        &s,
        "ck",
        serde_json::json!({"source": {"checkpoint_at_sync": true}}),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.source.psql(
        "postgres",
        "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g",
    );
    let at = crate::support::lsn(&s.source.psql("postgres", "SELECT pg_current_wal_lsn()"));
    let redo = |snap: &Value| {
        crate::support::lsn(snap["metadata"]["redo_lsn"].as_str().expect("redo_lsn"))
    };
    // Without it, the snapshot redoes from the checkpoint before the
    // rows; with it, from one after them.
    let plain = s.pgvirt.json(&["dsource", "sync", "plain"]);
    assert!(redo(&plain) < at, "{plain}");
    let ck = s.pgvirt.json(&["dsource", "sync", "ck"]);
    assert!(redo(&ck) >= at, "redo {:X} before {at:X}: {ck}", redo(&ck));
    s.pgvirt.ok(&["vdb", "provision", "ckv", "--from", "ck"]);
    assert_eq!(s.vdb_sql("ckv", "SELECT count(*) FROM big"), "100000");
    // A moment past the snapshot recovers from it, with the kept WAL.
    s.source
        .psql("postgres", "INSERT INTO big VALUES (100001, 'past')");
    let past = s.source.psql("postgres", "SELECT pg_current_wal_lsn()");
    s.pgvirt.ok(&["dsource", "sync", "ck"]);
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "ckpast",
        "--from",
        "ck",
        "--at-lsn",
        &past,
    ]);
    assert_eq!(s.vdb_sql("ckpast", "SELECT count(*) FROM big"), "100001");
    // A user who may not checkpoint the source is told so, and the link
    // leaves nothing.
    s.source
        .psql("postgres", "CREATE ROLE nock LOGIN REPLICATION");
    let refused = link_with(
        &s,
        "nock",
        serde_json::json!({"source": {"replication_user": "nock", "checkpoint_at_sync": true}}),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("source/checkpoint_at_sync")
            && err.contains("GRANT pg_checkpoint TO nock"),
        "{err}"
    );
    let names: Vec<Value> = s
        .pgvirt
        .json(&["dsource", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![serde_json::json!("ck"), serde_json::json!("plain")]
    );
    // Only for methods that stream.
    let wrong = link_with(
        &s,
        "ship",
        serde_json::json!({"ingestion_method": "staging_push", "source": {"checkpoint_at_sync": true}}),
    );
    assert!(
        !wrong.status.success()
            && String::from_utf8_lossy(&wrong.stderr).contains("ingestion_method"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    s.assert_whole("after syncs with a checkpoint of the source");
}
