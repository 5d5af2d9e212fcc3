//! Ingestion from a real pgBackRest repository (Debian's pgbackrest, a
//! posix repository on disk): the pgbackrest method (restore, then
//! archive-get replays what the source writes after the backup), and a
//! staging push of a pgBackRest restore the user runs.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{mount_of, snapshots, user_start, user_stop};
use crate::support::{as_pg_user, checksum_sql, free_port, run_ok, PgDir, Stack};

/// A repository with stanza `demo` of the stack's source, which archives
/// into it; one full backup taken.
struct Repo {
    dir: PgDir,
}

impl Repo {
    fn new(s: &Stack) -> Self {
        assert!(
            Path::new("/usr/bin/pgbackrest").is_file(),
            "pgbackrest is not installed; run `bash .ci/deps` (apt-get install pgbackrest)"
        );
        let dir = PgDir::new("pgvirt-pgbr-");
        let repo = Self { dir };
        let conf = format!(
            "[global]\nrepo1-path={root}/repo\nlog-path={root}/log\nlock-path={root}/lock\nlog-level-file=off\nlog-level-console=warn\nstart-fast=y\n\n[demo]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\n",
            root = repo.dir.path().display(),
            data = s.source.data_dir().display(),
            port = s.source.port,
            socket = s.source.socket_dir().display(),
        );
        std::fs::write(repo.conf(), conf).expect("conf");
        run_ok(
            std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(repo.conf()),
        );
        s.source.psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET archive_command = 'pgbackrest --config={} --stanza=demo archive-push %p'",
                repo.conf().display()
            ),
        );
        s.source
            .psql("postgres", "ALTER SYSTEM SET archive_mode = on");
        s.source.stop();
        s.source.restart();
        repo.run(&["stanza-create"]);
        repo
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("pgbackrest.conf")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = run_ok(
            as_pg_user("pgbackrest")
                .arg(format!("--config={}", self.conf().display()))
                .arg("--stanza=demo")
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn backup(&self) {
        self.run(&["--type=full", "backup"]);
    }
}

