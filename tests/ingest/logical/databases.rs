//! Several databases of the source in one dSource (`--database` given
//! twice): one staging, a subscription and a slot per database; each VDB
//! holds every database exactly as of that database's origin LSN, which
//! the snapshot records; nothing is left in either database after delete.

use serde_json::{json, Value};

use super::super::sql;
use super::{params, provision, set_wal_level_logical, shop_source, sync, vdb_sql};
use crate::support::{checksum_sql, free_port, lsn, Stack, Writer};

/// Our slots on the source, and the publications of database `db`.
fn ours_in(s: &Stack, db: &str) -> String {
    sql(
        s.source.port,
        db,
        "SELECT coalesce((SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots), '') || '|' || coalesce((SELECT string_agg(pubname, ',') FROM pg_publication), '')",
    )
}

#[test]
fn one_logical_dsource_replicates_several_databases_each_vdb_as_of_each_origin() {
    let s = Stack::on("btrfs");
    shop_source(&s);
    set_wal_level_logical(&s);
    let src = s.source.port;
    sql(
        src,
        "shop",
        "ALTER TABLE public.nokey REPLICA IDENTITY FULL",
    );
    s.source
        .psql("postgres", "CREATE DATABASE billing OWNER shopowner");
    sql(
        src,
        "billing",
        "SET ROLE shopowner;
         CREATE TABLE public.w (id bigint PRIMARY KEY, v text);
         CREATE TABLE public.invoices (id serial PRIMARY KEY, amount int);
         INSERT INTO public.invoices (amount) SELECT g * 3 FROM generate_series(1, 400) g;",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = params(
        dir.path(),
        json!({"logical_replication": {"sync_workers": 2}}),
    );
    let dbs = ["shop", "billing"];
    let link = || {
        let port = free_port().to_string();
        s.pgvirt
            .command(&[
                "dsource",
                "link",
                "multi",
                "--source",
                &s.source_id,
                "--method",
                "logical_replication",
                "--params",
                &p,
                "--database",
                "shop",
                "--database",
                "billing",
                "--staging-port",
                &port,
                "--output",
                "json",
            ])
            .output()
            .expect("runs")
    };
    // Every database is checked before anything is made: a table without
    // a key in the second is named with its database, nothing is left.
    sql(src, "billing", "CREATE TABLE public.loose (x int)");
    let refused = link();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("in database billing, public.loose"),
        "{err}"
    );
    assert_eq!(s.pgvirt.json(&["dsource", "list"]), json!([]));
    for db in dbs {
        assert_eq!(ours_in(&s, db), "|", "left in {db} by a refused link");
    }
    sql(
        src,
        "billing",
        "ALTER TABLE public.loose REPLICA IDENTITY FULL",
    );
    let mut writers: Vec<Writer> = dbs
        .iter()
        .map(|db| Writer::start(src, db, std::time::Duration::from_millis(5)))
        .collect();
    let out = link();
    assert!(
        out.status.success(),
        "link failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_slice(&out.stdout).expect("json");
    // Two slots, one per database, both named after the dSource.
    let slots = ours_in(&s, "postgres");
    let names: Vec<&str> = slots.split('|').next().unwrap_or("").split(',').collect();
    assert_eq!(names.len(), 2, "{slots}");
    assert!(
        names.iter().all(|n| n.starts_with("pgvirt_multi_")) && names[0] != names[1],
        "{slots}"
    );
    let mut snaps = vec![first];
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        snaps.push(sync(&s, "multi", &[]).expect("sync"));
    }
    for (i, snap) in snaps.iter().enumerate() {
        let id = snap["snapshot"]["id"].to_string();
        provision(&s, &format!("multi{i}"), &format!("multi@{id}"));
    }
    let logs: Vec<Vec<(i64, u64)>> = writers.iter().map(Writer::log).collect();
    for w in &mut writers {
        w.stop();
    }
    for (i, snap) in snaps.iter().enumerate() {
        let vdb = format!("multi{i}");
        let meta = &snap["snapshot"]["metadata"];
        let each = meta["logical"]["databases"]
            .as_array()
            .expect("logical.databases");
        assert_eq!(each.len(), 2, "{meta}");
        let origins: Vec<u64> = each
            .iter()
            .map(|d| lsn(d["origin_lsn"].as_str().expect("origin_lsn")))
            .collect();
        assert_eq!(
            lsn(meta["source_lsn"].as_str().expect("source_lsn")),
            *origins.iter().min().expect("two"),
            "{meta}"
        );
        for ((db, log), (d, at)) in dbs.iter().zip(&logs).zip(each.iter().zip(&origins)) {
            assert_eq!(d["database"], json!(db), "{meta}");
            let n = log
                .iter()
                .find(|(_, l)| l >= at)
                .map(|(i, _)| *i)
                .expect("in the log");
            assert_eq!(
                vdb_sql(
                    &s,
                    &vdb,
                    db,
                    "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM w"
                ),
                format!("{n} {n}"),
                "VDB {vdb}, database {db} at {at:X}"
            );
            assert_eq!(
                vdb_sql(&s, &vdb, db, "SELECT count(*) FROM pg_subscription"),
                "0"
            );
        }
        assert_eq!(
            vdb_sql(&s, &vdb, "billing", &checksum_sql("public.invoices")),
            sql(src, "billing", &checksum_sql("public.invoices"))
        );
    }
    let shown = s.pgvirt.json(&["dsource", "show", "multi"]);
    let each = shown["replication"]["logical"]["databases"]
        .as_array()
        .expect("databases")
        .clone();
    assert_eq!(
        each.iter()
            .map(|d| d["database"].clone())
            .collect::<Vec<_>>(),
        vec![json!("shop"), json!("billing")],
        "{shown}"
    );
    assert!(
        each.iter().all(|d| d["tables"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["state"] == "ready"))),
        "{shown}"
    );
    s.assert_whole("after a logical dSource of two databases");
    s.pgvirt.ok(&["dsource", "delete", "multi", "--with-vdbs"]);
    for db in dbs {
        assert_eq!(ours_in(&s, db), "|", "left in {db}");
    }
}
