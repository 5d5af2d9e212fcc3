//! Staging push (seed 000): every rule as a new user meets it, with each
//! way the seed lists of loading staging that runs here.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::json;

use super::{mount_of, pg, snapshots, sql, user_start, user_stop};
use crate::support::{checksum_sql, free_port, Stack};

/// Links `name` by staging push and checks the empty start: `data/` empty,
/// 0700, the environment user's; the first snapshot not provisionable, a
/// VDB from it refused saying what to do; a sync refused while it waits.
pub fn link_empty(s: &Stack, name: &str) -> std::path::PathBuf {
    let port = free_port().to_string();
    let linked = s.pgvirt.json(&[
        "dsource",
        "link",
        name,
        "--source",
        &s.source_id,
        "--method",
        "staging_push",
        "--staging-port",
        &port,
    ]);
    let mount = mount_of(&linked);
    let data = mount.join("data");
    let meta = std::fs::metadata(&data).expect("data/ exists");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let pg_user = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    assert_eq!(meta.uid(), pg_user.uid.as_raw(), "data/ is the env user's");
    assert_eq!(
        std::fs::read_dir(&data).expect("read data/").count(),
        0,
        "data/ starts empty"
    );
    let first = &linked["snapshot"]["metadata"];
    assert_eq!(first["provisionable"], json!(false), "{first}");
    assert_eq!(first["ingestion_method"], json!("staging_push"));

    let refused = s
        .pgvirt
        .fails(&["vdb", "provision", &format!("{name}-v0"), "--from", name]);
    assert!(
        refused.contains("cannot be provisioned")
            && refused.contains("restore a backup into")
            && refused.contains(&format!("{}", data.display()))
            && refused.contains("stop the cluster")
            && refused.contains("pgvirt dsource sync"),
        "{refused}"
    );
    assert!(s
        .pgvirt
        .json(&["vdb", "list"])
        .as_array()
        .expect("list")
        .is_empty());

    let shown = s.pgvirt.json(&["dsource", "show", name]);
    assert_eq!(shown["ingestion_method"], json!("staging_push"));
    assert!(
        shown["next"]
            .as_str()
            .expect("next")
            .starts_with("waiting for data"),
        "{shown}"
    );
    let text = s.pgvirt.ok(&["dsource", "show", name]);
    assert!(
        text.contains("staging_push") && text.contains("waiting for data"),
        "{text}"
    );

    let waiting = s.pgvirt.fails(&["dsource", "sync", name]);
    assert!(
        waiting.contains("waiting for data") && waiting.contains("restore a backup into"),
        "{waiting}"
    );
    assert_eq!(
        snapshots(&s.pgvirt, name).len(),
        1,
        "a refused sync takes nothing"
    );
    mount
}

/// With the user's cluster running on data/: show says so; sync, disable
/// and delete are refused saying to stop it, and change nothing.
fn refused_while_running(s: &Stack, name: &str, data: &Path) {
    let shown = s.pgvirt.json(&["dsource", "show", name]);
    assert!(
        shown["next"]
            .as_str()
            .expect("next")
            .starts_with("cluster running: stop it before a sync"),
        "{shown}"
    );
    for args in [
        vec!["dsource", "sync", name],
        vec!["dsource", "disable", name],
        vec!["dsource", "delete", name],
    ] {
        let err = s.pgvirt.fails(&args);
        assert!(
            err.contains("stop the cluster first")
                && err.contains(&format!("pg_ctl -D {}", data.display())),
            "{args:?}: {err}"
        );
    }
    let d = s.pgvirt.json(&["dsource", "show", name]);
    assert_eq!(d["dsource"]["state"], json!("enabled"), "{d}");
    assert!(
        data.join("postmaster.pid").exists(),
        "the user's cluster still runs"
    );
    let resync = s.pgvirt.fails(&["dsource", "sync", name, "--resync"]);
    assert!(resync.contains("needs an empty data directory"), "{resync}");
}

