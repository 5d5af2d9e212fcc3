//! A loop-mounted XFS (reflink) or btrfs filesystem for tests and benchmarks.
//! Shared by `tests/` and `bench/` (included by path).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A real loop-mounted filesystem (`xfs` with reflink, or `btrfs`), made by
/// the test and unmounted and detached on drop, even when the test fails.
pub struct LoopFs {
    dir: tempfile::TempDir,
    image: PathBuf,
    pub mount: PathBuf,
}

impl LoopFs {
    pub fn new(kind: &str, megabytes: u64) -> Self {
        Self::new_in(kind, megabytes, Path::new("/var/tmp"))
    }

    /// The image file lives in `parent` (sparse).
    pub fn new_in(kind: &str, megabytes: u64, parent: &Path) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "loop-mounted filesystems need root (CI and sessions run as root)"
        );
        let dir = tempfile::Builder::new()
            .prefix("pgvirt-loop-")
            .tempdir_in(parent)
            .expect("tempdir");
        let image = dir.path().join(format!("{kind}.img"));
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(megabytes * 1024 * 1024).expect("size image");
        drop(file);
        let mkfs = match kind {
            "xfs" => Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .output(),
            "btrfs" => Command::new("mkfs.btrfs").arg("-q").arg(&image).output(),
            other => panic!("no loop filesystem {other}"),
        }
        .unwrap_or_else(|e| panic!("mkfs.{kind} is missing ({e}); run `bash .ci/deps`"));
        assert!(
            mkfs.status.success(),
            "mkfs.{kind}: {}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount -o loop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        Self { dir, image, mount }
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Stop anything still running from it, then unmount (lazily if busy);
        // a loop device set up by `mount -o loop` detaches on unmount.
        let _ = Command::new("fuser")
            .args(["-k", "-m"])
            .arg(&self.mount)
            .output();
        let nested: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| {
                m.starts_with(self.mount.to_string_lossy().as_ref()) && Path::new(m) != self.mount
            })
            .collect();
        for m in nested.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = &self.dir;
    }
}
