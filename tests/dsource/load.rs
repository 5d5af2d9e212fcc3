//! A link and syncs under a write load: each snapshot's VDB holds exactly
//! the rows committed up to the snapshot's LSN (a writer logs each commit's
//! WAL position), on a copy pool and on XFS (live snapshots cloned while
//! staging replays).

use serde_json::{json, Value};

use crate::support::{checksum_sql, lsn, Stack, Writer};

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
