//! Ingestion by the engine's own `pg_basebackup` (method 1): run in the
//! background (with `-C` making this dSource's slot), its progress reported,
//! its wait bounded — it ends with an error if the process is gone without
//! an exit code, or nothing moves for [`STALL`].

use std::time::{Duration, Instant};

use serde_json::Value;

use super::ingest::mark_slot;
use super::method::Ingestion;
use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `basebackup_streaming`.
pub struct Basebackup;

impl Ingestion for Basebackup {
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        source: Option<&Source>,
    ) -> Result<(), OperationError> {
        let source = source.ok_or_else(|| {
            OperationError::new(ErrorKind::InvalidInput, "linked_source has no source")
        })?;
        mark_slot(platform, staging)?;
        run(platform, staging, source)
    }
}

/// How long pg_basebackup may show no progress before it counts as stuck.
pub const STALL: Duration = Duration::from_secs(600);

/// Runs pg_basebackup in the background and reports its progress.
pub fn run(platform: &Platform, staging: &Staging, source: &Source) -> Result<(), OperationError> {
    let checkpoint = staging
        .params
        .pointer("/pg_basebackup/checkpoint")
        .and_then(Value::as_str)
        .unwrap_or("fast");
    let mut vars: Vec<(&str, String)> = vec![
        ("BIN", staging.cluster.bin_dir.clone()),
        ("DATA", staging.cluster.data_dir.clone()),
        ("FILES", staging.files()),
        ("PGHOST", source.host.clone()),
        ("PGPORT", source.port.to_string()),
        ("PGUSER", source.user.clone()),
        ("PGCONNECT_TIMEOUT", source.connect_timeout.to_string()),
        ("CHECKPOINT", checkpoint.to_owned()),
        ("SLOT", staging.slot().unwrap_or_default()),
        (
            "CREATE_SLOT",
            if staging.creates_slot() { "1" } else { "" }.to_owned(),
        ),
        (
            "MAX_RATE",
            staging
                .params
                .pointer("/pg_basebackup/max_rate")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        ),
    ];
    if source.password.is_some() {
        // The passfile the ingest wrote: the password is in no environment.
        vars.push(("PGPASSFILE", staging.passfile()));
    }
    // Started detached (output to files), so progress can be read while it runs.
    let start = r#"
set -u
args=(-D "$DATA" -X stream -c "$CHECKPOINT" -P -v -w)
[ -n "$SLOT" ] && args+=(-S "$SLOT")
[ -n "$CREATE_SLOT" ] && [ -n "$SLOT" ] && args+=(-C)
[ -n "$MAX_RATE" ] && args+=(-r "$MAX_RATE")
rm -f -- "$FILES/basebackup.rc"
( "$BIN/pg_basebackup" "${args[@]}"; echo $? > "$FILES/basebackup.rc" ) \
  > "$FILES/basebackup.out" 2> "$FILES/basebackup.log" < /dev/null &
echo $!
"#;
    let out = platform.run_ok("starting pg_basebackup", &request(start, &vars))?;
    let pid = out.stdout.trim().to_owned();
    let total = source.database_size().unwrap_or(0);
    // The wrapper writes pg_basebackup's exit code; if it is gone without
    // one, or nothing moves for STALL, the wait ends with an error.
    let poll = r#"
if [ -f "$FILES/basebackup.rc" ]; then echo "done $(cat -- "$FILES/basebackup.rc")"; exit 0; fi
if ! kill -0 "$PID" 2>/dev/null; then
  sleep 0.2
  if [ -f "$FILES/basebackup.rc" ]; then echo "done $(cat -- "$FILES/basebackup.rc")"; else echo gone; fi
  exit 0
fi
kb=$(tr '\r' '\n' < "$FILES/basebackup.log" 2>/dev/null | grep -o '^ *[0-9]*/[0-9]* kB' | tail -n 1 | tr -dc '0-9/')
echo "running ${kb:-0/0}"
"#;
    let mut last_progress = (String::new(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let out = platform.run_ok(
            "watching pg_basebackup",
            &request(poll, &[("FILES", staging.files()), ("PID", pid.clone())]),
        )?;
        let line = out.stdout.trim();
        if line == "gone" {
            return Err(OperationError::new(
                ErrorKind::CommandFailed,
                "pg_basebackup failed: it ended without an exit code (killed?)",
            )
            .with_cause(format!("process {pid} is gone")));
        }
        if line != last_progress.0 {
            last_progress = (line.to_owned(), Instant::now());
        } else if last_progress.1.elapsed() > STALL {
            let _ = platform.run(&request(
                r#"kill -TERM "$PID" 2>/dev/null; pkill -TERM -P "$PID" 2>/dev/null; true"#,
                &[("PID", pid.clone())],
            ));
            return Err(OperationError::new(
                ErrorKind::CommandFailed,
                format!(
                    "pg_basebackup failed: no progress for {} s",
                    STALL.as_secs()
                ),
            )
            .with_action(
                "check that the source is up and reachable, then sync again with --resync",
            ));
        }
        if let Some(rc) = line.strip_prefix("done ") {
            if rc.trim() == "0" {
                if total > 0 {
                    platform.progress(total, total, "bytes");
                }
                return Ok(());
            }
            let log = platform
                .run(&request(
                    r#"tail -n 15 -- "$FILES/basebackup.log""#,
                    &[("FILES", staging.files())],
                ))
                .map(|o| o.stdout)
                .unwrap_or_default();
            return Err(OperationError::new(ErrorKind::CommandFailed, "pg_basebackup failed")
                .with_cause(format!("exit code {}: {}", rc.trim(), last_meaningful_lines(&log)))
                .with_action("check the source host, port, replication user and password, and pg_hba.conf on the source"));
        }
        if let Some((done, all)) = line
            .strip_prefix("running ")
            .and_then(|s| s.split_once('/'))
        {
            let done: u64 = done.parse().unwrap_or(0);
            let all: u64 = all.parse().unwrap_or(0);
            if all > 0 {
                platform.progress(done * 1024, all * 1024, "bytes");
            }
        }
    }
}

/// pg_basebackup's -P progress lines say nothing a user needs in an error.
fn last_meaningful_lines(log: &str) -> String {
    log.split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty() && !l.contains(" kB (") && !l.contains("waiting for"))
        .collect::<Vec<_>>()
        .join("; ")
}
