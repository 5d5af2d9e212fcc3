//! Connector upgrades with data migrations, with the real 0.2.0 build of
//! the connector (`support::fixture`): its migration renames
//! `source.connect_timeout_seconds` of the linked-source parameters to
//! `source.timeout_seconds` (at most 300 where 0.1.0 took 600). Stored
//! dSources come out migrated with their secrets still sealed, still sync,
//! a VDB still provisions; a reinstall of 0.1.0 is refused naming both
//! versions; a kill before the commit, a running job, and a migrated
//! document the new schema refuses leave 0.1.0 and every document as they
//! were.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::fixture::connector_0_2_0;
use crate::support::http::{make_token, Api, Server};
use crate::support::{free_port, repo_root, spawn_paused, Stack};

const PASSWORD: &str = "upgrade-secret-pw-7Q";

/// Links the stack's source as `name` with this `source` section and the
/// replication password.
fn link(s: &Stack, name: &str, source: Value) {
    let params = s.pgvirt.dir().join(format!("{name}.json"));
    std::fs::write(&params, json!({ "source": source }).to_string()).expect("write params");
    let port = free_port().to_string();
    let out = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            name,
            "--source",
            &s.source_id,
            "--staging-port",
            &port,
            "--params",
            params.to_str().expect("utf-8"),
        ])
        .env("PGVIRT_REPLICATION_PASSWORD", PASSWORD)
        .output()
        .expect("pgvirt runs");
    assert!(
        out.status.success(),
        "link failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stored parameters and sealed secrets of a dSource, as they sit in
/// the store.
fn stored(store: &Path, name: &str) -> (String, Option<Vec<u8>>) {
    let store = pgvirt::host::store::Store::open(store).expect("store");
    store
        .conn()
        .query_row(
            "SELECT parameters, sealed FROM dsources WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row")
}

/// The parameters with their secrets, opened with the engine's key.
fn unsealed(store: &Path, name: &str) -> Value {
    let (text, sealed) = stored(store, name);
    let store = pgvirt::host::store::Store::open(store).expect("store");
    let mut doc: Value = serde_json::from_str(&text).expect("json");
    store
        .unseal(&format!("dSource {name}"), &mut doc, sealed.as_deref())
        .expect("unseal");
    doc
}

fn installed_version(s: &Stack) -> Value {
    s.pgvirt.json(&["connector", "list"])[0]["version"].clone()
}

#[test]
fn an_upgrade_migrates_stored_dsources_which_still_sync_and_provision_and_no_downgrade() {
    let s = Stack::new();
    link(&s, "up-src", json!({"connect_timeout_seconds": 20}));
    let packed = connector_0_2_0();
    let packed = packed.to_str().expect("utf-8");
    let before = stored(&s.pgvirt.store(), "up-src");

    // Killed after the migrated documents are written, before the commit:
    // the next command sees 0.1.0 and the documents as they were.
    let mut child = spawn_paused(
        s.pgvirt.command(&["connector", "install", packed]),
        "upgrade.migrated",
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert_eq!(installed_version(&s), "0.1.0");
    assert_eq!(stored(&s.pgvirt.store(), "up-src"), before);
    // That command also removed what the killed install had written: the
    // library it was unpacking and the 0.2.0 release it was placing.
    let id = s.pgvirt.json(&["connector", "list"])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let connectors = s.pgvirt.dir().join("connectors");
    let left = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(left(&connectors.join(&id)), vec!["0.1.0+1".to_owned()]);
    assert!(left(&connectors.join(".incoming")).is_empty());

    let out = s.pgvirt.json(&["connector", "install", packed]);
    assert_eq!(out["previous_version"], "0.1.0+1", "{out}");
    assert_eq!(
        out["migrated"],
        json!([{"definition": "linked_source", "migrations": ["1", "2"], "documents": 1}]),
        "{out}"
    );
    assert_eq!(installed_version(&s), "0.2.0");

    // Renamed, in id order (the default of migration 2 did not overwrite
    // the value migration 1 moved), and the secret still sealed.
    let shown = s.pgvirt.json(&["dsource", "show", "up-src"]);
    let source = &shown["dsource"]["parameters"]["source"];
    assert_eq!(source["timeout_seconds"], 20, "{shown}");
    assert!(source.get("connect_timeout_seconds").is_none(), "{shown}");
    assert_eq!(source["replication_password"], "********", "{shown}");
    assert_eq!(
        unsealed(&s.pgvirt.store(), "up-src")["source"]["replication_password"],
        PASSWORD
    );
    for file in ["pgvirt.db", "pgvirt.db-wal"] {
        let bytes = std::fs::read(s.pgvirt.dir().join(file)).unwrap_or_default();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password sits in {file} in plain text"
        );
    }

    // The migrated dSource syncs with 0.2.0, and a VDB provisions from it.
    s.pgvirt.ok(&["dsource", "sync", "up-src"]);
    s.pgvirt
        .ok(&["vdb", "provision", "up-vdb", "--from", "up-src"]);
    assert_eq!(s.vdb_sql("up-vdb", "SELECT 41 + 1"), "42");

    // 0.1.0 again: refused, naming both versions; nothing changes.
    let e = s
        .pgvirt
        .fails(&["connector", "install", repo_root().to_str().expect("utf-8")]);
    assert!(e.contains("0.1.0") && e.contains("0.2.0"), "{e}");
    assert!(e.contains("downgrade"), "{e}");
    assert_eq!(installed_version(&s), "0.2.0");
    // 0.2.0 again: a no-op.
    let again = s.pgvirt.json(&["connector", "install", packed]);
    assert_eq!(again["unchanged"], true, "{again}");
    s.pgvirt.ok(&["vdb", "delete", "up-vdb"]);
}

#[test]
fn a_migrated_document_the_new_schema_refuses_changes_nothing() {
    let s = Stack::new();
    // 500 s is a valid timeout for 0.1.0; 0.2.0 takes at most 300.
    link(&s, "slow-src", json!({"connect_timeout_seconds": 500}));
    let before = stored(&s.pgvirt.store(), "slow-src");
    // While a sync runs (paused with its snapshot taken): refused, naming
    // the job; the sync cut short is repaired by the next command.
    let mut sync = spawn_paused(
        s.pgvirt.command(&["dsource", "sync", "slow-src"]),
        "snapshot",
    );
    let e = s.pgvirt.fails(&[
        "connector",
        "install",
        connector_0_2_0().to_str().expect("utf-8"),
    ]);
    assert!(e.contains("while job") && e.contains("slow-src"), "{e}");
    sync.kill().expect("SIGKILL");
    sync.wait().expect("reaped");
    assert_eq!(installed_version(&s), "0.1.0");

    // The API says the same, as a 422 with a JSON error.
    {
        let server = Server::start(s.pgvirt.command(&[]));
        let api = Api {
            port: server.port,
            token: Some(make_token(
                Path::new(env!("CARGO_BIN_EXE_pgvirt")),
                &s.pgvirt.store(),
                "ci",
                false,
            )),
        };
        let bundle: Value =
            serde_json::from_str(&std::fs::read_to_string(connector_0_2_0()).expect("bundle"))
                .expect("json");
        let reply = api.call("POST", "/connectors", Some(&bundle));
        assert_eq!(reply.status, 422, "{}", reply.body);
        let why = reply.json()["why"].as_str().expect("why").to_owned();
        assert!(why.contains("/source/timeout_seconds"), "{why}");
        assert!(!reply.body.contains(PASSWORD), "{}", reply.body);
    }
    let e = s.pgvirt.fails(&[
        "connector",
        "install",
        connector_0_2_0().to_str().expect("utf-8"),
    ]);
    assert!(e.contains("/source/timeout_seconds"), "{e}");
    assert!(e.contains("dSource slow-src"), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");
    assert_eq!(installed_version(&s), "0.1.0");
    assert_eq!(stored(&s.pgvirt.store(), "slow-src"), before);
    // The refused release's files went with it.
    let releases: Vec<_> = std::fs::read_dir(s.pgvirt.dir().join("connectors"))
        .expect("connectors")
        .flatten()
        .filter(|e| e.file_name() != ".incoming")
        .flat_map(|id| std::fs::read_dir(id.path()).expect("releases").flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(releases, vec!["0.1.0+1".to_owned()]);
    // 0.1.0 is what runs: the dSource syncs as before.
    s.pgvirt.ok(&["dsource", "sync", "slow-src"]);
}
