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
    assert!(!work.exists(), "the demo removed its work directory");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(work.to_str().expect("utf-8")),
        "nothing left mounted"
    );
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
