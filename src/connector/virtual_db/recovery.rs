//! Recovery of a fresh clone: what ties it to its parent removed, its
//! backup label in place, the WAL it needs (its own pg_wal; the parent's
//! kept WAL, read-only, for a moment past the snapshot or a snapshot taken
//! while replay ran), and the recovery settings that bring it exactly to
//! its point before it promotes.

use serde_json::Value;

use super::Vdb;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::{conf_quote, parse_lsn};
use crate::connector::platform::{request, Platform};

/// A moment to recover to, beyond the snapshot (`recovery_target` in the
/// input): `{"lsn": "0/5A000000"}` or `{"time": "2026-12-02T14:03:00Z"}`,
/// with the parent's kept WAL from `parent_wal.path` (mounted read-only).
pub(super) struct Target {
    setting: (String, String),
    inclusive: bool,
    wal: String,
}

impl Target {
    pub(super) fn from_input(input: &Value) -> Result<Option<Self>, OperationError> {
        let Some(target) = input.get("recovery_target") else {
            return Ok(None);
        };
        let wal = input
            .pointer("/parent_wal/path")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    "a recovery_target needs the WAL to recover with (parent_wal.path)",
                )
            })?
            .to_owned();
        if let Some(lsn) = target.get("lsn").and_then(Value::as_str) {
            if parse_lsn(lsn).is_none() {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!("recovery_target.lsn {lsn:?} is not an LSN"),
                ));
            }
            // Records that start before the LSN: the database as of it.
            return Ok(Some(Self {
                setting: ("recovery_target_lsn".into(), conf_quote(lsn)),
                inclusive: false,
                wal,
            }));
        }
        if let Some(time) = target.get("time").and_then(Value::as_str) {
            // Every transaction committed at or before the time.
            return Ok(Some(Self {
                setting: ("recovery_target_time".into(), conf_quote(time)),
                inclusive: true,
                wal,
            }));
        }
        Err(OperationError::new(
            ErrorKind::InvalidInput,
            "recovery_target names neither an lsn nor a time",
        ))
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![
            (
                "restore_command".into(),
                crate::connector::linked::restore_command(&self.wal),
            ),
            self.setting.clone(),
            (
                "recovery_target_inclusive".into(),
                if self.inclusive { "on" } else { "off" }.into(),
            ),
            // Paused at the target, then promoted by `wait_promoted`.
            ("recovery_target_action".into(), "pause".into()),
            ("recovery_target_timeline".into(), conf_quote("current")),
        ]
    }
}

