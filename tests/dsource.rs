//! dSources against real source clusters: link under write load, sync,
//! clones that hold exactly the source's rows as of the snapshot's LSN, and
//! each fault a new user meets leaving nothing behind.

use serde_json::json;

use crate::support::{free_port, Stack};

mod load;

/// What must be true after a failed link: nothing of it anywhere.
fn nothing_left(s: &Stack, staging_port: u16) {
    assert_eq!(s.pgvirt.json(&["dsource", "list"]), json!([]));
    assert_eq!(s.pgvirt.json(&["pool", "list"]), json!([]));
    s.pgvirt.ok(&["pool", "check"]);
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", staging_port)).is_ok(),
        "no staging process"
    );
    assert_eq!(
        s.source
            .psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "no slot"
    );
}

#[test]
fn an_unreachable_source_is_reported_and_leaves_nothing() {
    let s = Stack::new();
    let staging = free_port();
    let dead = free_port().to_string();
    let err = s.pgvirt.fails(&[
        "dsource",
        "link",
        "x",
        "--source",
        &s.source_id,
        "--source-port",
        &dead,
        "--staging-port",
        &staging.to_string(),
    ]);
    assert!(err.contains("cannot connect"), "{err}");
    nothing_left(&s, staging);
}

#[test]
fn a_wrong_password_is_reported_never_echoed_and_leaves_nothing() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE ROLE repl LOGIN REPLICATION PASSWORD 'right-Secret-42'; SELECT pg_reload_conf();",
    );
    // Password authentication for repl, ahead of the trust lines.
    let hba = s.source.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(&hba, format!("host all repl 127.0.0.1/32 scram-sha-256\nhost replication repl 127.0.0.1/32 scram-sha-256\n{old}")).expect("hba");
    s.source.psql("postgres", "SELECT pg_reload_conf()");

    let staging = free_port();
    let port = staging.to_string();
    let args = [
        "dsource",
        "link",
        "secure",
        "--source",
        &s.source_id,
        "--replication-user",
        "repl",
        "--staging-port",
        &port,
    ];
    let out = s
        .pgvirt
        .command(&args)
        .env("PGVIRT_REPLICATION_PASSWORD", "wrong-Secret-13")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("authentication failed"), "{all}");
    assert!(
        !all.contains("wrong-Secret-13"),
        "the password is never echoed: {all}"
    );
    nothing_left(&s, staging);

    // With the right password it links; the secret stays out of argv,
    // output, configuration, and files others can read.
    let out = s
        .pgvirt
        .command(&args)
        .env("PGVIRT_REPLICATION_PASSWORD", "right-Secret-42")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("right-Secret-42"), "{all}");
    let shown = s.pgvirt.json(&["dsource", "show", "secure"]);
    assert_eq!(
        shown["dsource"]["parameters"]["source"]["replication_password"],
        json!("********")
    );
    assert_eq!(shown["replication"]["connected"], json!(true), "{shown}");
    let mount = shown["dsource"]["mount_path"]
        .as_str()
        .expect("mount")
        .to_owned();
    for conf in [
        "data/postgresql.conf",
        "data/postgresql.auto.conf",
        "data/pgvirt.conf",
    ] {
        let text = std::fs::read_to_string(format!("{mount}/{conf}")).unwrap_or_default();
        assert!(
            !text.contains("right-Secret-42"),
            "{conf} holds the password"
        );
    }
    // The passfile is outside the staging dataset (so in no snapshot), in
    // the environment's scratch directory, private to its user.
    assert!(!std::path::Path::new(&format!("{mount}/pgvirt/pgpass")).exists());
    let scratch = s.pgvirt.json(&["env", "list"])[0]["scratch"]
        .as_str()
        .expect("scratch")
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{scratch}/dsource-secure/pgpass"))
        .expect("passfile in scratch")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the passfile is private");
    for p in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains("right-Secret-42"),
                "a process has the password in argv"
            );
        }
    }
}

