//! The consistent point a snapshot of a live staging is taken at, without
//! stopping replication: a non-exclusive backup on the standby
//! (`pg_backup_start` then `pg_backup_stop`), its label written into
//! `pgvirt/`, inside what the snapshot captures. Two ways:
//!
//! - **replay running** (streaming staging that keeps WAL, a primary with
//!   `full_page_writes`): the backup is started and ended at once and replay
//!   goes on while the engine clones the files, a fuzzy copy made consistent
//!   by the label. `post_snapshot` then reads how far replay has got (no
//!   page in the copy is newer; never before the backup's end) and keeps
//!   the WAL from the label's redo point to there: that is the snapshot's
//!   LSN, which a clone reaches with the kept WAL (`needs_kept_wal`).
//!   Staging is never held back.
//! - **replay paused** (log shipping, or no kept WAL): replay is paused
//!   before the backup ends; no page is newer than the replay position,
//!   which is the snapshot's LSN, and no restartpoint can recycle the WAL
//!   the backup needs; `post_snapshot` resumes replay.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{wal, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::{parse_lsn, parse_size};
use crate::connector::platform::{request, Platform};

/// Starts the backup. Times come from PostgreSQL in UTC, never from text in
/// the server's zone (the label's START TIME is in log_timezone's
/// abbreviation).
const START: &str = r#"
SELECT json_build_object('started_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
  FROM (SELECT pg_backup_start(:'label', true)) b;
"#;

/// Pauses replay and waits until it has.
const PAUSE: &str = r#"
SELECT pg_wal_replay_pause();
DO $$
BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN pg_get_wal_replay_pause_state() = 'paused';
    PERFORM pg_sleep(0.01);
  END LOOP;
  IF pg_get_wal_replay_pause_state() <> 'paused' THEN
    RAISE EXCEPTION 'WAL replay did not pause';
  END IF;
END $$;
"#;

/// The snapshot's facts, then the end of the backup.
const FACTS_AND_STOP: &str = r#"
SELECT json_build_object(
  'replayed_lsn', pg_last_wal_replay_lsn()::text,
  'postgres_version', current_setting('server_version'),
  'major_version', current_setting('server_version_num')::int / 10000,
  'system_identifier', (SELECT system_identifier::text FROM pg_control_system()),
  'wal_segment_size', current_setting('wal_segment_size', true),
  'databases', (SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate),
  'size_bytes', (SELECT sum(pg_database_size(oid))::bigint FROM pg_database),
  'control_checkpoint_lsn', (SELECT checkpoint_lsn::text FROM pg_control_checkpoint()),
  'control_checkpoint_time', (SELECT to_char(checkpoint_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') FROM pg_control_checkpoint()),
  'replayed_at', to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
  'taken_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
SELECT json_build_object('stop_lsn', lsn::text, 'labelfile', labelfile, 'spcmapfile', spcmapfile)
  FROM pg_backup_stop(false);
"#;

/// Whether replay may run on while the snapshot is taken: the WAL from the
/// backup's start is kept, and the primary writes full pages after each
/// checkpoint (so a page copied while it was written is repaired).
fn replay_may_run(platform: &Platform, staging: &Staging) -> Result<bool, OperationError> {
    if staging.wal.is_none() || !staging.method.streams() {
        return Ok(false);
    }
    let fpw = staging.cluster.psql(
        platform,
        "reading full_page_writes of the primary's last checkpoint",
        "SELECT full_page_writes FROM pg_control_checkpoint();",
        &[],
    )?;
    Ok(fpw.trim() == "t")
}

/// Runs the non-exclusive backup, with replay running on when it may (else
/// paused), and writes the label and the snapshot's facts into `pgvirt/`,
/// inside what the snapshot captures.
pub fn consistent_point(platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
    let live = replay_may_run(platform, staging)?;
    let script = format!("{START}{}{FACTS_AND_STOP}", if live { "" } else { PAUSE });
    let label = format!("pgvirt {}", staging.name);
    let made = (|| {
        let out = staging.cluster.psql(
            platform,
            "bringing staging to a consistent point",
            &script,
            &[("label", &label)],
        )?;
        let (facts, labelfile, spcmap) = facts_from(&out)?;
        record(platform, staging, facts, labelfile, spcmap, live)
    })();
    if made.is_err() {
        // Never leave replay paused behind a failed snapshot.
        let _ = staging.resume_replay(platform);
    }
    made
}

/// The facts, label and tablespace map from the backup's output.
fn facts_from(out: &str) -> Result<(Value, String, String), OperationError> {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    let (Some(start), Some(facts), Some(stop)) = (lines.first(), lines.get(1), lines.get(2)) else {
        return Err(OperationError::new(
            ErrorKind::Internal,
            "unexpected output from the backup on staging",
        )
        .with_cause(out.to_owned()));
    };
    let parse = |text: &str| -> Result<Value, OperationError> {
        serde_json::from_str(text)
            .map_err(|e| OperationError::new(ErrorKind::Internal, e.to_string()))
    };
    let start = parse(start)?;
    let mut facts = parse(facts)?;
    let stop = parse(stop)?;
    let labelfile = stop["labelfile"].as_str().unwrap_or_default().to_owned();
    let label = parse_backup_label(&labelfile);
    facts["wal_segment_size"] = json!(parse_size(
        facts["wal_segment_size"].as_str().unwrap_or("16MB")
    ));
    facts["timeline"] = json!(label
        .get("START TIMELINE")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1));
    facts["redo_lsn"] = json!(label
        .get("START WAL LOCATION")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or(""));
    facts["checkpoint_lsn"] = json!(label
        .get("CHECKPOINT LOCATION")
        .cloned()
        .unwrap_or_default());
    // The control file names the backup's checkpoint unless a restartpoint
    // slipped in after the backup started; then the backup's start time is
    // the nearest true time there is.
    let control = facts
        .as_object_mut()
        .map(|f| {
            (
                f.remove("control_checkpoint_lsn"),
                f.remove("control_checkpoint_time"),
            )
        })
        .unwrap_or_default();
    facts["checkpoint_time"] = match control {
        (Some(lsn), Some(time)) if lsn == facts["checkpoint_lsn"] => time,
        _ => start["started_at"].clone(),
    };
    if facts["replayed_at"].is_null() {
        facts.as_object_mut().map(|f| f.remove("replayed_at"));
    }
    facts["began_at"] = start["started_at"].clone();
    facts["stop_lsn"] = stop["stop_lsn"].clone();
    facts["backup_label"] = json!(labelfile);
    if facts["databases"].is_null() {
        facts["databases"] = json!([]);
    }
    let spcmap = stop["spcmapfile"].as_str().unwrap_or_default().to_owned();
    Ok((facts, labelfile, spcmap))
}

/// Keeps the WAL the snapshot needs (when replay is paused: it is known
/// now) and writes label, tablespace map and facts into `pgvirt/`.
fn record(
    platform: &Platform,
    staging: &Staging,
    mut facts: Value,
    labelfile: String,
    spcmap: String,
    live: bool,
) -> Result<Value, OperationError> {
    let segment_size = facts["wal_segment_size"]
        .as_u64()
        .unwrap_or(16 * 1024 * 1024);
    let replayed = facts["replayed_lsn"].as_str().unwrap_or("").to_owned();
    staging.ingestion().keep_archived_wal(
        platform,
        staging,
        &labelfile,
        &replayed,
        segment_size,
    )?;
    if live {
        // The snapshot's point is known once the files are cloned.
        facts["replay"] = json!("running");
        facts["needs_kept_wal"] = json!(true);
    } else {
        // The WAL from the backup's start to this point is kept in the WAL
        // dataset too (the segment in progress as a partial).
        let timeline = facts["timeline"].as_u64().unwrap_or(1);
        let redo = facts["redo_lsn"].as_str().unwrap_or("").to_owned();
        wal::keep_partial(platform, staging, timeline, &redo, &replayed, segment_size)?;
    }
    let write = r#"
set -eu
umask 077
printf '%s' "$LABEL" > "$FILES/backup_label"
if [ -n "$SPCMAP" ]; then printf '%s' "$SPCMAP" > "$FILES/tablespace_map"; else rm -f -- "$FILES/tablespace_map"; fi
printf '%s' "$FACTS" > "$FILES/snapshot.json"
# These files and their directory only: a sync of the whole filesystem
# would write out everything staging (and every clone beside it) has
# dirtied, inside the snapshot's time (the clone writes out what it copies).
sync -- "$FILES/backup_label" "$FILES/snapshot.json" "$FILES"
if [ -f "$FILES/tablespace_map" ]; then sync -- "$FILES/tablespace_map"; fi
"#;
    platform.run_ok(
        "writing the backup label",
        &request(
            write,
            &[
                ("FILES", staging.files()),
                ("LABEL", labelfile),
                ("SPCMAP", spcmap),
                ("FACTS", facts.to_string()),
            ],
        ),
    )?;
    Ok(json!({"replayed_lsn": facts["replayed_lsn"], "stop_lsn": facts["stop_lsn"]}))
}

/// After the files of a snapshot taken with replay running were cloned: how
/// far replay has got is the snapshot's point (no page in the copy is
/// newer), and the WAL from the backup's redo point to there is kept.
/// Updates `meta`, the facts written before the clone.
pub fn after_live_clone(
    platform: &Platform,
    staging: &Staging,
    meta: &mut Value,
) -> Result<(), OperationError> {
    let out = staging.cluster.psql(
        platform,
        "reading how far staging has replayed",
        r#"SELECT json_build_object(
  'replayed_lsn', pg_last_wal_replay_lsn()::text,
  'replayed_at', to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
  'taken_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));"#,
        &[],
    )?;
    let now: Value = out
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::Internal,
                "unexpected output reading the replay position",
            )
            .with_cause(out.clone())
        })?;
    // Never before the backup's end: on a standby that is the control
    // file's minimum recovery point, which may already name the end of the
    // record replay is applying (a clone made in milliseconds, as btrfs
    // makes them, can be that fast); a clone recovered to a point before it
    // is refused ("requested recovery stop point is before consistent
    // recovery point"). Staging has that record: it is replaying it.
    let replayed = now["replayed_lsn"].as_str().and_then(parse_lsn);
    let stop = meta["stop_lsn"].as_str().and_then(parse_lsn);
    meta["replayed_lsn"] = match (replayed, stop) {
        (Some(r), Some(s)) if s > r => json!(wal::lsn_text(s)),
        _ => now["replayed_lsn"].clone(),
    };
    meta["taken_at"] = now["taken_at"].clone();
    if !now["replayed_at"].is_null() {
        meta["replayed_at"] = now["replayed_at"].clone();
    }
    let timeline = meta["timeline"].as_u64().unwrap_or(1);
    let segment_size = meta["wal_segment_size"]
        .as_u64()
        .unwrap_or(16 * 1024 * 1024);
    let redo = meta["redo_lsn"].as_str().unwrap_or("").to_owned();
    let replayed = meta["replayed_lsn"].as_str().unwrap_or("").to_owned();
    wal::keep_partial(platform, staging, timeline, &redo, &replayed, segment_size)
}

/// `KEY: value` lines of a backup label.
fn parse_backup_label(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIME: 2026-11-22 10:00:01 CET\nSTART TIMELINE: 1\n";
        let l = parse_backup_label(label);
        assert_eq!(l["CHECKPOINT LOCATION"], "0/2000060");
        assert_eq!(l["START TIMELINE"], "1");
    }
}
