//! Logical replication ingestion: source checks named up front; link,
//! syncs under a write load, each VDB holding exactly the source's rows as
//! of the LSN its snapshot records (the origin's progress); VDBs detached
//! from the source; faults (staging killed, slot dropped, breaking DDL, a
//! wrong password, pgvirt killed during link); nothing left on the source
//! after a delete.

use std::path::Path;

use serde_json::{json, Value};

use super::sql;
use crate::support::{checksum_sql, free_port, lsn, Stack, Writer};

mod copy;
mod databases;
mod faults;
mod live;

const PASSWORD: &str = "logical-Secret-42";

/// Database `shop` with tables of its own and `w` for the writer;
/// role `repl` (REPLICATION, a scram password on 127.0.0.1).
fn shop_source(s: &Stack) {
    let src = s.source.port;
    s.source.psql(
        "postgres",
        &format!("CREATE ROLE shopowner NOLOGIN; CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}'; GRANT pg_read_all_data TO repl"),
    );
    s.source
        .psql("postgres", "CREATE DATABASE shop OWNER shopowner");
    let hba = s.source.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(
        &hba,
        format!("host all repl 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .expect("hba");
    s.source.psql("postgres", "SELECT pg_reload_conf()");
    sql(
        src,
        "shop",
        "SET ROLE shopowner;
         CREATE SCHEMA sales;
         CREATE TABLE public.items (id int PRIMARY KEY, name text);
         INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 300) g;
         CREATE TABLE sales.orders (id int PRIMARY KEY, item int REFERENCES public.items, qty int);
         INSERT INTO sales.orders SELECT g, 1 + g % 300, g % 7 FROM generate_series(1, 500) g;
         CREATE TABLE public.w (id bigint PRIMARY KEY, v text);
         CREATE TABLE public.tick (id serial PRIMARY KEY, t text);
         INSERT INTO public.tick (t) SELECT 'tick ' || g FROM generate_series(1, 20) g;
         CREATE TABLE public.nokey (x int); INSERT INTO public.nokey VALUES (1);",
    );
}

fn set_wal_level_logical(s: &Stack) {
    s.source
        .psql("postgres", "ALTER SYSTEM SET wal_level = logical");
    s.source.stop();
    s.source.restart();
}

fn params(dir: &Path, doc: Value) -> String {
    let path = dir.join(format!("params-{}.json", free_port()));
    std::fs::write(&path, doc.to_string()).expect("params");
    path.to_str().expect("utf-8").to_owned()
}

/// `dsource link` with the method; the password in the environment.
fn link(s: &Stack, name: &str, params: &str, password: &str) -> std::process::Output {
    let port = free_port().to_string();
    s.pgvirt
        .command(&[
            "dsource",
            "link",
            name,
            "--source",
            &s.source_id,
            "--method",
            "logical_replication",
            "--params",
            params,
            "--staging-port",
            &port,
            "--output",
            "json",
        ])
        .env("PGVIRT_REPLICATION_PASSWORD", password)
        .output()
        .expect("runs")
}

fn linked(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "link failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn sync(s: &Stack, name: &str, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec!["dsource", "sync", name, "--output", "json"];
    args.extend_from_slice(extra);
    let out = s.pgvirt.command(&args).output().expect("runs");
    if out.status.success() {
        // As `link` answers: {"snapshot": ...}.
        let snap: Value = serde_json::from_slice(&out.stdout).expect("json");
        Ok(json!({ "snapshot": snap }))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What of ours is on the source: slots and publications.
fn ours_on_source(s: &Stack) -> String {
    sql(
        s.source.port,
        "shop",
        "SELECT coalesce(string_agg(slot_name, ','), '') || '|' || (SELECT coalesce(string_agg(pubname, ','), '') FROM pg_publication)
           FROM pg_replication_slots",
    )
}

#[test]
fn logical_link_syncs_and_vdbs_hold_the_source_as_of_their_origin_lsn() {
    let s = Stack::new();
    shop_source(&s);
    let src = s.source.port;
    let dir = tempfile::tempdir().expect("tmp");
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "sync_workers": 2}}),
    );

    // Checks up front, naming what to change; nothing is made.
    let out = link(&s, "lr", &p, "unused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wal_level"), "{err}");
    set_wal_level_logical(&s);
    let out = link(&s, "lr", &p, "unused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("public.nokey"),
        "{err}"
    );
    let repl = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "user": "repl", "tables": ["public.items"]}}),
    );
    let out = link(&s, "lr", &repl, "wrong-password");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("wrong-password"), "{err}");
    assert_eq!(ours_on_source(&s), "|");
    sql(
        src,
        "shop",
        "ALTER TABLE public.nokey REPLICA IDENTITY FULL",
    );

    // Link under a write load.
    let mut writer = Writer::start(src, "shop", std::time::Duration::from_millis(5));
    let first = linked(&link(&s, "lr", &p, "unused"));
    let meta = &first["snapshot"]["metadata"];
    assert_eq!(
        meta["ingestion_method"],
        json!("logical_replication"),
        "{meta}"
    );
    assert_eq!(meta["provisionable"], json!(true), "{meta}");
    assert_eq!(meta["logical"]["publication_created"], json!(true));
    let on_source = ours_on_source(&s);
    assert_eq!(on_source, "pgvirt_lr|pgvirt_lr", "{on_source}");

    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = sync(&s, "lr", &[]).expect("sync");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let third = sync(&s, "lr", &[]).expect("sync");
    let shown = s.pgvirt.json(&["dsource", "show", "lr"]);
    let logical = &shown["replication"]["logical"];
    assert!(logical["remote_lsn"].is_string(), "{shown}");
    assert!(logical["source_lsn"].is_string(), "{shown}");
    assert!(logical["lag_bytes"].is_i64(), "{shown}");
    assert!(logical["lag_seconds"].is_number(), "{shown}");
    assert!(
        logical["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .all(|t| t["state"] == json!("ready")),
        "{shown}"
    );
    assert_eq!(
        logical["tables"].as_array().expect("tables").len(),
        5,
        "{shown}"
    );
    for (vdb, snap) in [("lr1", &first), ("lr2", &second), ("lr3", &third)] {
        let id = snap["snapshot"]["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| snap["snapshot"]["id"].to_string());
        provision(&s, vdb, &format!("lr@{id}"));
    }
    let writer_log = writer.log();
    writer.stop();
    for (vdb, snap) in [("lr1", &first), ("lr2", &second), ("lr3", &third)] {
        let meta = &snap["snapshot"]["metadata"];
        let at = lsn(meta["source_lsn"].as_str().expect("source_lsn"));
        let n = writer_log
            .iter()
            .find(|(_, l)| *l >= at)
            .map(|(i, _)| *i)
            .expect("in the log");
        let got = vdb_shop(
            &s,
            vdb,
            "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM w",
        );
        assert_eq!(got, format!("{n} {n}"), "VDB {vdb} at {at:X}");
        assert_eq!(
            vdb_shop(&s, vdb, &checksum_sql("sales.orders")),
            sql(src, "shop", &checksum_sql("sales.orders"))
        );
        // Detached from the source, read-write.
        assert_eq!(
            vdb_shop(&s, vdb, "SELECT count(*) FROM pg_subscription"),
            "0"
        );
        vdb_shop(&s, vdb, "INSERT INTO public.items VALUES (100000, 'vdb')");
        // Sequences come along: a VDB's next id is past the source's.
        vdb_shop(&s, vdb, "INSERT INTO public.tick (t) VALUES ('vdb')");
    }
    assert!(n_rows(&s, "lr1") <= n_rows(&s, "lr2"));
    // The source's slot is unaffected by the VDBs: staging still applies.
    sql(
        src,
        "shop",
        "INSERT INTO public.items VALUES (5000, 'after')",
    );
    let fourth = sync(&s, "lr", &[]).expect("sync");
    assert!(fourth["snapshot"]["metadata"]["source_lsn"].is_string());
    assert!(
        fourth["snapshot"]["metadata"]["apply_paused_seconds"].as_f64() > Some(0.0),
        "{fourth}"
    );
    assert_eq!(
        sql(
            src,
            "shop",
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgvirt_lr'"
        ),
        "t"
    );

    // No moment between snapshots for this method.
    let err = s.pgvirt.fails(&[
        "vdb",
        "provision",
        "moment",
        "--from",
        "lr",
        "--at-lsn",
        "0/1",
    ]);
    assert!(
        err.contains("not available for the logical_replication method"),
        "{err}"
    );

    s.pgvirt.ok(&["dsource", "delete", "lr", "--with-vdbs"]);
    assert_eq!(ours_on_source(&s), "|");
}

fn n_rows(s: &Stack, vdb: &str) -> i64 {
    vdb_shop(s, vdb, "SELECT count(*) FROM w")
        .parse()
        .expect("count")
}

/// Provisions VDB `vdb` from `from` on a port of its own (tests running
/// side by side would pick the same next port).
fn provision(s: &Stack, vdb: &str, from: &str) {
    let port = free_port().to_string();
    s.pgvirt
        .ok(&["vdb", "provision", vdb, "--from", from, "--port", &port]);
}

/// SQL in database shop of a VDB.
fn vdb_shop(s: &Stack, vdb: &str, query: &str) -> String {
    vdb_sql(s, vdb, "shop", query)
}

/// SQL in database `db` of a VDB.
fn vdb_sql(s: &Stack, vdb: &str, db: &str, query: &str) -> String {
    let v = s.pgvirt.json(&["vdb", "show", vdb]);
    let out = crate::support::run_ok(
        crate::support::as_pg_user(Path::new(crate::support::PG_BIN).join("psql"))
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

/// SQL in database shop of the staging cluster of a mount (its socket in
/// `pgvirt/`).
fn staging_shop(mount: &Path, port: &str, query: &str) -> String {
    super::pg(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-h",
            mount.join("pgvirt").to_str().expect("utf-8"),
            "-p",
            port,
            "-U",
            "postgres",
            "-d",
            "shop",
            "-c",
            query,
        ],
    )
}

/// Kills the staging postmaster of a mount with SIGKILL.
fn kill_staging(mount: &Path) {
    let pid = std::fs::read_to_string(mount.join("data/postmaster.pid")).expect("postmaster.pid");
    let pid: i32 = pid
        .lines()
        .next()
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    crate::support::run_ok(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]));
}