/// Switches WAL and waits until the source has archived it.
fn archive_now(s: &Stack) {
    let before = s
        .source
        .psql("postgres", "SELECT archived_count FROM pg_stat_archiver");
    s.source.psql("postgres", "SELECT pg_switch_wal()");
    for _ in 0..200 {
        let now = s
            .source
            .psql("postgres", "SELECT archived_count FROM pg_stat_archiver");
        if now != before {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the source did not archive");
}

fn params(dir: &Path, doc: serde_json::Value) -> String {
    let path = dir.join(format!("params-{}.json", free_port()));
    std::fs::write(&path, doc.to_string()).expect("params");
    path.to_str().expect("utf-8").to_owned()
}

/// Syncs until a VDB from the new snapshot counts `want` rows of `t`.
fn sync_until(s: &Stack, name: &str, want: &str) -> String {
    let mut got = String::new();
    for attempt in 0..20 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let snap = s.pgvirt.json(&["dsource", "sync", name]);
        let vdb = format!("{name}-{want}-{attempt}");
        s.pgvirt.ok(&[
            "vdb",
            "provision",
            &vdb,
            "--from",
            &format!("{name}@{}", snap["id"]),
        ]);
        got = s.vdb_sql(&vdb, "SELECT count(*) FROM t");
        if got == want {
            return vdb;
        }
        s.pgvirt.ok(&["vdb", "delete", &vdb]);
    }
    panic!("no snapshot of {name} reached {want} rows (last {got})");
}

#[test]
fn a_pgbackrest_restore_then_archive_get_replays_later_writes() {
    let s = Stack::new();
    let repo = Repo::new(&s);
    s.source.psql(
        "postgres",
        "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g",
    );
    repo.backup();
    s.source.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(201, 300) g",
    );
    archive_now(&s);
    let dir = tempfile::tempdir().expect("tmp");
    let conf = repo.conf().to_str().expect("utf-8").to_owned();

    // Bad input, each named, nothing left.
    let locked = tempfile::tempdir().expect("root-only dir");
    std::fs::create_dir(locked.path().join("repo")).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        // root's alone: the environment user cannot read it.
        std::fs::set_permissions(
            locked.path().join("repo"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
    }
    for (doc, expect) in [
        (
            json!({"pgbackrest": {"stanza": "nosuch", "config_path": conf}}),
            "pgbackrest/stanza",
        ),
        (
            json!({"pgbackrest": {"stanza": "demo", "repo_path": locked.path().join("repo")}}),
            "pgbackrest/repo_path",
        ),
        (
            json!({"pgbackrest": {"stanza": "demo", "config_path": conf, "backup_set": "20200101-000000F"}}),
            "pgbackrest/backup_set",
        ),
        (json!({"pgbackrest": {"config_path": conf}}), "/pgbackrest"),
    ] {
        let p = params(dir.path(), doc.clone());
        let port = free_port().to_string();
        let err = s.pgvirt.fails(&[
            "dsource",
            "link",
            "bad",
            "--source",
            &s.source_id,
            "--method",
            "pgbackrest",
            "--params",
            &p,
            "--staging-port",
            &port,
        ]);
        assert!(err.contains(expect), "{doc}: expected {expect:?} in {err}");
        assert!(s
            .pgvirt
            .json(&["dsource", "list"])
            .as_array()
            .expect("list")
            .is_empty());
    }

    let p = params(
        dir.path(),
        json!({"pgbackrest": {"stanza": "demo", "config_path": conf}}),
    );
    let port = free_port().to_string();
    let linked = s.pgvirt.json(&[
        "dsource",
        "link",
        "br",
        "--source",
        &s.source_id,
        "--method",
        "pgbackrest",
        "--params",
        &p,
        "--staging-port",
        &port,
    ]);
    assert_eq!(
        linked["snapshot"]["metadata"]["ingestion_method"],
        json!("pgbackrest")
    );
    let auto = std::fs::read_to_string(mount_of(&linked).join("data/pgvirt.conf")).expect("conf");
    assert!(auto.contains("archive-get"), "{auto}");
    let vdb = sync_until(&s, "br", "300");
    assert_eq!(
        s.vdb_sql(&vdb, &checksum_sql("t")),
        s.source.psql("postgres", &checksum_sql("t"))
    );

    // Writes after the link reach staging through archive-get.
    s.source.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'later' FROM generate_series(301, 350) g",
    );
    archive_now(&s);
    sync_until(&s, "br", "350");

    // A resync restores over the files (--delta), on a new timeflow.
    let before = snapshots(&s.pgvirt, "br").len();
    let again = s.pgvirt.json(&["dsource", "sync", "br", "--resync"]);
    assert_eq!(again["metadata"]["provisionable"], json!(true));
    assert_eq!(snapshots(&s.pgvirt, "br").len(), before + 1);
    s.pgvirt.ok(&["dsource", "delete", "br", "--with-vdbs"]);
}

#[test]
fn staging_push_of_a_pgbackrest_restore_by_the_user() {
    let s = Stack::new();
    let repo = Repo::new(&s);
    s.source.psql(
        "postgres",
        "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 250) g",
    );
    repo.backup();
    s.source.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(251, 260) g",
    );
    archive_now(&s);
    let expected = s.source.psql("postgres", &checksum_sql("t"));
    let mount = super::staging_push::link_empty(&s, "brpush");
    let data = mount.join("data");
    // The user restores from the repository into data/, lets it recover
    // to the end of the archive, and stops it.
    repo.run(&[&format!("--pg1-path={}", data.display()), "restore"]);
    let port = free_port();
    user_start(&data, port);
    for _ in 0..200 {
        if super::sql(port, "postgres", "SELECT NOT pg_is_in_recovery()") == "t" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        super::sql(port, "postgres", "SELECT count(*) FROM t"),
        "260"
    );
    user_stop(&data);
    let snap = s.pgvirt.json(&["dsource", "sync", "brpush"]);
    assert_eq!(snap["metadata"]["provisionable"], json!(true), "{snap}");
    s.pgvirt
        .ok(&["vdb", "provision", "brv", "--from", "brpush"]);
    assert_eq!(s.vdb_sql("brv", &checksum_sql("t")), expected);
}
