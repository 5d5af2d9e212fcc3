//! Exports under a random load (composite, text and uuid keys, key
//! changes, a truncate), with writers in flight, and to a VDB.

use serde_json::json;

use super::{leftovers, Setup, COMPARE, LOAD, TABLES};
use crate::support::Stack;

#[test]
fn tables_with_composite_text_and_uuid_keys_stay_equal_under_random_load() {
    let s = Setup::new(1);
    s.source.psql("postgres", LOAD);
    s.add("ref");
    let ddl = s.pgvirt.ok(&["export", "ddl", "ref"]);
    assert!(
        ddl.contains("CREATE TRIGGER") && ddl.contains("AFTER TRUNCATE"),
        "{ddl}"
    );
    s.pgvirt.ok(&["export", "install", "ref"]);
    // Installing again changes nothing.
    s.pgvirt.ok(&["export", "install", "ref"]);
    let first = s.pgvirt.json(&["export", "run", "ref"]);
    assert_eq!(
        first["targets"][0]["tables"][0]["full"],
        json!(true),
        "{first}"
    );
    s.assert_equal("after the first export (whole tables)");
    for round in 1..=6 {
        s.source.psql("postgres", LOAD);
        if round == 3 {
            s.source.psql(
                "postgres",
                "TRUNCATE ex.txt; INSERT INTO ex.txt SELECT 'after-truncate-' || i, i, 'x' FROM generate_series(1, 25) i;",
            );
        }
        let status = s.pgvirt.json(&["export", "status", "ref"]);
        let waiting: u64 = status
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| l["changes_waiting"].as_u64().expect("count"))
            .sum();
        assert!(waiting > 0, "round {round}: no changes waiting: {status}");
        let run = s.pgvirt.json(&["export", "run", "ref"]);
        if round == 3 {
            assert_eq!(run["targets"][0]["tables"][1]["full"], json!(true), "{run}");
        } else {
            assert_eq!(
                run["targets"][0]["tables"][0]["full"],
                json!(false),
                "{run}"
            );
        }
        s.assert_equal(&format!("after export round {round}"));
    }
    // Everything applied is purged; the status says so.
    let status = s.pgvirt.json(&["export", "status", "ref"]);
    for line in status.as_array().expect("lines") {
        assert_eq!(line["changes_waiting"], json!(0), "{status}");
        assert!(line["rows_shipped"].as_u64().expect("rows") > 0, "{status}");
        assert!(line["last_export_at"].is_i64(), "{status}");
    }
    let kept = s.source.psql(
        "postgres",
        "SELECT count(*) FROM pgvirt_export_ref.changes_1",
    );
    assert_eq!(kept, "0", "applied changes are purged");
    // The target's origin holds the export's high-water mark.
    let origin = s.targets[0].psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_origin_status s JOIN pg_replication_origin o ON o.roident = s.local_id WHERE o.roname LIKE 'pgvirt_export.ref.%' AND s.remote_lsn > '0/1'",
    );
    assert_eq!(origin, "1");
    // A reset ships whole tables again, and they are still equal.
    s.pgvirt.ok(&["export", "reset", "ref"]);
    s.targets[0].psql(
        "postgres",
        "INSERT INTO ex.txt (code, v) VALUES ('stray', 1)",
    );
    let run = s.pgvirt.json(&["export", "run", "ref"]);
    assert_eq!(run["targets"][0]["tables"][1]["full"], json!(true), "{run}");
    s.assert_equal("after a reset");

    s.pgvirt.ok(&["export", "remove", "ref"]);
    let (on_source, on_target) = leftovers(&s.source, &s.targets[0], "ref");
    assert_eq!(
        on_source, "0 0 0 0",
        "triggers, functions, tables, schema left"
    );
    assert_eq!(on_target, "0", "origins left on the target");
    let listed = s.pgvirt.json(&["export", "list"]);
    assert_eq!(listed, json!([]));
}

