//! The processes the engine starts, tied to its life; and who still holds
//! files under a path.
//!
//! Every command the engine runs gets a process group of its own, which is
//! registered with a watchdog: a small shell the engine starts once, that
//! reads group ids on its standard input and, when that input ends — the
//! engine exited or was killed, even by SIGKILL — kills every group still
//! registered. So a `cp` or `pg_basebackup` never outlives the command that
//! started it. PostgreSQL servers are not affected: `pg_ctl` starts them in
//! a session of their own.
//!
//! [`holders`] finds processes with a file, or their working directory,
//! under a path: before the engine removes what an interrupted command left,
//! it makes sure nothing still writes into it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The watchdog's script: group ids in (`+N` registers, `-N` forgets), and
/// at end of input every registered group is killed.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
declare -A groups=()
while IFS= read -r line; do
  case $line in
    +*) groups[${line#+}]=1 ;;
    -*) unset "groups[${line#-}]" ;;
  esac
done
for g in "${!groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
exit 0
"#;

struct Watchdog {
    _child: Child,
    input: ChildStdin,
    /// Groups whose leader exited while others of the group still ran.
    lingering: Vec<i32>,
}

static WATCHDOG_STATE: Mutex<Option<Watchdog>> = Mutex::new(None);

fn with_watchdog(f: impl FnOnce(&mut Watchdog)) {
    let Ok(mut guard) = WATCHDOG_STATE.lock() else {
        return;
    };
    if guard.is_none() {
        let started = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match started {
            Ok(mut child) => {
                if let Some(input) = child.stdin.take() {
                    *guard = Some(Watchdog {
                        _child: child,
                        input,
                        lingering: Vec::new(),
                    });
                }
            }
            Err(e) => log::warn!("cannot start the process watchdog: {e}"),
        }
    }
    if let Some(w) = guard.as_mut() {
        f(w);
    }
}

fn group_is_empty(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH)
}

/// Spawns `cmd` as the leader of a new process group that dies with the
/// engine. Call [`finished`] with the child's id once it has been waited for.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.process_group(0);
    let child = cmd.spawn()?;
    let pgid = child.id() as i32;
    with_watchdog(|w| {
        let _ = writeln!(w.input, "+{pgid}");
    });
    Ok(child)
}

/// Forgets a group once nothing of it runs (a command may leave background
/// work in its group; that stays tied to the engine until it ends).
pub fn finished(pgid: u32) {
    let pgid = pgid as i32;
    with_watchdog(|w| {
        w.lingering.push(pgid);
        let (done, still): (Vec<i32>, Vec<i32>) =
            w.lingering.iter().partition(|g| group_is_empty(**g));
        for g in done {
            let _ = writeln!(w.input, "-{g}");
        }
        w.lingering = still;
    });
}

/// Runs `cmd` to the end in a tracked group; returns its output.
pub fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn(cmd)?;
    let id = child.id();
    let out = child.wait_with_output();
    finished(id);
    out
}

/// A process, by id and start time (so a reused id is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i64,
    /// Clock ticks after boot at which it started (`/proc/PID/stat` field 22).
    pub start: Option<i64>,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Self {
        let pid = i64::from(std::process::id());
        Self {
            pid,
            start: start_time(pid),
        }
    }

    /// Whether that process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        let Ok(raw) = i32::try_from(self.pid) else {
            return false;
        };
        match kill(Pid::from_raw(raw), None) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => {}
            Err(_) => return false,
        }
        if state(self.pid).is_some_and(|s| s == 'Z' || s == 'X') {
            return false;
        }
        match (self.start, start_time(self.pid)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: i64) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn state(pid: i64) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

fn start_time(pid: i64) -> Option<i64> {
    // Field 22 of stat is the 20th after the command name (fields 3..).
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Processes with an open file, their working directory, or an argument
/// (a `cp` between two files holds none open) under any of `roots`.
pub fn holders(roots: &[PathBuf]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let under = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let cwd = std::fs::read_link(dir.join("cwd")).ok();
        let mut holds = cwd.as_deref().is_some_and(under);
        if !holds {
            if let Ok(cmdline) = std::fs::read(dir.join("cmdline")) {
                holds = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| a.starts_with(b"/"))
                    .any(|a| under(Path::new(&*String::from_utf8_lossy(a))));
            }
        }
        if !holds {
            if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
                holds = fds
                    .flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| under(&target));
            }
        }
        if holds {
            found.push(pid);
        }
    }
    found
}

/// Kills every process that holds something under `roots` and waits (up to
/// `bound`) until none is left. Returns the pids it killed.
pub fn kill_holders(roots: &[PathBuf], bound: Duration) -> Vec<i32> {
    let deadline = Instant::now() + bound;
    let mut killed = Vec::new();
    loop {
        let now = holders(roots);
        if now.is_empty() {
            return killed;
        }
        for pid in &now {
            if !killed.contains(pid) {
                log::warn!(
                    "stopping process {pid}, which still uses {}",
                    roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                );
                killed.push(*pid);
            }
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if Instant::now() >= deadline {
            log::warn!("processes {now:?} still hold files after {bound:?}");
            return killed;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_id_is_not_it() {
        let me = ProcessId::current();
        assert!(me.alive());
        let other = ProcessId {
            pid: me.pid,
            start: me.start.map(|s| s + 1),
        };
        assert!(!other.alive());
    }

    #[test]
    fn finds_and_stops_a_process_holding_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .expect("sleep");
        let roots = vec![dir.path().to_owned()];
        assert!(holders(&roots).contains(&(child.id() as i32)));
        let killed = kill_holders(&roots, Duration::from_secs(5));
        assert!(killed.contains(&(child.id() as i32)));
        let _ = child.wait();
    }
}
