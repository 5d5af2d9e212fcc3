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
    assert!(err.contains("vdb-child"), "{err}");
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
    let mut child = s
        .pgvirt
        .command(&["vdb", "provision", "halfway", "--from", "src"])
        .env("PGVIRT_FAULT_PAUSE", "clone")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the clone is on disk and the process pauses.
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("pausing") {
        use std::io::Read;
        let n = stderr.read(&mut buf).expect("read");
        assert!(n > 0, "provision ended before pausing: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
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
    assert_eq!(datasets, vec!["dsource-src".to_owned()]);
    s.pgvirt.ok(&["pool", "check"]);
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
