//! A file-backed ZFS pool for tests and benchmarks, through `zfs-fuse` (the
//! same `zpool`/`zfs` commands as OpenZFS): the daemon is started when it
//! does not run, a pool is made on a `truncate`d file, and destroyed on
//! drop, even when the test fails. Shared by `tests/` and `bench/`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A real (FUSE) ZFS pool whose root dataset is mounted at [`ZfsPool::path`].
pub struct ZfsPool {
    name: String,
    image: PathBuf,
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

fn zpool_answers() -> bool {
    Command::new("zpool")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the `zfs-fuse` daemon if it does not answer.
fn ensure_daemon() {
    static STARTED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = STARTED.lock().expect("lock");
    if zpool_answers() {
        return;
    }
    let started = Command::new("zfs-fuse")
        .status()
        .unwrap_or_else(|e| panic!("zfs-fuse is missing ({e}); run `bash .ci/deps`"));
    assert!(started.success(), "zfs-fuse did not start");
    let t = Instant::now();
    while !zpool_answers() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "zfs-fuse does not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl ZfsPool {
    pub fn new(megabytes: u64) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "ZFS pools need root (CI and sessions run as root)"
        );
        ensure_daemon();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pgvt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("pgvirt-zfs-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let image = dir.path().join("pool.img");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(megabytes * 1024 * 1024).expect("size image");
        drop(file);
        let mount = dir.path().join("mnt");
        let out = Command::new("zpool")
            .args(["create", "-f", "-m"])
            .arg(&mount)
            .arg(&name)
            .arg(&image)
            .output()
            .expect("zpool runs");
        assert!(
            out.status.success(),
            "zpool create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        Self {
            name,
            image,
            _dir: dir,
            mount,
        }
    }

    /// The mount point of the pool's root dataset.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Makes a dataset `<pool>/<child>` mounted at `path()/<child>`.
    pub fn dataset(&self, child: &str) -> PathBuf {
        let out = Command::new("zfs")
            .arg("create")
            .arg(format!("{}/{child}", self.name))
            .output()
            .expect("zfs runs");
        assert!(
            out.status.success(),
            "zfs create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.mount.join(child);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        path
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        let _ = Command::new("fuser")
            .args(["-k", "-m"])
            .arg(&self.mount)
            .output();
        let nested: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(self.mount.to_string_lossy().as_ref()))
            .collect();
        for m in nested.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        for _ in 0..10 {
            let out = Command::new("zpool")
                .args(["destroy", "-f"])
                .arg(&self.name)
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
