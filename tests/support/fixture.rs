//! The test connector at version 0.2.0: the same code built with the
//! manifest and schema overlay of `tests/fixtures/connector-0.2.0/` (its
//! `upgrade` section renames `source.connect_timeout_seconds` of the
//! linked-source parameters to `source.timeout_seconds`, and writes a
//! default down). Built into its own target directory
//! (`target/connector-0.2.0`, so the main build's `libpgvirt.so` is
//! untouched), then packed. That directory starts as a copy of the main
//! build's compiled dependencies (everything but pgvirt's own units), so
//! only the pgvirt crate compiles: about 40 s instead of a full build of
//! every dependency; later runs rebuild only what changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::repo_root;

/// The overlay `build.rs` reads.
pub const OVERLAY: &str = "tests/fixtures/connector-0.2.0";

/// The packed `connector.json` of the 0.2.0 connector (built on first use).
pub fn connector_0_2_0() -> PathBuf {
    static PACKED: OnceLock<PathBuf> = OnceLock::new();
    PACKED.get_or_init(build_and_pack).clone()
}

fn build_and_pack() -> PathBuf {
    let root = repo_root();
    let target = root.join("target/connector-0.2.0");
    seed(&root.join("target/debug"), &target.join("debug"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Without what `cargo test` sets for the test process (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR...): build scripts that watch those would run
    // again, and their crates compile again, at every switch.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "OUT_DIR" {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .current_dir(&root)
        .args(["build", "--lib"])
        .env("PGVIRT_MANIFEST_OVERLAY", OVERLAY)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the 0.2.0 test connector failed");
    // A package directory: the overlay's manifest, the crate's schemas
    // with the overlay's over them.
    let package = target.join("package");
    let _ = std::fs::remove_dir_all(&package);
    std::fs::create_dir_all(package.join("schema")).expect("mkdir");
    copy_dir(&root.join("schema"), &package.join("schema"));
    copy_dir(&root.join(OVERLAY).join("schema"), &package.join("schema"));
    std::fs::copy(
        root.join(OVERLAY).join("plugin.json"),
        package.join("plugin.json"),
    )
    .expect("copy plugin.json");
    let dist = target.join("dist");
    let out = Command::new(env!("CARGO_BIN_EXE_pgvirt"))
        .args(["connector", "pack"])
        .arg(&package)
        .arg("--library")
        .arg(target.join("debug/libpgvirt.so"))
        .arg("--out")
        .arg(&dist)
        .output()
        .expect("pgvirt runs");
    assert!(
        out.status.success(),
        "packing the 0.2.0 test connector failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dist.join("connector.json")
}

/// Copies the main build's dependency units into a fresh fixture target
/// (times kept, so cargo finds them fresh); pgvirt's own units stay out.
fn seed(main: &Path, fixture: &Path) {
    if fixture.join("deps").exists() || !main.join("deps").is_dir() {
        return;
    }
    for dir in ["deps", "build", ".fingerprint"] {
        let to = fixture.join(dir);
        std::fs::create_dir_all(&to).expect("mkdir");
        let entries: Vec<PathBuf> = std::fs::read_dir(main.join(dir))
            .expect("read the main build")
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.contains("pgvirt") && !name.starts_with("main-")
            })
            .map(|e| e.path())
            .collect();
        if entries.is_empty() {
            continue;
        }
        let status = Command::new("cp")
            .arg("-a")
            .args(&entries)
            .arg(&to)
            .status()
            .expect("cp runs");
        assert!(status.success(), "seeding {} failed", to.display());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
