//! The stack most tests start from: a source cluster, a pool (on the
//! default filesystem, a loop-mounted XFS or btrfs, or ZFS) and pgvirt set
//! up to link it; and the check that everything it holds is whole.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

/// A source cluster, a pool and pgvirt set up to link it: what the dSource
/// and VDB tests start from. Everything it started stops on drop.
pub struct Stack {
    pub pgvirt: Pgvirt,
    pub source: Cluster,
    pub pool: PoolDir,
    /// Source config id of the source cluster.
    pub source_id: String,
    fs: Option<PoolFs>,
}

/// A file system of the test's own that the pool lives on.
pub enum PoolFs {
    Loop(LoopFs),
    Zfs(ZfsPool),
}

impl PoolFs {
    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        match self {
            Self::Loop(fs) => fs.path(),
            Self::Zfs(z) => z.path(),
        }
    }

    /// The pool directory on it (a dataset of its own on ZFS).
    fn pool_dir(&self) -> PathBuf {
        match self {
            Self::Loop(fs) => fs.path().join("pool"),
            Self::Zfs(z) => z.dataset("pgvirt"),
        }
    }
}

impl Stack {
    /// On the default filesystem (copy pool).
    pub fn new() -> Self {
        Self::build(None, Cluster::start(), Pgvirt::new())
    }

    /// On a loop-mounted filesystem (`xfs` or `btrfs`), or a ZFS pool
    /// (`zfs`, through zfs-fuse: slow, keep such tests small).
    pub fn on(kind: &str) -> Self {
        let fs = match kind {
            "zfs" => PoolFs::Zfs(ZfsPool::new(1024)),
            // Sparse: room for the WAL a staging keeps between syncs.
            other => PoolFs::Loop(LoopFs::new(other, 4096)),
        };
        Self::build(Some(fs), Cluster::start(), Pgvirt::new())
    }

    /// On a copy pool, with this source and this pgvirt (its environment
    /// set as the test needs).
    pub fn with(source: Cluster, pgvirt: Pgvirt) -> Self {
        Self::build(None, source, pgvirt)
    }