#[test]
fn logical_with_a_password_and_a_named_publication_keeps_secrets_out_and_disable_cleans_the_source()
{
    let s = Stack::new();
    shop_source(&s);
    set_wal_level_logical(&s);
    let src = s.source.port;
    sql(
        src,
        "shop",
        "CREATE PUBLICATION userpub FOR TABLE public.items, sales.orders",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "user": "repl", "publication": "userpub", "sync_workers": 1}}),
    );
    let first = linked(&link(&s, "lp", &p, PASSWORD));
    let meta = &first["snapshot"]["metadata"];
    assert_eq!(
        meta["logical"]["publication_created"],
        json!(false),
        "{meta}"
    );
    assert_eq!(ours_on_source(&s), "pgvirt_lp|userpub");
    let mount = super::mount_of(&first);

    // The subscription names a passfile (0600, outside the mount); the
    // password is nowhere in the mount, so in no snapshot or clone.
    let port = first["dsource"]["parameters"]["staging_port"].to_string();
    let conninfo = staging_shop(&mount, &port, "SELECT subconninfo FROM pg_subscription");
    assert!(conninfo.contains("passfile="), "{conninfo}");
    assert!(!conninfo.contains(PASSWORD), "{conninfo}");
    let found = crate::support::run_ok(
        std::process::Command::new("bash")
            .arg("-c")
            .arg("grep -rl -- \"$2\" \"$1\" 2>/dev/null | head -n 1; stat -c %a ~postgres/.pgvirt/*/dsource-lp/pgpass")
            .arg("-")
            .arg(&mount)
            .arg(PASSWORD),
    );
    assert_eq!(String::from_utf8_lossy(&found.stdout).trim(), "600");
    let shown = s.pgvirt.json(&["dsource", "show", "lp"]);
    assert!(!shown.to_string().contains(PASSWORD));

    // Rows flow; a VDB holds them.
    sql(
        src,
        "shop",
        "INSERT INTO public.items VALUES (777, 'seven')",
    );
    sync(&s, "lp", &[]).expect("sync");
    provision(&s, "p1", "lp");
    assert_eq!(
        vdb_shop(&s, "p1", "SELECT name FROM public.items WHERE id = 777"),
        "seven"
    );

    // The password changed on the source: a clear error, without it.
    sql(
        src,
        "postgres",
        "ALTER ROLE repl PASSWORD 'changed-Secret-1'",
    );
    // The apply's connection goes too: it must reconnect, with the passfile.
    sql(
        src,
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'repl'",
    );
    let err = sync(&s, "lp", &[]).expect_err("the old password is refused");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains(PASSWORD) && !err.contains("changed-Secret-1"),
        "{err}"
    );
    // Handing it over: a password the source refuses changes nothing and
    // is not shown; the right one is sealed, and staging applies again
    // with it before any sync.
    let hand_over = |pw: &str| {
        s.pgvirt
            .command(&["dsource", "password", "lp"])
            .env("PGVIRT_REPLICATION_PASSWORD", pw)
            .output()
            .expect("runs")
    };
    let out = hand_over("not-it-9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("not-it-9"), "{err}");
    let kept = crate::support::run_ok(
        std::process::Command::new("bash")
            .arg("-c")
            .arg("cat ~postgres/.pgvirt/*/dsource-lp/pgpass | grep -c -- not-it-9 || true"),
    );
    assert_eq!(String::from_utf8_lossy(&kept.stdout).trim(), "0");
    let out = hand_over("changed-Secret-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sql(
        src,
        "shop",
        "INSERT INTO public.items VALUES (778, 'eight')",
    );
    let on_staging = || {
        staging_shop(
            &mount,
            &port,
            "SELECT count(*) FROM public.items WHERE id = 778",
        )
    };
    let started = std::time::Instant::now();
    while on_staging() != "1" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "staging never applied the row with the new password"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let leaks = crate::support::run_ok(
        std::process::Command::new("bash")
            .arg("-c")
            .arg("grep -rl -- \"$3\" \"$1\" \"$2\" 2>/dev/null | head -n 1; grep -c -- \"$3\" ~postgres/.pgvirt/*/dsource-lp/pgpass")
            .arg("-")
            .arg(&mount)
            .arg(s.pgvirt.dir())
            .arg("changed-Secret-1"),
    );
    assert_eq!(
        String::from_utf8_lossy(&leaks.stdout).trim(),
        "1",
        "the new password only in staging's passfile"
    );
    assert!(!s
        .pgvirt
        .json(&["dsource", "show", "lp"])
        .to_string()
        .contains("changed-Secret-1"));
    sync(&s, "lp", &[]).expect("sync with the new password");

    // Disable drops the subscription and the slot, not the user's
    // publication; after enable, a resync subscribes again.
    s.pgvirt.ok(&["dsource", "disable", "lp"]);
    assert_eq!(ours_on_source(&s), "|userpub");
    s.pgvirt.ok(&["dsource", "enable", "lp"]);
    let err = sync(&s, "lp", &[]).expect_err("no subscription");
    assert!(err.contains("needs a resync"), "{err}");
    sync(&s, "lp", &["--resync"]).expect("resync");
    assert_eq!(ours_on_source(&s), "pgvirt_lp|userpub");

    // Staging gone (killed, its files removed): a delete still drops the
    // slot, from the source.
    kill_staging(&mount);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::remove_dir_all(mount.join("data")).expect("rm data");
    std::fs::remove_dir_all(mount.join("pgvirt")).expect("rm pgvirt");
    s.pgvirt.ok(&["dsource", "delete", "lp", "--with-vdbs"]);
    assert_eq!(ours_on_source(&s), "|userpub");
}
