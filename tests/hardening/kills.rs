//! SIGKILL at 50 ms steps (finer than the 100 ms asked) through link, sync, provision, refresh, rewind
//! and delete, on a copy pool and a copy-on-write one: after each kill, one
//! ordinary command, then the state must be whole (see
//! `Stack::assert_whole`) — and the object either all there or all gone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{free_port, Stack};

const STEP: Duration = Duration::from_millis(50);
/// A sweep that never gets to the end is itself a failure.
const MAX_STEPS: u32 = 120;

/// Runs `args`, SIGKILLs it `after` from its start; true when it ended by
/// itself first (successfully: a failure is a failed test).
fn kill_after(s: &Stack, args: &[&str], after: Duration) -> bool {
    let mut child = s
        .pgvirt
        .command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + after;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "pgvirt {args:?} failed by itself: {err}");
            return true;
        }
        if Instant::now() >= deadline {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `args(i)` at 100 ms, 200 ms, ... until it runs to its end; after
/// each kill runs `ordinary` and checks the state, then `check(i, done)`.
fn sweep(
    s: &Stack,
    op: &str,
    mut args: impl FnMut(u32) -> Vec<String>,
    ordinary: &[&str],
    mut check: impl FnMut(u32, bool),
) {
    let mut repaired = 0;
    for i in 0..MAX_STEPS {
        let a = args(i);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let done = kill_after(s, &a, STEP * (i + 1));
        let out = s.pgvirt.run(ordinary);
        assert!(
            out.status.success(),
            "{op}: {ordinary:?} after the kill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr);
        if said.contains("interrupted") {
            repaired += 1;
        }
        assert!(
            !said.contains("could not yet repair"),
            "{op} killed at {} ms: {said}",
            (i + 1) * 50
        );
        s.assert_whole(&format!("{op} killed at {} ms", (i + 1) * 50));
        check(i, done);
        if done {
            eprintln!("{op}: killed {i} times, {repaired} repairs, then it ran to its end");
            assert!(
                i < 2 || repaired > 0,
                "{op}: {i} kills and never a repair: the sweep tests nothing"
            );
            return;
        }
    }
    panic!("{op} never finished within {MAX_STEPS} steps");
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|x| x["name"].as_str().expect("name").to_owned())
        .collect()
}

fn link_sync_and_delete(s: &Stack) {
    // Link.
    sweep(
        s,
        "dsource link",
        |i| {
            vec![
                "dsource".into(),
                "link".into(),
                format!("l{i}"),
                "--source".into(),
                s.source_id.clone(),
                "--staging-port".into(),
                free_port().to_string(),
            ]
        },
        &["dsource", "list"],
        |i, done| {
            let listed = names(&s.pgvirt.json(&["dsource", "list"]));
            let name = format!("l{i}");
            if done {
                assert!(listed.contains(&name));
            } else if listed.contains(&name) {
                // Cut after it was whole: it must be usable.
                assert_eq!(
                    s.pgvirt.json(&["dsource", "show", &name])["status"],
                    json!("ACTIVE")
                );
            }
        },
    );
    let linked = names(&s.pgvirt.json(&["dsource", "list"]));
    let src = linked.last().expect("one linked").clone();
    for other in linked.iter().filter(|n| **n != src) {
        s.pgvirt.ok(&["dsource", "delete", other]);
    }
    s.source.psql(
        "postgres",
        "CREATE TABLE IF NOT EXISTS k (i int); INSERT INTO k VALUES (1)",
    );
    // Sync.
    sweep(
        s,
        "dsource sync",
        |_| vec!["dsource".into(), "sync".into(), src.clone()],
        &["dsource", "list"],
        |_, _| {},
    );
    // Delete, of a dSource linked for each step.
    sweep(
        s,
        "dsource delete",
        |i| {
            let name = format!("d{i}");
            let port = free_port().to_string();
            s.pgvirt.ok(&[
                "dsource",
                "link",
                &name,
                "--source",
                &s.source_id,
                "--staging-port",
                &port,
            ]);
            vec!["dsource".into(), "delete".into(), name]
        },
        &["dsource", "list"],
        |i, done| {
            let listed = names(&s.pgvirt.json(&["dsource", "list"]));
            if done {
                assert!(!listed.contains(&format!("d{i}")));
            }
        },
    );
    for name in names(&s.pgvirt.json(&["dsource", "list"])) {
        if name.starts_with('d') && name != src {
            s.pgvirt.ok(&["dsource", "delete", &name]);
        }
    }
}

fn vdb_lifecycle(s: &Stack) {
    s.source.psql("postgres", "CREATE TABLE v (i int)");
    s.link("src");
    // Provision.
    sweep(
        s,
        "vdb provision",
        |i| {
            vec![
                "vdb".into(),
                "provision".into(),
                format!("p{i}"),
                "--from".into(),
                "src".into(),
            ]
        },
        &["vdb", "list"],
        |i, done| {
            let listed = names(&s.pgvirt.json(&["vdb", "list"]));
            let name = format!("p{i}");
            if done || listed.contains(&name) {
                assert_eq!(s.vdb_sql(&name, "SELECT count(*) FROM v"), "0");
            }
        },
    );
    for name in names(&s.pgvirt.json(&["vdb", "list"])) {
        s.pgvirt.ok(&["vdb", "delete", &name]);
    }
    // Refresh: the VDB is there after every kill, old or new.
    s.pgvirt.ok(&["vdb", "provision", "r", "--from", "src"]);
    sweep(
        s,
        "vdb refresh",
        |_| vec!["vdb".into(), "refresh".into(), "r".into()],
        &["vdb", "list"],
        |_, _| assert_eq!(s.vdb_sql("r", "SELECT count(*) FROM v"), "0"),
    );
    // Rewind: the same.
    s.vdb_sql("r", "INSERT INTO v VALUES (1)");
    let snap = s.pgvirt.json(&["vdb", "snapshot", "r"])["id"].to_string();
    s.vdb_sql("r", "INSERT INTO v VALUES (2)");
    sweep(
        s,
        "vdb rewind",
        |_| {
            vec![
                "vdb".into(),
                "rewind".into(),
                "r".into(),
                "--snapshot".into(),
                snap.clone(),
            ]
        },
        &["vdb", "list"],
        |_, done| {
            let n = s.vdb_sql("r", "SELECT count(*) FROM v");
            if done {
                assert_eq!(n, "1", "rewound to its snapshot");
            } else {
                assert!(n == "1" || n == "2", "old or new, never neither: {n}");
            }
        },
    );
    // Delete, of a VDB provisioned for each step.
    sweep(
        s,
        "vdb delete",
        |i| {
            let name = format!("x{i}");
            s.pgvirt.ok(&["vdb", "provision", &name, "--from", "src"]);
            vec!["vdb".into(), "delete".into(), name]
        },
        &["vdb", "list"],
        |i, done| {
            let listed = names(&s.pgvirt.json(&["vdb", "list"]));
            let name = format!("x{i}");
            if done {
                assert!(!listed.contains(&name));
            } else if listed.contains(&name) {
                assert_eq!(s.vdb_sql(&name, "SELECT 1"), "1");
            }
        },
    );
}

#[test]
fn sigkill_during_link_sync_or_delete_of_a_dsource_is_repaired_by_the_next_command_on_a_copy_pool()
{
    link_sync_and_delete(&Stack::new());
}

#[test]
fn sigkill_during_link_sync_or_delete_of_a_dsource_is_repaired_by_the_next_command_on_xfs() {
    link_sync_and_delete(&Stack::on("xfs"));
}

#[test]
fn sigkill_during_provision_refresh_rewind_or_delete_is_repaired_by_the_next_command_on_a_copy_pool(
) {
    vdb_lifecycle(&Stack::new());
}

#[test]
fn sigkill_during_provision_refresh_rewind_or_delete_is_repaired_by_the_next_command_on_xfs() {
    vdb_lifecycle(&Stack::on("xfs"));
}