#[test]
fn a_taken_staging_port_is_refused_before_anything_is_made() {
    let s = Stack::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let err = s.pgvirt.fails(&[
        "dsource",
        "link",
        "x",
        "--source",
        &s.source_id,
        "--staging-port",
        &port.to_string(),
    ]);
    assert!(
        err.contains(&format!("staging port {port} is already in use")),
        "{err}"
    );
    assert_eq!(s.pgvirt.json(&["dsource", "list"]), json!([]));
    assert_eq!(s.pgvirt.json(&["pool", "list"]), json!([]));
}

#[test]
fn pg_basebackup_killed_midway_leaves_nothing() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 400000) g",
    );
    let params = s.pgvirt.dir().join("slow.json");
    std::fs::write(&params, r#"{"pg_basebackup": {"max_rate": "2M"}}"#).expect("params");
    let staging = free_port();
    let link = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            "slow",
            "--source",
            &s.source_id,
            "--staging-port",
            &staging.to_string(),
            "--params",
            params.to_str().expect("utf-8"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Find the pg_basebackup it started and kill it.
    let mut killed = false;
    for _ in 0..200 {
        for p in std::fs::read_dir("/proc").expect("proc").flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains("pg_basebackup") && text.contains("dsource-slow") {
                let pid: i32 = p.file_name().to_string_lossy().parse().expect("pid");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .expect("kill");
                killed = true;
            }
        }
        if killed {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(killed, "pg_basebackup was never seen running");
    let out = link.wait_with_output().expect("link ends");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_basebackup failed"), "{err}");
    nothing_left(&s, staging);
}

#[test]
fn staging_follows_a_source_restart_and_a_stopped_source_fails_the_sync_saying_so() {
    let s = Stack::new();
    s.source.psql("postgres", "CREATE TABLE r (id int)");
    s.link("follow");
    s.source.stop();
    let err = s.pgvirt.fails(&["dsource", "sync", "follow"]);
    assert!(
        err.contains("streaming replication from") && err.contains("has stopped"),
        "{err}"
    );
    s.source.restart();
    s.source
        .psql("postgres", "INSERT INTO r SELECT generate_series(1, 10)");
    let snap = s.pgvirt.json(&["dsource", "sync", "follow"]);
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "after",
        "--from",
        &format!("follow@{}", snap["id"]),
    ]);
    assert_eq!(s.vdb_sql("after", "SELECT count(*) FROM r"), "10");
}

#[test]
fn resync_opens_a_new_timeflow_and_keeps_older_snapshots() {
    let s = Stack::new();
    let first = s.link("again")["snapshot"].clone();
    let resynced = s.pgvirt.json(&["dsource", "sync", "again", "--resync"]);
    assert_ne!(first["timeflow_id"], resynced["timeflow_id"]);
    let list = s.pgvirt.json(&["snapshot", "list", "--dsource", "again"]);
    assert_eq!(list.as_array().expect("list").len(), 2, "{list}");
    // Both stay provisionable.
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "old",
        "--from",
        &format!("again@{}", first["id"]),
    ]);
    s.pgvirt.ok(&["vdb", "provision", "new", "--from", "again"]);
    // Disable stops staging; enable brings it back.
    s.pgvirt.ok(&["dsource", "disable", "again"]);
    assert_eq!(
        s.pgvirt.json(&["dsource", "show", "again"])["status"],
        json!("INACTIVE")
    );
    s.pgvirt.ok(&["dsource", "enable", "again"]);
    assert_eq!(
        s.pgvirt.json(&["dsource", "show", "again"])["status"],
        json!("ACTIVE")
    );
}

/// A base backup of the source taken by "the customer", as the postgres user.
fn customer_backup(s: &Stack, dir: &std::path::Path) {
    crate::support::run_ok(
        crate::support::as_pg_user(
            std::path::Path::new(crate::support::PG_BIN).join("pg_basebackup"),
        )
        .arg("-D")
        .arg(dir)
        .args([
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &s.source.port.to_string(),
            "-U",
            "postgres",
        ]),
    );
}