/// Stopped: a sync takes a provisionable snapshot described from the
/// control file, and a VDB from it holds the pushed rows.
fn sync_and_provision(s: &Stack, name: &str, table: &str, expected_sum: &str) -> serde_json::Value {
    let shown = s.pgvirt.json(&["dsource", "show", name]);
    assert!(
        shown["next"]
            .as_str()
            .expect("next")
            .starts_with("ready for a sync"),
        "{shown}"
    );
    let snap = s.pgvirt.json(&["dsource", "sync", name]);
    let meta = &snap["metadata"];
    assert_eq!(meta["provisionable"], json!(true), "{meta}");
    assert_eq!(meta["ingestion_method"], json!("staging_push"));
    assert_eq!(meta["major_version"], json!(15));
    assert!(
        meta["system_identifier"]
            .as_str()
            .is_some_and(|s| s.len() > 5),
        "{meta}"
    );
    assert!(meta["checkpoint_lsn"]
        .as_str()
        .is_some_and(|l| l.contains('/')));
    assert!(
        meta["checkpoint_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{meta}"
    );
    assert!(meta["timeline"].as_u64().is_some_and(|t| t >= 1));
    let vdb = format!("{name}-v1");
    s.pgvirt.ok(&["vdb", "provision", &vdb, "--from", name]);
    assert_eq!(s.vdb_sql(&vdb, &checksum_sql(table)), expected_sum);
    snap
}

#[test]
fn a_pg_basebackup_restored_by_the_user() {
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE pushed (id int, v text); INSERT INTO pushed SELECT g, md5(g::text) FROM generate_series(1, 500) g",
    );
    let expected = s.source.psql("postgres", &checksum_sql("pushed"));
    let mount = link_empty(&s, "push");
    let data = mount.join("data");

    // The user restores a base backup of the source into data/ and runs it.
    pg(
        "pg_basebackup",
        &[
            "-D",
            data.to_str().expect("utf-8"),
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
        ],
    );
    let port = free_port();
    user_start(&data, port);
    assert_eq!(sql(port, "postgres", "SELECT count(*) FROM pushed"), "500");
    refused_while_running(&s, "push", &data);
    // Rows after the backup are not in the push.
    s.source
        .psql("postgres", "INSERT INTO pushed VALUES (501, 'later')");
    user_stop(&data);

    let snap = sync_and_provision(&s, "push", "pushed", &expected);
    let source_id = s.source.psql(
        "postgres",
        "SELECT system_identifier::text FROM pg_control_system()",
    );
    assert_eq!(snap["metadata"]["system_identifier"], json!(source_id));
    assert!(!mount.join("pgvirt/backup_label").exists());
    // Its snapshots are points: no moment between them (issue 10).
    let err = s.pgvirt.fails(&[
        "vdb",
        "provision",
        "moment",
        "--from",
        "push",
        "--at-lsn",
        "0/1",
    ]);
    assert!(
        err.contains("not available for the staging_push method"),
        "{err}"
    );

    // Disable and enable with the cluster stopped; delete needs the VDB gone.
    s.pgvirt.ok(&["dsource", "disable", "push"]);
    s.pgvirt.ok(&["dsource", "enable", "push"]);
    assert!(data.join("PG_VERSION").exists(), "the pushed cluster stays");
    s.pgvirt.ok(&["dsource", "delete", "push", "--with-vdbs"]);
    assert!(s
        .pgvirt
        .json(&["dsource", "list"])
        .as_array()
        .expect("list")
        .is_empty());
}