    fn build(fs: Option<PoolFs>, source: Cluster, pgvirt: Pgvirt) -> Self {
        pgvirt.install_and_add_local();
        let pool = PoolDir::new();
        let pool_path = match &fs {
            Some(fs) => fs.pool_dir(),
            None => pool.pool(),
        };
        pgvirt.ok(&["init", "--pool", pool_path.to_str().expect("utf-8")]);
        let refreshed = pgvirt.json(&["env", "refresh", "local"]);
        let data = std::fs::canonicalize(source.data_dir()).expect("canonical");
        let source_id = refreshed["source_configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|s| s["document"]["data_directory"] == serde_json::json!(data))
            .expect("source discovered")["id"]
            .to_string();
        Self {
            pgvirt,
            source,
            pool,
            source_id,
            fs,
        }
    }

    /// Links the source as dSource `name`.
    pub fn link(&self, name: &str) -> Value {
        let port = free_port().to_string();
        self.pgvirt.json(&[
            "dsource",
            "link",
            name,
            "--source",
            &self.source_id,
            "--staging-port",
            &port,
        ])
    }

    /// Runs SQL on a VDB (by its connection details) as the postgres user.
    pub fn vdb_sql(&self, vdb: &str, sql: &str) -> String {
        self.try_vdb_sql(vdb, sql)
            .unwrap_or_else(|e| panic!("SQL on VDB {vdb} failed: {sql}\n{e}"))
    }

    /// Runs SQL on a VDB; what psql printed on stderr if it failed.
    pub fn try_vdb_sql(&self, vdb: &str, sql: &str) -> Result<String, String> {
        let v = self.pgvirt.json(&["vdb", "show", vdb]);
        let host = v["source_config"]["socket_directory"]
            .as_str()
            .expect("socket")
            .to_owned();
        let port = v["port"].as_u64().expect("port") as u16;
        try_psql_at(Path::new(&host), port, "postgres", sql)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let root = match &self.fs {
            Some(fs) => fs.path().to_owned(),
            None => self.pool.pool(),
        };
        stop_clusters_under(&root);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

impl Stack {
    /// The root everything of this stack's pool lives under.
    pub fn pool_root(&self) -> PathBuf {
        match &self.fs {
            Some(fs) => fs.path().to_owned(),
            None => self.pool.pool(),
        }
    }

    /// Asserts the state is whole: `pool check` finds nothing; listings are
    /// true (a running VDB runs, a stopped one does not; an enabled dSource
    /// replays WAL, unpaused); no server, copy or pg_basebackup runs on the
    /// pool for an object that is not listed as running; nothing is mounted
    /// under the pool that is not listed as such; the source holds only the
    /// listed dSources' slots. `what` says when, for the messages.
    pub fn assert_whole(&self, what: &str) {
        let check = self.pgvirt.run(&["pool", "check"]);
        assert!(
            check.status.success(),
            "{what}: pool check found problems:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let root = self.pool_root();
        let dsources = self.pgvirt.json(&["dsource", "list"]);
        let vdbs = self.pgvirt.json(&["vdb", "list"]);
        let mut serving: Vec<PathBuf> = Vec::new();
        let mut mounted_ok: Vec<PathBuf> = Vec::new();
        for d in dsources.as_array().expect("dsources") {
            let name = d["name"].as_str().expect("name");
            let state = d["state"].as_str().expect("state");
            assert!(
                ["enabled", "disabled", "resync_needed"].contains(&state),
                "{what}: dSource {name} is left {state}"
            );
            let mount = PathBuf::from(d["mount_path"].as_str().expect("mount"));
            let shown = self.pgvirt.json(&["dsource", "show", name]);
            if state == "enabled" {
                assert_eq!(
                    shown["status"],
                    serde_json::json!("ACTIVE"),
                    "{what}: {shown}\n{}",
                    staging_facts(&mount)
                );
                if shown["ingestion_method"] == "logical_replication" {
                    assert_eq!(
                        shown["replication"]["logical"]["enabled"],
                        serde_json::json!(true),
                        "{what}: the apply of {name} is left disabled: {shown}"
                    );
                    if let Some(each) = shown["replication"]["logical"]["databases"].as_array() {
                        assert!(
                            each.iter().all(|d| d["enabled"] == serde_json::json!(true)),
                            "{what}: an apply of {name} is left disabled: {shown}"
                        );
                    }
                } else {
                    assert_eq!(
                        shown["replication"]["replay_paused"],
                        serde_json::json!(false),
                        "{what}: replay of {name} is left paused: {shown}"
                    );
                }
                serving.push(mount.join("data"));
                // And its WAL dataset, beside it.
                mounted_ok.push(PathBuf::from(format!("{}-wal", mount.display())));
                mounted_ok.push(mount);
            }
        }
        for v in vdbs.as_array().expect("vdbs") {
            let name = v["name"].as_str().expect("name");
            let state = v["state"].as_str().expect("state");
            let status = self.pgvirt.json(&["vdb", "status", name])["status"].clone();
            match state {
                "running" => {
                    assert_eq!(
                        status,
                        serde_json::json!("ACTIVE"),
                        "{what}: VDB {name} is listed running"
                    );
                    let mount = PathBuf::from(v["mount_path"].as_str().expect("mount"));
                    serving.push(mount.join("data"));
                    // Its WAL dataset, where it archives.
                    let dataset = v["dataset"].as_str().expect("dataset");
                    mounted_ok.push(root.join("mounts").join(format!("{dataset}-wal")));
                    mounted_ok.push(PathBuf::from(format!("{}-wal", mount.display())));
                    mounted_ok.push(mount);
                }
                "stopped" | "disabled" => {
                    assert_eq!(
                        status,
                        serde_json::json!("INACTIVE"),
                        "{what}: VDB {name} is listed {state}"
                    );
                }
                other => panic!("{what}: VDB {name} is left {other}"),
            }
        }
        let root_text = root.to_string_lossy().into_owned();
        for (pid, args, cwd) in processes() {
            let line = args.join(" ");
            if !line.contains(&root_text) && !cwd.as_ref().is_some_and(|c| c.starts_with(&root)) {
                continue;
            }
            let program = args.first().map(String::as_str).unwrap_or("");
            if program.ends_with("/postgres") {
                let data = args
                    .iter()
                    .position(|a| a == "-D")
                    .and_then(|i| args.get(i + 1))
                    .map(PathBuf::from);
                assert!(
                    data.as_ref().is_some_and(|d| serving.contains(d)),
                    "{what}: a server (pid {pid}) runs on {data:?}, which nothing listed serves"
                );
            } else if program.ends_with("cp")
                || program.contains("pg_basebackup")
                || program.ends_with("btrfs")
            {
                panic!("{what}: {line} (pid {pid}) still runs");
            }
        }
        for mount in std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
        {
            let mount = PathBuf::from(mount);
            if mount.starts_with(root.join("mounts")) {
                assert!(
                    mounted_ok.contains(&mount),
                    "{what}: {} is mounted, and nothing listed running uses it",
                    mount.display()
                );
            }
        }
        let slots = self.source.psql(
            "postgres",
            "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
        );
        for slot in slots.split(',').filter(|s| !s.is_empty()) {
            let owner = slot.trim_start_matches("pgvirt_");
            assert!(
                dsources
                    .as_array()
                    .expect("dsources")
                    .iter()
                    .any(|d| d["name"]
                        .as_str()
                        .map(|n| n.to_lowercase().replace(['-', '.'], "_"))
                        .is_some_and(|n| {
                            // One slot, or one per database (a digest after).
                            owner == n
                                || owner.strip_prefix(&format!("{n}_")).is_some_and(|d| {
                                    d.len() == 8 && d.bytes().all(|b| b.is_ascii_hexdigit())
                                })
                        })),
                "{what}: slot {slot} on the source belongs to no dSource"
            );
        }
    }
}

/// What explains a staging found not running: its mount, pid file, process
/// and log (shown when a test finds it so).
fn staging_facts(mount: &std::path::Path) -> String {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*mount.to_string_lossy()));
    let pid_file = std::fs::read_to_string(mount.join("data/postmaster.pid")).unwrap_or_default();
    let pid = pid_file.lines().next().unwrap_or("").to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let log = std::fs::read_to_string(mount.join("pgvirt/staging.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(25).collect();
    let servers: Vec<String> = super::processes()
        .into_iter()
        .filter(|(_, args, _)| args.first().is_some_and(|a| a.ends_with("/postgres")))
        .map(|(pid, args, _)| format!("{pid} {}", args.join(" ")))
        .collect();
    format!(
        "staging facts: mounted {mounted}; pid file {pid:?}; process stat {stat:?}\nservers:\n{}\nlog tail (newest first):\n{}",
        servers.join("\n"),
        tail.join("\n")
    )
}
