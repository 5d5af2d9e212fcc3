//! The hostile corpus: paths, names, ports, SQL- and shell-looking values in
//! every field a user fills. No value may run a command (each would create a
//! marker file), every refusal names its field or flag, and nothing is made.

use std::path::Path;

use serde_json::Value;

use crate::support::{free_port, PgDir, Pgvirt, Stack};

/// Shell and SQL payloads; `{M}` becomes a marker file path.
const PAYLOADS: [&str; 12] = [
    "$(touch {M})",
    "`touch {M}`",
    "\"; touch {M}; \"",
    "'; touch {M}; '",
    "x\ntouch {M}",
    "x|touch {M}",
    "x&&touch {M}",
    "${IFS}touch${IFS}{M}",
    "'; DROP TABLE t; --",
    "../../etc",
    "a b",
    "%s%n\\",
];

/// Everything a command could have made, as the store records it.
fn made(p: &Pgvirt) -> Value {
    let store = pgvirt::host::store::Store::open(&p.store()).expect("store");
    let mut counts = serde_json::Map::new();
    for table in [
        "dsources",
        "vdbs",
        "datasets",
        "dataset_snapshots",
        "mounts",
        "environments",
        "timeflows",
    ] {
        let n: i64 = store
            .conn()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count");
        counts.insert(table.into(), n.into());
    }
    Value::Object(counts)
}

struct Corpus<'a> {
    p: &'a Pgvirt,
    markers: &'a PgDir,
    n: usize,
    tried: usize,
}

impl Corpus<'_> {
    /// A payload with its own marker path.
    fn payload(&mut self, template: &str) -> (String, std::path::PathBuf) {
        self.n += 1;
        let marker = self.markers.path().join(format!("m{}", self.n));
        (template.replace("{M}", &marker.to_string_lossy()), marker)
    }

    /// Runs `args` with `value` in place of `{}`: it must be refused naming
    /// `names` (or, for `may_pass`, succeed), run nothing, and make nothing
    /// it did not report.
    fn try_value(&mut self, args: &[&str], template: &str, names: &str, may_pass: bool) {
        let (value, marker) = self.payload(template);
        let before = made(self.p);
        let args: Vec<String> = args.iter().map(|a| a.replace("{}", &value)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.p.run(&args);
        self.tried += 1;
        assert!(out.status.code().is_some(), "{args:?} died by a signal");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            !marker.exists(),
            "{args:?} ran the payload: {} exists",
            marker.display()
        );
        if out.status.success() {
            assert!(may_pass, "{args:?} was accepted: {err}");
        } else {
            assert!(
                err.contains(names),
                "{args:?} was refused without naming {names:?}:\n{err}"
            );
            assert_eq!(
                made(self.p),
                before,
                "{args:?} was refused but made something"
            );
        }
    }
}

