//! A long command run in the background (its output in files of the
//! dSource's private directory), its progress reported as lines of its log
//! that match a pattern, out of a known total. Its pid is kept in
//! `<dir>/<name>.pid`, so that one left by a killed pgvirt is stopped by
//! the next ingest ([`stop_left`]).

use std::time::Duration;

use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};

/// What to run and how to count its progress.
pub struct Watched<'a> {
    /// What it does, for errors ("pg_dump").
    pub what: &'a str,
    /// The directory of its files, and their name.
    pub dir: &'a str,
    pub name: &'a str,
    /// Bash source; `vars` reach it in its environment.
    pub script: &'a str,
    pub vars: Vec<(&'a str, String)>,
    /// A fixed string; each log line holding it is one unit done.
    pub pattern: &'a str,
    pub total: u64,
    pub unit: &'a str,
}

/// Runs it and waits, reporting progress; an error holds its log's end.
pub fn run(platform: &Platform, w: Watched<'_>) -> Result<(), OperationError> {
    let mut vars = w.vars.clone();
    vars.push(("WATCHED_SCRIPT", w.script.to_owned()));
    vars.push(("WATCHED_DIR", w.dir.to_owned()));
    vars.push(("WATCHED_NAME", w.name.to_owned()));
    let start = r#"
set -u
export WATCHED_FILE="$WATCHED_DIR/$WATCHED_NAME"
rm -f -- "$WATCHED_FILE.rc"
# A process group of its own, so that all of it can be stopped at once.
setsid bash -c 'bash -c "$WATCHED_SCRIPT"; echo $? > "$WATCHED_FILE.rc"' \
  > "$WATCHED_FILE.out" 2> "$WATCHED_FILE.log" < /dev/null &
echo $! > "$WATCHED_FILE.pid"
"#;
    platform.run_ok(&format!("starting {}", w.what), &request(start, &vars))?;
    let poll = r#"
f="$WATCHED_DIR/$WATCHED_NAME"
if [ -f "$f.rc" ]; then echo "done $(cat -- "$f.rc")"; exit 0; fi
if ! kill -0 "$(cat -- "$f.pid" 2>/dev/null)" 2>/dev/null; then
  sleep 0.2
  if [ -f "$f.rc" ]; then echo "done $(cat -- "$f.rc")"; else echo gone; fi
  exit 0
fi
echo "running $(grep -c -F -- "$PATTERN" "$f.log" 2>/dev/null || echo 0)"
"#;
    let poll_vars = [
        ("WATCHED_DIR", w.dir.to_owned()),
        ("WATCHED_NAME", w.name.to_owned()),
        ("PATTERN", w.pattern.to_owned()),
    ];
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let out = platform.run_ok(&format!("watching {}", w.what), &request(poll, &poll_vars))?;
        let line = out.stdout.trim();
        if line == "gone" {
            return Err(OperationError::new(
                ErrorKind::CommandFailed,
                format!("{} failed: it ended without an exit code (killed?)", w.what),
            ));
        }
        if let Some(rc) = line.strip_prefix("done ") {
            let _ = platform.run(&request(
                r#"rm -f -- "$WATCHED_DIR/$WATCHED_NAME.pid""#,
                &poll_vars,
            ));
            if rc.trim() == "0" {
                if w.total > 0 {
                    platform.progress(w.total, w.total, w.unit);
                }
                return Ok(());
            }
            let log = platform
                .run(&request(
                    r#"grep -v -F -- "$PATTERN" "$WATCHED_DIR/$WATCHED_NAME.log" | grep -v ': \(processing\|creating\|launching\|finished\|reading\|identifying\|saving\|dumping\|last built-in\|executing\|connecting\|implied\|flagging\|determining\|setting\|started\|processing\|entering\|reducing\)' | tail -n 8"#,
                    &poll_vars,
                ))
                .map(|o| o.stdout)
                .unwrap_or_default();
            return Err(OperationError::new(
                ErrorKind::CommandFailed,
                format!("{} failed", w.what),
            )
            .with_cause(format!(
                "exit code {}: {}",
                rc.trim(),
                log.trim().replace('\n', "; ")
            )));
        }
        if let Some(done) = line
            .strip_prefix("running ")
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            if done != last && w.total > 0 {
                platform.progress(done.min(w.total), w.total, w.unit);
                last = done;
            }
        }
    }
}

/// Stops a command of `dir` a killed pgvirt left running (by the pid it
/// recorded, and its whole process group).
pub fn stop_left(platform: &Platform, dir: &str, names: &[&str]) -> Result<(), OperationError> {
    platform.run_ok(
        "stopping what a cut-short ingest left running",
        &request(
            r#"for n in $NAMES; do
  f="$DIR/$n.pid"
  [ -f "$f" ] || continue
  pid=$(cat -- "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f -- "$f"
done
exit 0"#,
            &[("DIR", dir.to_owned()), ("NAMES", names.join(" "))],
        ),
    )?;
    Ok(())
}
