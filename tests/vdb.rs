//! VDBs end to end: provision from a linked source, write, snapshot,
//! child-provision, refresh, rewind, delete — checksums compared at each step.

use serde_json::json;

use crate::support::{checksum_sql, Stack};

#[test]
fn provision_write_snapshot_child_refresh_rewind_delete() {
    let s = Stack::new();
    s.source.psql("postgres", "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 1000) g;");
    s.link("orders");
    let source_sum = s.source.psql("postgres", &checksum_sql("orders"));

    let v1 = s
        .pgvirt
        .json(&["vdb", "provision", "dev1", "--from", "orders"]);
    assert_eq!(v1["state"], json!("running"));
    let v2 = s
        .pgvirt
        .json(&["vdb", "provision", "dev2", "--from", "orders"]);
    assert_ne!(v1["port"], v2["port"], "ports never collide");
    assert_eq!(s.vdb_sql("dev1", &checksum_sql("orders")), source_sum);

    // A write in one VDB is seen in no other, nor in the source.
    s.vdb_sql("dev1", "DELETE FROM orders WHERE id <= 100");
    assert_eq!(s.vdb_sql("dev1", "SELECT count(*) FROM orders"), "900");
    assert_eq!(s.vdb_sql("dev2", &checksum_sql("orders")), source_sum);
    assert_eq!(
        s.source.psql("postgres", &checksum_sql("orders")),
        source_sum
    );

    // Snapshot dev1, change it again, provision a child from the snapshot.
    let snap = s.pgvirt.json(&["vdb", "snapshot", "dev1"]);
    let snap_id = snap["id"].to_string();
    assert_eq!(snap["metadata"]["ingestion_method"], json!("virtual"));
    let at_snapshot = s.vdb_sql("dev1", &checksum_sql("orders"));
    s.vdb_sql("dev1", "INSERT INTO orders VALUES (5000, 'after snapshot')");
    let child = s.pgvirt.json(&[
        "vdb",
        "provision",
        "child",
        "--from",
        &format!("dev1@{snap_id}"),
    ]);
    assert_eq!(child["parent_kind"], json!("vdb"));
    assert_eq!(s.vdb_sql("child", &checksum_sql("orders")), at_snapshot);

    // Rewind dev1 to its snapshot: the later insert is gone; name and port stay.
    let rewound = s
        .pgvirt
        .json(&["vdb", "rewind", "dev1", "--snapshot", &snap_id]);
    assert_eq!(rewound["port"], v1["port"]);
    assert_eq!(s.vdb_sql("dev1", &checksum_sql("orders")), at_snapshot);

    // The source moves on; refresh dev2 after a sync: it sees the new rows.
    s.source.psql(
        "postgres",
        "INSERT INTO orders SELECT g, 'new' FROM generate_series(1001, 1500) g",
    );
    s.pgvirt.ok(&["dsource", "sync", "orders"]);
    let refreshed = s.pgvirt.json(&["vdb", "refresh", "dev2"]);
    assert_eq!(refreshed["port"], v2["port"]);
    assert_eq!(
        s.vdb_sql("dev2", &checksum_sql("orders")),
        s.source.psql("postgres", &checksum_sql("orders"))
    );

    // Each refresh and rewind opened a new timeflow.
    let timeflows: Vec<i64> = s
        .pgvirt
        .json(&["snapshot", "list", "--vdb", "dev1"])
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["timeflow"].as_i64().expect("tf"))
        .collect();
    assert_eq!(timeflows.len(), 1);

    // dev1 cannot go while child stands on its snapshot; the dSource neither.
    let err = s.pgvirt.fails(&["vdb", "delete", "dev1"]);
    assert!(
        err.contains("VDB child depends on snapshots of VDB dev1")
            && err.contains("--with-children"),
        "{err}"
    );
    let err = s.pgvirt.fails(&["dsource", "delete", "orders"]);
    assert!(err.contains("depend"), "{err}");

    for name in ["child", "dev1", "dev2"] {
        s.pgvirt.ok(&["vdb", "delete", name]);
    }
    s.pgvirt.ok(&["dsource", "delete", "orders"]);
    assert_eq!(
        s.pgvirt.json(&["pool", "list"]),
        json!([]),
        "nothing left in the pool"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(s.pool.pool().to_str().expect("utf-8")),
        "nothing left mounted"
    );
    assert_eq!(
        s.source
            .psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "slot dropped"
    );
}

