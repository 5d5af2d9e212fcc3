//! A link and syncs under a write load: each snapshot's VDB holds exactly
//! the rows committed up to the snapshot's LSN (a writer logs each commit's
//! WAL position), on a copy pool and on XFS (live snapshots cloned while
//! staging replays).

use serde_json::{json, Value};

use std::io::Write;

use crate::support::{
    as_pg_user, checksum_sql, free_port, lsn, try_psql_at, Stack, Writer, PG_BIN,
};

/// Checks a VDB made from `snapshot` holds exactly the rows committed up to
/// its LSN: every row whose commit is surely at or before it, none surely after.
fn check_exact(s: &Stack, vdb: &str, snapshot: &Value, log: &[(i64, u64)]) {
    let at = lsn(snapshot["metadata"]["replayed_lsn"]
        .as_str()
        .expect("replayed_lsn"));
    let count: i64 = s
        .vdb_sql(vdb, "SELECT count(*) FROM w")
        .parse()
        .expect("count");
    let max: i64 = s
        .vdb_sql(vdb, "SELECT coalesce(max(id), 0) FROM w")
        .parse()
        .expect("max");
    assert_eq!(count, max, "{vdb}: rows 1..{max} without gaps");
    // Row i's commit record ends at or before log[i]; row i+1's starts after log[i].
    let surely_in = log
        .iter()
        .filter(|(_, u)| *u <= at)
        .map(|(i, _)| *i)
        .max()
        .unwrap_or(0);
    let surely_out = log
        .iter()
        .filter(|(_, u)| *u >= at)
        .map(|(i, _)| i + 1)
        .min()
        .unwrap_or(i64::MAX);
    assert!(
        max >= surely_in,
        "{vdb}: row {surely_in} committed before {at:X} but the clone stops at {max}"
    );
    assert!(
        max < surely_out,
        "{vdb}: row {max} committed after {at:X} but is in the clone"
    );
    // And those rows are the source's rows, byte for byte.
    let filter = format!("(SELECT * FROM w WHERE id <= {max})");
    assert_eq!(
        s.vdb_sql(vdb, &checksum_sql(&filter)),
        s.source.psql("postgres", &checksum_sql(&filter))
    );
}

#[test]
fn link_under_write_load_then_each_snapshot_holds_the_source_as_of_its_lsn() {
    under_write_load(Stack::new());
}

#[test]
fn live_snapshots_on_xfs_under_write_load_hold_the_source_as_of_their_lsn() {
    // Cloned file by file on several threads while staging replays.
    under_write_load(Stack::on("xfs"));
}

