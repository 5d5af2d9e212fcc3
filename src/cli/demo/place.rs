//! The demo's place: its work directory (marked `.pgvirt-demo`), the file
//! system its pool lives on, and taking all of it down again.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::steps::Steps;
use crate::abi::CommandRequest;
use crate::host::connectors::registry;
use crate::host::error::{Error, Result};
use crate::host::lifecycle::discovery::{self, Presence};
use crate::host::lifecycle::{dsource, repair, teardown as lifecycle_teardown, vdb};
use crate::host::storage::{mount, Backend};
use crate::host::store::Store;
use crate::host::{environments, files, processes};

/// The file that marks a directory as a demo's.
const MARKER: &str = ".pgvirt-demo";
/// The size of the file system the demo makes for its pool (sparse).
const POOL_FS_BYTES: u64 = 2 << 30;

/// Makes the work directory (new or empty), marked as the demo's.
pub fn make_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("pgvirt-demo-")
            .tempdir_in("/var/tmp")
            .map_err(|e| {
                Error::io(
                    "cannot create a work directory in",
                    Path::new("/var/tmp"),
                    e,
                )
            })?
            .keep(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
    if std::fs::read_dir(&dir)
        .map_err(|e| Error::io("cannot read", &dir, e))?
        .next()
        .is_some()
    {
        return Err(Error::usage(format!(
            "{} is not empty; give the demo an empty directory",
            dir.display()
        )));
    }
    files::check_plain_path(&dir)
        .map_err(|why| Error::usage(format!("--dir {}: {why}", dir.display())))?;
    files::set_mode(&dir, 0o711)?;
    files::write_atomic(&dir.join(MARKER), b"a pgvirt demo lives here\n", 0o644)?;
    Ok(dir)
}

/// Where the pool goes, and a line saying why: on the work directory's
/// file system when it shares blocks between copies; else, as root, on a
/// file-backed XFS (reflink) or btrfs the demo makes; else a copy pool.
pub fn pool_dir(dir: &Path) -> Result<(PathBuf, String)> {
    let (backend, _) = Backend::detect(dir)?;
    let fs = crate::host::storage::backend::filesystem(dir)?;
    if backend != Backend::Copy {
        return Ok((
            dir.join("pool"),
            format!("thin clones: the work directory is on {fs} ({backend})"),
        ));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Ok((
            dir.join("pool"),
            format!("clones will be full copies: {} is on {fs}, which has no copy-on-write (as root, the demo makes its own XFS for thin clones)", dir.display()),
        ));
    }
    for (kind, mkfs) in [
        ("xfs", vec!["mkfs.xfs", "-q", "-m", "reflink=1"]),
        ("btrfs", vec!["mkfs.btrfs", "-q"]),
    ] {
        if make_fs(dir, &mkfs).is_ok() {
            return Ok((
                dir.join("pool-fs").join("pool"),
                format!(
                    "{fs} has no copy-on-write, so the demo made its own file system for thin clones: a 2 GiB file-backed {kind} at {}, removed at the end",
                    dir.join("pool-fs").display()
                ),
            ));
        }
    }
    Ok((
        dir.join("pool"),
        format!("clones will be full copies: {fs} has no copy-on-write, and neither mkfs.xfs nor mkfs.btrfs is here to make a file system that has"),
    ))
}

/// Makes a file-backed file system at `dir/pool-fs` with `mkfs`.
fn make_fs(dir: &Path, mkfs: &[&str]) -> Result<()> {
    let image = dir.join("pool.img");
    let mount_at = dir.join("pool-fs");
    let made = (|| {
        let file =
            std::fs::File::create(&image).map_err(|e| Error::io("cannot create", &image, e))?;
        file.set_len(POOL_FS_BYTES)
            .map_err(|e| Error::io("cannot size", &image, e))?;
        drop(file);
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image))?;
        std::fs::create_dir_all(&mount_at).map_err(|e| Error::io("cannot create", &mount_at, e))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount_at))?;
        files::set_mode(&mount_at, 0o711)
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir(&mount_at);
        let _ = std::fs::remove_file(&image);
    }
    made
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = processes::output(cmd).map_err(|e| {
        Error::io(
            "cannot run",
            Path::new(&format!("{:?}", cmd.get_program())),
            e,
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Removes a demo: its VDBs and dSource, its source cluster, its pool's
/// file system, and the directory.
pub fn teardown(dir: &Path, show: &mut Steps) -> Result<()> {
    if !dir.join(MARKER).is_file() {
        return Err(Error::usage(format!(
            "{} is not a demo's work directory (it has no {MARKER}); nothing was removed",
            dir.display()
        )));
    }
    show.start("tear everything down (VDBs, dSource, source cluster, pool, store)");
    let result = (|| {
        let store_path = dir.join("pgvirt.db");
        if store_path.is_file() {
            let store = Store::open(&store_path)?;
            remove_objects(&store)?;
            stop_source(&store, &dir.join("source"))?;
        }
        let fs = dir.join("pool-fs");
        if mount::is_mountpoint(&fs) {
            processes::kill_holders(
                std::slice::from_ref(&fs),
                std::time::Duration::from_secs(30),
            );
            run(Command::new("umount").arg(&fs))?;
        }
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("cannot remove", dir, e))
    })();
    match &result {
        Ok(()) => show.done(),
        Err(_) => show.failed(),
    }
    result
}

fn remove_objects(store: &Store) -> Result<()> {
    if store.setting("pool.path")?.is_none() || registry::list(store)?.is_empty() {
        return Ok(());
    }
    for said in repair::repair_interrupted(store)? {
        log::warn!("{said}");
    }
    let connector = registry::open(store, None)?;
    for d in dsource::list(store)? {
        lifecycle_teardown::delete_dsource(store, &connector, &d.name, true)?;
    }
    for v in vdb::list(store)? {
        if vdb::find(store, &v.name)?.is_some() {
            vdb::delete_tree(store, &connector, &v.name)?;
        }
    }
    Ok(())
}

/// Stops the demo's source cluster, if it runs.
fn stop_source(store: &Store, source: &Path) -> Result<()> {
    let Some(env) = environments::list(store)?.into_iter().next() else {
        return Ok(());
    };
    let Some(bin) = discovery::repositories(store, Some(&env.name))?
        .into_iter()
        .filter(|r| r.state == Presence::Present)
        .find_map(|r| r.document["bin_dir"].as_str().map(str::to_owned))
    else {
        return Ok(());
    };
    let mut req = CommandRequest {
        command: r#"[ -f "$DIR/data/postmaster.pid" ] && "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1; true"#.into(),
        ..CommandRequest::default()
    };
    req.variables.insert("BIN".into(), bin);
    req.variables
        .insert("DIR".into(), source.to_string_lossy().into_owned());
    env.run_ok(&req)?;
    Ok(())
}
