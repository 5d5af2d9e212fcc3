//! Staging as a standby: its configuration (port, private socket, hot
//! standby, the replication connection or the archive it restores from, the
//! user's settings, a private pg_hba.conf), and the wait for it to stream.

use super::{default_slot_name, wal, Staging};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::cluster::{user_overlay, ClusterConfig};
use crate::connector::conf::{conf_quote, conninfo_quote};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// Writes the standby configuration: port, sockets, hot standby, the
/// replication connection (password in a 0600 passfile outside the mount, so
/// no snapshot holds it), restore_command for
/// methods that restore from an archive, the user's settings, and a private pg_hba.conf.
pub fn write_config(
    platform: &Platform,
    staging: &Staging,
    source: Option<&Source>,
) -> Result<(), OperationError> {
    let mut settings: Vec<(String, String)> = vec![
        ("port".into(), staging.cluster.port.to_string()),
        ("listen_addresses".into(), conf_quote("localhost")),
        (
            "unix_socket_directories".into(),
            conf_quote(&staging.cluster.socket_dir),
        ),
        ("unix_socket_permissions".into(), "0700".into()),
        ("hot_standby".into(), "on".into()),
        // Only pgvirt queries staging, briefly: replay waits for those
        // queries rather than cancel them (a staging that lags would
        // otherwise cancel every query at once, even a connection's start).
        ("max_standby_streaming_delay".into(), "-1".into()),
        ("max_standby_archive_delay".into(), "-1".into()),
        ("archive_mode".into(), "off".into()),
        (
            "hba_file".into(),
            conf_quote(&format!("{}/pg_hba.conf", staging.cluster.data_dir)),
        ),
        (
            "ident_file".into(),
            conf_quote(&format!("{}/pg_ident.conf", staging.cluster.data_dir)),
        ),
        (
            "cluster_name".into(),
            conf_quote(&format!("pgvirt staging {}", staging.name)),
        ),
    ];
    if let Some(source) = source {
        let passfile = staging.passfile();
        let mut conninfo = format!(
            "host={} port={} user={} application_name={} connect_timeout={}",
            conninfo_quote(&source.host),
            source.port,
            conninfo_quote(&source.user),
            conninfo_quote(&default_slot_name(&staging.name)),
            source.connect_timeout
        );
        if source.password.is_some() {
            // Written by the ingest, before pg_basebackup needed it.
            conninfo.push_str(&format!(" passfile={}", conninfo_quote(&passfile)));
        }
        settings.push(("primary_conninfo".into(), conf_quote(&conninfo)));
        if let Some(slot) = staging.slot() {
            settings.push(("primary_slot_name".into(), conf_quote(&slot)));
        }
    }
    if let Some(dir) = &staging.wal {
        // Keep every segment staging replays, for point-in-time VDBs.
        settings.retain(|(k, _)| k != "archive_mode");
        settings.extend(wal::archive_settings(dir));
    }
    if let Some(command) = staging.ingestion().restore_command(staging)? {
        settings.push(("restore_command".into(), command));
    }
    let comment_out = user_overlay(&mut settings, staging.params.get("staging_config"));
    staging.cluster.write_config(
        platform,
        &ClusterConfig {
            settings,
            comment_out,
            // Only the environment user reaches staging (socket 0700, trust on it).
            hba: vec!["local all all trust".into()],
            signal: Some("standby.signal"),
        },
    )
}

/// Waits until the walreceiver streams; an error says when it does not.
pub fn wait_for_streaming(
    platform: &Platform,
    staging: &Staging,
    seconds: u32,
) -> Result<(), OperationError> {
    // psql does not interpolate inside dollar quotes: pass through a setting.
    let script = r#"
SELECT set_config('pgvirt.wait_seconds', :'seconds', false) IS NULL;
DO $$
BEGIN
  FOR i IN 1..(current_setting('pgvirt.wait_seconds')::int * 10) LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming');
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'not connected');"#;
    let secs = seconds.to_string();
    let status = staging.cluster.psql(
        platform,
        "checking replication on staging",
        script,
        &[("seconds", &secs)],
    )?;
    let status = status.lines().last().unwrap_or_default().trim();
    if status == "streaming" {
        return Ok(());
    }
    let log = platform
        .run(&request(
            r#"tail -n 5 -- "$LOG" | tr '\n' ' '"#,
            &[("LOG", staging.cluster.log_file.clone())],
        ))
        .map(|o| o.stdout)
        .unwrap_or_default();
    let source = staging
        .params
        .get("source")
        .map(|s| {
            format!(
                "{}:{}",
                s["host"].as_str().unwrap_or("?"),
                s["port"].as_u64().unwrap_or(5432)
            )
        })
        .unwrap_or_default();
    Err(OperationError::new(
        ErrorKind::ReplicationStopped,
        format!("streaming replication from {source} has stopped (walreceiver: {status})"),
    )
    .with_cause(format!("staging log: {}", log.trim()))
    .with_action(
        "check that the source is up and reachable; staging reconnects by itself once it is",
    ))
}

/// Waits (at most `seconds`) until staging has replayed the source's WAL
/// up to `lsn`; answers whether it has.
const WAIT_REPLAYED: &str = r#"
SELECT set_config('pgvirt.wait_seconds', :'seconds', false) IS NULL, set_config('pgvirt.wait_lsn', :'lsn', false) IS NULL;
DO $$
BEGIN
  FOR i IN 1..(current_setting('pgvirt.wait_seconds')::int * 20) LOOP
    EXIT WHEN pg_last_wal_replay_lsn() >= current_setting('pgvirt.wait_lsn')::pg_lsn;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SELECT pg_last_wal_replay_lsn() >= :'lsn'::pg_lsn;"#;

/// `source.checkpoint_at_sync`: a checkpoint on the source, then staging
/// waits until it has replayed it, so the restartpoint the snapshot's
/// backup starts with is at that checkpoint (a standby can restart only
/// at a checkpoint the source wrote).
pub fn checkpoint_source(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
    let source = staging.source()?;
    let lsn = source
        .query(
            "cannot checkpoint the source",
            "CHECKPOINT;\nSELECT pg_current_wal_lsn()::text;",
            &[],
        )
        .map_err(|e| {
            let said = format!("{} {}", e.message, e.cause.as_deref().unwrap_or(""));
            if said.contains("pg_checkpoint") {
                OperationError::new(
                    ErrorKind::SourceError,
                    format!(
                        "linked-source parameters#/source/checkpoint_at_sync: user {} may not run CHECKPOINT on the source {}:{}",
                        source.user, source.host, source.port
                    ),
                )
                .with_action(format!(
                    "GRANT pg_checkpoint TO {} on the source, or set source.checkpoint_at_sync to false",
                    source.user
                ))
            } else {
                e
            }
        })?
        .into_iter()
        .rev()
        .find(|l| crate::connector::conf::parse_lsn(l.trim()).is_some())
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::SourceError,
                "the source answered no WAL position after its checkpoint",
            )
        })?;
    let replayed = staging.cluster.psql(
        platform,
        "waiting for staging to replay the source's checkpoint",
        WAIT_REPLAYED,
        &[("lsn", lsn.trim()), ("seconds", "60")],
    )?;
    if replayed.lines().last().map(str::trim) != Some("t") {
        log::warn!(
            "staging has not replayed the source's checkpoint at {} within 60 s; the snapshot redoes from the checkpoint before",
            lsn.trim()
        );
    }
    Ok(())
}