#[test]
fn shell_and_sql_in_any_field_are_refused_naming_the_field_and_nothing_runs_or_is_made() {
    let s = Stack::new();
    s.link("src");
    let markers = PgDir::new("pgvirt-markers-");
    let mut c = Corpus {
        p: &s.pgvirt,
        markers: &markers,
        n: 0,
        tried: 0,
    };
    let sid = s.source_id.clone();
    let port = free_port().to_string();
    for payload in PAYLOADS {
        // Names of things the user makes.
        c.try_value(
            &[
                "dsource",
                "link",
                "{}",
                "--source",
                &sid,
                "--staging-port",
                &port,
            ],
            payload,
            "dSource name",
            false,
        );
        c.try_value(
            &["vdb", "provision", "{}", "--from", "src"],
            payload,
            "VDB name",
            false,
        );
        c.try_value(&["vdb", "create-empty", "{}"], payload, "VDB name", false);
        c.try_value(
            &["env", "add", "local", "--user", "postgres", "--name", "{}"],
            payload,
            "environment name",
            false,
        );
        // Remote environments: every field checked before any ssh runs.
        let remote = |field: &'static str| -> Vec<&'static str> {
            let mut args = vec![
                "env",
                "add",
                "r",
                "--host",
                "10.231.255.254",
                "--ssh-user",
                "postgres",
                "--key",
                "/dev/null",
            ];
            match field {
                "environment name" => args[2] = "{}",
                "--host" => args[4] = "{}",
                "--ssh-user" => args[6] = "{}",
                _ => args.extend([field, "{}"]),
            }
            args
        };
        for field in ["environment name", "--host", "--ssh-user", "--user"] {
            c.try_value(&remote(field), payload, field, false);
        }
        // Paths that reach shells.
        let path = format!("/var/tmp/pgvirt-hostile/{payload}");
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--mount-path",
                "{}",
            ],
            &path,
            "--mount-path",
            false,
        );
        c.try_value(
            &[
                "vdb",
                "provision",
                "h",
                "--from",
                "src",
                "--mount-path",
                "{}",
            ],
            &path,
            "--mount-path",
            false,
        );
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--method",
                "backup_streaming",
                "--backup-path",
                "{}",
            ],
            &path,
            "--backup-path",
            false,
        );
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--method",
                "backup_log_shipping",
                "--backup-path",
                "/var/tmp/b",
                "--wal-archive-path",
                "{}",
            ],
            &path,
            "--wal-archive-path",
            false,
        );
        c.try_value(&["init", "--pool", "{}"], &path, "--pool", false);
        c.try_value(
            &[
                "env",
                "add",
                "local",
                "--user",
                "postgres",
                "--name",
                "e2",
                "--scratch",
                "{}",
            ],
            &path,
            "--scratch",
            false,
        );
        // Connection facts and replication settings.
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--source-host",
                "{}",
            ],
            payload,
            "--source-host",
            false,
        );
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--replication-user",
                "{}",
            ],
            payload,
            "--replication-user",
            false,
        );
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--slot",
                "{}",
            ],
            payload,
            "--slot",
            false,
        );
        // Setting names are refused; setting values are quoted and may pass.
        c.try_value(
            &["vdb", "provision", "h", "--from", "src", "--set", "{}=1"],
            payload,
            "--set",
            false,
        );
        c.try_value(
            &[
                "vdb",
                "provision",
                "hv",
                "--from",
                "src",
                "--set",
                "application_name={}",
            ],
            payload,
            "",
            true,
        );
        if s.pgvirt
            .json(&["vdb", "list"])
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            s.pgvirt.ok(&["vdb", "delete", "hv"]);
        }
        c.try_value(
            &["vdb", "provision", "h", "--from", "src", "--env", "{}"],
            payload,
            "--env",
            false,
        );
        // Snapshot and source names.
        c.try_value(
            &["vdb", "provision", "h", "--from", "{}"],
            payload,
            "--from",
            false,
        );
        c.try_value(&["dsource", "sync", "{}"], payload, "no dSource", false);
    }
    // Ports outside what the schema allows, as flags.
    for bad in ["0", "80", "1023", "65536", "99999"] {
        c.try_value(
            &["vdb", "provision", "h", "--from", "src", "--port", "{}"],
            bad,
            "--port",
            false,
        );
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                "{}",
            ],
            bad,
            "--staging-port",
            false,
        );
    }
    for bad in ["0", "65536", "99999"] {
        c.try_value(
            &[
                "dsource",
                "link",
                "h",
                "--source",
                &sid,
                "--staging-port",
                &port,
                "--source-port",
                "{}",
            ],
            bad,
            "--source-port",
            false,
        );
    }
    assert!(c.tried > 160, "only {} hostile inputs tried", c.tried);
    assert!(
        !Path::new("/var/tmp/pgvirt-hostile").exists(),
        "no hostile path was made"
    );
}

#[test]
fn a_port_below_1024_is_refused_naming_the_flag_before_anything_is_cloned() {
    // Regression: `--port 80` passed validation, cloned, started postgres,
    // then failed without naming --port.
    let s = Stack::new();
    s.link("src");
    let before = s.pgvirt.json(&["pool", "list"]);
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "low", "--from", "src", "--port", "80"]);
    assert!(
        err.contains("--port (virtual-source parameters#/port)") && err.contains("1024"),
        "{err}"
    );
    assert_eq!(s.pgvirt.json(&["pool", "list"]), before);
}

#[test]
fn a_dsource_cannot_take_the_name_of_a_vdb() {
    // Regression: `dsource link v1` succeeded while a VDB v1 existed, after
    // which `--from v1` meant something else.
    let s = Stack::new();
    s.link("src");
    s.pgvirt.ok(&["vdb", "provision", "v1", "--from", "src"]);
    let port = free_port().to_string();
    let err = s.pgvirt.fails(&[
        "dsource",
        "link",
        "v1",
        "--source",
        &s.source_id,
        "--staging-port",
        &port,
    ]);
    assert!(err.contains("a VDB named \"v1\" exists already"), "{err}");
    let err = s
        .pgvirt
        .fails(&["vdb", "provision", "src", "--from", "src"]);
    assert!(
        err.contains("a dSource named \"src\" exists already"),
        "{err}"
    );
}

#[test]
fn a_shell_in_a_mount_path_is_refused_by_the_engine_even_without_the_schema() {
    // Regression: `/srv/m $(touch /tmp/x)` as a mount path ran the command
    // (pg_ctl hands -D and -l to /bin/sh). The engine refuses it itself:
    // here through the low-level mount command, which no schema checks.
    let p = Pgvirt::new();
    let pool = crate::support::PoolDir::new();
    p.ok(&["init", "--pool", pool.pool().to_str().expect("utf-8")]);
    p.ok(&["pool", "dataset", "create", "a", "--owner", "postgres"]);
    let markers = PgDir::new("pgvirt-markers-");
    let marker = markers.path().join("x");
    let path = format!("/var/tmp/pgvirt-m $(touch {})", marker.display());
    let err = p.fails(&["pool", "dataset", "mount", "a", &path]);
    assert!(
        err.contains("holds ' '") || err.contains("holds '$'"),
        "{err}"
    );
    assert!(!marker.exists());
    assert!(!Path::new("/var/tmp/pgvirt-m $(touch").exists());
}
