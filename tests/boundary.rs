//! The shared-library boundary: the handshake refuses other ABI versions, a
//! panic in the connector comes back as an error, and the connector's log
//! records reach the host's logger.

use std::process::Command;

use crate::support::{connector_copy, repo_root, PgDir, Pgvirt};

/// Builds `tests/fixtures/other_abi.rs` into a real shared library.
fn other_abi_library(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("libpgvirt.so");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--crate-type", "cdylib", "--edition", "2021", "-o"])
        .arg(&out)
        .arg(repo_root().join("tests/fixtures/other_abi.rs"))
        .status()
        .expect("rustc runs");
    assert!(status.success(), "building the other-ABI fixture failed");
    out
}

#[test]
fn a_library_built_for_another_abi_version_is_refused_naming_both() {
    let pkg = connector_copy();
    let lib = other_abi_library(pkg.path());
    let p = Pgvirt::new();
    let err = p.fails(&[
        "connector",
        "validate",
        pkg.path().to_str().expect("utf-8"),
        "--library",
        lib.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("ABI version 999"), "{err}");
    assert!(err.contains("ABI version 1"), "{err}");
    // Installing it is refused the same way, and nothing is registered.
    let err = p.fails(&["connector", "install", pkg.path().to_str().expect("utf-8")]);
    assert!(err.contains("ABI version 999"), "{err}");
    assert!(p
        .json(&["connector", "list"])
        .as_array()
        .expect("list")
        .is_empty());
}

#[test]
fn a_library_without_the_handshake_is_not_a_connector() {
    let pkg = connector_copy();
    let err = Pgvirt::new().fails(&[
        "connector",
        "validate",
        pkg.path().to_str().expect("utf-8"),
        "--library",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]);
    assert!(err.contains("not a pgvirt connector"), "{err}");
}

#[test]
fn a_panic_in_an_operation_comes_back_as_an_error() {
    let mut p = Pgvirt::with_local_env();
    p.env("PGVIRT_FAULT_PANIC", "discovery.repository");
    let err = p.fails(&["env", "refresh", "local"]);
    assert!(err.contains("discovery.repository panicked"), "{err}");
    assert!(err.contains("fault injected"), "{err}");
    // The host and its store are fine: without the fault, refresh works.
    p.env("PGVIRT_FAULT_PANIC", "none");
    let out = p.json(&["env", "refresh", "local"]);
    assert!(
        !out["repositories"].as_array().expect("repos").is_empty(),
        "{out}"
    );
}

#[test]
fn connector_log_records_reach_the_host_logger() {
    let mut p = Pgvirt::with_local_env();
    let empty = PgDir::new("pgvirt-empty-bin-");
    p.env(
        "PGVIRT_PG_PATH",
        &format!("/nonexistent/bin:{}", empty.path().display()),
    );
    let out = p.run(&["env", "refresh", "local"]);
    assert!(
        out.status.success(),
        "a broken bin dir is reported, not fatal"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connector::"),
        "the record comes from the connector: {stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/bin: not a directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: no postgres executable",
            empty.path().display()
        )),
        "{stderr}"
    );
}
