//! The first hour of a new user (issue 9): errors in the user's words, one
//! output style, help and completions from one definition.

use serde_json::json;

use crate::support::{Pgvirt, Stack};

#[test]
fn errors_name_the_vdbs_that_depend_and_the_flag_that_deletes_them_too() {
    // Regression: they named internal datasets (`vdb-dev-2 depend on`).
    let s = Stack::new();
    s.link("shop");
    s.pgvirt.ok(&["vdb", "provision", "dev", "--from", "shop"]);
    s.pgvirt.ok(&["vdb", "provision", "test", "--from", "shop"]);
    let err = s.pgvirt.fails(&["dsource", "delete", "shop"]);
    assert!(
        err.contains("VDBs dev and test depend on snapshots of dSource shop")
            && err.contains("--with-vdbs"),
        "{err}"
    );
    let snap = s.pgvirt.json(&["vdb", "snapshot", "dev"])["id"].to_string();
    s.pgvirt.ok(&[
        "vdb",
        "provision",
        "child",
        "--from",
        &format!("dev@{snap}"),
    ]);
    let err = s.pgvirt.fails(&["vdb", "delete", "dev"]);
    assert!(
        err.contains("VDB child depends on snapshots of VDB dev")
            && err.contains("--with-children"),
        "{err}"
    );
    let gone = s.pgvirt.json(&["vdb", "delete", "dev", "--with-children"]);
    assert_eq!(gone["vdbs_deleted"], json!(["child", "dev"]));
}

#[test]
fn a_failed_start_says_the_likely_cause_first_then_the_log() {
    // Regression: a long pg_ctl dump with a misleading "No such file or
    // directory" line, and the cause somewhere inside.
    let s = Stack::new();
    s.link("src");
    let err = s.pgvirt.fails(&[
        "vdb",
        "provision",
        "bad",
        "--from",
        "src",
        "--set",
        "work_mem=banana",
    ]);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("did not start: a setting is not valid") && first.contains("work_mem"),
        "{err}"
    );
    assert!(err.contains("the server log ends"), "{err}");
    assert!(!err.contains("No such file or directory"), "{err}");
    // A port another program took while the VDB was stopped.
    let v = s.pgvirt.json(&["vdb", "provision", "v", "--from", "src"]);
    s.pgvirt.ok(&["vdb", "stop", "v"]);
    let port = v["port"].as_u64().expect("port") as u16;
    let _taker = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let err = s.pgvirt.fails(&["vdb", "start", "v"]);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("already in use"),
        "{err}"
    );
    // pgvirt's own settings cannot be set around it.
    let err = s.pgvirt.fails(&[
        "vdb",
        "provision",
        "p80",
        "--from",
        "src",
        "--set",
        "port=80",
    ]);
    assert!(
        err.contains("--set (virtual-source parameters#/config/set"),
        "{err}"
    );
}

#[test]
fn every_show_prints_a_key_list_and_the_same_data_as_json_and_lists_name_parents() {
    let s = Stack::new();
    s.link("shop");
    s.pgvirt.ok(&["vdb", "provision", "dev", "--from", "shop"]);
    let table = s.pgvirt.ok(&["dsource", "show", "shop"]);
    assert!(table.starts_with("dSource shop\n"), "{table}");
    for key in ["state", "replication", "last snapshot", "staging port"] {
        assert!(table.contains(&format!("  {key}")), "{key} in {table}");
    }
    assert!(!table.contains('{'), "no JSON in table mode: {table}");
    let shown = s.pgvirt.json(&["dsource", "show", "shop"]);
    assert!(table.contains(shown["dsource"]["mount_path"].as_str().expect("mount")));
    let table = s.pgvirt.ok(&["vdb", "show", "dev"]);
    assert!(table.starts_with("VDB dev\n"), "{table}");
    let shown = s.pgvirt.json(&["vdb", "show", "dev"]);
    assert!(
        table.contains(shown["connection"].as_str().expect("connection")),
        "{table}"
    );
    assert!(table.contains("dsource shop, snapshot"), "{table}");
    let list = s.pgvirt.ok(&["vdb", "list"]);
    assert!(list.contains("dsource shop"), "parents by name: {list}");
}

#[test]
fn completions_and_the_manual_come_from_the_same_definitions() {
    let p = Pgvirt::new();
    for shell in ["bash", "zsh", "fish"] {
        let text = p.ok(&["completions", shell]);
        assert!(
            text.contains("pgvirt") && text.contains("provision"),
            "{shell}"
        );
    }
    let man = p.ok(&["man"]);
    assert!(
        man.contains(".TH pgvirt 1") && man.contains("dsource"),
        "{man}"
    );
    let err = p.fails(&["demo", "--store", "/tmp/x.db"]);
    assert!(err.contains("takes no --store"), "{err}");
}
