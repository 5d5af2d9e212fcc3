//! An ingest: fill an empty staging data directory from the source (by the
//! dSource's method), configure it as a standby, start it. All or nothing:
//! on failure no staging process, no files, and no slot it made are left.
//!
//! Two markers in `pgvirt/` say how far an ingest got, for whoever comes
//! next (a repair after a kill): `ingesting` while it runs (staging is then
//! not a cluster to start), and `slot-made` before a slot may be created on
//! the source (so that only a slot this dSource made is ever dropped).

use super::{standby, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::cluster::Cluster;
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// Ingests the source into staging (again, on a resync) and starts it.
pub fn ingest(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
    staging.cluster.stop(platform)?;
    let source = if staging.method.streams() {
        Some(staging.source()?)
    } else {
        None
    };
    // Check everything we can before making anything.
    port_is_free(platform, staging.cluster.port)?;
    staging.ingestion().check(platform, staging)?;
    if let Some(source) = &source {
        source.check_replication_access()?;
        if staging.creates_slot() {
            if let Some(slot) = staging.slot() {
                // A resync re-creates this dSource's own slot.
                source.drop_slot_if_exists(&slot)?;
            }
        }
    }
    platform.run_ok(
        "preparing the staging directories",
        &request(
            r#"set -e; umask 077; mkdir -p -- "$FILES" "$PRIVATE"; chmod 0700 -- "$PRIVATE"
: > "$FILES/ingesting"
if [ -z "$KEEP" ]; then rm -rf -- "$DATA"; fi
mkdir -p -m 0700 -- "$DATA""#,
            &[
                (
                    "KEEP",
                    if staging.ingestion().keeps_data_on_resync() {
                        "1"
                    } else {
                        ""
                    }
                    .to_owned(),
                ),
                ("FILES", staging.files()),
                ("DATA", staging.cluster.data_dir.clone()),
                ("PRIVATE", staging.private.clone()),
            ],
        ),
    )?;
    if let Some(line) = source
        .as_ref()
        .filter(|s| s.password.is_some())
        .map(Source::pgpass_line)
    {
        Cluster::write_private_file(platform, &staging.passfile(), &line)?;
    }
    let result = staging
        .ingestion()
        .ingest(platform, staging, source.as_ref())
        .and_then(|()| standby::write_config(platform, staging, source.as_ref()))
        .and_then(|()| staging.cluster.start(platform))
        .and_then(|()| staging.finish_ingest(platform));
    if let Err(e) = result {
        undo(platform, staging, source.as_ref());
        return Err(e);
    }
    Ok(())
}

/// Notes, before a slot may be made, that this dSource may own one.
pub(super) fn mark_slot(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
    if staging.creates_slot() {
        platform.run_ok(
            "noting the replication slot",
            &request(r#": > "$FILES/slot-made""#, &[("FILES", staging.files())]),
        )?;
    }
    Ok(())
}

/// Removes what a failed ingest made: the staging process, its files, the
/// passfile, and the slot if it may have made one.
fn undo(platform: &Platform, staging: &Staging, source: Option<&Source>) {
    let _ = staging.cluster.stop(platform);
    let marked = platform
        .run(&request(
            r#"[ -f "$FILES/slot-made" ]"#,
            &[("FILES", staging.files())],
        ))
        .map(|o| o.exit_code == 0)
        .unwrap_or(false);
    if let (Some(source), Some(slot), true) = (source, staging.slot(), marked) {
        if let Err(e) = source.drop_own_slot(&slot) {
            log::warn!("could not drop replication slot {slot} after the failed ingest: {e}");
        }
    }
    let _ = platform.run(&request(
        r#"rm -rf -- "$DATA" && mkdir -m 0700 -- "$DATA"; rm -f -- "$FILES/slot-made" "$FILES/ingesting"; rm -rf -- "$PRIVATE""#,
        &[
            ("DATA", staging.cluster.data_dir.clone()),
            ("FILES", staging.files()),
            ("PRIVATE", staging.private.clone()),
        ],
    ));
}

fn port_is_free(platform: &Platform, port: u16) -> Result<(), OperationError> {
    let out = platform.run(&request(
        r#"(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null"#,
        &[("PORT", port.to_string())],
    ))?;
    if out.exit_code == 0 {
        return Err(OperationError::new(
            ErrorKind::Conflict,
            format!("staging port {port} is already in use"),
        )
        .with_action("choose another staging_port"));
    }
    Ok(())
}
