//! `pgvirt demo`: the whole story on a fresh machine, with nothing but
//! PostgreSQL installed. In a work directory of its own it makes a store, a
//! pool (on a file system of its own with copy-on-write, when the directory
//! has none and pgvirt is root) and a source cluster; links the source,
//! provisions two VDBs, shows they are independent and thin, refreshes one,
//! rewinds the other, and tears it all down — or, with `--keep`, says how to
//! explore it and how to tear it down later (`pgvirt demo --teardown DIR`).
//!
//! - [`story`]: the steps, through the same library calls the commands use;
//! - [`place`]: the work directory, its pool's file system, and teardown;
//! - [`steps`]: how each step shows (a spinner on a terminal).

mod place;
mod steps;
mod story;

use std::path::PathBuf;

use anyhow::Context as _;

/// `pgvirt demo`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Work directory (empty or new); default: a new one under /var/tmp.
    #[arg(long, conflicts_with = "teardown")]
    dir: Option<PathBuf>,
    /// OS user PostgreSQL runs as; default: postgres when root, else you.
    #[arg(long)]
    user: Option<String>,
    /// Keep everything running at the end, and say how to use and remove it.
    #[arg(long, conflicts_with = "teardown")]
    keep: bool,
    /// Remove what `pgvirt demo --keep` left in DIR: its VDBs, dSource,
    /// source cluster, pool and the directory itself.
    #[arg(long, value_name = "DIR")]
    teardown: Option<PathBuf>,
}

/// `postgres` when running as root, else the current user.
fn default_user() -> String {
    if nix::unistd::Uid::effective().is_root() {
        return "postgres".into();
    }
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

/// `pgvirt demo`.
pub fn exec(args: Args) -> anyhow::Result<()> {
    let mut show = steps::Steps::new();
    if let Some(dir) = args.teardown {
        let started = std::time::Instant::now();
        place::teardown(&dir, &mut show)
            .with_context(|| format!("tearing down the demo in {}", dir.display()))?;
        println!(
            "removed the demo in {} ({:.1}s)",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let user = args.user.unwrap_or_else(default_user);
    let started = std::time::Instant::now();
    let dir = story::run(args.dir, &user, args.keep, &mut show).context("running the demo")?;
    println!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
    if args.keep {
        let store = dir.join("pgvirt.db");
        println!(
            "\nkept in {dir}. To explore it:\n  export PGVIRT_STORE={store}\n  pgvirt vdb list\nTo remove everything (VDBs, dSource, source cluster, pool, directory):\n  pgvirt demo --teardown {dir}",
            dir = dir.display(),
            store = store.display()
        );
    }
    Ok(())
}
