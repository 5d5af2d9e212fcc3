//! `pgvirt demo`, as the README runs it: the whole story, then nothing left.

use crate::support::{require_postgres, Pgvirt};

#[test]
fn the_demo_runs_start_to_finish_and_leaves_nothing() {
    require_postgres();
    let p = Pgvirt::new();
    let dir = tempfile::Builder::new()
        .prefix("pgvirt-demo-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let work = dir.path().join("work");
    let out = p.ok(&["demo", "--dir", work.to_str().expect("utf-8")]);
    for step in [
        "link the source as dSource `shop`",
        "provision VDB `dev`",
        "provision VDB `test`",
        "`test` and the source are untouched",
        "refresh `test`: it sees the change",
        "rewind `dev`: the table is back",
        "tear everything down",
    ] {
        assert!(out.contains(step), "missing step {step:?} in:\n{out}");
    }
    assert!(out.contains("demo finished"), "{out}");
    // On this machine's ext4, as root, the demo makes its own file system
    // so that a newcomer sees thin clones, and says so; then shows sizes.
    assert!(
        out.contains("so the demo made its own file system for thin clones"),
        "{out}"
    );
    assert!(
        out.contains("of their own the VDBs hold")
            && out.contains("thin clones: the rest is shared"),
        "{out}"
    );
    assert!(
        !out.contains("WARN"),
        "no raw log line in the step table:\n{out}"
    );
    assert!(!work.exists(), "the demo removed its work directory");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(work.to_str().expect("utf-8")),
        "nothing left mounted"
    );
}

#[test]
fn demo_keep_says_how_to_explore_and_teardown_leaves_nothing() {
    require_postgres();
    let p = Pgvirt::new();
    let dir = tempfile::Builder::new()
        .prefix("pgvirt-demo-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let work = dir.path().join("kept");
    let work_text = work.to_str().expect("utf-8").to_owned();
    let out = p.ok(&["demo", "--keep", "--dir", &work_text]);
    let store = format!("{work_text}/pgvirt.db");
    assert!(
        out.contains(&format!("export PGVIRT_STORE={store}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("pgvirt demo --teardown {work_text}")),
        "{out}"
    );
    // Only what it printed: the store it named shows the demo's VDBs.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_pgvirt"))
        .args(["vdb", "list", "--output", "json"])
        .env("PGVIRT_STORE", &store)
        .output()
        .expect("runs");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let vdbs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let names: Vec<&str> = vdbs
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["dev", "test"]);
    // Teardown: nothing of it is left (process, mount, directory).
    let out = p.ok(&["demo", "--teardown", &work_text]);
    assert!(out.contains("removed the demo"), "{out}");
    assert!(!work.exists(), "the directory is gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&work_text), "nothing left mounted");
    for (pid, args, cwd) in crate::support::processes() {
        assert!(
            !args.join(" ").contains(&work_text) && !cwd.is_some_and(|c| c.starts_with(&work)),
            "process {pid} {args:?} is left"
        );
    }
    // A directory that is not a demo's is refused, and kept.
    let err = p.fails(&["demo", "--teardown", dir.path().to_str().expect("utf-8")]);
    assert!(err.contains("is not a demo's work directory"), "{err}");
    assert!(dir.path().exists());
}

#[test]
fn the_demo_refuses_a_directory_with_something_in_it() {
    let p = Pgvirt::new();
    let dir = tempfile::Builder::new()
        .prefix("pgvirt-demo-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::write(dir.path().join("keep.txt"), "mine").expect("write");
    let err = p.fails(&["demo", "--dir", dir.path().to_str().expect("utf-8")]);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.txt")).expect("kept"),
        "mine"
    );
}
