//! Engine storage on real filesystems: loop-mounted XFS (reflink) and btrfs
//! made by the tests, and the default filesystem (copy). Clones, snapshots,
//! dependents, ownership, mounts, crash safety and space accounting.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{as_pg_user, free_port, run_ok, LoopFs, Pgvirt, PoolDir, PG_BIN};

fn pool_on(path: &Path) -> Pgvirt {
    let p = Pgvirt::new();
    p.ok(&["init", "--pool", path.join("pool").to_str().expect("utf-8")]);
    p
}

fn dataset<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == json!(name))
        .unwrap_or_else(|| panic!("no dataset {name} in {list}"))
}

/// Create, fill with a real cluster, snapshot, clone for postgres, start
/// PostgreSQL on the clone, check sharing, refuse destroying a snapshot
/// with dependents, then tear down.
fn lifecycle(p: &Pgvirt, expect_backend: &str, expect_shared: bool) {
    let info = p.json(&["pool", "info"]);
    assert_eq!(info["backend"], json!(expect_backend), "{info}");
    let made = p.json(&["pool", "dataset", "create", "base", "--owner", "postgres"]);
    let base = made["path"].as_str().expect("path").to_owned();
    let meta = std::fs::metadata(&base).expect("dataset");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let pg = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres");
    assert_eq!(meta.uid(), pg.uid.as_raw(), "owned by postgres");

    let data = format!("{base}/data");
    run_ok(as_pg_user(Path::new(PG_BIN).join("initdb")).args([
        "-D",
        &data,
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
    ]));
    // A few MB of table data, then a clean stop: a consistent snapshot.
    let port = free_port().to_string();
    let opts = format!("-p {port} -c listen_addresses= -c unix_socket_directories={base}");
    run_ok(as_pg_user(Path::new(PG_BIN).join("pg_ctl")).args([
        "-D",
        &data,
        "-w",
        "-o",
        &opts,
        "-l",
        &format!("{base}/log"),
        "start",
    ]));
    run_ok(as_pg_user(Path::new(PG_BIN).join("psql")).args([
        "-h",
        &base,
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
    ]));
    run_ok(
        as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-D", &data, "-w", "-m", "fast", "stop"]),
    );

    // Besides the cluster: a link, and a file of root's with its own mode.
    std::os::unix::fs::symlink("data/PG_VERSION", format!("{base}/link")).expect("symlink");
    std::fs::write(format!("{base}/odd"), "odd").expect("odd file");
    std::fs::set_permissions(
        format!("{base}/odd"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");

    let snap = p.json(&["pool", "dataset", "snapshot", "base", "s1"]);
    let snap_id = snap["id"].to_string();
    let clone = p.json(&[
        "pool", "dataset", "clone", &snap_id, "work", "--owner", "postgres",
    ]);
    let work = clone["path"].as_str().expect("path").to_owned();
    let meta = std::fs::metadata(format!("{work}/data")).expect("clone data");
    assert_eq!(meta.uid(), pg.uid.as_raw(), "the clone keeps the owner");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    assert_same_tree(Path::new(&base), Path::new(&work));

    // PostgreSQL starts on the clone as postgres and sees the data.
    let data = format!("{work}/data");
    let opts = format!("-p {port} -c listen_addresses= -c unix_socket_directories={work}");
    run_ok(as_pg_user(Path::new(PG_BIN).join("pg_ctl")).args([
        "-D",
        &data,
        "-w",
        "-o",
        &opts,
        "-l",
        &format!("{work}/log"),
        "start",
    ]));
    let count = run_ok(as_pg_user(Path::new(PG_BIN).join("psql")).args([
        "-h",
        &work,
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-Atc",
        "SELECT count(*) FROM t",
    ]));
    run_ok(
        as_pg_user(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-D", &data, "-w", "-m", "fast", "stop"]),
    );
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "100000");

    let list = p.json(&["pool", "list"]);
    let shared = dataset(&list, "work")["space"]["shared"]
        .as_u64()
        .expect("shared");
    let own = dataset(&list, "work")["space"]["exclusive"]
        .as_u64()
        .expect("exclusive");
    if expect_shared {
        assert!(
            shared > 4 * 1024 * 1024,
            "a fresh clone shares its data: {shared} shared, {own} own"
        );
    } else {
        assert_eq!(shared, 0, "a copy shares nothing");
    }

    // The snapshot cannot go while the clone stands on it; the error names it.
    let err = p.fails(&["pool", "dataset", "destroy-snapshot", &snap_id]);
    assert!(err.contains("dependent clones: work"), "{err}");
    let err = p.fails(&["pool", "dataset", "destroy", "base"]);
    assert!(err.contains("still has snapshots"), "{err}");

    p.ok(&["pool", "dataset", "destroy", "work"]);
    p.ok(&["pool", "dataset", "destroy-snapshot", &snap_id]);
    p.ok(&["pool", "dataset", "destroy", "base"]);
    assert_eq!(p.json(&["pool", "list"]), json!([]));
    p.ok(&["pool", "check"]);
}

#[test]
fn xfs_reflink_pool_lifecycle() {
    let fs = LoopFs::new("xfs", 600);
    lifecycle(&pool_on(fs.path()), "reflink", true);
}

#[test]
fn btrfs_pool_lifecycle() {
    let fs = LoopFs::new("btrfs", 600);
    lifecycle(&pool_on(fs.path()), "btrfs", true);
}

#[test]
fn zfs_pool_lifecycle() {
    let zfs = crate::support::ZfsPool::new(400);
    let root = zfs.dataset("pgvirt");
    let p = Pgvirt::new();
    let out = p.ok(&["init", "--pool", root.to_str().expect("utf-8")]);
    assert!(out.contains("ZFS snapshots and clones"), "{out}");
    lifecycle(&p, "zfs", true);
}

#[test]
fn copy_pool_lifecycle_on_the_default_filesystem() {
    let dir = PoolDir::new();
    let p = Pgvirt::new();
    let out = p.ok(&["init", "--pool", dir.pool().to_str().expect("utf-8")]);
    assert!(out.contains("clones are full copies"), "it says so: {out}");
    lifecycle(&p, "copy", false);
}

#[test]
fn a_backend_override_must_fit_the_filesystem_and_a_pool_dir_must_be_empty() {
    let dir = PoolDir::new();
    let p = Pgvirt::new();
    let err = p.fails(&[
        "init",
        "--pool",
        dir.pool().to_str().expect("utf-8"),
        "--backend",
        "btrfs",
    ]);
    assert!(err.contains("needs a btrfs filesystem"), "{err}");
    std::fs::create_dir_all(dir.pool()).expect("mkdir");
    std::fs::write(dir.pool().join("precious.txt"), "user data").expect("write");
    let err = p.fails(&["init", "--pool", dir.pool().to_str().expect("utf-8")]);
    assert!(err.contains("neither empty nor a pgvirt pool"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.pool().join("precious.txt")).expect("kept"),
        "user data"
    );
    assert!(p.fails(&["pool", "info"]).contains("pgvirt init"));
}

#[test]
fn a_clone_killed_midway_is_found_and_repaired_by_pool_check() {
    let fs = LoopFs::new("xfs", 400);
    let p = pool_on(fs.path());
    p.json(&["pool", "dataset", "create", "base", "--owner", "postgres"]);
    let snap = p.json(&["pool", "dataset", "snapshot", "base", "s1"])["id"].to_string();
    let mut child = crate::support::spawn_paused(
        p.command(&[
            "pool", "dataset", "clone", &snap, "doomed", "--owner", "postgres",
        ]),
        "clone",
    );
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let leftover = fs.path().join("pool/datasets/doomed");
    assert!(leftover.exists(), "the kill left a half-made clone");

    // check reports it (non-zero), --repair removes it, then all agrees.
    let err = p.fails(&["pool", "check"]);
    assert!(err.contains("1 problem"), "{err}");
    let report = p.json(&["pool", "check", "--repair"]);
    assert_eq!(
        report["repaired"].as_array().expect("repaired").len(),
        1,
        "{report}"
    );
    assert!(!leftover.exists());
    p.ok(&["pool", "check"]);
    let names: Vec<Value> = p
        .json(&["pool", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("base")]);
}

#[test]
fn an_orphan_directory_in_the_pool_is_reported_and_repaired() {
    let dir = PoolDir::new();
    let p = pool_on(dir.pool().parent().expect("parent"));
    std::fs::create_dir(dir.pool().join("datasets/stray")).expect("stray");
    let report = p.json(&["pool", "check", "--repair"]);
    assert!(
        report["repaired"][0]
            .as_str()
            .expect("repaired")
            .contains("not in the store"),
        "{report}"
    );
    p.ok(&["pool", "check"]);
}

#[test]
fn mount_paths_are_validated_and_bind_mounts_come_and_go() {
    let dir = PoolDir::new();
    let p = pool_on(dir.pool().parent().expect("parent"));
    p.json(&["pool", "dataset", "create", "a", "--owner", "postgres"]);
    p.json(&["pool", "dataset", "create", "b", "--owner", "postgres"]);
    let inside = dir.pool().join("datasets/b/x");
    for (path, says) in [
        ("relative/path", "must be absolute"),
        ("/", "not allowed"),
        ("/var/tmp/../etc", "must not contain '..'"),
        (inside.to_str().expect("utf-8"), "inside"),
    ] {
        let err = p.fails(&["pool", "dataset", "mount", "a", path]);
        assert!(err.contains(says), "{path}: {err}");
    }
    let target = dir.pool().parent().expect("parent").join("mnt-a");
    let mounted = p.json(&[
        "pool",
        "dataset",
        "mount",
        "a",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(mounted["mounted"], json!(target));
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        info.contains(target.to_str().expect("utf-8")),
        "bind-mounted"
    );
    // Another dataset cannot go inside that mount.
    let nested = target.join("nested");
    let err = p.fails(&[
        "pool",
        "dataset",
        "mount",
        "b",
        nested.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("overlaps"), "{err}");
    p.ok(&["pool", "dataset", "unmount", "a"]);
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!info.contains(target.to_str().expect("utf-8")), "unmounted");
}

#[test]
fn retention_keeps_snapshots_with_dependents() {
    use pgvirt::host::lifecycle::timeflow::{self, ContainerKind::Dsource};
    use pgvirt::host::storage::{Owned, Pool};
    use pgvirt::host::store::Store;
    let dir = PoolDir::new();
    let p = pool_on(dir.pool().parent().expect("parent"));
    p.json(&["pool", "dataset", "create", "src", "--owner", "postgres"]);
    let store = Store::open(&p.store()).expect("store");
    let pool = Pool::open(&store).expect("pool");
    let tf = timeflow::create(&store, Dsource, 1, None, "src").expect("timeflow");
    let mut ids = Vec::new();
    for i in 0..4 {
        let ds = pool
            .snapshot(&store, "src", &format!("s{i}"))
            .expect("snapshot");
        ids.push(timeflow::add_snapshot(&store, tf.id, ds.id, &json!({"n": i})).expect("add"));
    }
    // A clone of the oldest snapshot depends on it.
    pool.clone_snapshot(&store, ids[0].dataset_snapshot_id, "vdb-keep", None)
        .expect("clone");
    timeflow::set_retention(&store, Dsource, 1, Some(1), None).expect("policy");
    let removed = timeflow::apply_retention(&store, &pool, Dsource, 1).expect("retention");
    assert_eq!(
        removed,
        vec![ids[1].id, ids[2].id],
        "keeps the newest and the one with a clone"
    );
    let left: Vec<i64> = timeflow::snapshots(&store, Dsource, 1)
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![ids[0].id, ids[3].id]);
    // These datasets belong to no dSource or VDB: the test says they are owned.
    let owned = Owned {
        datasets: ["src", "vdb-keep"].map(String::from).into(),
        snapshots: [ids[0].dataset_snapshot_id, ids[3].dataset_snapshot_id].into(),
    };
    let report = pool.check(&store, false, &owned).expect("check");
    assert!(report.problems.is_empty(), "{report:?}");
    // Without owners, pool check names them.
    let report = pool.check(&store, false, &Owned::default()).expect("check");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("dataset vdb-keep belongs to no dSource or VDB")),
        "{report:?}"
    );
}