#[test]
fn twenty_vdbs_from_one_snapshot_are_independent() {
    let s = Stack::new();
    s.source.psql("postgres", "CREATE TABLE t (vdb text)");
    s.link("base");
    let mut ports = Vec::new();
    for i in 0..20 {
        let v = s
            .pgvirt
            .json(&["vdb", "provision", &format!("v{i}"), "--from", "base"]);
        ports.push(v["port"].as_u64().expect("port"));
    }
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 20, "ports never collide: {ports:?}");
    for i in 0..20 {
        s.vdb_sql(&format!("v{i}"), &format!("INSERT INTO t VALUES ('v{i}')"));
    }
    for i in 0..20 {
        assert_eq!(
            s.vdb_sql(&format!("v{i}"), "SELECT string_agg(vdb, ',') FROM t"),
            format!("v{i}")
        );
    }
    assert_eq!(s.source.psql("postgres", "SELECT count(*) FROM t"), "0");
    for i in 0..20 {
        s.pgvirt.ok(&["vdb", "delete", &format!("v{i}")]);
    }
}

#[test]
fn a_crashed_vdb_reports_inactive_and_start_brings_it_back() {
    let s = Stack::new();
    s.link("src");
    let v = s
        .pgvirt
        .json(&["vdb", "provision", "crashy", "--from", "src"]);
    let data = v["source_config"]["data_directory"]
        .as_str()
        .expect("data dir")
        .to_owned();
    let pid: i32 = std::fs::read_to_string(format!("{data}/postmaster.pid"))
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
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        s.pgvirt.json(&["vdb", "status", "crashy"])["status"],
        json!("INACTIVE")
    );
    s.pgvirt.ok(&["vdb", "start", "crashy"]);
    assert_eq!(
        s.pgvirt.json(&["vdb", "status", "crashy"])["status"],
        json!("ACTIVE")
    );
    assert_eq!(s.vdb_sql("crashy", "SELECT 1"), "1");
}

#[test]
fn a_taken_port_is_refused_before_anything_is_cloned() {
    let s = Stack::new();
    s.link("src");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let before = s.pgvirt.json(&["pool", "list"]);
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "x", "--from", "src", "--port", &port]);
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert_eq!(
        s.pgvirt.json(&["pool", "list"]),
        before,
        "no dataset was made"
    );
    assert_eq!(s.pgvirt.json(&["vdb", "list"]), json!([]));
}

#[test]
fn a_snapshot_that_is_not_provisionable_is_refused_by_id() {
    let s = Stack::new();
    let linked = s.link("src");
    let snap = linked["snapshot"]["id"].as_i64().expect("id");
    // Stand in for an empty first snapshot (staging push arrives later).
    let store = pgvirt::host::store::Store::open(&s.pgvirt.store()).expect("store");
    store
        .conn()
        .execute(
            "UPDATE snapshots SET metadata = json_set(metadata, '$.provisionable', json('false'), '$.not_provisionable_reason', 'the staging cluster was empty') WHERE id = ?1",
            [snap],
        )
        .expect("update");
    drop(store);
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "x", "--from", &format!("src@{snap}")]);
    assert!(
        err.contains(&format!(
            "snapshot {snap} cannot be provisioned: the staging cluster was empty"
        )),
        "{err}"
    );
}

