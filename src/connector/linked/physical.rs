//! The life of a staging that is a physical replica of the source (every
//! method but staging push and single database): ingest when asked or never
//! done, replay WAL (streamed, or restored from an archive), and a
//! non-exclusive backup on the standby as each snapshot's consistent point
//! ([`super::consistent`]).

use serde_json::{json, Value};

use super::{consistent, has_cluster, ingest, standby, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::parse_lsn;
use crate::connector::platform::{request, Platform};

/// Ingests if asked (`resync`) or never done, makes sure staging runs and
/// replicates, then brings it to a consistent point.
pub fn consistent_point(
    platform: &Platform,
    staging: &Staging,
    resync: bool,
) -> Result<Value, OperationError> {
    let ingested = has_cluster(platform, staging)?;
    if resync || !ingested {
        ingest::ingest(platform, staging)?;
    } else {
        staging.cluster.start(platform)?;
        staging.resume_replay(platform)?;
    }
    if staging.method.streams() {
        standby::wait_for_streaming(platform, staging, if resync || !ingested { 60 } else { 15 })?;
        if staging.params.pointer("/source/checkpoint_at_sync") == Some(&json!(true)) {
            standby::checkpoint_source(platform, staging)?;
        }
    }
    consistent::consistent_point(platform, staging)
}

/// Resumes replay (if it was paused) and describes the snapshot; for one
/// taken with replay running, at how far replay has got now.
pub fn describe(platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
    staging.resume_replay(platform)?;
    let mut meta = staging.recorded_facts(platform)?;
    if meta["replay"] == json!("running") {
        consistent::after_live_clone(platform, staging, &mut meta)?;
    }
    meta["provisionable"] = json!(true);
    Ok(meta)
}

/// Starts the staging cluster and lets it replay WAL (a snapshot cut short
/// may have left replay paused).
pub fn start_staging(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
    if !has_cluster(platform, staging)? {
        return Err(OperationError::new(
            ErrorKind::InvalidState,
            "the staging data directory is empty, or its last ingest was cut short",
        )
        .with_action("run a sync with --resync to ingest the source again"));
    }
    staging.cluster.start(platform)?;
    staging.resume_replay(platform)
}

/// Stops the staging cluster; when the dSource is being deleted, also
/// undoes what it made outside its mount: its replication slot on the
/// source (only if it made one) and its passfile.
pub fn stop_staging(
    platform: &Platform,
    staging: &Staging,
    purpose: &str,
) -> Result<(), OperationError> {
    staging.cluster.stop(platform)?;
    if purpose == "delete" {
        if staging.creates_slot() && may_own_slot(platform, staging)? {
            if let Some(slot) = staging.slot() {
                let source = staging.source()?;
                if let Err(e) = source.drop_own_slot(&slot) {
                    log::warn!("could not drop replication slot {slot} on the source: {e}");
                }
            }
        }
        staging.remove_private(platform)?;
    }
    Ok(())
}

/// Whether this dSource may have made a replication slot: it marked so
/// before making one, or (made by an older pgvirt) it holds a cluster.
fn may_own_slot(platform: &Platform, staging: &Staging) -> Result<bool, OperationError> {
    let out = platform.run(&request(
        r#"[ -f "$FILES/slot-made" ] || [ -f "$DATA/PG_VERSION" ]"#,
        &[
            ("FILES", staging.files()),
            ("DATA", staging.cluster.data_dir.clone()),
        ],
    ))?;
    Ok(out.exit_code == 0)
}

/// Replication health — connected or not, lag in bytes and seconds behind
/// the source, and a paused replay no snapshot explains (the host says in
/// `snapshot_in_progress` whether one is being taken).
pub fn worker(
    platform: &Platform,
    staging: &Staging,
    input: &Value,
) -> Result<Value, OperationError> {
    if !staging.cluster.is_running(platform)? {
        return Ok(json!({"running": false, "connected": false}));
    }
    let out = staging.cluster.psql(
        platform,
        "reading replication state on staging",
        r#"SELECT json_build_object(
             'status', (SELECT status FROM pg_stat_wal_receiver),
             'received_lsn', pg_last_wal_receive_lsn()::text,
             'replayed_lsn', pg_last_wal_replay_lsn()::text,
             'replay_paused', pg_get_wal_replay_pause_state() <> 'not paused',
             'last_replay', pg_last_xact_replay_timestamp());"#,
        &[],
    )?;
    let mut health: Value = serde_json::from_str(out.trim()).map_err(|e| {
        OperationError::new(
            ErrorKind::Internal,
            format!("unreadable replication state: {e}"),
        )
    })?;
    health["running"] = json!(true);
    health["connected"] = json!(health["status"] == json!("streaming"));
    let snapshotting = input
        .get("snapshot_in_progress")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if health["replay_paused"] == json!(true) && !snapshotting {
        health["problem"] = json!(
            "WAL replay on staging is paused, and no snapshot is being taken: staging falls behind the source until it is resumed (`pgvirt dsource enable` resumes it)"
        );
    }
    if staging.method.streams() {
        if let (Ok(source), Some(replayed)) = (staging.source(), health["replayed_lsn"].as_str()) {
            match source.current_lsn() {
                Ok(current) => {
                    if let (Some(a), Some(b)) = (parse_lsn(&current), parse_lsn(replayed)) {
                        health["lag_bytes"] = json!(a.saturating_sub(b));
                    }
                    health["source_lsn"] = json!(current);
                    // Caught up means no time lag, whatever the last commit's age.
                    if health["lag_bytes"] == json!(0) {
                        health["lag_seconds"] = json!(0.0);
                    } else if let Ok(age) = source.seconds_since(&health["last_replay"]) {
                        health["lag_seconds"] = json!(age);
                    }
                }
                Err(e) => health["source_error"] = json!(e.to_string()),
            }
        }
    }
    Ok(health)
}
