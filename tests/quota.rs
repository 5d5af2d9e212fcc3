//! VDB quotas (`vdb provision --quota`, `vdb quota`): a VDB past its quota
//! fails to write while its neighbour keeps writing and the dSource goes on
//! syncing; `vdb show` reports used of quota; a VDB stopped by a full quota
//! says so when it cannot start, and starts once the quota is raised; a
//! refresh keeps the quota. On btrfs (quota groups) and ZFS (zfs-fuse). XFS
//! pools refuse quotas: the test machine's kernel has no XFS quota support.

use std::process::Command;

use serde_json::json;

use crate::support::Stack;

const QUOTA: u64 = 16 * 1024 * 1024;
/// About 40 MB of rows that do not compress (and as much WAL).
const FILL: &str = "CREATE TABLE fill AS SELECT g, md5(g::text) || md5((g + 1)::text) \
                    || md5((g + 2)::text) || md5((g + 3)::text) AS pad \
                    FROM generate_series(1, 250000) g";

/// PostgreSQL's words for a full disk: the errno's text, or (a short write,
/// as btrfs's NOCOW files give at a quota group's limit) its hint.
fn disk_full(err: &str) -> bool {
    err.contains("Disk quota exceeded")
        || err.contains("No space left on device")
        || err.contains("HINT:  Check free disk space.")
}

/// The client saw a full disk, or the crash of the server process that hit
/// it (PostgreSQL stops when it cannot write WAL; its log, on the full
/// disk, may not say why: `vdb start` does, see below).
fn assert_full(err: &str) {
    assert!(
        disk_full(err) || err.contains("crash of another server process"),
        "PostgreSQL reports a full disk: {err}"
    );
}

/// `brim`: also fill the VDB to its quota and see it refuse to start: on
/// btrfs every write counts at once; ZFS lets overwrites in place through.
fn quota_holds(kind: &str, brim: bool) {
    let s = Stack::on(kind);
    s.source.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g",
    );
    s.link("q");
    s.pgvirt
        .ok(&["vdb", "provision", "small", "--from", "q", "--quota", "16M"]);
    s.pgvirt.ok(&["vdb", "provision", "roomy", "--from", "q"]);
    let shown = s.pgvirt.json(&["vdb", "show", "small"]);
    assert_eq!(shown["quota_bytes"], json!(QUOTA), "{shown}");
    assert_eq!(shown["quota"]["bytes"], json!(QUOTA), "{shown}");
    let fresh = shown["quota"]["used_bytes"].as_u64().expect("used counted");
    assert!(fresh < QUOTA, "a fresh VDB is inside its quota: {shown}");

    // Past its quota, PostgreSQL sees a full disk; the neighbour writes the
    // same, and the dSource still syncs.
    let err = s.try_vdb_sql("small", FILL).expect_err("past the quota");
    assert_full(&err);
    s.vdb_sql("roomy", FILL);
    assert_eq!(s.vdb_sql("roomy", "SELECT count(*) FROM fill"), "250000");
    s.source.psql("postgres", "INSERT INTO t VALUES (10001)");
    s.pgvirt.ok(&["dsource", "sync", "q"]);
    let shown = s.pgvirt.json(&["vdb", "show", "small"]);
    let used = shown["quota"]["used_bytes"].as_u64().expect("used counted");
    assert!(
        used > fresh && used <= QUOTA + QUOTA / 2,
        "used grew up to the quota: {fresh} then {used} of {QUOTA}"
    );
    let text = s.pgvirt.ok(&["vdb", "show", "small"]);
    assert!(text.contains("used of 16.0 MiB"), "{text}");

    if brim {
        // Filled to the brim, PostgreSQL cannot write its WAL and stops (it
        // may have stopped already); it cannot start until the quota is
        // raised, and says so.
        let mount = shown["mount_path"].as_str().expect("mount").to_owned();
        let dd = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={mount}/filler"),
                "bs=1M",
                "count=64",
            ])
            .output()
            .expect("dd runs");
        assert!(!dd.status.success(), "the quota stops dd too");
        let err = s
            .try_vdb_sql("small", "INSERT INTO t VALUES (0)")
            .expect_err("a full VDB cannot commit");
        assert!(
            disk_full(&err) || err.contains("connection to server"),
            "{err}"
        );
        s.pgvirt.ok(&["vdb", "stop", "small"]);
        let err = s.pgvirt.fails(&["vdb", "start", "small"]);
        assert!(
            err.contains("VDB small has used its quota")
                && err.contains("pgvirt vdb quota small SIZE"),
            "{err}"
        );
    }
    let raised = s.pgvirt.json(&["vdb", "quota", "small", "256M"]);
    assert_eq!(
        raised["quota"]["bytes"],
        json!(256 * 1024 * 1024),
        "{raised}"
    );
    s.pgvirt.ok(&["vdb", "start", "small"]);
    s.vdb_sql("small", FILL);
    assert_eq!(s.vdb_sql("small", "SELECT count(*) FROM fill"), "250000");

    // A quota below what the VDB holds is refused; a refresh is a fresh
    // clone under the VDB's quota.
    let err = s.pgvirt.fails(&["vdb", "quota", "small", "16M"]);
    assert!(
        err.contains("already holds") && err.contains("refresh"),
        "{err}"
    );
    s.pgvirt.ok(&["vdb", "refresh", "small"]);
    let shown = s.pgvirt.json(&["vdb", "show", "small"]);
    assert_eq!(shown["quota_bytes"], json!(256 * 1024 * 1024), "{shown}");
    s.pgvirt.ok(&["vdb", "quota", "small", "16M"]);
    assert_eq!(s.vdb_sql("small", "SELECT count(*) FROM t"), "10001");
    let err = s.try_vdb_sql("small", FILL).expect_err("limited again");
    assert_full(&err);
    s.pgvirt.ok(&["vdb", "quota", "small", "--none"]);
    let shown = s.pgvirt.json(&["vdb", "show", "small"]);
    assert_eq!(shown["quota_bytes"], json!(null), "{shown}");
    s.pgvirt.ok(&["vdb", "start", "small"]);
    s.vdb_sql("small", FILL);
    s.assert_whole("after writing past a quota");
}

#[test]
fn a_vdb_past_its_quota_fails_to_write_on_btrfs() {
    quota_holds("btrfs", true);
}

#[test]
fn a_vdb_past_its_quota_fails_to_write_on_zfs() {
    quota_holds("zfs", false);
}

#[test]
fn quotas_are_refused_where_the_pool_has_none() {
    let s = Stack::new();
    s.link("q");
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "v", "--from", "q", "--quota", "1G"]);
    assert!(
        err.contains("--quota") && err.contains("full copies"),
        "{err}"
    );
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "v", "--from", "q", "--quota", "2Q"]);
    assert!(err.contains("--quota"), "{err}");
    assert_eq!(s.pgvirt.json(&["vdb", "list"]), json!([]));
    s.pgvirt.ok(&["vdb", "provision", "v", "--from", "q"]);
    let err = s.pgvirt.fails(&["vdb", "quota", "v", "1G"]);
    assert!(err.contains("full copies"), "{err}");
    assert_eq!(
        s.pgvirt.json(&["vdb", "show", "v"])["quota_bytes"],
        json!(null)
    );
    s.assert_whole("after refused quotas");
}
