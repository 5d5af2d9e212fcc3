//! On a pool that snapshots atomically (btrfs), a sync snapshots the
//! running staging with its apply paused (never stopped): the VDBs, which
//! recover as after a crash, hold exactly the source's rows as of each
//! snapshot's origin LSN; tables made on the source later are picked up by
//! the next sync.

use std::path::Path;

use serde_json::json;

use super::super::{mount_of, sql};
use super::{
    link, linked, ours_on_source, params, provision, set_wal_level_logical, shop_source, sync,
    vdb_shop,
};
use crate::support::{checksum_sql, lsn, Stack, Writer};

fn postmaster(mount: &Path) -> String {
    std::fs::read_to_string(mount.join("data/postmaster.pid"))
        .expect("staging runs")
        .lines()
        .next()
        .expect("pid")
        .to_owned()
}

#[test]
fn on_btrfs_logical_snapshots_are_taken_of_the_running_staging_and_hold_the_source_as_of_their_origin_lsn(
) {
    let s = Stack::on("btrfs");
    shop_source(&s);
    set_wal_level_logical(&s);
    let src = s.source.port;
    sql(
        src,
        "shop",
        "ALTER TABLE public.nokey REPLICA IDENTITY FULL",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = params(
        dir.path(),
        json!({"logical_replication": {"database": "shop"}}),
    );
    let mut writer = Writer::start(src, "shop", std::time::Duration::from_millis(5));
    let first = linked(&link(&s, "live", &p, "unused"));
    let mount = mount_of(&first);
    let staging = postmaster(&mount);
    let mut snaps = vec![first];
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        snaps.push(sync(&s, "live", &[]).expect("sync"));
    }
    assert_eq!(
        postmaster(&mount),
        staging,
        "staging was stopped for a snapshot"
    );
    for (i, snap) in snaps.iter().enumerate() {
        let meta = &snap["snapshot"]["metadata"];
        assert_eq!(meta["taken_running"], json!(true), "{meta}");
        assert_eq!(meta["provisionable"], json!(true), "{meta}");
        let id = snap["snapshot"]["id"].to_string();
        provision(&s, &format!("live{i}"), &format!("live@{id}"));
    }
    let log = writer.log();
    writer.stop();
    for (i, snap) in snaps.iter().enumerate() {
        let vdb = format!("live{i}");
        let meta = &snap["snapshot"]["metadata"];
        let at = lsn(meta["source_lsn"].as_str().expect("source_lsn"));
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
            "VDB {vdb} at {at:X}"
        );
        assert_eq!(
            vdb_shop(&s, &vdb, &checksum_sql("sales.orders")),
            sql(src, "shop", &checksum_sql("sales.orders"))
        );
        assert_eq!(
            vdb_shop(&s, &vdb, "SELECT count(*) FROM pg_subscription"),
            "0"
        );
        vdb_shop(&s, &vdb, "INSERT INTO public.tick (t) VALUES ('vdb')");
    }
    // Tables made on the source later (one in a new schema, its name
    // needing quotes) are picked up by the next sync.
    sql(
        src,
        "shop",
        "CREATE SCHEMA extra; CREATE TABLE extra.\"Later\" (id serial PRIMARY KEY, v text);
         INSERT INTO extra.\"Later\" (v) SELECT 'l' || g FROM generate_series(1, 25) g;
         CREATE TABLE public.later2 (id int PRIMARY KEY); INSERT INTO public.later2 SELECT generate_series(1, 7)",
    );
    let after = sync(&s, "live", &[]).expect("a sync picks up new tables");
    provision(&s, "later", &format!("live@{}", after["snapshot"]["id"]));
    assert_eq!(
        vdb_shop(
            &s,
            "later",
            "SELECT count(*) || ' ' || max(v) FROM extra.\"Later\""
        ),
        "25 l9"
    );
    assert_eq!(
        vdb_shop(&s, "later", "SELECT count(*) FROM public.later2"),
        "7"
    );
    let shown = s.pgvirt.json(&["dsource", "show", "live"]);
    let tables = shown["replication"]["logical"]["tables"]
        .as_array()
        .expect("tables")
        .clone();
    assert_eq!(tables.len(), 7, "{shown}");
    assert!(tables.iter().all(|t| t["state"] == "ready"), "{shown}");
    s.assert_whole("after live logical snapshots");
    s.pgvirt.ok(&["dsource", "delete", "live", "--with-vdbs"]);
    assert_eq!(ours_on_source(&s), "|");
}