fn under_write_load(s: Stack) {
    s.source
        .psql("postgres", "CREATE TABLE w (id bigint PRIMARY KEY, v text)");
    let mut writer = Writer::start(s.source.port, "postgres", std::time::Duration::ZERO);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let linked = s.link("live");
    let first = linked["snapshot"].clone();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = s.pgvirt.json(&["dsource", "sync", "live"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = writer.stop();
    assert!(
        log.len() > 20,
        "the writer kept writing ({} rows)",
        log.len()
    );
    let third = s.pgvirt.json(&["dsource", "sync", "live"]);

    for (name, snap) in [("at1", &first), ("at2", &second), ("at3", &third)] {
        assert_eq!(snap["metadata"]["provisionable"], json!(true));
        s.pgvirt.ok(&[
            "vdb",
            "provision",
            name,
            "--from",
            &format!("live@{}", snap["id"]),
        ]);
        check_exact(&s, name, snap, &log);
    }
    // After the writes stopped, the last snapshot is the whole source.
    assert_eq!(
        s.vdb_sql("at3", &checksum_sql("w")),
        s.source.psql("postgres", &checksum_sql("w"))
    );

    // The metadata says what it should.
    let meta = &second["metadata"];
    assert_eq!(meta["major_version"], json!(15));
    assert_eq!(meta["ingestion_method"], json!("basebackup_streaming"));
    assert_eq!(meta["wal_segment_size"], json!(16 * 1024 * 1024));
    assert_eq!(
        meta["system_identifier"].as_str().expect("sysid"),
        s.source.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        )
    );
    assert!(meta["databases"]
        .as_array()
        .expect("dbs")
        .contains(&json!("postgres")));

    // Show reports replication health.
    let shown = s.pgvirt.json(&["dsource", "show", "live"]);
    assert_eq!(shown["status"], json!("ACTIVE"));
    assert_eq!(shown["replication"]["connected"], json!(true), "{shown}");
    assert!(shown["replication"]["lag_bytes"].is_u64(), "{shown}");
}

/// psql on staging's socket; returns trimmed output.
fn staging_sql(socket: &std::path::Path, port: u16, sql: &str) -> String {
    try_psql_at(socket, port, "postgres", sql)
        .unwrap_or_else(|e| panic!("SQL on staging failed: {sql}\n{e}"))
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..600 {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

/// A snapshot taken while replay is held inside a record (a query on
/// staging conflicts with the source's ACCESS EXCLUSIVE lock, and staging
/// waits for it without limit): the backup ends at that record's end (the
/// control file's minimum recovery point, moved there by the pages the
/// backup's restartpoint wrote), past what replay has finished. The
/// snapshot's point must be that end, or no clone of it can start
/// ("requested recovery stop point is before consistent recovery point").
#[test]
fn a_snapshot_taken_while_replay_waits_inside_a_record_is_provisionable() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE held (id int PRIMARY KEY, n int); INSERT INTO held SELECT g, 0 FROM generate_series(1, 20000) g",
    );
    let port = free_port();
    s.pgvirt.ok(&[
        "dsource",
        "link",
        "held",
        "--source",
        &s.source_id,
        "--staging-port",
        &port.to_string(),
    ]);
    let socket = s.pool_root().join("mounts/dsource-held/pgvirt");
    wait_until("staging has the table", || {
        staging_sql(
            &socket,
            port,
            "SELECT count(*) FROM pg_class WHERE relname = 'held'",
        ) == "1"
    });
    // A reader on staging holds the table, in a transaction kept open.
    let mut reader = as_pg_user(std::path::Path::new(PG_BIN).join("psql"))
        .args(["-X", "-q", "-h"])
        .arg(&socket)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = reader.stdin.take().expect("stdin");
    writeln!(stdin, "BEGIN; SELECT count(*) FROM held;").expect("write");
    stdin.flush().expect("flush");
    wait_until("the reader holds the table", || {
        staging_sql(
            &socket,
            port,
            "SELECT count(*) FROM pg_locks WHERE relation = 'held'::regclass AND granted AND pid <> pg_backend_pid()",
        ) == "1"
    });
    // Pages to write at the next restartpoint, its checkpoint, then a lock
    // replay must wait on.
    s.source
        .psql("postgres", "UPDATE held SET n = 1; CHECKPOINT;");
    s.source.psql(
        "postgres",
        "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; COMMIT;",
    );
    wait_until("replay waits on the reader's lock", || {
        staging_sql(
            &socket,
            port,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'startup' AND wait_event_type = 'Lock'",
        ) == "1"
    });
    let snap = s.pgvirt.json(&["dsource", "sync", "held"]);
    drop(stdin);
    reader.wait().expect("reader ends");
    let meta = &snap["metadata"];
    let at = |k: &str| lsn(meta[k].as_str().unwrap_or_else(|| panic!("{k}: {snap}")));
    assert!(
        at("replayed_lsn") >= at("stop_lsn"),
        "the snapshot's point is not before the backup's end: {snap}"
    );
    s.pgvirt
        .ok(&["vdb", "provision", "afterwait", "--from", "held"]);
    assert_eq!(
        s.vdb_sql("afterwait", "SELECT sum(n) FROM held"),
        "20000",
        "the update committed before the snapshot's point"
    );
    s.assert_whole("after a snapshot taken while replay waited");
}