#[test]
fn a_provision_killed_midway_is_cleaned_by_the_next_command() {
    let s = Stack::new();
    s.link("src");
    // Wait until the clone is on disk and the process pauses, then kill it.
    let mut child = crate::support::spawn_paused(
        s.pgvirt
            .command(&["vdb", "provision", "halfway", "--from", "src"]),
        "clone",
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
    // The next command notices and removes the half-made VDB and its clone.
    let err = s.pgvirt.fails(&["vdb", "status", "halfway"]);
    assert!(err.contains("no VDB \"halfway\""), "{err}");
    assert_eq!(s.pgvirt.json(&["vdb", "list"]), json!([]));
    let datasets: Vec<String> = s
        .pgvirt
        .json(&["pool", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        datasets,
        vec!["dsource-src".to_owned(), "dsource-src-wal".to_owned()],
        "only the dSource's datasets are left (its data and its WAL)"
    );
    s.pgvirt.ok(&["pool", "check"]);
}

#[test]
fn a_refresh_killed_right_after_its_switch_is_recorded_is_finished_not_undone() {
    // The switch (the VDB on its new dataset) and the job's step that says
    // so were two commits: a kill between them made the next command undo
    // a switch already recorded, destroying the dataset the VDB stood on.
    let s = Stack::new();
    s.source.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);",
    );
    s.link("src");
    let before = s.pgvirt.json(&["vdb", "provision", "v", "--from", "src"]);
    let old = before["dataset"].as_str().expect("dataset").to_owned();
    s.source
        .psql("postgres", "INSERT INTO t SELECT generate_series(11, 20);");
    s.pgvirt.ok(&["dsource", "sync", "src"]);
    let mut child =
        crate::support::spawn_paused(s.pgvirt.command(&["vdb", "refresh", "v"]), "switch");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    // The next command finishes it: the VDB runs on its new dataset, with
    // the newer snapshot's rows, and the old dataset is gone.
    let after = s.pgvirt.json(&["vdb", "show", "v"]);
    assert_ne!(after["dataset"], json!(old), "{after}");
    assert_eq!(after["state"], json!("running"), "{after}");
    assert_eq!(s.vdb_sql("v", "SELECT count(*) FROM t"), "20");
    let datasets = s.pgvirt.json(&["pool", "list"]).to_string();
    assert!(!datasets.contains(&format!("\"{old}\"")), "{datasets}");
    s.pgvirt.ok(&["pool", "check"]);
    // And the VDB refreshes again as usual.
    s.pgvirt.ok(&["vdb", "refresh", "v"]);
    assert_eq!(s.vdb_sql("v", "SELECT count(*) FROM t"), "20");
}

#[test]
fn an_empty_vdb_is_a_new_cluster() {
    let s = Stack::new();
    let v = s.pgvirt.json(&["vdb", "create-empty", "blank"]);
    assert_eq!(v["parent_kind"], json!("empty"));
    assert_eq!(
        s.vdb_sql(
            "blank",
            "SELECT count(*) FROM pg_database WHERE datname = 'postgres'"
        ),
        "1"
    );
    s.pgvirt.ok(&["vdb", "delete", "blank"]);
}

#[test]
fn hooks_run_with_the_vdb_details_and_delete_with_vdbs_takes_the_whole_tree() {
    let s = Stack::new();
    s.link("src");
    let out = crate::support::PgDir::new("pgvirt-hooks-");
    let record = out.path().join("hooks.log");
    let params = s.pgvirt.dir().join("hooks.json");
    let line = |hook: &str| {
        format!(
            "echo \"{hook} $PGVIRT_VDB $PGPORT $(psql -Atc 'select 1')\" >> '{}'",
            record.display()
        )
    };
    std::fs::write(
        &params,
        serde_json::to_string(&json!({"hooks": {
            "configure_clone": [line("configure_clone")],
            "pre_stop": [line("pre_stop")],
            "post_start": [line("post_start")],
        }}))
        .expect("json"),
    )
    .expect("params");
    let v = s.pgvirt.json(&[
        "vdb",
        "provision",
        "hooked",
        "--from",
        "src",
        "--params",
        params.to_str().expect("utf-8"),
    ]);
    s.pgvirt.ok(&["vdb", "stop", "hooked"]);
    s.pgvirt.ok(&["vdb", "start", "hooked"]);
    let log = std::fs::read_to_string(&record).expect("hooks ran");
    let port = v["port"].to_string();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            format!("configure_clone hooked {port} 1"),
            format!("pre_stop hooked {port} 1"),
            format!("post_start hooked {port} 1"),
        ]
    );
    // A failing hook stops the workflow and says which hook.
    std::fs::write(
        &params,
        r#"{"hooks": {"configure_clone": ["echo nope >&2; exit 7"]}}"#,
    )
    .expect("params");
    let err = s.pgvirt.fails(&[
        "vdb",
        "provision",
        "bad",
        "--from",
        "src",
        "--params",
        params.to_str().expect("utf-8"),
    ]);
    assert!(
        err.contains("configure_clone hook #1") && err.contains("nope"),
        "{err}"
    );
    assert!(
        s.pgvirt.fails(&["vdb", "show", "bad"]).contains("no VDB"),
        "the failed provision left nothing"
    );

    // Deleting the dSource with its VDBs takes children of children too.
    let snap = s.pgvirt.json(&["vdb", "snapshot", "hooked"])["id"].to_string();
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "grandchild",
        "--from",
        &format!("hooked@{snap}"),
    ]);
    let err = s.pgvirt.fails(&["dsource", "delete", "src"]);
    assert!(err.contains("--with-vdbs"), "{err}");
    let gone = s.pgvirt.json(&["dsource", "delete", "src", "--with-vdbs"]);
    assert_eq!(gone["vdbs_deleted"], json!(["grandchild", "hooked"]));
    assert_eq!(s.pgvirt.json(&["pool", "list"]), json!([]));
}