#[test]
fn a_customer_backup_then_streaming() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE c (id int); INSERT INTO c SELECT generate_series(1, 100)",
    );
    let backups = crate::support::PgDir::new("pgvirt-backup-");
    let backup = backups.path().join("base");
    customer_backup(&s, &backup);
    // Written after the backup: streaming brings it.
    s.source
        .psql("postgres", "INSERT INTO c SELECT generate_series(101, 150)");
    let port = free_port().to_string();
    let linked = s.pgvirt.json(&[
        "dsource",
        "link",
        "cust",
        "--source",
        &s.source_id,
        "--method",
        "backup_streaming",
        "--backup-path",
        backup.to_str().expect("utf-8"),
        "--staging-port",
        &port,
    ]);
    assert_eq!(
        linked["snapshot"]["metadata"]["ingestion_method"],
        json!("backup_streaming")
    );
    s.pgvirt
        .ok(&["vdb", "provision", "fromcust", "--from", "cust"]);
    assert_eq!(s.vdb_sql("fromcust", "SELECT count(*) FROM c"), "150");
    assert_eq!(
        s.pgvirt.json(&["dsource", "show", "cust"])["replication"]["connected"],
        json!(true)
    );
}

#[test]
fn a_customer_backup_then_wal_log_shipping() {
    let s = Stack::new();
    let dirs = crate::support::PgDir::new("pgvirt-archive-");
    let archive = dirs.path().join("wal");
    std::fs::create_dir(&archive).expect("archive");
    let pg = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    nix::unistd::chown(&archive, Some(pg.uid), Some(pg.gid)).expect("chown");
    s.source.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = 'cp %p {}/%f'",
            archive.display()
        ),
    );
    s.source
        .psql("postgres", "ALTER SYSTEM SET archive_mode = on");
    s.source.stop();
    s.source.restart();
    s.source.psql(
        "postgres",
        "CREATE TABLE l (id int); INSERT INTO l SELECT generate_series(1, 100)",
    );
    let backup = dirs.path().join("base");
    customer_backup(&s, &backup);
    // Separate statements: a switch inside the inserting transaction
    // would come before its commit record.
    s.source
        .psql("postgres", "INSERT INTO l SELECT generate_series(101, 120)");
    s.source.psql("postgres", "SELECT pg_switch_wal()");
    // Wait until the archiver has shipped that segment.
    for _ in 0..100 {
        if s.source.psql("postgres", "SELECT last_archived_wal IS NOT NULL AND last_failed_wal IS NULL FROM pg_stat_archiver") == "t"
            && std::fs::read_dir(&archive).expect("archive").count() >= 2
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let port = free_port().to_string();
    let linked = s.pgvirt.json(&[
        "dsource",
        "link",
        "ship",
        "--source",
        &s.source_id,
        "--method",
        "backup_log_shipping",
        "--backup-path",
        backup.to_str().expect("utf-8"),
        "--wal-archive-path",
        archive.to_str().expect("utf-8"),
        "--staging-port",
        &port,
    ]);
    assert_eq!(
        linked["snapshot"]["metadata"]["ingestion_method"],
        json!("backup_log_shipping")
    );
    let shown = s.pgvirt.json(&["dsource", "show", "ship"]);
    assert_eq!(shown["status"], json!("ACTIVE"));
    // Staging restores what reaches the archive; a later sync sees it.
    // Separate statements: a switch inside the inserting transaction
    // would come before its commit record.
    s.source
        .psql("postgres", "INSERT INTO l SELECT generate_series(121, 130)");
    s.source.psql("postgres", "SELECT pg_switch_wal()");
    let mut got = String::new();
    for attempt in 0..20 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let snap = s.pgvirt.json(&["dsource", "sync", "ship"]);
        let name = format!("ship{attempt}");
        s.pgvirt.ok(&[
            "vdb",
            "provision",
            &name,
            "--from",
            &format!("ship@{}", snap["id"]),
        ]);
        got = s.vdb_sql(&name, "SELECT count(*) FROM l");
        s.pgvirt.ok(&["vdb", "delete", &name]);
        if got == "130" {
            break;
        }
    }
    assert_eq!(
        got, "130",
        "the archived WAL reached staging and a snapshot"
    );
}
