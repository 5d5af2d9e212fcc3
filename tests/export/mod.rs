//! Table export: tables with composite, text and uuid keys, under a random
//! load with key changes and a truncate, exported again and again to plain
//! PostgreSQL clusters (source configs); after each export the target's
//! tables equal the source's row by row. SIGKILL at every step of an
//! export, bad input, a target that is down, and `export remove` leaving
//! nothing behind. And a VDB as the target: its reference tables kept
//! fresh without a refresh.
//!
//! - [`shipping`]: exports under load, concurrent writers, a VDB target.
//! - [`faults`]: kills, bad input, targets down, hostile names, passwords.

mod faults;
mod shipping;

use serde_json::json;

use crate::support::{Cluster, Pgvirt};

/// The tables, as made on the source (targets get them too, one with a
/// column more).
pub(super) const TABLES: &str = "
CREATE SCHEMA ex;
CREATE SEQUENCE ex.ids;
CREATE TABLE ex.comp (region text, n integer, payload text, amount numeric(12,2),
                      PRIMARY KEY (region, n));
CREATE TABLE ex.txt (code text PRIMARY KEY, v integer, note text);
CREATE TABLE ex.uu (id uuid PRIMARY KEY, v double precision, at timestamptz);
CREATE TABLE ex.nokey (x integer);
";

/// The columns compared, per table, in key order.
pub(super) const COMPARE: [(&str, &str); 3] = [
    (
        "ex.comp",
        "SELECT region, n, payload, amount FROM ex.comp ORDER BY region, n",
    ),
    ("ex.txt", "SELECT code, v, note FROM ex.txt ORDER BY code"),
    ("ex.uu", "SELECT id, v, at FROM ex.uu ORDER BY id"),
];

/// One round of random load: inserts, updates (of values and of keys),
/// deletes, and a transaction that inserts, changes and deletes the same
/// rows. Keys come from a sequence, and a key change flips a sign or
/// appends to a text, so no statement collides with a row that exists.
pub(super) const LOAD: &str = "
INSERT INTO ex.comp SELECT (ARRAY['eu','us','ap'])[1 + floor(random() * 3)::int], nextval('ex.ids'),
    md5(random()::text), round((random() * 1000)::numeric, 2) FROM generate_series(1, 60);
INSERT INTO ex.txt SELECT 'k' || nextval('ex.ids'), floor(random() * 100)::int, md5(random()::text)
    FROM generate_series(1, 40);
INSERT INTO ex.uu SELECT gen_random_uuid(), random(), now() - random() * interval '1 day'
    FROM generate_series(1, 40);
UPDATE ex.comp SET payload = md5(random()::text) WHERE random() < 0.15;
UPDATE ex.comp SET n = -n WHERE random() < 0.05;
UPDATE ex.comp SET region = region || 'x' WHERE random() < 0.03;
UPDATE ex.txt SET v = v + 1, note = NULL WHERE random() < 0.15;
UPDATE ex.txt SET code = code || 'x' WHERE random() < 0.05;
UPDATE ex.uu SET id = gen_random_uuid() WHERE random() < 0.05;
UPDATE ex.uu SET v = -v WHERE random() < 0.1;
DELETE FROM ex.comp WHERE random() < 0.07;
DELETE FROM ex.txt WHERE random() < 0.07;
DELETE FROM ex.uu WHERE random() < 0.07;
BEGIN;
INSERT INTO ex.txt VALUES ('gone', 1, 'short-lived'), ('moved', 2, 'renamed');
UPDATE ex.txt SET code = 'moved-' || nextval('ex.ids') WHERE code = 'moved';
DELETE FROM ex.txt WHERE code = 'gone';
COMMIT;
";

/// A source and targets, each a cluster known to pgvirt as a source config.
pub(super) struct Setup {
    pub(super) pgvirt: Pgvirt,
    pub(super) source: Cluster,
    pub(super) targets: Vec<Cluster>,
    pub(super) source_id: String,
    pub(super) target_ids: Vec<String>,
}

impl Setup {
    pub(super) fn new(targets: usize) -> Self {
        let source = Cluster::start();
        let targets: Vec<Cluster> = (0..targets).map(|_| Cluster::start()).collect();
        let pgvirt = Pgvirt::new();
        pgvirt.install_and_add_local();
        let refreshed = pgvirt.json(&["env", "refresh", "local"]);
        let id_of = |c: &Cluster| {
            let data = std::fs::canonicalize(c.data_dir()).expect("canonical");
            refreshed["source_configs"]
                .as_array()
                .expect("configs")
                .iter()
                .find(|s| s["document"]["data_directory"] == json!(data))
                .expect("cluster discovered")["id"]
                .to_string()
        };
        let source_id = id_of(&source);
        let target_ids = targets.iter().map(id_of).collect();
        source.psql("postgres", TABLES);
        for t in &targets {
            t.psql("postgres", TABLES);
            // Targets may have more columns than the source.
            t.psql(
                "postgres",
                "ALTER TABLE ex.txt ADD COLUMN extra integer DEFAULT 7",
            );
        }
        Self {
            pgvirt,
            source,
            targets,
            source_id,
            target_ids,
        }
    }

    /// `export add NAME` of the three keyed tables to every target.
    pub(super) fn add(&self, name: &str) {
        let mut args = vec![
            "export",
            "add",
            name,
            "--source",
            &self.source_id,
            "--tables",
            "ex.comp,ex.txt,ex.uu",
        ];
        for id in &self.target_ids {
            args.extend(["--target", id]);
        }
        self.pgvirt.ok(&args);
    }

    /// Asserts every target's tables equal the source's, row by row.
    pub(super) fn assert_equal(&self, when: &str) {
        for (i, target) in self.targets.iter().enumerate() {
            assert_target_equal(&self.source, target, &format!("{when}, target {i}"));
        }
    }
}

pub(super) fn assert_target_equal(source: &Cluster, target: &Cluster, when: &str) {
    for (table, query) in COMPARE {
        let want = source.psql("postgres", query);
        let got = target.psql("postgres", query);
        if want != got {
            let want: Vec<&str> = want.lines().collect();
            let got: Vec<&str> = got.lines().collect();
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
            panic!(
                "{when}: {table} differs ({} rows on the source, {} on the target)\nmissing: {missing:#?}\nextra: {extra:#?}",
                want.len(),
                got.len()
            );
        }
    }
}

/// Counts what export `name` left on the source and on a target.
pub(super) fn leftovers(source: &Cluster, target: &Cluster, name: &str) -> (String, String) {
    let on_source = source.psql(
        "postgres",
        &format!(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgvirt_export_{name}%')
                 || ' ' || (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                            WHERE n.nspname = 'pgvirt_export_{name}')
                 || ' ' || (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'pgvirt_export_{name}')
                 || ' ' || (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvirt_export_{name}')"
        ),
    );
    let on_target = target.psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgvirt_export.%'",
    );
    (on_source, on_target)
}
