//! The linked (staged) lifecycle: ingest a source cluster into a staging
//! cluster on an engine-provided mount, keep it in sync, and bring it to a
//! consistent point for each snapshot.
//!
//! One module per ingestion method, around what they share:
//! - [`basebackup`]: the engine runs `pg_basebackup`, staging streams;
//! - [`customer_backup`]: the customer's base backup, then streaming or
//!   [`log_shipping`] (WAL restored from an archive directory);
//! - [`ingest`]: an ingest of any method, all or nothing;
//! - [`standby`]: staging's configuration as a standby, and its streaming;
//! - [`consistent`]: the consistent point a snapshot is taken at.
//!
//! Layout of the mount (`mount.path`), all of it in every snapshot:
//! - `data/`: the staging cluster's data directory (0700);
//! - `pgvirt/`: the connector's files — `staging.log`, per snapshot
//!   `backup_label`, `tablespace_map` and `snapshot.json` (a VDB made from
//!   the snapshot recovers with that label), and two markers: `ingesting`
//!   while an ingest is under way, `slot-made` once this dSource may own a
//!   replication slot on the source.
//!
//! Secrets are not in the mount: the replication passfile lives in the
//! environment's scratch directory (`<scratch>/dsource-<name>/pgpass`,
//! 0600), outside every dataset the engine snapshots.

mod basebackup;
mod consistent;
mod customer_backup;
mod ingest;
mod log_shipping;
mod standby;
mod wal;

pub use wal::{archive_settings_after_snapshot, restore_command};

use serde_json::{json, Value};

use super::cluster::Cluster;
use super::conf::parse_lsn;
use super::platform::{field, request, str_field, Platform};
use super::source::Source;
use crate::abi::{ErrorKind, IngestionMethod, OperationError, Status};

/// The staging side of one dSource, from an operation's input.
pub(super) struct Staging {
    cluster: Cluster,
    mount: String,
    params: Value,
    name: String,
    method: IngestionMethod,
    /// A directory of this dSource's outside every dataset (for secrets).
    private: String,
    /// Where the WAL dataset is mounted, when the engine gave one.
    wal: Option<String>,
}

impl Staging {
    fn from_input(input: &Value) -> Result<Self, OperationError> {
        let params = field(input, "linked_source")?.clone();
        let mount = str_field(field(input, "mount")?, "path", "mount")?
            .trim_end_matches('/')
            .to_owned();
        let port = params
            .get("staging_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                OperationError::new(ErrorKind::InvalidInput, "linked_source has no staging_port")
            })?;
        let name = input
            .pointer("/dsource/name")
            .and_then(Value::as_str)
            .unwrap_or("dsource")
            .to_owned();
        let scratch = input
            .pointer("/environment/scratch")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OperationError::new(ErrorKind::InvalidInput, "input has no environment.scratch")
            })?
            .trim_end_matches('/');
        Ok(Self {
            cluster: Cluster::new(
                Cluster::bin_dir(input)?,
                format!("{mount}/data"),
                port,
                format!("{mount}/pgvirt"),
                format!("{mount}/pgvirt/staging.log"),
            )?,
            method: IngestionMethod::of(&params),
            private: format!("{scratch}/dsource-{name}"),
            wal: input
                .pointer("/wal/path")
                .and_then(Value::as_str)
                .map(|p| p.trim_end_matches('/').to_owned()),
            mount,
            params,
            name,
        })
    }

    fn files(&self) -> String {
        format!("{}/pgvirt", self.mount)
    }

    fn passfile(&self) -> String {
        format!("{}/pgpass", self.private)
    }

    /// The source, reached with the staging's psql and passfile.
    fn source(&self) -> Result<Source, OperationError> {
        Ok(Source::from_params(&self.params)?
            .with_bin_dir(&self.cluster.bin_dir)
            .with_passfile(&self.passfile()))
    }

    /// The replication slot this dSource uses on the source, if any.
    fn slot(&self) -> Option<String> {
        if !self.method.streams() {
            return None;
        }
        let slot = self.params.get("replication_slot");
        if slot.and_then(|s| s.get("create")).and_then(Value::as_bool) == Some(false) {
            return slot
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Some(
            slot.and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| default_slot_name(&self.name)),
        )
    }

    fn creates_slot(&self) -> bool {
        self.method.streams()
            && self
                .params
                .pointer("/replication_slot/create")
                .and_then(Value::as_bool)
                .unwrap_or(true)
    }

    /// Resumes WAL replay if it is paused.
    fn resume_replay(&self, platform: &Platform) -> Result<(), OperationError> {
        self.cluster.psql(
            platform,
            "resuming WAL replay on staging",
            "SELECT pg_wal_replay_resume() WHERE pg_is_in_recovery() AND pg_get_wal_replay_pause_state() <> 'not paused';",
            &[],
        )?;
        Ok(())
    }
}