#[test]
fn vdbs_on_a_zfs_pool_are_zfs_clones_that_add_little() {
    // Kept small: zfs-fuse is slow.
    let s = crate::support::Stack::on("zfs");
    assert_eq!(s.pgvirt.json(&["pool", "info"])["backend"], json!("zfs"));
    s.source.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    s.link("z");
    s.pgvirt.ok(&["vdb", "provision", "z1", "--from", "z"]);
    s.pgvirt.ok(&["vdb", "provision", "z2", "--from", "z"]);
    s.vdb_sql("z1", "DELETE FROM t WHERE g <= 100");
    assert_eq!(s.vdb_sql("z1", "SELECT count(*) FROM t"), "19900");
    assert_eq!(s.vdb_sql("z2", "SELECT count(*) FROM t"), "20000");
    let list = s.pgvirt.json(&["pool", "list"]);
    let v = s.pgvirt.json(&["vdb", "show", "z2"]);
    let ds = dataset(&list, v["dataset"].as_str().expect("dataset"));
    let zfs = &ds["space"]["zfs"];
    let written = zfs["written"].as_u64().expect("written");
    let referenced = zfs["referenced"].as_u64().expect("referenced");
    assert!(written < 64 * 1024 * 1024, "a fresh VDB adds little: {zfs}");
    assert!(referenced > written, "and reaches the shared data: {zfs}");
    let snap = s.pgvirt.json(&["vdb", "snapshot", "z1"])["id"].to_string();
    s.pgvirt
        .ok(&["vdb", "provision", "z3", "--from", &format!("z1@{snap}")]);
    assert_eq!(s.vdb_sql("z3", "SELECT count(*) FROM t"), "19900");
    let err = s.pgvirt.fails(&["vdb", "delete", "z1"]);
    assert!(err.contains("VDB z3 depends"), "{err}");
    s.pgvirt.ok(&["dsource", "sync", "z"]);
    s.pgvirt.ok(&["vdb", "refresh", "z2"]);
    s.pgvirt.ok(&["dsource", "delete", "z", "--with-vdbs"]);
    assert_eq!(s.pgvirt.json(&["pool", "list"]), json!([]));
    s.pgvirt.ok(&["pool", "check"]);
}

/// Every entry under `a` is under `b` with the same kind, mode, owner,
/// modification time, link target and contents, and nothing else is.
fn assert_same_tree(a: &Path, b: &Path) {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let m = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            let what = if m.file_type().is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&path).expect("readlink").display()
                )
            } else if m.is_dir() {
                "dir".to_owned()
            } else {
                format!("file {:x}", hash_of(&std::fs::read(&path).expect("read")))
            };
            let mtime = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime()
            };
            out.push((
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} mtime {mtime}",
                    m.mode(),
                    m.uid(),
                    m.gid()
                ),
            ));
            if m.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    fn hash_of(bytes: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    walk(a, a, &mut left);
    walk(b, b, &mut right);
    assert!(
        left.len() > 100,
        "a data directory's worth of entries: {}",
        left.len()
    );
    assert_eq!(left, right, "the clone differs from its origin");
}
