//! The linked (staged) lifecycle: ingest a source into a staging cluster
//! on an engine-provided mount, keep it in sync, and bring it to a
//! consistent point for each snapshot.
//!
//! Every method answers the same steps ([`method::Ingestion`]: check,
//! ingest, consistent point, describe, and staging's start, stop and
//! health); [`method::of`] maps the parsed [`IngestionMethod`] to its module:
//! - [`basebackup`]: the engine runs `pg_basebackup`, staging streams;
//! - [`customer_backup`]: the customer's base backup, then streaming or
//!   [`log_shipping`] (WAL restored from an archive directory);
//! - [`pgbackrest`]: a restore from the user's pgBackRest repository, then
//!   WAL by `pgbackrest archive-get`;
//! - [`staging_push`]: the user loads `data/` and stops the cluster;
//! - [`single_database`]: one database by parallel pg_dump / pg_restore;
//! - [`logical`]: a subscription on staging to a publication on the source
//!   (native logical replication), its progress the replication origin.
//!
//! Shared by the physical replicas: [`physical`] (their life), [`ingest`]
//! (an ingest, all or nothing), [`standby`] (the standby configuration and
//! its streaming), [`consistent`] (a backup on the standby as the snapshot's
//! point), [`wal`] (the kept WAL). Shared by the others: [`clean`] (the
//! cluster shut down cleanly, described from its control file) and
//! [`progress`] (a long command in the background).
//!
//! Layout of the mount (`mount.path`), all of it in every snapshot:
//! - `data/`: the staging cluster's data directory (0700);
//! - `pgvirt/`: the connector's files — `staging.log`, per snapshot
//!   `backup_label`, `tablespace_map` and `snapshot.json` (a VDB made from
//!   the snapshot recovers with that label), and two markers: `ingesting`
//!   while an ingest is under way, `slot-made` once this dSource may own a
//!   replication slot on the source.
//!
//! Secrets are not in the mount: the passfile (replication, or the dump
//! user's) lives in the environment's scratch directory
//! (`<scratch>/dsource-<name>/pgpass`, 0600), outside every dataset the
//! engine snapshots; so does a single-database dump while it is restored.

mod basebackup;
mod clean;
mod consistent;
mod customer_backup;
mod ingest;
mod log_shipping;
mod logical;
mod method;
mod pgbackrest;
mod physical;
mod progress;
mod single_database;
mod staging_push;
mod standby;
mod wal;

pub use wal::{archive_settings_after_snapshot, restore_command};

use serde_json::{json, Value};