/// `pgvirt_<name>`, lower-cased, other characters as `_`, at most 63 bytes.
fn default_slot_name(dsource: &str) -> String {
    let mut s: String = format!("pgvirt_{dsource}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

/// `linked.mount_specification`: where the staging dataset goes, and (every
/// method here replays WAL) where the WAL dataset that keeps it goes: beside
/// the mount, or where the engine offers (`default_wal_path`).
pub fn mount_specification(_platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let params = field(input, "linked_source")?;
    let explicit = params.get("mount_path").and_then(Value::as_str);
    let path = explicit
        .or_else(|| input.get("default_mount_path").and_then(Value::as_str))
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                "no mount_path and no default_mount_path",
            )
        })?;
    let wal = match (
        explicit,
        input.get("default_wal_path").and_then(Value::as_str),
    ) {
        (Some(p), _) => Some(format!("{}-wal", p.trim_end_matches('/'))),
        (None, Some(w)) => Some(w.to_owned()),
        (None, None) => None,
    };
    let mut spec = json!({"mounts": [{"path": path}]});
    if let Some(wal) = wal {
        spec["wal"] = json!({ "path": wal });
    }
    Ok(spec)
}

/// `linked.wal_range`: what the WAL dataset holds from an LSN on.
pub fn wal_range(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    wal::range(platform, input)
}

/// `linked.wal_prune`: removes kept WAL no one needs any more.
pub fn wal_prune(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    wal::prune(platform, input)
}

/// `linked.pre_snapshot`: ingest if asked (`resync`) or never done, make sure
/// staging runs and replicates, then bring it to a consistent point.
pub fn pre_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let resync = input
        .pointer("/snapshot_parameters/resync")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ingested = has_cluster(platform, &staging)?;
    if resync || !ingested {
        ingest::ingest(platform, &staging)?;
    } else {
        staging.cluster.start(platform)?;
        staging.resume_replay(platform)?;
    }
    if staging.method.streams() {
        standby::wait_for_streaming(
            platform,
            &staging,
            if resync || !ingested { 60 } else { 15 },
        )?;
    }
    consistent::consistent_point(platform, &staging)
}

/// `linked.post_snapshot`: resume replay (if it was paused) and describe
/// the snapshot; for one taken with replay running, at how far replay has
/// got now.
pub fn post_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    staging.resume_replay(platform)?;
    let info = platform.run_ok(
        "reading the snapshot's backup information",
        &request(
            r#"cat -- "$FILES/snapshot.json""#,
            &[("FILES", staging.files())],
        ),
    )?;
    let mut meta: Value = serde_json::from_str(&info.stdout).map_err(|e| {
        OperationError::new(
            ErrorKind::Internal,
            format!("snapshot.json is unreadable: {e}"),
        )
    })?;
    if meta["replay"] == json!("running") {
        consistent::after_live_clone(platform, &staging, &mut meta)?;
    }
    meta["ingestion_method"] = json!(staging.method);
    meta["provisionable"] = json!(true);
    Ok(meta)
}

/// `linked.start_staging`: start the staging cluster and let it replay WAL
/// (a snapshot cut short may have left replay paused).
pub fn start_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    if !has_cluster(platform, &staging)? {
        return Err(OperationError::new(
            ErrorKind::InvalidState,
            "the staging data directory is empty, or its last ingest was cut short",
        )
        .with_action("run a sync with --resync to ingest the source again"));
    }
    staging.cluster.start(platform)?;
    staging.resume_replay(platform)?;
    Ok(json!({}))
}

/// `linked.stop_staging`: stop the staging cluster; when the dSource is being
/// deleted (`purpose: delete`), also undo what it made outside its mount:
/// its replication slot on the source (only if it made one) and its
/// passfile.
pub fn stop_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    staging.cluster.stop(platform)?;
    if input.get("purpose").and_then(Value::as_str) == Some("delete") {
        if staging.creates_slot() && may_own_slot(platform, &staging)? {
            if let Some(slot) = staging.slot() {
                let source = staging.source()?;
                if let Err(e) = source.drop_slot(&slot) {
                    log::warn!("could not drop replication slot {slot} on the source: {e}");
                }
            }
        }
        platform.run_ok(
            "removing the dSource's private files",
            &request(
                r#"rm -rf -- "$PRIVATE"; rm -f -- "$FILES/pgpass" "$FILES/slot-made""#,
                &[
                    ("PRIVATE", staging.private.clone()),
                    ("FILES", staging.files()),
                ],
            ),
        )?;
    }
    Ok(json!({}))
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

/// `linked.status`: ACTIVE when the staging cluster runs.
pub fn status(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let active = staging.cluster.is_running(platform)?;
    Ok(if active {
        Status::Active
    } else {
        Status::Inactive
    }
    .to_output())
}

/// `linked.worker`: replication health — connected or not, lag in bytes and
/// seconds behind the source, and a paused replay no snapshot explains
/// (the host says in `snapshot_in_progress` whether one is being taken).
pub fn worker(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
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

/// `linked.source_size`: bytes of all databases on staging.
pub fn source_size(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    Ok(json!(Staging::from_input(input)?
        .cluster
        .data_size(platform)?))
}

/// Whether the data directory holds a whole cluster (one whose ingest was
/// not cut short).
fn has_cluster(platform: &Platform, staging: &Staging) -> Result<bool, OperationError> {
    let out = platform.run(&request(
        r#"[ -f "$DIR/PG_VERSION" ] && [ ! -e "$FILES/ingesting" ]"#,
        &[
            ("DIR", staging.cluster.data_dir.clone()),
            ("FILES", staging.files()),
        ],
    ))?;
    Ok(out.exit_code == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_plain() {
        assert_eq!(default_slot_name("Orders-DB"), "pgvirt_orders_db");
    }
}
