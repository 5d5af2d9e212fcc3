//! The two initial copies: a dump of the slot's exported snapshot (the
//! default) and the subscription's table synchronisation
//! (`initial_copy: table_sync`), each under a write load holding exactly
//! the source's rows as of the origin LSN its snapshots record; and pgvirt
//! killed while pg_dump runs, and while pg_restore runs, repaired by the
//! next command; a publication
//! with row filters refused for a dump; partitions of a table published as
//! its root dumped.

use serde_json::{json, Value};

use super::super::sql;
use super::{
    link, linked, ours_on_source, params, provision, set_wal_level_logical, shop_source, sync,
    vdb_shop,
};
use crate::support::{free_port, lsn, processes, Stack, Writer};

/// Pids of processes whose arguments name dSource `name`'s dump.
fn dumping(name: &str) -> Vec<i32> {
    let dir = format!("dsource-{name}/logical-dump");
    processes()
        .into_iter()
        .filter(|(_, args, _)| args.iter().any(|a| a.contains(&dir)))
        .map(|(pid, _, _)| pid)
        .collect()
}

#[test]
fn logical_initial_copy_by_dump_or_table_sync_holds_the_source_as_of_the_origin_lsn() {
    let s = Stack::new();
    shop_source(&s);
    set_wal_level_logical(&s);
    let src = s.source.port;
    let dir = tempfile::tempdir().expect("tmp");
    let tables = json!(["public.items", "sales.orders", "public.w"]);

    // A publication with a row filter: a dump would not apply it.
    sql(
        src,
        "shop",
        "CREATE PUBLICATION filtered FOR TABLE public.items WHERE (id > 10)",
    );
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "publication": "filtered"}}),
    );
    let out = link(&s, "cf", &p, "unused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("initial_copy") && err.contains("row filters"),
        "{err}"
    );
    sql(src, "shop", "DROP PUBLICATION filtered");
    assert_eq!(ours_on_source(&s), "|");

    // A partitioned table published as its root: the dump holds its
    // partitions' rows.
    sql(
        src,
        "shop",
        "CREATE TABLE public.parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100);
         CREATE TABLE public.parted_2 PARTITION OF public.parted FOR VALUES FROM (100) TO (1000);
         INSERT INTO public.parted SELECT generate_series(1, 250);
         CREATE PUBLICATION rooted FOR TABLE public.parted WITH (publish_via_partition_root = true)",
    );
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "publication": "rooted"}}),
    );
    let rooted = linked(&link(&s, "cr", &p, "unused"));
    let mount = super::super::mount_of(&rooted);
    let port = rooted["dsource"]["parameters"]["staging_port"].to_string();
    let socket = mount.join("pgvirt");
    let count = super::super::pg(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-h",
            socket.to_str().expect("utf-8"),
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "shop",
            "-c",
            "SELECT count(*) FROM public.parted",
        ],
    );
    assert_eq!(count, "250");
    s.pgvirt.ok(&["dsource", "delete", "cr", "--with-vdbs"]);
    sql(src, "shop", "DROP PUBLICATION rooted");
    assert_eq!(ours_on_source(&s), "|");

    // Both copies under a write load; public.tick is outside the
    // publication: staging has it, empty.
    let mut writer = Writer::start(src, "shop", std::time::Duration::from_millis(5));
    let mut snaps: Vec<(&str, Value)> = Vec::new();
    for (name, copy) in [("cd", "dump"), ("ct", "table_sync")] {
        let p = params(
            dir.path(),
            json!({"logical_replication": {"database": "shop", "tables": tables, "initial_copy": copy}}),
        );
        let first = linked(&link(&s, name, &p, "unused"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = sync(&s, name, &[]).expect("sync");
        snaps.push((name, first));
        snaps.push((name, second));
    }
    let log = writer.log();
    writer.stop();
    for (i, (name, snap)) in snaps.iter().enumerate() {
        let vdb = format!("v{i}");
        let id = snap["snapshot"]["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| snap["snapshot"]["id"].to_string());
        provision(&s, &vdb, &format!("{name}@{id}"));
        let at = lsn(snap["snapshot"]["metadata"]["source_lsn"]
            .as_str()
            .expect("source_lsn"));
        let n = log
            .iter()
            .find(|(_, l)| *l >= at)
            .map(|(i, _)| *i)
            .expect("in the log");
        assert_eq!(
            vdb_shop(
                &s,
                &vdb,
                "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM w"
            ),
            format!("{n} {n}"),
            "VDB {vdb} of {name} at {at:X}"
        );
        assert_eq!(
            vdb_shop(&s, &vdb, "SELECT (SELECT count(*) FROM sales.orders) || ' ' || (SELECT count(*) FROM public.tick)"),
            "500 0",
            "{name}"
        );
    }
    for name in ["cd", "ct"] {
        s.pgvirt.ok(&["dsource", "delete", name, "--with-vdbs"]);
    }
    assert_eq!(ours_on_source(&s), "|");

    // pgvirt killed while pg_dump runs (a table of some 100 MB): the next
    // command stops the dump and its replication session, and leaves no
    // slot, publication or dump behind.
    sql(
        src,
        "shop",
        "CREATE TABLE public.big (id int PRIMARY KEY, pad text);
         INSERT INTO public.big SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 1200000) g",
    );
    let tables = json!(["public.items", "public.big"]);
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop", "tables": tables}}),
    );
    // Killed while pg_dump runs, then while pg_restore loads staging.
    for (name, program) in [("dk", "pg_dump"), ("dr", "pg_restore")] {
        killed_copy_is_repaired(&s, &p, name, program);
    }
}

/// pgvirt killed while `program` works on link `name`'s dump: the next
/// command stops it (and the replication session), and leaves no slot,
/// publication, dump or dSource behind.
fn killed_copy_is_repaired(s: &Stack, p: &str, name: &str, program: &str) {
    let port = free_port().to_string();
    let mut child = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            name,
            "--source",
            &s.source_id,
            "--method",
            "logical_replication",
            "--params",
            p,
            "--staging-port",
            &port,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let dir = format!("dsource-{name}/logical-dump");
    let working = || {
        processes().into_iter().any(|(_, args, _)| {
            args.first().is_some_and(|a| a.ends_with(program))
                && args.iter().any(|a| a.contains(&dir))
        })
    };
    let start = std::time::Instant::now();
    while !working() {
        assert!(start.elapsed().as_secs() < 120, "{program} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ours_on_source(s).contains(&format!("pgvirt_{name}")));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    s.pgvirt.run(&["dsource", "list"]);
    assert_eq!(dumping(name), Vec::<i32>::new(), "{program} left running");
    assert_eq!(
        ours_on_source(s),
        "|",
        "left on the source after the repair of a kill during {program}"
    );
    let left = crate::support::run_ok(std::process::Command::new("bash").arg("-c").arg(format!(
        "ls -d ~postgres/.pgvirt/*/dsource-{name}/logical-dump 2>/dev/null | wc -l"
    )));
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0");
    assert!(s
        .pgvirt
        .json(&["dsource", "list"])
        .to_string()
        .find(&format!("\"{name}\""))
        .is_none());
}