#[test]
fn initdb_and_pg_restore_of_a_dump_then_every_refusal() {
    let s = Stack::new();
    s.source.psql("postgres", "CREATE DATABASE shop; ");
    let src = s.source.port;
    sql(
        src,
        "shop",
        "CREATE TABLE items (id int primary key, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g",
    );
    let expected = sql(src, "shop", &checksum_sql("items"));
    let mount = link_empty(&s, "dumped");
    let data = mount.join("data");
    let dumps = crate::support::PgDir::new("pgvirt-dump-");
    let dump = dumps.path().join("shop.dump");
    pg(
        "pg_dump",
        &[
            "-Fc",
            "-f",
            dump.to_str().expect("utf-8"),
            "-h",
            "127.0.0.1",
            "-p",
            &src.to_string(),
            "-U",
            "postgres",
            "shop",
        ],
    );
    // The user makes a cluster in data/ and restores the dump into it.
    pg(
        "initdb",
        &[
            "-D",
            data.to_str().expect("utf-8"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
    );
    let port = free_port();
    user_start(&data, port);
    pg(
        "pg_restore",
        &[
            "-C",
            "-d",
            "postgres",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            dump.to_str().expect("utf-8"),
        ],
    );
    refused_while_running(&s, "dumped", &data);

    // A tablespace outside the mount is refused, naming it.
    let outside = crate::support::PgDir::new("pgvirt-tblspc-");
    sql(
        port,
        "postgres",
        &format!(
            "CREATE TABLESPACE away LOCATION '{}'",
            outside.path().display()
        ),
    );
    let oid = sql(
        port,
        "postgres",
        "SELECT oid FROM pg_tablespace WHERE spcname = 'away'",
    );
    user_stop(&data);
    let err = s.pgvirt.fails(&["dsource", "sync", "dumped"]);
    assert!(
        err.contains(&format!("tablespace {oid}"))
            && err.contains(&outside.path().display().to_string())
            && err.contains("outside the mount"),
        "{err}"
    );
    user_start_again(&data);
    sql(port, "postgres", "DROP TABLESPACE away");

    // A cluster that was not shut down cleanly is refused.
    let pid: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("pid file")
        .lines()
        .next()
        .expect("pid")
        .parse()
        .expect("number");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = s.pgvirt.fails(&["dsource", "sync", "dumped"]);
    assert!(
        err.contains("not shut down cleanly") && err.contains("pg_ctl"),
        "{err}"
    );
    assert_eq!(
        snapshots(&s.pgvirt, "dumped").len(),
        1,
        "refusals take nothing"
    );
    user_start_again(&data);
    user_stop(&data);

    let snap = s.pgvirt.json(&["dsource", "sync", "dumped"]);
    assert_eq!(snap["metadata"]["provisionable"], json!(true), "{snap}");
    s.pgvirt
        .ok(&["vdb", "provision", "shopdev", "--from", "dumped"]);
    let v = s.pgvirt.json(&["vdb", "show", "shopdev"]);
    let out = crate::support::run_ok(
        crate::support::as_pg_user(Path::new(crate::support::PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-h"])
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
                "shop",
                "-c",
            ])
            .arg(checksum_sql("items")),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    // A resync needs data/ empty: with it emptied, a new, empty timeflow.
    let err = s.pgvirt.fails(&["dsource", "sync", "dumped", "--resync"]);
    assert!(err.contains("needs an empty data directory"), "{err}");
    crate::support::run_ok(
        crate::support::as_pg_user("bash")
            .arg("-c")
            .arg("rm -rf -- \"$1\"/* \"$1\"/.[!.]* 2>/dev/null; true")
            .arg("-")
            .arg(&data),
    );
    let again = s.pgvirt.json(&["dsource", "sync", "dumped", "--resync"]);
    assert_eq!(again["metadata"]["provisionable"], json!(false), "{again}");
    assert_eq!(
        snapshots(&s.pgvirt, "dumped").len(),
        3,
        "older snapshots stay"
    );
    assert_eq!(s.vdb_sql("shopdev", "SELECT 1"), "1");
}

/// Starts the user's cluster again (its configuration is already there).
fn user_start_again(data: &Path) {
    crate::support::run_ok(
        crate::support::as_pg_user(Path::new(crate::support::PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-w", "-t", "120", "-l"])
            .arg(data.with_file_name("user.log"))
            .arg("start"),
    );
}
