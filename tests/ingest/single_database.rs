//! Single-database ingestion by parallel pg_dump and pg_restore: roles,
//! filters, a fresh dump at each sync, no dump nor password left in any
//! snapshot, and bad input named before anything is made.

use std::path::Path;

use serde_json::json;

use super::{mount_of, snapshots, sql};
use crate::support::{as_pg_user, checksum_sql, free_port, run_ok, Stack, PG_BIN};

const PASSWORD: &str = "dump-Secret-77";

/// A source database `shop` owned by role `shopowner`, read by `dumper`
/// (scram password on 127.0.0.1), with tables to keep, to skip, and one to
/// keep without rows.
fn shop_source(s: &Stack) {
    let src = s.source.port;
    s.source.psql(
        "postgres",
        &format!(
            "CREATE ROLE shopowner NOLOGIN; CREATE ROLE dumper LOGIN PASSWORD '{PASSWORD}'; GRANT pg_read_all_data TO dumper"
        ),
    );
    s.source
        .psql("postgres", "CREATE DATABASE shop OWNER shopowner");
    let hba = s.source.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(
        &hba,
        format!("host all dumper 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .expect("hba");
    s.source.psql("postgres", "SELECT pg_reload_conf()");
    sql(
        src,
        "shop",
        "SET ROLE shopowner;
         CREATE SCHEMA sales;
         CREATE TABLE public.items (id int PRIMARY KEY, name text);
         INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 400) g;
         CREATE TABLE sales.orders (id int PRIMARY KEY, item int REFERENCES public.items, qty int);
         INSERT INTO sales.orders SELECT g, 1 + g % 400, g % 7 FROM generate_series(1, 900) g;
         CREATE TABLE public.audit (at timestamptz DEFAULT now(), what text);
         INSERT INTO public.audit (what) SELECT 'event ' || g FROM generate_series(1, 50) g;
         CREATE TABLE public.scratch (x int); INSERT INTO public.scratch VALUES (1);",
    );
}

fn params_file(dir: &Path, doc: serde_json::Value) -> String {
    let path = dir.join("params.json");
    std::fs::write(&path, doc.to_string()).expect("params");
    path.to_str().expect("utf-8").to_owned()
}

/// SQL in a database of a VDB.
fn vdb_db_sql(s: &Stack, vdb: &str, db: &str, query: &str) -> String {
    let v = s.pgvirt.json(&["vdb", "show", vdb]);
    let out = run_ok(
        as_pg_user(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(
                v["source_config"]["socket_directory"]
                    .as_str()
                    .expect("socket"),
            )
            .args([
                "-p",
                &v["port"].to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                query,
            ]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn link_args<'a>(s: &'a Stack, name: &'a str, params: &'a str, port: &'a str) -> Vec<&'a str> {
    vec![
        "dsource",
        "link",
        name,
        "--source",
        &s.source_id,
        "--method",
        "single_database",
        "--params",
        params,
        "--staging-port",
        port,
    ]
}

#[test]
fn a_database_dumped_and_restored_in_parallel_then_a_fresh_dump_at_each_sync() {
    let s = Stack::new();
    shop_source(&s);
    let src = s.source.port;
    let dir = tempfile::tempdir().expect("tmp");
    let params = params_file(
        dir.path(),
        json!({"single_database": {
            "database": "shop", "user": "dumper", "dump_jobs": 2, "restore_jobs": 2,
            "exclude_tables": ["public.scratch"], "exclude_table_data": ["public.audit"]
        }}),
    );
    let port = free_port().to_string();
    let out = s
        .pgvirt
        .command(&link_args(&s, "shopdb", &params, &port))
        .args(["--output", "json"])
        .env("PGVIRT_REPLICATION_PASSWORD", PASSWORD)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "link failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let linked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let meta = &linked["snapshot"]["metadata"];
    assert_eq!(meta["ingestion_method"], json!("single_database"), "{meta}");
    assert_eq!(meta["provisionable"], json!(true));
    assert!(
        meta["databases"]
            .as_array()
            .expect("dbs")
            .contains(&json!("shop")),
        "{meta}"
    );
    let mount = mount_of(&linked);

    // Neither the dump nor the password is in the mount (so in no
    // snapshot), nor is the dump left in the scratch directory.
    let found = run_ok(std::process::Command::new("bash").arg("-c").arg(
        "find \"$1\" -name toc.dat | head -n 1; grep -rl -- \"$2\" \"$1\" 2>/dev/null | head -n 1",
    ).arg("-").arg(&mount).arg(PASSWORD));
    assert_eq!(
        String::from_utf8_lossy(&found.stdout).trim(),
        "",
        "dump or password in the mount"
    );
    let scratch = run_ok(
        std::process::Command::new("bash")
            .arg("-c")
            .arg("ls -d ~postgres/.pgvirt/*/dsource-shopdb/dump 2>/dev/null; true"),
    );
    assert_eq!(
        String::from_utf8_lossy(&scratch.stdout).trim(),
        "",
        "the dump is removed"
    );
    let shown = s.pgvirt.json(&["dsource", "show", "shopdb"]);
    assert_eq!(shown["ingestion_method"], json!("single_database"));
    assert!(!shown.to_string().contains(PASSWORD));
    assert!(
        shown["next"].as_str().expect("next").contains("fresh dump"),
        "{shown}"
    );

    s.pgvirt
        .ok(&["vdb", "provision", "shop1", "--from", "shopdb"]);
    for table in ["public.items", "sales.orders"] {
        assert_eq!(
            vdb_db_sql(&s, "shop1", "shop", &checksum_sql(table)),
            sql(src, "shop", &checksum_sql(table)),
            "{table}"
        );
    }
    assert_eq!(
        vdb_db_sql(&s, "shop1", "shop", "SELECT count(*) FROM public.audit"),
        "0"
    );
    assert_eq!(
        vdb_db_sql(
            &s,
            "shop1",
            "shop",
            "SELECT to_regclass('public.scratch') IS NULL"
        ),
        "t"
    );
    assert_eq!(
        vdb_db_sql(
            &s,
            "shop1",
            "shop",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"
        ),
        "shopowner",
        "the owning role came along"
    );
    assert_eq!(
        vdb_db_sql(
            &s,
            "shop1",
            "shop",
            "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'dumper'"
        ),
        "t",
        "no role password is copied"
    );

    // A write on the source; a sync takes a fresh dump; the older snapshot
    // keeps its contents.
    sql(
        src,
        "shop",
        "INSERT INTO public.items VALUES (401, 'new'); DELETE FROM sales.orders WHERE id <= 10",
    );
    let out = s
        .pgvirt
        .command(&["dsource", "sync", "shopdb", "--output", "json"])
        .env("PGVIRT_REPLICATION_PASSWORD", "not-used-by-sync")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshots(&s.pgvirt, "shopdb").len(), 2);
    s.pgvirt
        .ok(&["vdb", "provision", "shop2", "--from", "shopdb"]);
    assert_eq!(
        vdb_db_sql(&s, "shop2", "shop", "SELECT count(*) FROM public.items"),
        "401"
    );
    assert_eq!(
        vdb_db_sql(&s, "shop2", "shop", "SELECT count(*) FROM sales.orders"),
        "890"
    );
    assert_eq!(
        vdb_db_sql(&s, "shop1", "shop", "SELECT count(*) FROM public.items"),
        "400"
    );
    assert_eq!(
        vdb_db_sql(&s, "shop2", "shop", &checksum_sql("sales.orders")),
        sql(src, "shop", &checksum_sql("sales.orders"))
    );
    s.pgvirt.ok(&["dsource", "delete", "shopdb", "--with-vdbs"]);
}

#[test]
fn bad_single_database_input_is_named_before_anything_is_made() {
    let s = Stack::new();
    shop_source(&s);
    let dir = tempfile::tempdir().expect("tmp");
    let cases: Vec<(serde_json::Value, Option<&str>, Vec<&str>)> = vec![
        (
            json!({"single_database": {"database": "shop", "user": "dumper"}}),
            Some("wrong-Secret-13"),
            vec!["single_database/password", "authentication failed"],
        ),
        (
            json!({"single_database": {"database": "nosuchdb"}}),
            None,
            vec!["single_database/database", "\"nosuchdb\" does not exist"],
        ),
        (
            json!({"single_database": {"database": "shop", "dump_jobs": 0}}),
            None,
            vec!["/single_database/dump_jobs"],
        ),
        (
            json!({"single_database": {"database": "shop", "restore_jobs": 100}}),
            None,
            vec!["/single_database/restore_jobs"],
        ),
        (
            json!({"single_database": {"user": "dumper"}}),
            None,
            vec!["database"],
        ),
        (json!({}), None, vec!["single_database"]),
    ];
    for (doc, password, expect) in cases {
        let params = params_file(dir.path(), doc.clone());
        let port = free_port().to_string();
        let mut cmd = s.pgvirt.command(&link_args(&s, "bad", &params, &port));
        cmd.env_remove("PGVIRT_REPLICATION_PASSWORD");
        if let Some(pw) = password {
            cmd.env("PGVIRT_REPLICATION_PASSWORD", pw);
        }
        let out = cmd.output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{doc}: should fail");
        for e in &expect {
            assert!(err.contains(e), "{doc}: expected {e:?} in: {err}");
        }
        if let Some(pw) = password {
            assert!(!err.contains(pw), "the password is never echoed: {err}");
        }
        assert!(
            s.pgvirt
                .json(&["dsource", "list"])
                .as_array()
                .expect("list")
                .is_empty(),
            "{doc}: a dSource is left"
        );
        let left = std::fs::read_dir(s.pool.pool().join("mounts"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{doc}: a mount is left");
    }
    s.assert_whole("after refused links");
}

#[test]
fn a_sync_killed_during_the_restore_is_repaired_by_the_next_command() {
    let s = Stack::new();
    shop_source(&s);
    let src = s.source.port;
    // Enough rows that the restore runs for a moment.
    sql(
        src,
        "shop",
        "INSERT INTO public.items SELECT g, repeat('x', 200) FROM generate_series(1000, 300000) g",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let params = params_file(
        dir.path(),
        json!({"single_database": {"database": "shop", "user": "dumper"}}),
    );
    let port = free_port().to_string();
    let out = s
        .pgvirt
        .command(&link_args(&s, "killed", &params, &port))
        .env("PGVIRT_REPLICATION_PASSWORD", PASSWORD)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = s
        .pgvirt
        .command(&["dsource", "sync", "killed"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let busy = |what: &str| {
        crate::support::processes().into_iter().any(|(_, args, _)| {
            args.first().is_some_and(|a| a.ends_with(what))
                && args.iter().any(|a| a.contains("dsource-killed/dump"))
        })
    };
    let mut seen = false;
    for _ in 0..3000 {
        if busy("pg_restore") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(seen, "the sync never reached pg_restore");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The next ordinary command repairs: nothing of the cut-short ingest
    // runs on, and staging waits for the next sync.
    s.pgvirt.ok(&["dsource", "list"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!busy("pg_restore") && !busy("pg_dump"), "a restore runs on");
    let d = s.pgvirt.json(&["dsource", "show", "killed"]);
    assert_eq!(d["dsource"]["state"], json!("resync_needed"), "{d}");
    assert_eq!(
        d["status"],
        json!("INACTIVE"),
        "the half-restored staging is stopped: {d}"
    );
    s.pgvirt.ok(&["dsource", "sync", "killed"]);
    s.pgvirt.ok(&["vdb", "provision", "k1", "--from", "killed"]);
    assert_eq!(
        vdb_db_sql(&s, "k1", "shop", &checksum_sql("public.items")),
        sql(src, "shop", &checksum_sql("public.items"))
    );
}