/// Writers in flight while exports run: transactions that hold ordering
/// numbers for a while (a sleep between their statements) commit after
/// later ones. No change may be skipped: after the writers stop, one more
/// export makes the target equal.
#[test]
fn changes_committed_while_exports_run_are_never_skipped() {
    let s = Setup::new(1);
    s.add("busy");
    s.pgvirt.ok(&["export", "install", "busy"]);
    s.pgvirt.ok(&["export", "run", "busy"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("load.sql");
    std::fs::write(
        &script,
        "\\set k random(1, 3000)\n\\set d random(1, 3000)\n\\set s random(0, 30)\n\
         BEGIN;\n\
         INSERT INTO ex.txt VALUES ('p' || :k, :k, 'x') ON CONFLICT (code) DO UPDATE SET v = ex.txt.v + 1;\n\
         SELECT pg_sleep(:s / 1000.0);\n\
         DELETE FROM ex.txt WHERE code = 'p' || :d;\n\
         UPDATE ex.comp SET payload = md5(random()::text) WHERE n % 50 = :s;\n\
         INSERT INTO ex.comp VALUES ('eu', nextval('ex.ids'), 'y', 1);\n\
         COMMIT;\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let pgbench = crate::support::as_pg_user(format!("{}/pgbench", crate::support::PG_BIN))
        .args(["-n", "-c", "4", "-j", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg("-h")
        .arg(s.source.socket_dir())
        .args(["-p", &s.source.port.to_string(), "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pgbench starts");
    let started = std::time::Instant::now();
    let mut runs = 0;
    while started.elapsed() < std::time::Duration::from_secs(7) {
        s.pgvirt.ok(&["export", "run", "busy"]);
        runs += 1;
    }
    let out = pgbench.wait_with_output().expect("pgbench ends");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(runs >= 2, "only {runs} exports ran under load");
    s.pgvirt.ok(&["export", "run", "busy"]);
    s.assert_equal("after exports under a concurrent load");
}

#[test]
fn a_vdb_target_keeps_its_tables_fresh_without_a_refresh() {
    let s = Stack::new();
    s.source.psql("postgres", TABLES);
    s.source.psql("postgres", LOAD);
    // An empty VDB given the tables (provisioning from a snapshot is the
    // VDB tests' business; here the VDB is the target).
    s.pgvirt.ok(&["vdb", "create-empty", "dev"]);
    s.vdb_sql("dev", TABLES);
    // The VDB's own writes elsewhere stay; the exported tables follow the source.
    s.vdb_sql(
        "dev",
        "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)",
    );
    s.source.psql("postgres", LOAD);
    s.pgvirt.ok(&[
        "export",
        "add",
        "fresh",
        "--source",
        &s.source_id,
        "--tables",
        "ex.comp,ex.txt,ex.uu",
        "--target",
        "dev",
    ]);
    s.pgvirt.ok(&["export", "install", "fresh"]);
    for round in 0..3 {
        s.pgvirt.ok(&["export", "run", "fresh"]);
        for (table, query) in COMPARE {
            assert_eq!(
                s.vdb_sql("dev", query),
                s.source.psql("postgres", query),
                "round {round}: {table} on the VDB"
            );
        }
        s.source.psql("postgres", LOAD);
    }
    assert_eq!(s.vdb_sql("dev", "SELECT count(*) FROM mine"), "1");
    s.pgvirt.ok(&["export", "remove", "fresh"]);
    assert_eq!(
        s.vdb_sql(
            "dev",
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgvirt_export.%'"
        ),
        "0"
    );
    // An export whose VDB was deleted is still removed from the source.
    s.pgvirt.ok(&[
        "export",
        "add",
        "orphan",
        "--source",
        &s.source_id,
        "--tables",
        "ex.txt",
        "--target",
        "dev",
    ]);
    s.pgvirt.ok(&["export", "install", "orphan"]);
    s.pgvirt.ok(&["export", "run", "orphan"]);
    s.pgvirt.ok(&["vdb", "delete", "dev"]);
    s.pgvirt.fails(&["export", "run", "orphan"]);
    s.pgvirt.ok(&["export", "remove", "orphan"]);
    assert_eq!(
        s.source.psql(
            "postgres",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgvirt_export%'"
        ),
        "0"
    );
}
