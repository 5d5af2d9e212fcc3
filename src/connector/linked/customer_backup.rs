//! Ingestion from the customer's own base backup (methods 2 and 3): a plain
//! copy of a data directory, or `base.tar[.gz]` with `pg_wal.tar[.gz]`.
//! Staging then streams from the source ([`super::standby`]) or restores
//! WAL from an archive ([`super::log_shipping`]).

use serde_json::Value;

use super::ingest::mark_slot;
use super::method::Ingestion;
use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `backup_streaming`: the customer's backup, then streaming.
pub struct CustomerBackup;

impl Ingestion for CustomerBackup {
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        source: Option<&Source>,
    ) -> Result<(), OperationError> {
        if let (Some(source), Some(slot), true) = (source, staging.slot(), staging.creates_slot()) {
            // pg_basebackup -C makes the slot for the engine's own backup;
            // for the customer's, make it here.
            mark_slot(platform, staging)?;
            source.create_slot(&slot)?;
        }
        restore(platform, staging)
    }
}

/// Restores the base backup into the empty data directory.
pub fn restore(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
    let backup = staging
        .params
        .get("backup_path")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            OperationError::new(ErrorKind::InvalidInput, "linked_source has no backup_path")
        })?;
    platform.run_ok(
        "restoring the base backup",
        &request(
            r#"set -e
if [ -f "$BACKUP/base.tar.gz" ]; then tar -xzf "$BACKUP/base.tar.gz" -C "$DATA"
elif [ -f "$BACKUP/base.tar" ]; then tar -xf "$BACKUP/base.tar" -C "$DATA"
elif [ -f "$BACKUP/PG_VERSION" ]; then cp -a -- "$BACKUP/." "$DATA/"
else echo "no base backup (PG_VERSION, base.tar or base.tar.gz) in $BACKUP" >&2; exit 2; fi
for w in pg_wal.tar.gz pg_wal.tar; do
  [ -f "$BACKUP/$w" ] || continue
  case $w in *.gz) tar -xzf "$BACKUP/$w" -C "$DATA/pg_wal";; *) tar -xf "$BACKUP/$w" -C "$DATA/pg_wal";; esac
done
chmod 0700 "$DATA""#,
            &[
                ("BACKUP", backup.to_owned()),
                ("DATA", staging.cluster.data_dir.clone()),
            ],
        ),
    )?;
    Ok(())
}
