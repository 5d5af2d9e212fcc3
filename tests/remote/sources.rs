//! Discovery on remote hosts, and dSources linked from them: two namespaces
//! as two source hosts, the engine (staging, pool, VDBs) on this host.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::netns::{RemoteHost, REPL_PASSWORD, REPL_USER};
use crate::support::{
    as_pg_user, checksum_sql, free_port, processes, stop_clusters_under, Pgvirt, PoolDir, PG_BIN,
};

/// The engine: pgvirt with a local environment and a copy pool; its
/// servers stop on drop.
struct Engine {
    p: Pgvirt,
    pool: PoolDir,
}

impl Engine {
    fn new() -> Self {
        let mut p = Pgvirt::new();
        p.env("PGVIRT_REPLICATION_PASSWORD", REPL_PASSWORD);
        p.install_and_add_local();
        let pool = PoolDir::new();
        p.ok(&["init", "--pool", pool.pool().to_str().expect("utf-8")]);
        p.ok(&["env", "refresh", "local"]);
        Self { p, pool }
    }

    /// Adds `host` as environment `name`, trusting its key, and discovers
    /// it; returns the id of the source config of the host's own cluster.
    fn add_and_discover(&self, name: &str, host: &RemoteHost) -> String {
        let mut add = host.env_add_args(name);
        add.extend(["--fingerprint".into(), host.host_fingerprint()]);
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        self.p.ok(&add);
        let refreshed = self.p.json(&["env", "refresh", name]);
        let pg = host.pg.as_ref().expect("a cluster on the host");
        let data = std::fs::canonicalize(pg.data_dir()).expect("canonical");
        let config = refreshed["source_configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|s| s["document"]["data_directory"] == json!(data))
            .unwrap_or_else(|| panic!("the cluster of {name} was not discovered: {refreshed}"));
        assert_eq!(config["document"]["port"], json!(5432), "{config}");
        assert_eq!(config["document"]["running"], json!(true), "{config}");
        assert!(
            refreshed["repositories"]
                .as_array()
                .expect("repos")
                .iter()
                .any(|r| r["document"]["bin_dir"] == json!(PG_BIN)),
            "{refreshed}"
        );
        config["id"].to_string()
    }

    fn link_args(name: &str, source: &str, staging_port: &str) -> Vec<String> {
        [
            "dsource",
            "link",
            name,
            "--source",
            source,
            "--replication-user",
            REPL_USER,
            "--staging-port",
            staging_port,
            "--output",
            "json",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// SQL on a VDB through its socket.
    fn vdb_sql(&self, vdb: &str, sql: &str) -> String {
        let v = self.p.json(&["vdb", "show", vdb]);
        let socket = v["source_config"]["socket_directory"]
            .as_str()
            .expect("socket")
            .to_owned();
        let out = crate::support::run_ok(
            as_pg_user(Path::new(PG_BIN).join("psql"))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    &socket,
                    "-p",
                ])
                .arg(v["port"].to_string())
                .args(["-U", "postgres", "-d", "postgres", "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        stop_clusters_under(&self.pool.pool());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_remote_sources_are_discovered_linked_and_provisioned_exactly() {
    let east = RemoteHost::new(true);
    let west = RemoteHost::new(true);
    let e = Engine::new();
    let tables = [(&east, 20_000), (&west, 7_000)];
    for (host, rows) in tables {
        host.pg.as_ref().expect("pg").psql(
            "postgres",
            &format!(
                "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {rows}) g"
            ),
        );
    }
    let east_id = e.add_and_discover("east", &east);
    let west_id = e.add_and_discover("west", &west);

    // The east link, watched: no process on either side (the namespaces
    // share this host's process table) shows the replication password, in
    // its command line or its environment.
    let port = free_port().to_string();
    let args = Engine::link_args("shop", &east_id, &port);
    let mut child =
        e.p.command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("link starts");
    let pgvirt_pid = child.id() as i32;
    let me = std::env::current_exe().expect("test binary");
    let mut looked = 0;
    while child.try_wait().expect("wait").is_none() {
        for (pid, argv, _) in processes() {
            assert!(
                !argv.join(" ").contains(REPL_PASSWORD),
                "process {pid} shows the replication password: {argv:?}"
            );
            if pid == pgvirt_pid
                || argv
                    .first()
                    .is_some_and(|a| a == env!("CARGO_BIN_EXE_pgvirt") || Path::new(a) == me)
            {
                // pgvirt's own initial environment block (it reads the
                // variable once and takes it out), here or in a test
                // running beside this one; and this test binary (the
                // fixture that knows the password) between a fork and an
                // exec.
                continue;
            }
            if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
                assert!(
                    !String::from_utf8_lossy(&environ).contains(REPL_PASSWORD),
                    "process {pid} ({argv:?}) has the password in its environment"
                );
            }
        }
        looked += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("link");
    assert!(
        out.status.success(),
        "link from east failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(looked > 3, "the link was watched while it ran");
    let shop: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        shop["dsource"]["parameters"]["source"]["host"],
        json!(east.addr),
        "{shop}"
    );

    // West by the customer's backup (taken over the network) + streaming:
    // what was written after the backup comes by replication.
    let backups = crate::support::PgDir::new("pgvirt-backup-");
    let backup = backups.path().join("base");
    crate::support::run_ok(
        as_pg_user(Path::new(PG_BIN).join("pg_basebackup"))
            .arg("-D")
            .arg(&backup)
            .args(["-X", "stream", "-c", "fast", "-h", &west.addr, "-p", "5432"])
            .args(["-U", REPL_USER])
            .env("PGPASSWORD", REPL_PASSWORD),
    );
    west.pg.as_ref().expect("pg").psql(
        "postgres",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(7001, 7500) g",
    );
    let port = free_port().to_string();
    let mut args = Engine::link_args("books", &west_id, &port);
    args.extend([
        "--method".into(),
        "backup_streaming".into(),
        "--backup-path".into(),
        backup.to_string_lossy().into_owned(),
    ]);
    e.p.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    e.p.ok(&["vdb", "provision", "shopdev", "--from", "shop"]);
    e.p.ok(&["vdb", "provision", "booksdev", "--from", "books"]);
    for (vdb, host) in [("shopdev", &east), ("booksdev", &west)] {
        let source = host
            .pg
            .as_ref()
            .expect("pg")
            .psql("postgres", &checksum_sql("t"));
        assert_eq!(e.vdb_sql(vdb, &checksum_sql("t")), source, "{vdb}");
    }
    // The slots the links made are on the sources.
    let slots = east
        .pg
        .as_ref()
        .expect("pg")
        .psql("postgres", "SELECT slot_name FROM pg_replication_slots");
    assert!(slots.contains("shop"), "{slots}");

    // Staging cannot run on a remote environment, nor a VDB.
    let port = free_port().to_string();
    let mut args = Engine::link_args("elsewhere", &west_id, &port);
    args.extend(["--env".into(), "west".into()]);
    let err =
        e.p.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("--env west") && err.contains("engine's host"),
        "{err}"
    );
    let err =
        e.p.fails(&["vdb", "create-empty", "scratchy", "--env", "east"]);
    assert!(err.contains("--env east"), "{err}");

    // sshd gone: discovery says so; the linked dSource syncs on (it streams
    // over the network, not over SSH).
    drop(e.p.ok(&["dsource", "delete", "books", "--with-vdbs"]));
    let mut west = west;
    west.kill_sshd();
    let err = e.p.fails(&["env", "refresh", "west"]);
    assert!(err.contains("SSH connection"), "{err}");
    e.p.ok(&["dsource", "sync", "shop"]);
    let slots = west
        .pg
        .as_ref()
        .expect("pg")
        .psql("postgres", "SELECT count(*) FROM pg_replication_slots");
    assert_eq!(slots, "0", "the deleted dSource's slot is gone from west");
}

/// Nothing of a link is left: no dSource, no dataset, no staging server,
/// no slot on the source.
fn nothing_left(e: &Engine, host: &RemoteHost, staging_port: &str) {
    assert_eq!(e.p.json(&["dsource", "list"]), json!([]));
    assert_eq!(e.p.json(&["pool", "list"]), json!([]));
    e.p.ok(&["pool", "check"]);
    let port: u16 = staging_port.parse().expect("port");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "no staging process"
    );
    let slots = host
        .pg
        .as_ref()
        .expect("pg")
        .psql("postgres", "SELECT count(*) FROM pg_replication_slots");
    assert_eq!(slots, "0", "no slot on the source");
}

#[test]
fn a_remote_link_killed_cut_off_or_losing_sshd_leaves_nothing_on_either_side() {
    let mut east = RemoteHost::new(true);
    let e = Engine::new();
    east.pg.as_ref().expect("pg").psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) id",
    );
    let id = e.add_and_discover("east", &east);

    // pgvirt killed after the ingest (the slot is made on the source): the
    // next ordinary command removes staging here and the slot there.
    let port = free_port().to_string();
    let args = Engine::link_args("doomed", &id, &port);
    let mut child = crate::support::spawn_paused(
        e.p.command(&args.iter().map(String::as_str).collect::<Vec<_>>()),
        "snapshot",
    );
    let slots = east
        .pg
        .as_ref()
        .expect("pg")
        .psql("postgres", "SELECT count(*) FROM pg_replication_slots");
    assert_eq!(slots, "1", "paused after the slot was made");
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    e.p.ok(&["dsource", "list"]);
    nothing_left(&e, &east, &port);

    // sshd killed while a link runs: the link needs no SSH (staging pulls
    // over the network), so it completes whole; deleting it leaves nothing
    // on either side.
    let port = free_port().to_string();
    let args = Engine::link_args("during", &id, &port);
    let child =
        e.p.command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("link starts");
    std::thread::sleep(Duration::from_millis(300));
    east.kill_sshd();
    let out = child.wait_with_output().expect("link ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = e.p.fails(&["env", "refresh", "east"]);
    assert!(err.contains("SSH connection"), "{err}");
    e.p.ok(&["dsource", "delete", "during"]);
    nothing_left(&e, &east, &port);

    // The source host cut off: the link fails within the source's connect
    // time-out, saying so, and makes nothing.
    east.unplug();
    let port = free_port().to_string();
    let mut args = Engine::link_args("cutoff", &id, &port);
    args.pop();
    args.pop();
    let began = std::time::Instant::now();
    let err =
        e.p.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(e.p.json(&["dsource", "list"]), json!([]));
    assert_eq!(e.p.json(&["pool", "list"]), json!([]));
}

#[test]
fn one_database_of_a_remote_host_is_dumped_from_the_address_of_its_environment() {
    let east = RemoteHost::new(true);
    let e = Engine::new();
    let pg = east.pg.as_ref().expect("pg");
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g",
    );
    pg.psql(
        "postgres",
        &format!("GRANT pg_read_all_data TO {REPL_USER}"),
    );
    let id = e.add_and_discover("east", &east);
    // No host in the parameters: the source is reached where its
    // environment is, with the password from the environment variable.
    let dir = tempfile::tempdir().expect("tmp");
    let params = dir.path().join("params.json");
    std::fs::write(
        &params,
        json!({"single_database": {"database": "shop", "user": REPL_USER}}).to_string(),
    )
    .expect("params");
    let port = free_port().to_string();
    let linked = e.p.json(&[
        "dsource",
        "link",
        "shopdb",
        "--source",
        &id,
        "--method",
        "single_database",
        "--params",
        params.to_str().expect("utf-8"),
        "--staging-port",
        &port,
    ]);
    assert_eq!(
        linked["dsource"]["parameters"]["single_database"]["host"],
        json!(east.addr),
        "{linked}"
    );
    assert_eq!(
        linked["dsource"]["parameters"]["single_database"]["port"],
        json!(5432),
        "{linked}"
    );
    e.p.ok(&["vdb", "provision", "shopdev", "--from", "shopdb"]);
    let v = e.p.json(&["vdb", "show", "shopdev"]);
    let socket = v["source_config"]["socket_directory"]
        .as_str()
        .expect("socket")
        .to_owned();
    let out = crate::support::run_ok(
        as_pg_user(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-h", &socket, "-p"])
            .arg(v["port"].to_string())
            .args(["-U", "postgres", "-d", "shop", "-c", &checksum_sql("items")]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pg.psql("shop", &checksum_sql("items"))
    );
    e.p.ok(&["dsource", "delete", "shopdb", "--with-vdbs"]);
}

#[test]
fn a_remote_source_is_restored_from_its_pgbackrest_repository() {
    assert!(
        Path::new("/usr/bin/pgbackrest").is_file(),
        "pgbackrest is not installed; run `bash .ci/deps`"
    );
    let east = RemoteHost::new(true);
    let e = Engine::new();
    let pg = east.pg.as_ref().expect("pg");
    // The source host archives into a repository the engine's host reads
    // (one filesystem here; elsewhere a shared mount or an object store).
    let repo = crate::support::PgDir::new("pgvirt-pgbr-");
    let conf = repo.path().join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={root}/repo\nlog-path={root}/log\nlock-path={root}/lock\n\
             log-level-file=off\nlog-level-console=warn\nstart-fast=y\n\n\
             [east]\npg1-path={data}\npg1-port=5432\npg1-socket-path={socket}\n",
            root = repo.path().display(),
            data = pg.data_dir().display(),
            socket = pg.socket_dir().display(),
        ),
    )
    .expect("conf");
    crate::support::run_ok(
        std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&conf),
    );
    pg.reconfigure(
        &east.ns,
        &format!(
            "archive_mode = on\narchive_command = 'pgbackrest --config={} --stanza=east archive-push %p'\n",
            conf.display()
        ),
    );
    let pgbackrest = |args: &[&str]| {
        crate::support::run_ok(
            as_pg_user("pgbackrest")
                .arg(format!("--config={}", conf.display()))
                .arg("--stanza=east")
                .args(args),
        );
    };
    pgbackrest(&["stanza-create"]);
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000) g",
    );
    pgbackrest(&["--type=full", "backup"]);
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(2001, 2500) g",
    );
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let id = e.add_and_discover("east", &east);
    let dir = tempfile::tempdir().expect("tmp");
    let params = dir.path().join("params.json");
    std::fs::write(
        &params,
        json!({"pgbackrest": {"stanza": "east", "config_path": conf}}).to_string(),
    )
    .expect("params");
    let port = free_port().to_string();
    e.p.ok(&[
        "dsource",
        "link",
        "br",
        "--source",
        &id,
        "--method",
        "pgbackrest",
        "--params",
        params.to_str().expect("utf-8"),
        "--staging-port",
        &port,
    ]);
    // Staging replays what the source archives after the backup: a VDB of
    // a later snapshot holds exactly the source's rows.
    let want = pg.psql("postgres", &checksum_sql("t"));
    let mut got = String::new();
    for attempt in 0..30 {
        let vdb = format!("brdev{attempt}");
        e.p.ok(&["dsource", "sync", "br"]);
        e.p.ok(&["vdb", "provision", &vdb, "--from", "br"]);
        got = e.vdb_sql(&vdb, &checksum_sql("t"));
        e.p.ok(&["vdb", "delete", &vdb]);
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(got, want, "staging never caught up with the archive");
    e.p.ok(&["dsource", "delete", "br"]);
}
