//! The replication password at rest and in flight: in no snapshot or clone
//! of any kind, no store page (after a link, a failed link and a delete), no
//! log, no argv, and no child's environment.

use std::path::{Path, PathBuf};

use crate::support::{free_port, processes, Stack};

const RIGHT: &str = "right-Repl-Secret-93";
const WRONG: &str = "wrong-Repl-Secret-17";

/// Files under `root` (recursively) whose bytes hold `needle`.
fn files_holding(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

/// The store's own files (the database, its WAL and shared memory).
fn store_pages_holding(s: &Stack, needle: &str) -> Vec<PathBuf> {
    files_holding(s.pgvirt.dir(), needle)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pgvirt.db"))
        .collect()
}

fn require_password_for_repl(s: &Stack) {
    s.source.psql(
        "postgres",
        &format!("CREATE ROLE repl LOGIN REPLICATION PASSWORD '{RIGHT}'"),
    );
    let hba = s.source.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(
        &hba,
        format!("host all repl 127.0.0.1/32 scram-sha-256\nhost replication repl 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .expect("hba");
    s.source.psql("postgres", "SELECT pg_reload_conf()");
}

#[test]
fn the_replication_password_is_in_no_snapshot_clone_store_page_log_argv_or_child_environment() {
    // Regressions: the passfile lived inside the staging dataset (so in
    // every snapshot), the store kept the password in plain text (and its
    // bytes outlived the row, also after a failed link), and pgvirt's
    // children inherited PGVIRT_REPLICATION_PASSWORD.
    let s = Stack::new();
    require_password_for_repl(&s);
    let port = free_port().to_string();
    let link = [
        "dsource",
        "link",
        "secure",
        "--source",
        &s.source_id,
        "--replication-user",
        "repl",
        "--staging-port",
        &port,
        "-vvv",
    ];

    // A failed link leaves no trace of the wrong password.
    let out = s
        .pgvirt
        .command(&link)
        .env("PGVIRT_REPLICATION_PASSWORD", WRONG)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("authentication failed"), "{said}");
    assert!(!said.contains(WRONG), "the log holds the password");
    assert!(
        !said.contains("could not drop replication slot"),
        "a failed link undoes only what it did: {said}"
    );
    assert_eq!(store_pages_holding(&s, WRONG), Vec::<PathBuf>::new());

    // A link with the right password: watch every process while it runs.
    let mut child = s
        .pgvirt
        .command(&link)
        .env("PGVIRT_REPLICATION_PASSWORD", RIGHT)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pgvirt_pid = child.id() as i32;
    let mut looked = 0;
    while child.try_wait().expect("wait").is_none() {
        for (pid, args, _) in processes() {
            assert!(
                !args.join(" ").contains(RIGHT),
                "process {pid} has the password in argv"
            );
            if pid == pgvirt_pid
                || args
                    .first()
                    .is_some_and(|a| a == env!("CARGO_BIN_EXE_pgvirt"))
            {
                // Its own initial environment block, read once; and a child
                // it forked that has not yet exec'd (it still shows pgvirt's
                // argv and that same block; after the exec it is checked).
                continue;
            }
            if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
                let shown = String::from_utf8_lossy(&environ);
                assert!(
                    !shown.contains(RIGHT),
                    "process {pid} ({args:?}) inherited the password in its environment"
                );
            }
        }
        looked += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("link ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(looked > 3, "the link was watched while it ran");
    assert!(
        !said.contains(RIGHT),
        "the output or the trace log holds the password"
    );
    assert_eq!(
        s.pgvirt.json(&["dsource", "show", "secure"])["replication"]["connected"],
        serde_json::json!(true)
    );

    // Snapshots and clones of every kind: dSource syncs, a VDB, its
    // snapshot, a child of that snapshot, a refresh.
    s.pgvirt.ok(&["dsource", "sync", "secure"]);
    s.pgvirt.ok(&["vdb", "provision", "v", "--from", "secure"]);
    let snap = s.pgvirt.json(&["vdb", "snapshot", "v"])["id"].to_string();
    s.pgvirt
        .ok(&["vdb", "provision", "child", "--from", &format!("v@{snap}")]);
    s.pgvirt.ok(&["dsource", "sync", "secure"]);
    s.pgvirt.ok(&["vdb", "refresh", "v"]);
    assert_eq!(
        files_holding(&s.pool_root(), RIGHT),
        Vec::<PathBuf>::new(),
        "no dataset, snapshot or clone holds it"
    );
    assert_eq!(
        store_pages_holding(&s, RIGHT),
        Vec::<PathBuf>::new(),
        "the store holds it sealed only"
    );
    let shown = s.pgvirt.json(&["dsource", "show", "secure"]);
    assert_eq!(
        shown["dsource"]["parameters"]["source"]["replication_password"],
        serde_json::json!("********")
    );

    // The passfile staging uses is outside the pool, private.
    let scratch = s.pgvirt.json(&["env", "list"])[0]["scratch"]
        .as_str()
        .expect("scratch")
        .to_owned();
    let passfile = PathBuf::from(&scratch).join("dsource-secure/pgpass");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&passfile)
        .expect("passfile")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);

    // Deleted: nothing of it is left, in the store or in scratch.
    s.pgvirt.ok(&["dsource", "delete", "secure", "--with-vdbs"]);
    assert!(!passfile.exists(), "the passfile goes with the dSource");
    assert_eq!(store_pages_holding(&s, RIGHT), Vec::<PathBuf>::new());
    let key = s.pgvirt.dir().join("pgvirt.key");
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the engine's key is private");
}

#[test]
fn a_store_without_its_key_says_so_instead_of_leaking_or_guessing() {
    let s = Stack::new();
    require_password_for_repl(&s);
    let port = free_port().to_string();
    let out = s
        .pgvirt
        .command(&[
            "dsource",
            "link",
            "k",
            "--source",
            &s.source_id,
            "--replication-user",
            "repl",
            "--staging-port",
            &port,
        ])
        .env("PGVIRT_REPLICATION_PASSWORD", RIGHT)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another engine's key cannot open these secrets.
    let other = s.pgvirt.dir().join("other.key");
    let err = s
        .pgvirt
        .command(&["dsource", "sync", "k"])
        .env("PGVIRT_KEY_FILE", &other)
        .output()
        .expect("runs");
    assert!(!err.status.success());
    let said = String::from_utf8_lossy(&err.stderr);
    assert!(
        said.contains("the secrets of dSource k cannot be opened"),
        "{said}"
    );
    assert!(!said.contains(RIGHT));
    s.pgvirt.ok(&["dsource", "sync", "k"]);
}
