//! Kills at every step, bad tables and targets, a target down, hostile
//! names, and a target's password.

use serde_json::{json, Value};

use super::{assert_target_equal, leftovers, Setup, LOAD};
use crate::support::{spawn_paused, Cluster};

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

/// A kill while the tracking is being installed (its transaction open), and
/// one while an export is being removed (origins dropped, the source not
/// yet): the same command again finishes the job.
#[test]
fn a_kill_during_install_or_remove_is_finished_by_the_same_command() {
    let s = Setup::new(1);
    s.source.psql("postgres", LOAD);
    s.add("ir");
    let mut child = spawn_paused(
        s.pgvirt.command(&["export", "install", "ir"]),
        "export.installing",
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    s.pgvirt.ok(&["export", "install", "ir"]);
    s.pgvirt.ok(&["export", "run", "ir"]);
    s.source.psql("postgres", LOAD);
    s.pgvirt.ok(&["export", "run", "ir"]);
    s.assert_equal("after a killed install, an install and two runs");

    let mut child = spawn_paused(
        s.pgvirt.command(&["export", "remove", "ir"]),
        "export.removing",
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let listed = s.pgvirt.json(&["export", "list"]);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "still listed: {listed}"
    );
    s.pgvirt.ok(&["export", "remove", "ir"]);
    assert_eq!(
        leftovers(&s.source, &s.targets[0], "ir"),
        ("0 0 0 0".to_owned(), "0".to_owned())
    );
    assert_eq!(s.pgvirt.json(&["export", "list"]), json!([]));
}