/// Cleans a fresh clone of everything that tied it to its parent and writes
/// its configuration, with recovery settings when it must recover.
///
/// A snapshot taken while staging replayed (`needs_kept_wal`) is consistent
/// only at its LSN, which its own pg_wal may not reach: the kept WAL from its
/// redo point on (`parent_wal.path` in `input`) joins its pg_wal first.
pub(super) fn prepare_clone(
    platform: &Platform,
    vdb: &Vdb,
    snapshot: &Value,
    pitr: Option<&Target>,
    input: &Value,
) -> Result<(), OperationError> {
    let kept = kept_segments(snapshot, input)?;
    let script = r#"
set -eu
cd -- "$DATA"
rm -f postmaster.pid postmaster.opts standby.signal recovery.signal backup_label.old tablespace_map.old
rm -rf pg_replslot/* 2>/dev/null || true
rm -f -- "$FILES/pgpass" "$FILES/slot-made" "$FILES/ingesting" "$FILES"/basebackup.* "$FILES/was-running" "$FILES/vdb-facts.json"
if [ -f "$FILES/backup_label" ]; then
  cp -- "$FILES/backup_label" backup_label
  # WAL kept from a log-shipping archive joins the clone's own pg_wal.
  if [ -d "$FILES/wal" ]; then cp -n -- "$FILES/wal/"* pg_wal/ 2>/dev/null || true; fi
  [ -f "$FILES/tablespace_map" ] && cp -- "$FILES/tablespace_map" tablespace_map
  # The kept WAL a snapshot taken while replay ran needs: whole segments,
  # else the longest partial kept of one.
  if [ -n "$KEPT" ] && [ -z "$WAL" ]; then
    echo "the snapshot was taken while staging replayed and needs the kept WAL (parent_wal.path)" >&2
    exit 3
  fi
  for seg in $KEPT; do
    if [ -f "$WAL/$seg" ]; then
      cp -f --reflink=auto -- "$WAL/$seg" "pg_wal/$seg"
    else
      p=$(ls -1 -- "$WAL/$seg".partial-* 2>/dev/null | sort | tail -n 1)
      if [ -z "$p" ]; then echo "the kept WAL has no segment $seg" >&2; exit 3; fi
      cp -f --reflink=auto -- "$p" "pg_wal/$seg"
    fi
  done
  # Does any WAL record follow the snapshot's LSN in this clone's WAL?
  # (pg_waldump waits seconds for a missing segment: look for it first.)
  if [ -n "$TARGET" ] && [ -f "pg_wal/$SEGMENT" ] && "$BIN/pg_waldump" -p pg_wal -s "$TARGET" -n 1 >/dev/null 2>&1; then
    echo target
  else
    echo end
  fi
else
  echo clean
fi
"#;
    let target = snapshot
        .get("replayed_lsn")
        .and_then(Value::as_str)
        .filter(|l| parse_lsn(l).is_some())
        .unwrap_or("")
        .to_owned();
    let out = platform.run_ok(
        "preparing the clone",
        &request(
            script,
            &[
                ("DATA", vdb.cluster.data_dir.clone()),
                ("FILES", vdb.files()),
                ("BIN", vdb.cluster.bin_dir.clone()),
                ("TARGET", target.clone()),
                ("SEGMENT", segment_file(snapshot, &target)),
                ("WAL", kept.0),
                ("KEPT", kept.1.join(" ")),
            ],
        ),
    )?;
    let recovery: Vec<(String, String)> = match (out.stdout.trim(), pitr) {
        // A moment past the snapshot: recover to it with the kept WAL.
        (_, Some(pitr)) => pitr.settings(),
        ("clean", None) => Vec::new(),
        (how, None) => {
            // No archive: WAL comes only from the clone's own pg_wal.
            let mut r = vec![
                ("restore_command".into(), conf_quote("false")),
                ("recovery_target_timeline".into(), conf_quote("current")),
            ];
            if how == "target" {
                r.push(("recovery_target_action".into(), "pause".into()));
                r.push(("recovery_target_lsn".into(), conf_quote(&target)));
                // Stop before the first record past the LSN: exactly the
                // records staging had replayed when the snapshot was taken.
                r.push(("recovery_target_inclusive".into(), "off".into()));
            }
            r
        }
    };
    vdb.write_config(platform, recovery)
}

/// Where the kept WAL is and which of its segments (from the redo point to
/// the snapshot's LSN) a snapshot taken while replay ran needs; none for
/// one taken with replay paused.
fn kept_segments(snapshot: &Value, input: &Value) -> Result<(String, Vec<String>), OperationError> {
    if snapshot.get("needs_kept_wal").and_then(Value::as_bool) != Some(true) {
        return Ok((String::new(), Vec::new()));
    }
    // A clone without a backup label (a prepared image) needs none: the
    // script asks for the directory only when it does.
    let dir = input
        .pointer("/parent_wal/path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lsn = |key: &str| {
        snapshot
            .get(key)
            .and_then(Value::as_str)
            .and_then(parse_lsn)
            .ok_or_else(|| {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    format!("the snapshot has no {key}"),
                )
            })
    };
    let (redo, end) = (lsn("redo_lsn")?, lsn("replayed_lsn")?);
    let timeline = snapshot
        .get("timeline")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let size = snapshot
        .get("wal_segment_size")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .unwrap_or(16 * 1024 * 1024);
    // The WAL before `end`: a snapshot whose point is a segment's end needs
    // nothing of the next one.
    let last = (end.saturating_sub(1) / size).max(redo / size);
    let names = (redo / size..=last)
        .map(|seg| crate::connector::cluster::segment_file(timeline, seg * size, size))
        .collect();
    Ok((dir.trim_end_matches('/').to_owned(), names))
}

/// The WAL segment file holding `lsn`, on the snapshot's timeline.
fn segment_file(snapshot: &Value, lsn: &str) -> String {
    let timeline = snapshot
        .get("timeline")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let size = snapshot
        .get("wal_segment_size")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .unwrap_or(16 * 1024 * 1024);
    parse_lsn(lsn)
        .map(|pos| crate::connector::cluster::segment_file(timeline, pos, size))
        .unwrap_or_default()
}

/// Waits until the VDB has left recovery (however much WAL it replays: a
/// moment far past its snapshot may take minutes), promoting it when it
/// has paused at its target.
pub(super) fn wait_promoted(platform: &Platform, vdb: &Vdb) -> Result<(), OperationError> {
    vdb.cluster
        .wait_out_of_recovery(platform, 6 * 3600)
        .map_err(|e| {
            OperationError::new(
                ErrorKind::CommandFailed,
                format!("VDB {} did not leave recovery", vdb.name),
            )
            .with_cause(e.message)
            .with_action(format!("see {}", vdb.cluster.log_file))
        })
}

#[cfg(test)]
mod tests {
    use super::segment_file;
    use serde_json::json;

    #[test]
    fn names_wal_segments() {
        let snap = json!({"timeline": 1, "wal_segment_size": 16777216});
        assert_eq!(segment_file(&snap, "0/6000000"), "000000010000000000000006");
        assert_eq!(segment_file(&snap, "1/A6EA6B0"), "00000001000000010000000A");
        assert_eq!(
            segment_file(&json!({"timeline": 2}), "0/5FFFFFF"),
            "000000020000000000000005"
        );
    }

    #[test]
    fn a_snapshot_ending_on_a_segment_boundary_needs_nothing_of_the_next() {
        // Regression: a point at 0/3000000 asked for segment 3, which holds
        // nothing before it and may not exist.
        let snap = json!({"needs_kept_wal": true, "redo_lsn": "0/2000028",
            "replayed_lsn": "0/3000000", "timeline": 1, "wal_segment_size": 16777216});
        let (_, names) =
            super::kept_segments(&snap, &json!({"parent_wal": {"path": "/w"}})).expect("kept");
        assert_eq!(names, vec!["000000010000000000000002".to_owned()]);
        let snap = json!({"needs_kept_wal": true, "redo_lsn": "0/2000028",
            "replayed_lsn": "0/3000001", "timeline": 1});
        let (_, names) = super::kept_segments(&snap, &json!({})).expect("kept");
        assert_eq!(names.len(), 2);
    }
}
