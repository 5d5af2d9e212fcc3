//! WAL log shipping (method 3): staging restores WAL from the customer's
//! archive directory; each snapshot keeps the segments its clones need.

use serde_json::Value;

use super::method::Ingestion;
use super::{customer_backup, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::{conf_quote, parse_lsn, shell_quote};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `backup_log_shipping`: the customer's backup, then WAL from an archive
/// directory.
pub struct LogShipping;

impl Ingestion for LogShipping {
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        customer_backup::restore(platform, staging)
    }

    fn restore_command(&self, staging: &Staging) -> Result<Option<String>, OperationError> {
        restore_command(staging).map(Some)
    }

    fn keep_archived_wal(
        &self,
        platform: &Platform,
        staging: &Staging,
        label: &str,
        replayed: &str,
        segment_size: u64,
    ) -> Result<(), OperationError> {
        keep_archived_wal(platform, staging, label, replayed, segment_size)
    }
}

/// The `restore_command` setting that copies segments from the archive
/// (the path shell-quoted, the whole a quoted postgresql.conf literal).
pub fn restore_command(staging: &Staging) -> Result<String, OperationError> {
    let archive = staging
        .params
        .get("wal_archive_path")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                "log shipping needs wal_archive_path",
            )
        })?;
    Ok(conf_quote(&format!("cp {}/%f %p", shell_quote(archive))))
}

/// A standby restoring from an archive does not keep what it restored in
/// pg_wal. Copy the segments a clone needs (from the backup's start to the
/// replayed LSN) from the archive into `pgvirt/wal/`, inside the snapshot,
/// so a VDB recovers from its own copy and never reads the archive.
pub fn keep_archived_wal(
    platform: &Platform,
    staging: &Staging,
    label: &str,
    replayed: &str,
    segment_size: u64,
) -> Result<(), OperationError> {
    let first = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split("(file ").nth(1))
        .map(|f| f.trim_end_matches(')').to_owned())
        .unwrap_or_default();
    let archive = staging
        .params
        .get("wal_archive_path")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let timeline = first
        .get(..8)
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .unwrap_or(1);
    let last = parse_lsn(replayed)
        .map(|pos| crate::connector::cluster::segment_file(timeline, pos, segment_size))
        .unwrap_or_default();
    let script = r#"
set -eu
umask 077
mkdir -p -- "$FILES/wal"
for f in "$ARCHIVE"/*; do
  name=$(basename -- "$f")
  case $name in
    *.history) cp -- "$f" "$FILES/wal/$name" ;;
    [0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F])
      if [[ ! "$name" < "$FIRST" ]] && [[ ! "$name" > "$LAST" ]] && [ ! -f "$FILES/wal/$name" ]; then
        cp -- "$f" "$FILES/wal/$name"
      fi ;;
  esac
done
"#;
    platform.run_ok(
        "keeping the archived WAL the snapshot needs",
        &request(
            script,
            &[
                ("FILES", staging.files()),
                ("ARCHIVE", archive),
                ("FIRST", first),
                ("LAST", last),
            ],
        ),
    )?;
    Ok(())
}