#[test]
fn retention_keeps_the_newest_and_what_vdbs_stand_on() {
    let s = Stack::new();
    let first = s.link("kept")["snapshot"]["id"].to_string();
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "onfirst",
        "--from",
        &format!("kept@{first}"),
    ]);
    for _ in 0..3 {
        s.pgvirt.ok(&["dsource", "sync", "kept"]);
    }
    let set = s
        .pgvirt
        .json(&["snapshot", "retention", "--dsource", "kept", "--keep", "1"]);
    assert_eq!(
        set["removed"].as_array().expect("removed").len(),
        2,
        "{set}"
    );
    let left: Vec<String> = s
        .pgvirt
        .json(&["snapshot", "list", "--dsource", "kept"])
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["id"].to_string())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&first), "the snapshot a VDB stands on stays");
    s.pgvirt.ok(&["dsource", "sync", "kept"]);
    assert_eq!(
        s.pgvirt
            .json(&["snapshot", "list", "--dsource", "kept"])
            .as_array()
            .expect("list")
            .len(),
        2,
        "applied after each sync"
    );
}

#[test]
fn disable_stops_and_unmounts_and_enable_brings_the_vdb_back() {
    let s = Stack::new();
    s.link("src");
    s.pgvirt
        .ok(&["vdb", "provision", "toggled", "--from", "src"]);
    s.vdb_sql(
        "toggled",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    );
    let v = s.pgvirt.json(&["vdb", "disable", "toggled"]);
    assert_eq!(v["state"], json!("disabled"));
    assert_eq!(
        s.pgvirt.json(&["vdb", "status", "toggled"])["status"],
        json!("INACTIVE")
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(v["mount_path"].as_str().expect("mount")),
        "unmounted"
    );
    s.pgvirt.ok(&["vdb", "enable", "toggled"]);
    assert_eq!(
        s.pgvirt.json(&["vdb", "status", "toggled"])["status"],
        json!("ACTIVE")
    );
    assert_eq!(
        s.vdb_sql("toggled", "SELECT x FROM kept"),
        "42",
        "the data survived"
    );
}

#[test]
fn a_superuser_password_is_set_as_a_scram_verifier_and_never_shown() {
    let s = Stack::new();
    s.link("src");
    let params = s.pgvirt.dir().join("pw.json");
    std::fs::write(&params, r#"{"superuser_password": "Vdb-Secret-77"}"#).expect("params");
    let out = s
        .pgvirt
        .command(&[
            "vdb",
            "provision",
            "locked",
            "--from",
            "src",
            "--params",
            params.to_str().expect("utf-8"),
            "--output",
            "json",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!shown.contains("Vdb-Secret-77"), "{shown}");
    let v = s.pgvirt.json(&["vdb", "show", "locked"]);
    assert_eq!(v["parameters"]["superuser_password"], json!("********"));
    assert_eq!(
        s.vdb_sql(
            "locked",
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
        ),
        "t"
    );
    let mount = v["mount_path"].as_str().expect("mount");
    let log = std::fs::read_to_string(format!("{mount}/pgvirt/postgres.log")).unwrap_or_default();
    assert!(
        !log.contains("Vdb-Secret-77"),
        "the server log holds the password"
    );
}