use super::cluster::Cluster;
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
    /// The source config's document (its port, for defaults).
    source_config: Value,
    /// The pool snapshots the mount at one instant (`mount.atomic_snapshots`).
    atomic_snapshots: bool,
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
            source_config: input.get("source_config").cloned().unwrap_or(Value::Null),
            atomic_snapshots: input
                .pointer("/mount/atomic_snapshots")
                .and_then(Value::as_bool)
                == Some(true),
            mount,
            params,
            name,
        })
    }

    /// The module of this dSource's ingestion method.
    fn ingestion(&self) -> &'static dyn method::Ingestion {
        method::of(self.method)
    }

    fn files(&self) -> String {
        format!("{}/pgvirt", self.mount)
    }

    /// The variables a script dumping `source` into staging reads: tools,
    /// the private directory, the source's address and staging's.
    fn dump_vars(&self, source: &Source) -> Vec<(&'static str, String)> {
        vec![
            ("BIN", self.cluster.bin_dir.clone()),
            ("PRIVATE", self.private.clone()),
            ("SRC_HOST", source.host.clone()),
            ("SRC_PORT", source.port.to_string()),
            ("SRC_USER", source.user.clone()),
            ("SRC_DB", source.database.clone()),
            ("PGCONNECT_TIMEOUT", source.connect_timeout.to_string()),
            ("SOCKET_DIR", self.cluster.socket_dir.clone()),
            ("PORT", self.cluster.port.to_string()),
        ]
    }

    /// Removes the `ingesting` marker: the ingest is complete.
    fn finish_ingest(&self, platform: &Platform) -> Result<(), OperationError> {
        platform.run_ok(
            "finishing the ingest",
            &request(r#"rm -f -- "$FILES/ingesting""#, &[("FILES", self.files())]),
        )?;
        Ok(())
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

    /// The facts `pgvirt/snapshot.json` records, with the method.
    fn recorded_facts(&self, platform: &Platform) -> Result<Value, OperationError> {
        let info = platform.run_ok(
            "reading the snapshot's backup information",
            &request(
                r#"cat -- "$FILES/snapshot.json""#,
                &[("FILES", self.files())],
            ),
        )?;
        let mut meta: Value = serde_json::from_str(&info.stdout).map_err(|e| {
            OperationError::new(
                ErrorKind::Internal,
                format!("snapshot.json is unreadable: {e}"),
            )
        })?;
        meta["ingestion_method"] = json!(self.method);
        Ok(meta)
    }

    /// Removes this dSource's private directory (outside the mount) and
    /// the markers that name what it made.
    fn remove_private(&self, platform: &Platform) -> Result<(), OperationError> {
        platform.run_ok(
            "removing the dSource's private files",
            &request(
                r#"rm -rf -- "$PRIVATE"; rm -f -- "$FILES/pgpass" "$FILES/slot-made""#,
                &[("PRIVATE", self.private.clone()), ("FILES", self.files())],
            ),
        )?;
        Ok(())
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

/// `linked.mount_specification`: where the staging dataset goes, and (when
/// the method replays WAL) where the WAL dataset that keeps it goes: beside
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
    let replays = method::of(IngestionMethod::of(params)).replays_wal();
    let wal = match (
        explicit.filter(|_| replays),
        input.get("default_wal_path").and_then(Value::as_str),
    ) {
        (Some(p), _) => Some(format!("{}-wal", p.trim_end_matches('/'))),
        (None, Some(w)) if replays => Some(w.to_owned()),
        (None, Some(_)) => None,
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

/// `linked.pre_snapshot`: ingest if asked (`resync`) or never done, then
/// bring staging to a consistent point (by the dSource's method).
pub fn pre_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let resync = input
        .pointer("/snapshot_parameters/resync")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    staging
        .ingestion()
        .consistent_point(platform, &staging, resync)
}

/// `linked.post_snapshot`: describe the snapshot just taken, and let
/// staging go on (resume replay, restart it).
pub fn post_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let mut meta = staging.ingestion().describe(platform, &staging)?;
    meta["ingestion_method"] = json!(staging.method);
    Ok(meta)
}

/// `linked.start_staging`: start staging again (as the method has it).
pub fn start_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    if let Some(source) = staging.ingestion().follows_with_password(&staging)? {
        // The password may have changed (`pgvirt dsource password`): the
        // passfile is written from the one the engine holds now, and, when
        // asked, the source must accept it before anything else happens.
        if input.get("check_source").and_then(Value::as_bool) == Some(true) {
            check_source_accepts(&source)?;
        }
        platform.run_ok(
            "preparing the dSource's private directory",
            &request(
                r#"umask 077; mkdir -p -- "$PRIVATE" && chmod 0700 -- "$PRIVATE""#,
                &[("PRIVATE", staging.private.clone())],
            ),
        )?;
        Cluster::write_private_file(platform, &staging.passfile(), &source.pgpass_line())?;
    }
    staging.ingestion().start_staging(platform, &staging)?;
    Ok(json!({}))
}

/// The source answers with the user and password staging would use: an
/// error that says so when it refuses them; a source that cannot be reached
/// now is only a warning (staging keeps trying).
fn check_source_accepts(source: &Source) -> Result<(), OperationError> {
    // Not through staging's passfile: a refused password must not land there.
    let mut source = source.clone();
    source.passfile = None;
    match source.check_replication_access() {
        Err(e)
            if e.kind == ErrorKind::SourceUnreachable && !e.message.contains("authentication") =>
        {
            log::warn!(
                "{}; the password is kept and tried when the source is back",
                e.message
            );
            Ok(())
        }
        other => other,
    }
}

/// `linked.stop_staging`: stop staging; when the dSource is being deleted
/// (`purpose: delete`), also undo what it made outside its mount. With
/// `purpose: check`, only say whether it may be stopped now.
pub fn stop_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let purpose = input
        .get("purpose")
        .and_then(Value::as_str)
        .unwrap_or("disable");
    if purpose == "check" {
        staging.ingestion().may_stop(platform, &staging)?;
    } else {
        staging
            .ingestion()
            .stop_staging(platform, &staging, purpose)?;
    }
    Ok(json!({}))
}

/// `linked.worker`: staging's health (replication, for a replica), the
/// method, and what staging needs from the user next, if anything.
pub fn worker(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let mut health = staging.ingestion().worker(platform, &staging, input)?;
    health["ingestion_method"] = json!(staging.method);
    Ok(health)
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
