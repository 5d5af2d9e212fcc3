//! Table export: tables with composite, text and uuid keys, under a random
//! load with key changes and a truncate, exported again and again to plain
//! PostgreSQL clusters (source configs); after each export the target's
//! tables equal the source's row by row. SIGKILL at every step of an
//! export, bad input, a target that is down, and `export remove` leaving
//! nothing behind. And a VDB as the target: its reference tables kept
//! fresh without a refresh.

use serde_json::{json, Value};

use crate::support::{spawn_paused, Cluster, Pgvirt, Stack};

/// The tables, as made on the source (targets get them too, one with a
/// column more).
const TABLES: &str = "
CREATE SCHEMA ex;
CREATE SEQUENCE ex.ids;
CREATE TABLE ex.comp (region text, n integer, payload text, amount numeric(12,2),
                      PRIMARY KEY (region, n));
CREATE TABLE ex.txt (code text PRIMARY KEY, v integer, note text);
CREATE TABLE ex.uu (id uuid PRIMARY KEY, v double precision, at timestamptz);
CREATE TABLE ex.nokey (x integer);
";

/// The columns compared, per table, in key order.
const COMPARE: [(&str, &str); 3] = [
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
const LOAD: &str = "
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
struct Setup {
    pgvirt: Pgvirt,
    source: Cluster,
    targets: Vec<Cluster>,
    source_id: String,
    target_ids: Vec<String>,
}

impl Setup {
    fn new(targets: usize) -> Self {
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
    fn add(&self, name: &str) {
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
    fn assert_equal(&self, when: &str) {
        for (i, target) in self.targets.iter().enumerate() {
            assert_target_equal(&self.source, target, &format!("{when}, target {i}"));
        }
    }
}

fn assert_target_equal(source: &Cluster, target: &Cluster, when: &str) {
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
fn leftovers(source: &Cluster, target: &Cluster, name: &str) -> (String, String) {
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

#[test]
fn tables_with_composite_text_and_uuid_keys_stay_equal_under_random_load() {
    let s = Setup::new(1);
    s.source.psql("postgres", LOAD);
    s.add("ref");
    let ddl = s.pgvirt.ok(&["export", "ddl", "ref"]);
    assert!(
        ddl.contains("CREATE TRIGGER") && ddl.contains("AFTER TRUNCATE"),
        "{ddl}"
    );
    s.pgvirt.ok(&["export", "install", "ref"]);
    // Installing again changes nothing.
    s.pgvirt.ok(&["export", "install", "ref"]);
    let first = s.pgvirt.json(&["export", "run", "ref"]);
    assert_eq!(
        first["targets"][0]["tables"][0]["full"],
        json!(true),
        "{first}"
    );
    s.assert_equal("after the first export (whole tables)");
    for round in 1..=6 {
        s.source.psql("postgres", LOAD);
        if round == 3 {
            s.source.psql(
                "postgres",
                "TRUNCATE ex.txt; INSERT INTO ex.txt SELECT 'after-truncate-' || i, i, 'x' FROM generate_series(1, 25) i;",
            );
        }
        let status = s.pgvirt.json(&["export", "status", "ref"]);
        let waiting: u64 = status
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| l["changes_waiting"].as_u64().expect("count"))
            .sum();
        assert!(waiting > 0, "round {round}: no changes waiting: {status}");
        let run = s.pgvirt.json(&["export", "run", "ref"]);
        if round == 3 {
            assert_eq!(run["targets"][0]["tables"][1]["full"], json!(true), "{run}");
        } else {
            assert_eq!(
                run["targets"][0]["tables"][0]["full"],
                json!(false),
                "{run}"
            );
        }
        s.assert_equal(&format!("after export round {round}"));
    }
    // Everything applied is purged; the status says so.
    let status = s.pgvirt.json(&["export", "status", "ref"]);
    for line in status.as_array().expect("lines") {
        assert_eq!(line["changes_waiting"], json!(0), "{status}");
        assert!(line["rows_shipped"].as_u64().expect("rows") > 0, "{status}");
        assert!(line["last_export_at"].is_i64(), "{status}");
    }
    let kept = s.source.psql(
        "postgres",
        "SELECT count(*) FROM pgvirt_export_ref.changes_1",
    );
    assert_eq!(kept, "0", "applied changes are purged");
    // The target's origin holds the export's high-water mark.
    let origin = s.targets[0].psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_origin_status s JOIN pg_replication_origin o ON o.roident = s.local_id WHERE o.roname LIKE 'pgvirt_export.ref.%' AND s.remote_lsn > '0/1'",
    );
    assert_eq!(origin, "1");
    // A reset ships whole tables again, and they are still equal.
    s.pgvirt.ok(&["export", "reset", "ref"]);
    s.targets[0].psql(
        "postgres",
        "INSERT INTO ex.txt (code, v) VALUES ('stray', 1)",
    );
    let run = s.pgvirt.json(&["export", "run", "ref"]);
    assert_eq!(run["targets"][0]["tables"][1]["full"], json!(true), "{run}");
    s.assert_equal("after a reset");

    s.pgvirt.ok(&["export", "remove", "ref"]);
    let (on_source, on_target) = leftovers(&s.source, &s.targets[0], "ref");
    assert_eq!(
        on_source, "0 0 0 0",
        "triggers, functions, tables, schema left"
    );
    assert_eq!(on_target, "0", "origins left on the target");
    let listed = s.pgvirt.json(&["export", "list"]);
    assert_eq!(listed, json!([]));
}

#[test]
fn a_kill_at_every_step_of_an_export_is_repaired_by_the_next_run() {
    let s = Setup::new(1);
    s.source.psql("postgres", LOAD);
    s.add("k");
    s.pgvirt.ok(&["export", "install", "k"]);
    s.pgvirt.ok(&["export", "run", "k"]);
    // `export.applying` twice: once the cut-short apply's psql goes on and
    // commits, once its session is ended too (the transaction rolls back).
    for (step, end_session) in [
        ("export.locked", false),
        ("export.extracted", false),
        ("export.applying", false),
        ("export.applying", true),
        ("export.applied", false),
    ] {
        s.source.psql("postgres", LOAD);
        let mut child = spawn_paused(s.pgvirt.command(&["export", "run", "k"]), step);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        if end_session {
            let ended = s.targets[0].psql(
                "postgres",
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgvirt-export') t",
            );
            // Zero when the engine's watchdog has ended it already.
            assert!(ended == "1" || ended == "0", "{ended}");
        }
        // The next ordinary run (an apply cut short may still be finishing).
        s.pgvirt.ok(&["export", "run", "k"]);
        s.assert_equal(&format!("after a kill at {step} and a run"));
        let status = s.pgvirt.json(&["export", "status", "k"]);
        for line in status.as_array().expect("lines") {
            assert_eq!(line["changes_waiting"], json!(0), "{step}: {status}");
        }
    }
    // A kill leaves the rows in flight in the work directory; the next
    // run starts a fresh one, and remove takes it away.
    s.source.psql("postgres", LOAD);
    let mut child = spawn_paused(
        s.pgvirt.command(&["export", "run", "k"]),
        "export.extracted",
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let envs = s.pgvirt.json(&["env", "list"]);
    let scratch = std::path::PathBuf::from(envs[0]["scratch"].as_str().expect("scratch"));
    assert!(
        scratch.join("export-k-0").is_dir(),
        "the killed run's directory"
    );
    s.pgvirt.ok(&["export", "remove", "k"]);
    assert!(
        !scratch.join("export-k-0").exists(),
        "remove takes the work directory"
    );
    assert_eq!(
        leftovers(&s.source, &s.targets[0], "k"),
        ("0 0 0 0".to_owned(), "0".to_owned())
    );
}

#[test]
fn bad_tables_and_targets_are_refused_naming_them_and_nothing_is_applied() {
    let s = Setup::new(2);
    let src = s.source_id.clone();
    let (t0, t1) = (s.target_ids[0].clone(), s.target_ids[1].clone());
    let p = &s.pgvirt;

    // Flags: a table not written SCHEMA.TABLE; a target that is nothing.
    let err = p.fails(&[
        "export", "add", "x", "--source", &src, "--tables", "plain", "--target", &t0,
    ]);
    assert!(err.contains("--tables") && err.contains("plain"), "{err}");
    let err = p.fails(&[
        "export", "add", "x", "--source", &src, "--tables", "ex.txt", "--target", "nowhere",
    ]);
    assert!(err.contains("nowhere"), "{err}");
    let err = p.fails(&[
        "export",
        "add",
        "x",
        "--source",
        &src,
        "--tables",
        "ex.txt,ex.txt",
        "--target",
        &t0,
    ]);
    assert!(err.contains("twice"), "{err}");

    // A table with no key is refused at install, by name; nothing made.
    p.ok(&[
        "export",
        "add",
        "nk",
        "--source",
        &src,
        "--tables",
        "ex.txt,ex.nokey",
        "--target",
        &t0,
    ]);
    let err = p.fails(&["export", "install", "nk"]);
    assert!(
        err.contains("ex.nokey") && err.contains("no primary key"),
        "{err}"
    );
    assert_eq!(leftovers(&s.source, &s.targets[0], "nk").0, "0 0 0 0");
    // ... unless a unique index of NOT NULL columns is named for it.
    s.source.psql(
        "postgres",
        "ALTER TABLE ex.nokey ALTER x SET NOT NULL; CREATE UNIQUE INDEX nokey_x ON ex.nokey (x);",
    );
    p.ok(&["export", "remove", "nk"]);
    p.ok(&[
        "export",
        "add",
        "nk",
        "--source",
        &src,
        "--tables",
        "ex.nokey",
        "--key",
        "ex.nokey=nokey_x",
        "--target",
        &t0,
    ]);
    s.targets[0].psql(
        "postgres",
        "ALTER TABLE ex.nokey ALTER x SET NOT NULL; CREATE UNIQUE INDEX nokey_x ON ex.nokey (x);",
    );
    p.ok(&["export", "install", "nk"]);
    s.source.psql(
        "postgres",
        "INSERT INTO ex.nokey SELECT generate_series(1, 10)",
    );
    p.ok(&["export", "run", "nk"]);
    s.source
        .psql("postgres", "UPDATE ex.nokey SET x = x + 100 WHERE x < 4");
    p.ok(&["export", "run", "nk"]);
    assert_eq!(
        s.targets[0].psql(
            "postgres",
            "SELECT string_agg(x::text, ',' ORDER BY x) FROM ex.nokey"
        ),
        "4,5,6,7,8,9,10,101,102,103"
    );
    p.ok(&["export", "remove", "nk"]);

    // Two targets; one of them wrong in each way in turn: nothing applied
    // there, the error names the table or column; the other gets its rows.
    s.source.psql("postgres", LOAD);
    s.add("two");
    p.ok(&["export", "install", "two"]);
    let origin_count = |c: &Cluster| {
        c.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgvirt_export.two.%'",
        )
    };
    let rows = |c: &Cluster| c.psql("postgres", "SELECT count(*) FROM ex.txt");
    for (break_it, fix_it, named) in [
        (
            "ALTER TABLE ex.uu RENAME TO uu_old",
            "ALTER TABLE ex.uu_old RENAME TO uu",
            "ex.uu",
        ),
        (
            "ALTER TABLE ex.comp DROP COLUMN payload",
            "ALTER TABLE ex.comp ADD COLUMN payload text",
            "\"payload\"",
        ),
        (
            "ALTER TABLE ex.txt ALTER COLUMN v TYPE bigint",
            "ALTER TABLE ex.txt ALTER COLUMN v TYPE integer",
            "\"v\" is bigint",
        ),
    ] {
        s.targets[1].psql("postgres", break_it);
        let before = rows(&s.targets[1]);
        let err = p.fails(&["export", "run", "two"]);
        assert!(err.contains(named), "{break_it}: {err}");
        assert_eq!(rows(&s.targets[1]), before, "{break_it}: nothing applied");
        assert_eq!(origin_count(&s.targets[1]), "0", "{break_it}: no progress");
        assert_target_equal(&s.source, &s.targets[0], break_it);
        s.targets[1].psql("postgres", fix_it);
    }
    p.ok(&["export", "run", "two"]);
    s.assert_equal("after the target was fixed");

    // A target that is down: the other still gets its rows, and the changes
    // the down one lacks are kept for it.
    s.targets[1].stop();
    s.source.psql("postgres", LOAD);
    let err = p.fails(&["export", "run", "two"]);
    assert!(err.contains("cannot reach"), "{err}");
    assert_target_equal(&s.source, &s.targets[0], "with the other target down");
    let status = p.json(&["export", "status", "two"]);
    let down: Vec<&Value> = status
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| !l["error"].is_null())
        .collect();
    assert_eq!(down.len(), 3, "{status}");
    s.targets[1].restart();
    p.ok(&["export", "run", "two"]);
    s.assert_equal("after the target came back");
    let _ = t1;
    p.ok(&["export", "remove", "two"]);
    for t in &s.targets {
        assert_eq!(
            leftovers(&s.source, t, "two"),
            ("0 0 0 0".into(), "0".into())
        );
    }
}

#[test]
fn a_vdb_target_keeps_its_tables_fresh_without_a_refresh() {
    let s = Stack::new();
    s.source.psql("postgres", TABLES);
    s.source.psql("postgres", LOAD);
    // An empty VDB given the tables (provisioning from a snapshot is the
    // VDB tests' business; here the VDB is the target).
    s.pgvirt.ok(&["vdb", "create-empty", "dev"]);
    s.vdb_sql("dev", TABLES);
    // The VDB's own writes elsewhere stay; the exported tables follow the source.
    s.vdb_sql(
        "dev",
        "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)",
    );
    s.source.psql("postgres", LOAD);
    s.pgvirt.ok(&[
        "export",
        "add",
        "fresh",
        "--source",
        &s.source_id,
        "--tables",
        "ex.comp,ex.txt,ex.uu",
        "--target",
        "dev",
    ]);
    s.pgvirt.ok(&["export", "install", "fresh"]);
    for round in 0..3 {
        s.pgvirt.ok(&["export", "run", "fresh"]);
        for (table, query) in COMPARE {
            assert_eq!(
                s.vdb_sql("dev", query),
                s.source.psql("postgres", query),
                "round {round}: {table} on the VDB"
            );
        }
        s.source.psql("postgres", LOAD);
    }
    assert_eq!(s.vdb_sql("dev", "SELECT count(*) FROM mine"), "1");
    s.pgvirt.ok(&["export", "remove", "fresh"]);
    assert_eq!(
        s.vdb_sql(
            "dev",
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgvirt_export.%'"
        ),
        "0"
    );
    // An export whose VDB was deleted is still removed from the source.
    s.pgvirt.ok(&[
        "export",
        "add",
        "orphan",
        "--source",
        &s.source_id,
        "--tables",
        "ex.txt",
        "--target",
        "dev",
    ]);
    s.pgvirt.ok(&["export", "install", "orphan"]);
    s.pgvirt.ok(&["export", "run", "orphan"]);
    s.pgvirt.ok(&["vdb", "delete", "dev"]);
    s.pgvirt.fails(&["export", "run", "orphan"]);
    s.pgvirt.ok(&["export", "remove", "orphan"]);
    assert_eq!(
        s.source.psql(
            "postgres",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgvirt_export%'"
        ),
        "0"
    );
}

/// A table and columns named like SQL, a key column holding the trigger
/// functions' dollar-quote tag; and two exports whose names share a
/// prefix (`h`, `h.b`): removing one leaves the other's origin alone.
#[test]
fn hostile_names_are_quoted_everywhere_and_exports_keep_their_own_origins() {
    let s = Setup::new(1);
    let table = r#"CREATE TABLE ex."t""; DROP TABLE ex.txt; --" ("it's" integer, "$pgvirt$ x" text, "x""y" text, PRIMARY KEY ("it's", "$pgvirt$ x"));"#;
    s.source.psql("postgres", table);
    s.targets[0].psql("postgres", table);
    let hostile = r#"ex.t"; DROP TABLE ex.txt; --"#;
    let rows =
        r#"SELECT "it's", "$pgvirt$ x", "x""y" FROM ex."t""; DROP TABLE ex.txt; --" ORDER BY 1, 2"#;
    s.source.psql(
        "postgres",
        r#"INSERT INTO ex."t""; DROP TABLE ex.txt; --" SELECT i, 'k''' || i, '$$' || i FROM generate_series(1, 20) i"#,
    );
    for name in ["h", "h.b"] {
        s.pgvirt.ok(&[
            "export",
            "add",
            name,
            "--source",
            &s.source_id,
            "--tables",
            hostile,
            "--target",
            &s.target_ids[0],
        ]);
        let ddl = s.pgvirt.ok(&["export", "ddl", name]);
        assert!(
            ddl.contains("$pgvirt1$"),
            "the tag avoids the key's name:\n{ddl}"
        );
        s.pgvirt.ok(&["export", "install", name]);
        s.pgvirt.ok(&["export", "run", name]);
    }
    s.source.psql(
        "postgres",
        r#"UPDATE ex."t""; DROP TABLE ex.txt; --" SET "it's" = "it's" + 100 WHERE "it's" < 5; DELETE FROM ex."t""; DROP TABLE ex.txt; --" WHERE "it's" > 18"#,
    );
    s.pgvirt.ok(&["export", "run", "h"]);
    assert_eq!(
        s.targets[0].psql("postgres", rows),
        s.source.psql("postgres", rows)
    );
    assert_eq!(
        s.source
            .psql("postgres", "SELECT to_regclass('ex.txt') IS NOT NULL"),
        "t",
        "nothing ran the name"
    );
    s.pgvirt.ok(&["export", "remove", "h"]);
    let left = s.targets[0].psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgvirt_export.h.b.%'",
    );
    assert_eq!(left, "1", "export h.b keeps its origin");
    let run = s.pgvirt.json(&["export", "run", "h.b"]);
    assert_eq!(
        run["targets"][0]["tables"][0]["full"],
        json!(false),
        "{run}"
    );
    assert_eq!(
        s.targets[0].psql("postgres", rows),
        s.source.psql("postgres", rows)
    );
    s.pgvirt.ok(&["export", "remove", "h.b"]);
    assert_eq!(
        leftovers(&s.source, &s.targets[0], "h"),
        ("0 0 0 0".into(), "0".into())
    );
}

/// Writers in flight while exports run: transactions that hold ordering
/// numbers for a while (a sleep between their statements) commit after
/// later ones. No change may be skipped: after the writers stop, one more
/// export makes the target equal.
#[test]
fn changes_committed_while_exports_run_are_never_skipped() {
    let s = Setup::new(1);
    s.add("busy");
    s.pgvirt.ok(&["export", "install", "busy"]);
    s.pgvirt.ok(&["export", "run", "busy"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("load.sql");
    std::fs::write(
        &script,
        "\\set k random(1, 3000)\n\\set d random(1, 3000)\n\\set s random(0, 30)\n\
         BEGIN;\n\
         INSERT INTO ex.txt VALUES ('p' || :k, :k, 'x') ON CONFLICT (code) DO UPDATE SET v = ex.txt.v + 1;\n\
         SELECT pg_sleep(:s / 1000.0);\n\
         DELETE FROM ex.txt WHERE code = 'p' || :d;\n\
         UPDATE ex.comp SET payload = md5(random()::text) WHERE n % 50 = :s;\n\
         INSERT INTO ex.comp VALUES ('eu', nextval('ex.ids'), 'y', 1);\n\
         COMMIT;\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let pgbench = crate::support::as_pg_user(format!("{}/pgbench", crate::support::PG_BIN))
        .args(["-n", "-c", "4", "-j", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg("-h")
        .arg(s.source.socket_dir())
        .args(["-p", &s.source.port.to_string(), "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pgbench starts");
    let started = std::time::Instant::now();
    let mut runs = 0;
    while started.elapsed() < std::time::Duration::from_secs(7) {
        s.pgvirt.ok(&["export", "run", "busy"]);
        runs += 1;
    }
    let out = pgbench.wait_with_output().expect("pgbench ends");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(runs >= 2, "only {runs} exports ran under load");
    s.pgvirt.ok(&["export", "run", "busy"]);
    s.assert_equal("after exports under a concurrent load");
}

/// A target that needs a password: psql gets it in its environment only.
/// A refused login fails saying so, without the password in the message
/// or the log; then it ships.
#[test]
fn a_target_password_reaches_psql_only_through_its_environment() {
    let s = Setup::new(1);
    let target = &s.targets[0];
    let secret = "Pw-3x4mpl3-S3cr3t";
    target.psql(
        "postgres",
        &format!("CREATE ROLE shipper LOGIN SUPERUSER PASSWORD '{secret}'"),
    );
    std::fs::write(
        target.data_dir().join("pg_hba.conf"),
        "local all all trust\nhost all shipper 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
    )
    .expect("pg_hba.conf");
    target.psql("postgres", "SELECT pg_reload_conf()");
    // Known by hand, over TCP, as the user with the password.
    let data = std::fs::canonicalize(target.data_dir()).expect("canonical");
    s.pgvirt.ok(&["source", "remove", &s.target_ids[0]]);
    let add = |password: &str| {
        let file = s.pgvirt.dir().join("target.json");
        std::fs::write(
            &file,
            json!({"name": "guarded", "data_directory": data, "port": target.port,
                   "user": "shipper", "password": password})
            .to_string(),
        )
        .expect("write");
        s.pgvirt.json(&[
            "source",
            "add",
            "--env",
            "local",
            "--file",
            file.to_str().expect("utf-8"),
        ])["id"]
            .to_string()
    };
    let id = add(secret);
    s.pgvirt.ok(&[
        "export",
        "add",
        "pw",
        "--source",
        &s.source_id,
        "--tables",
        "ex.txt",
        "--target",
        &id,
    ]);
    s.pgvirt.ok(&["export", "install", "pw"]);
    // The server stops taking it: the run fails, saying why, not what.
    target.psql("postgres", "ALTER ROLE shipper PASSWORD 'something-else'");
    let out = s.pgvirt.run(&["-vvv", "export", "run", "pw"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot log in") && stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "the password is in the output:\n{stderr}"
    );
    target.psql(
        "postgres",
        &format!("ALTER ROLE shipper PASSWORD '{secret}'"),
    );
    s.source.psql("postgres", LOAD);
    let out = s.pgvirt.run(&["-vvv", "export", "run", "pw"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains(secret),
        "the password is in the output:\n{all}"
    );
    let query = "SELECT code, v, note FROM ex.txt ORDER BY code";
    assert_eq!(
        target.psql("postgres", query),
        s.source.psql("postgres", query)
    );
    let listed = s.pgvirt.ok(&["export", "list", "--output", "json"]);
    assert!(!listed.contains(secret));
    s.pgvirt.ok(&["export", "remove", "pw"]);
}
