//! The consistent point a snapshot of a live staging is taken at, without
//! stopping replication: a non-exclusive backup on the standby
//! (`pg_backup_start`), replay paused (WAL keeps streaming in), the backup
//! ended (`pg_backup_stop`) and its label written into `pgvirt/`, inside what
//! the snapshot captures; `post_snapshot` resumes replay. With replay paused
//! no restartpoint can recycle the WAL the backup needs, and no page is newer
//! than the replay position, which the snapshot records as the LSN a VDB
//! recovers to.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{log_shipping, wal, Staging};
use crate::abi::{ErrorKind, IngestionMethod, OperationError};
use crate::connector::conf::parse_size;
use crate::connector::platform::{request, Platform};

/// Runs the non-exclusive backup with replay paused and writes the label and
/// the snapshot's facts into `pgvirt/`, inside what the snapshot captures.
pub fn consistent_point(platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
    // Times come from PostgreSQL in UTC, never from text in the server's
    // zone (the label's START TIME is in log_timezone's abbreviation).
    let script = r#"
SELECT json_build_object('started_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
  FROM (SELECT pg_backup_start(:'label', true)) b;
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
  FROM pg_backup_stop(false);"#;
    let label = format!("pgvirt {}", staging.name);
    let out = staging.cluster.psql(
        platform,
        "bringing staging to a consistent point",
        script,
        &[("label", &label)],
    );
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            // Never leave replay paused behind a failed snapshot.
            let _ = staging.resume_replay(platform);
            return Err(e);
        }
    };
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    let (Some(start), Some(facts), Some(stop)) = (lines.first(), lines.get(1), lines.get(2)) else {
        let _ = staging.resume_replay(platform);
        return Err(OperationError::new(
            ErrorKind::Internal,
            "unexpected output from the backup on staging",
        )
        .with_cause(out));
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
    // slipped in before replay paused; then the backup's start time is the
    // nearest true time there is.
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
    facts["stop_lsn"] = stop["stop_lsn"].clone();
    facts["backup_label"] = json!(labelfile);
    if facts["databases"].is_null() {
        facts["databases"] = json!([]);
    }
    let spcmap = stop["spcmapfile"].as_str().unwrap_or_default().to_owned();
    if staging.method == IngestionMethod::BackupLogShipping {
        let segment_size = facts["wal_segment_size"]
            .as_u64()
            .unwrap_or(16 * 1024 * 1024);
        let replayed = facts["replayed_lsn"].as_str().unwrap_or("").to_owned();
        if let Err(e) =
            log_shipping::keep_archived_wal(platform, staging, &labelfile, &replayed, segment_size)
        {
            let _ = staging.resume_replay(platform);
            return Err(e);
        }
    }
    // The WAL from the backup's start to this point is kept in the WAL
    // dataset too (the segment in progress as a partial).
    let timeline = facts["timeline"].as_u64().unwrap_or(1);
    let seg_size = facts["wal_segment_size"]
        .as_u64()
        .unwrap_or(16 * 1024 * 1024);
    let redo = facts["redo_lsn"].as_str().unwrap_or("").to_owned();
    let replayed = facts["replayed_lsn"].as_str().unwrap_or("").to_owned();
    if let Err(e) = wal::keep_partial(platform, staging, timeline, &redo, &replayed, seg_size) {
        let _ = staging.resume_replay(platform);
        return Err(e);
    }
    let write = r#"
set -eu
umask 077
printf '%s' "$LABEL" > "$FILES/backup_label"
if [ -n "$SPCMAP" ]; then printf '%s' "$SPCMAP" > "$FILES/tablespace_map"; else rm -f -- "$FILES/tablespace_map"; fi
printf '%s' "$FACTS" > "$FILES/snapshot.json"
sync -f "$FILES/snapshot.json" 2>/dev/null || sync
"#;
    if let Err(e) = platform.run_ok(
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
    ) {
        let _ = staging.resume_replay(platform);
        return Err(e);
    }
    Ok(json!({"replayed_lsn": facts["replayed_lsn"], "stop_lsn": facts["stop_lsn"]}))
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
