//! Faults of a logical-replication dSource: pgvirt killed during link and
//! during a sync, staging killed under a write load, the source restarted,
//! DDL that breaks the apply, the slot dropped on the source.

use serde_json::{json, Value};

use super::super::{mount_of, sql};
use super::{
    kill_staging, link, linked, ours_on_source, params, provision, set_wal_level_logical,
    shop_source, sync, vdb_shop,
};
use crate::support::{checksum_sql, free_port, lsn, Stack, Writer};

#[test]
fn logical_faults_are_repaired_or_named() {
    let s = Stack::new();
    shop_source(&s);
    set_wal_level_logical(&s);
    let src = s.source.port;
    let dir = tempfile::tempdir().expect("tmp");
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "tables": ["public.items", "sales.orders", "public.w"]}}),
    );

    // pgvirt killed during link, once the subscription and its slot are
    // made (at the storage snapshot): the next command leaves nothing on
    // the source.
    let port = free_port().to_string();
    let mut child = crate::support::spawn_paused(
        s.pgvirt.command(&[
            "dsource",
            "link",
            "killed",
            "--source",
            &s.source_id,
            "--method",
            "logical_replication",
            "--params",
            &p,
            "--staging-port",
            &port,
        ]),
        "snapshot",
    );
    assert!(ours_on_source(&s).contains("pgvirt_killed"));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    s.pgvirt.run(&["dsource", "list"]);
    assert_eq!(
        ours_on_source(&s),
        "|",
        "left on the source after the repair"
    );

    // pgvirt killed while its subscription's slot is being made (held
    // back by a transaction open on the source); the copy then starts,
    // its table synchronisation slots too: the next command stops staging
    // and leaves no slot of any kind on the source.
    let mut holder = postgres::Config::new()
        .host("127.0.0.1")
        .port(src)
        .user("postgres")
        .dbname("shop")
        .connect(postgres::NoTls)
        .expect("connects");
    let mut tx = holder.transaction().expect("begin");
    tx.query("SELECT txid_current()", &[]).expect("an xid");
    let port = free_port().to_string();
    let mut child = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            "cut",
            "--source",
            &s.source_id,
            "--method",
            "logical_replication",
            "--params",
            &p,
            "--staging-port",
            &port,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while !ours_on_source(&s).contains("pgvirt_cut") {
        assert!(start.elapsed().as_secs() < 120, "no slot was made");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    tx.rollback().expect("end");
    std::thread::sleep(std::time::Duration::from_millis(800));
    s.pgvirt.run(&["dsource", "list"]);
    assert_eq!(
        ours_on_source(&s),
        "|",
        "left on the source after the repair"
    );
    assert!(s
        .pgvirt
        .json(&["dsource", "list"])
        .to_string()
        .find("\"cut\"")
        .is_none());

    // Staging killed with SIGKILL five times while applying a write load: it
    // resumes from its origin, nothing lost and nothing applied twice.
    let mut writer = Writer::start(src, "shop", std::time::Duration::from_millis(5));
    let first = linked(&link(&s, "lf", &p, "unused"));
    let mount = mount_of(&first);
    let mut after_kills = Value::Null;
    for pause in [150u64, 420, 260, 610, 330] {
        std::thread::sleep(std::time::Duration::from_millis(pause));
        kill_staging(&mount);
        // The next sync starts staging again (crash recovery), resumes
        // from the origin and snapshots what it applied.
        after_kills = sync(&s, "lf", &[]).expect("sync after a kill");
    }
    let log = writer.log();
    std::thread::sleep(std::time::Duration::from_millis(300));
    writer.stop();
    let log = {
        let mut l = log;
        l.sort();
        l
    };
    let at = lsn(after_kills["snapshot"]["metadata"]["source_lsn"]
        .as_str()
        .expect("lsn"));
    provision(&s, "k1", "lf");
    let n = log
        .iter()
        .find(|(_, l)| *l >= at)
        .map(|(i, _)| *i)
        .expect("in the log");
    assert_eq!(
        vdb_shop(&s, "k1", "SELECT count(*) || ' ' || max(id) FROM w"),
        format!("{n} {n}")
    );

    // pgvirt killed during a sync (the apply paused, staging stopped for
    // the storage snapshot): the next command starts staging and resumes
    // the apply.
    let mut child =
        crate::support::spawn_paused(s.pgvirt.command(&["dsource", "sync", "lf"]), "snapshot");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    s.pgvirt.run(&["dsource", "list"]);
    let shown = s.pgvirt.json(&["dsource", "show", "lf"]);
    assert_eq!(
        shown["replication"]["logical"]["enabled"],
        json!(true),
        "{shown}"
    );

    // The source restarted; the next sync holds every row.
    s.source.stop();
    s.source.restart();
    sync(&s, "lf", &[]).expect("sync after the source restarted");
    provision(&s, "k2", "lf");
    assert_eq!(
        vdb_shop(&s, "k2", &checksum_sql("public.w")),
        sql(src, "shop", &checksum_sql("public.w"))
    );

    // DDL on the source that breaks the apply: named, with what to do.
    sql(
        src,
        "shop",
        "ALTER TABLE public.items ADD COLUMN extra int; INSERT INTO public.items VALUES (9001, 'x', 1)",
    );
    let err = sync(&s, "lf", &[]).expect_err("the apply fails");
    assert!(
        err.contains("public.items") && err.contains("extra"),
        "{err}"
    );
    assert!(err.contains("INSERT"), "the failed change: {err}");
    assert!(err.contains("--resync"), "{err}");

    // The slot dropped on the source: a resync is needed, and works.
    let start = std::time::Instant::now();
    while sql(
        src,
        "shop",
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pgvirt_lf' AND active_pid IS NOT NULL;
         SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name = 'pgvirt_lf' AND NOT active",
    )
    .lines()
    .last()
        != Some("1")
    {
        assert!(start.elapsed().as_secs() < 30, "could not drop the slot");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let err = sync(&s, "lf", &[]).expect_err("the slot is gone");
    assert!(
        err.contains("needs a resync") && err.contains("--resync"),
        "{err}"
    );
    sync(&s, "lf", &["--resync"]).expect("resync");
    provision(&s, "k3", "lf");
    assert_eq!(
        vdb_shop(&s, "k3", "SELECT extra FROM public.items WHERE id = 9001"),
        "1"
    );

    s.pgvirt.ok(&["dsource", "delete", "lf", "--with-vdbs"]);
    assert_eq!(ours_on_source(&s), "|");
}
