//! The virtual lifecycle: turn a clone of a snapshot into an independent,
//! writable PostgreSQL cluster (a VDB), and run it.
//!
//! A clone of a staging snapshot is a standby caught mid-backup: its
//! `pgvirt/backup_label` (written by `linked.pre_snapshot`) goes into the data
//! directory and the clone recovers to the snapshot's `replayed_lsn`, then
//! promotes onto a new timeline. Whether a target is needed is read from the
//! clone's own WAL with `pg_waldump`: when no record follows the LSN, recovery
//! simply ends there (a target past the end of WAL would be an error).
//! A VDB snapshot is taken with the VDB cleanly stopped, so its clones start
//! as they are. Either way nothing of the source's replication survives:
//! no standby signal, no primary_conninfo or restore_command, no replication
//! slots, archiving off; a clone of a logical-replication staging has its
//! subscription detached from the source's slot and dropped before it
//! starts for anyone ([`logical`]).

use serde_json::{json, Value};

use super::cluster::{user_overlay, Cluster, ClusterConfig};
use super::conf::conf_quote;
use super::platform::{field, request, str_field, Platform};
use crate::abi::{ErrorKind, OperationError, Status};

mod logical;
mod recovery;

use recovery::{prepare_clone, wait_promoted, Target};

/// The VDB side of an operation's input.
struct Vdb {
    cluster: Cluster,
    mount: String,
    params: Value,
    name: String,
    /// Where it archives its WAL (its WAL dataset), when the engine gave one.
    wal: Option<String>,
}

impl Vdb {
    fn from_input(input: &Value) -> Result<Self, OperationError> {
        let params = input
            .get("virtual_source")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mount = str_field(field(input, "mount")?, "path", "mount")?
            .trim_end_matches('/')
            .to_owned();
        let port = input
            .pointer("/vdb/port")
            .or_else(|| params.get("port"))
            .or_else(|| input.pointer("/source_config/port"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    "no port for the VDB (vdb.port or virtual_source.port)",
                )
            })?;
        let name = input
            .pointer("/vdb/name")
            .and_then(Value::as_str)
            .unwrap_or("vdb")
            .to_owned();
        // A unix socket path is limited to 107 bytes; fall back to /tmp.
        let socket_dir = if mount.len() + 30 < 100 {
            format!("{mount}/pgvirt")
        } else {
            "/tmp".to_owned()
        };
        Ok(Self {
            cluster: Cluster::new(
                Cluster::bin_dir(input)?,
                format!("{mount}/data"),
                port,
                socket_dir,
                format!("{mount}/pgvirt/postgres.log"),
            )?,
            mount,
            params,
            name,
            wal: input
                .pointer("/wal/path")
                .and_then(Value::as_str)
                .map(|p| p.trim_end_matches('/').to_owned()),
        })
    }

    fn files(&self) -> String {
        format!("{}/pgvirt", self.mount)
    }

    /// The source config the VDB is known by.
    fn source_config(&self, major: Option<u64>) -> Value {
        let mut config = json!({
            "name": format!("vdb {} (port {})", self.name, self.cluster.port),
            "data_directory": self.cluster.data_dir,
            "port": self.cluster.port,
            "socket_directory": self.cluster.socket_dir,
            "user": "postgres",
            "discovered": false,
        });
        if let Some(m) = major {
            config["major_version"] = json!(m);
        }
        config
    }

    fn hba(&self) -> Vec<String> {
        match self.params.get("pg_hba").and_then(Value::as_array) {
            Some(entries) if !entries.is_empty() => entries
                .iter()
                .map(|e| {
                    let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                    [
                        get("type"),
                        get("database"),
                        get("user"),
                        get("address"),
                        get("method"),
                    ]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
                })
                .collect(),
            // Local connections only; the socket is the environment user's alone.
            _ => vec!["local all all trust".into()],
        }
    }

    /// Writes the VDB's configuration; `recovery` adds the recovery settings.
    fn write_config(
        &self,
        platform: &Platform,
        recovery: Vec<(String, String)>,
    ) -> Result<(), OperationError> {
        let mut settings: Vec<(String, String)> = vec![
            ("port".into(), self.cluster.port.to_string()),
            ("listen_addresses".into(), conf_quote("localhost")),
            (
                "unix_socket_directories".into(),
                conf_quote(&self.cluster.socket_dir),
            ),
            ("unix_socket_permissions".into(), "0700".into()),
            (
                "cluster_name".into(),
                conf_quote(&format!("pgvirt vdb {}", self.name)),
            ),
            ("hot_standby".into(), "on".into()),
            (
                "hba_file".into(),
                conf_quote(&format!("{}/pg_hba.conf", self.cluster.data_dir)),
            ),
            (
                "ident_file".into(),
                conf_quote(&format!("{}/pg_ident.conf", self.cluster.data_dir)),
            ),
        ];
        // Its WAL is kept in its own WAL dataset (a moment past one of its
        // snapshots can be rewound to), never in its parent's archive.
        match &self.wal {
            Some(dir) => settings.extend(
                crate::connector::linked::archive_settings_after_snapshot(dir),
            ),
            None => settings.push(("archive_mode".into(), "off".into())),
        }
        let signal = if recovery.is_empty() {
            None
        } else {
            Some("recovery.signal")
        };
        let recovers = !recovery.is_empty();
        settings.extend(recovery);
        let comment_out = user_overlay(&mut settings, self.params.get("config"));
        if recovers {
            // Replay pauses at its target only in hot standby (else it shuts
            // down there); the setting means nothing once promoted.
            settings.push(("hot_standby".into(), "on".into()));
        }
        self.cluster.write_config(
            platform,
            &ClusterConfig {
                settings,
                comment_out,
                hba: self.hba(),
                signal,
            },
        )
    }

    /// Sets the superuser's password, if the parameters carry one. Only a
    /// SCRAM verifier reaches the server: the password itself is never in
    /// SQL text, a log, or argv.
    fn set_password(&self, platform: &Platform) -> Result<(), OperationError> {
        let Some(password) = self
            .params
            .get("superuser_password")
            .and_then(Value::as_str)
        else {
            return Ok(());
        };
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        self.cluster.psql(
            platform,
            "setting the superuser password",
            "SET log_statement = 'none';\nALTER ROLE CURRENT_USER PASSWORD :'verifier';",
            &[("verifier", &verifier)],
        )?;
        Ok(())
    }
}

/// `virtual.mount_specification`: where the VDB's dataset goes.
/// Its WAL dataset goes beside it (`<mount_path>-wal`), or where the engine
/// offers.
pub fn mount_specification(_platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let explicit = input
        .pointer("/virtual_source/mount_path")
        .and_then(Value::as_str);
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

/// `virtual.archive_wal`: when the VDB runs, ends its WAL segment and waits
/// until it is archived, so its kept WAL reaches this moment.
pub fn archive_wal(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    if vdb.wal.is_none() || !vdb.cluster.is_running(platform)? {
        return Ok(json!({"archived": false}));
    }
    let out = vdb.cluster.psql(
        platform,
        "archiving the VDB's WAL",
        r#"SELECT set_config('pgvirt.segment', pg_walfile_name(pg_switch_wal()), false);
DO $$
BEGIN
  FOR i IN 1..3000 LOOP
    -- Statistics are read once per transaction unless cleared.
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN (SELECT coalesce(last_archived_wal, '') >= current_setting('pgvirt.segment') FROM pg_stat_archiver);
    PERFORM pg_sleep(0.02);
  END LOOP;
END $$;
SELECT coalesce(last_archived_wal, '') >= current_setting('pgvirt.segment') FROM pg_stat_archiver;"#,
        &[],
    )?;
    if out.lines().last().map(str::trim) != Some("t") {
        return Err(OperationError::new(
            ErrorKind::CommandFailed,
            format!("VDB {}: its WAL was not archived within 60 s", vdb.name),
        )
        .with_action(format!("see {}", vdb.cluster.log_file)));
    }
    Ok(json!({"archived": true}))
}

/// `virtual.configure`: make the freshly cloned snapshot an independent,
/// running primary; returns the VDB's new source config.
pub fn configure(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let snapshot = field(input, "snapshot")?;
    if snapshot.get("provisionable").and_then(Value::as_bool) != Some(true) {
        let reason = snapshot
            .get("not_provisionable_reason")
            .and_then(Value::as_str)
            .unwrap_or("it is marked not provisionable");
        return Err(OperationError::new(
            ErrorKind::NotProvisionable,
            format!("the snapshot cannot be provisioned: {reason}"),
        )
        .with_action("choose a later snapshot of the dSource"));
    }
    let vdb = Vdb::from_input(input)?;
    let target = Target::from_input(input)?;
    prepare_clone(platform, &vdb, snapshot, target.as_ref(), input)?;
    if logical::from_subscriber(snapshot) {
        logical::detach_subscriptions(platform, &vdb)?;
    }
    vdb.cluster.start(platform)?;
    wait_promoted(platform, &vdb)?;
    if target.is_some() {
        // Promoted: its configuration no longer names the WAL it read.
        vdb.write_config(platform, Vec::new())?;
    }
    vdb.set_password(platform)?;
    Ok(vdb.source_config(snapshot.get("major_version").and_then(Value::as_u64)))
}

/// `virtual.reconfigure`: bring back a VDB on a re-cloned own snapshot
/// (rewind) or on its existing data (enable); returns its source config.
pub fn reconfigure(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    // The engine says whether it just re-cloned a snapshot (rewind) or
    // kept the existing data (enable).
    let fresh_clone = input
        .get("fresh_clone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let target = Target::from_input(input)?;
    if let (Some(snapshot), true) = (input.get("snapshot"), fresh_clone) {
        prepare_clone(platform, &vdb, snapshot, target.as_ref(), input)?;
        if logical::from_subscriber(snapshot) {
            logical::detach_subscriptions(platform, &vdb)?;
        }
    } else {
        vdb.write_config(platform, Vec::new())?;
    }
    vdb.cluster.start(platform)?;
    wait_promoted(platform, &vdb)?;
    if target.is_some() {
        vdb.write_config(platform, Vec::new())?;
    }
    let major = input
        .pointer("/source_config/major_version")
        .or_else(|| input.pointer("/snapshot/major_version"))
        .and_then(Value::as_u64);
    Ok(vdb.source_config(major))
}

/// `virtual.unconfigure`: stop the VDB (before refresh, rewind, disable, delete).
pub fn unconfigure(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    Vdb::from_input(input)?.cluster.stop(platform)?;
    Ok(json!({}))
}

/// `virtual.cleanup`: nothing outside the dataset to remove; the engine
/// destroys the dataset itself.
pub fn cleanup(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    Vdb::from_input(input)?.cluster.stop(platform)?;
    Ok(json!({}))
}

/// `virtual.start`.
pub fn start(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    // A crashed postmaster leaves its pid file; pg_ctl handles a stale one.
    vdb.cluster.start(platform)?;
    Ok(json!({}))
}

/// `virtual.stop`.
pub fn stop(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    Vdb::from_input(input)?.cluster.stop(platform)?;
    Ok(json!({}))
}

/// `virtual.status`: ACTIVE when the VDB runs.
pub fn status(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    let active = vdb.cluster.is_running(platform)?;
    Ok(if active {
        Status::Active
    } else {
        Status::Inactive
    }
    .to_output())
}

/// `virtual.pre_snapshot`: record what the snapshot holds, then stop the VDB
/// cleanly so the files are consistent (it is started again after).
pub fn pre_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    let running = vdb.cluster.is_running(platform)?;
    if running {
        let facts = vdb.cluster.psql(
            platform,
            "reading the VDB's databases",
            r#"SELECT json_build_object(
  'databases', (SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate),
  'size_bytes', (SELECT sum(pg_database_size(oid))::bigint FROM pg_database),
  'postgres_version', current_setting('server_version'));"#,
            &[],
        )?;
        platform.run_ok(
            "recording the VDB's databases",
            &request(
                r#"umask 077; printf '%s' "$FACTS" > "$FILES/vdb-facts.json"; : > "$FILES/was-running""#,
                &[("FILES", vdb.files()), ("FACTS", facts.trim().to_owned())],
            ),
        )?;
        vdb.cluster.stop(platform)?;
    }
    platform.run_ok(
        "marking the snapshot clean",
        &request(
            // Stopped now: no commit in it is later than this moment.
            r#"rm -f -- "$FILES/backup_label" "$FILES/tablespace_map"; : > "$FILES/clean"; date -u +%Y-%m-%dT%H:%M:%S.%6NZ > "$FILES/taken-at""#,
            &[("FILES", vdb.files())],
        ),
    )?;
    if input.get("trim_wal") == Some(&json!(true)) {
        trim_wal(platform, &vdb.cluster)?;
    }
    Ok(json!({"was_running": running}))
}

/// Leaves in the pg_wal of a cluster shut down cleanly only the segment of
/// its shutdown checkpoint (and timeline history): the segments recovery
/// copied in and those recycled for later use (up to `max_wal_size`) would
/// otherwise be carried, and copied or cloned, by every clone of a
/// prepared image. A cluster not shut down cleanly is left alone.
fn trim_wal(platform: &Platform, cluster: &Cluster) -> Result<(), OperationError> {
    platform.run_ok(
        "removing the WAL a prepared image no longer needs",
        &request(
            r#"set -eu
control=$(LC_ALL=C "$BIN/pg_controldata" -D "$DATA")
printf '%s\n' "$control" | grep -q '^Database cluster state: *shut down$' || exit 0
keep=$(printf '%s\n' "$control" | sed -n "s/^Latest checkpoint's REDO WAL file: *//p")
[ ${#keep} -eq 24 ] || exit 0
cd -- "$DATA/pg_wal"
for f in ????????????????????????; do
  case $f in *[!0-9A-F]*) continue;; esac
  [ "$f" = "$keep" ] && continue
  rm -f -- "$f" "archive_status/$f.ready" "archive_status/$f.done"
done
sync -f . 2>/dev/null || true"#,
            &[
                ("BIN", cluster.bin_dir.clone()),
                ("DATA", cluster.data_dir.clone()),
            ],
        ),
    )?;
    Ok(())
}

/// `virtual.post_snapshot`: describe the snapshot, and start the VDB again
/// if it ran before.
pub fn post_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    let out = platform.run_ok(
        "reading the VDB's control file",
        &request(
            // In UTC, so the times read are what they say (the environment's
            // zone may be anything).
            r#"LC_ALL=C TZ=UTC "$BIN/pg_controldata" -D "$DATA"; echo "PG_VERSION: $(cat -- "$DATA/PG_VERSION")"; echo "--taken-at $(cat -- "$FILES/taken-at" 2>/dev/null)"; echo "--facts"; cat -- "$FILES/vdb-facts.json" 2>/dev/null; echo; [ -f "$FILES/was-running" ] && echo "--was-running"; rm -f -- "$FILES/was-running"; true"#,
            &[
                ("BIN", vdb.cluster.bin_dir.clone()),
                ("DATA", vdb.cluster.data_dir.clone()),
                ("FILES", vdb.files()),
            ],
        ),
    )?;
    let (control, rest) = out
        .stdout
        .split_once("--facts")
        .unwrap_or((&out.stdout, ""));
    let get = |key: &str| {
        control
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let facts: Value = rest
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| json!({}));
    // The cluster says its major version (PG_VERSION); nothing is guessed.
    let major: u64 = get("PG_VERSION").parse().map_err(|_| {
        OperationError::new(
            ErrorKind::InvalidState,
            format!("{} has no readable PG_VERSION", vdb.cluster.data_dir),
        )
    })?;
    let meta = json!({
        "postgres_version": facts.get("postgres_version").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| major.to_string()),
        "major_version": major,
        "system_identifier": get("Database system identifier"),
        "timeline": get("Latest checkpoint's TimeLineID").parse::<u64>().unwrap_or(1),
        "checkpoint_lsn": get("Latest checkpoint location"),
        "redo_lsn": get("Latest checkpoint's REDO location"),
        "checkpoint_time": to_rfc3339(&get("Time of latest checkpoint")),
        // Taken stopped: its point is its shutdown checkpoint, and every
        // commit in it came before the moment it was seen stopped.
        "taken_at": out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("--taken-at "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map_or_else(|| to_rfc3339(&get("Time of latest checkpoint")), str::to_owned),
        "wal_segment_size": get("Bytes per WAL segment").parse::<u64>().unwrap_or(16 * 1024 * 1024),
        "databases": facts.get("databases").cloned().filter(Value::is_array).unwrap_or_else(|| json!([])),
        "size_bytes": facts.get("size_bytes").and_then(Value::as_u64).unwrap_or(0),
        "ingestion_method": "virtual",
        "provisionable": true,
    });
    // From its first snapshot on, the VDB keeps its WAL.
    if let Some(wal) = &vdb.wal {
        platform.run_ok(
            "keeping the VDB's WAL from its snapshot on",
            &request(r#": > "$WAL/.keep""#, &[("WAL", wal.clone())]),
        )?;
    }
    if out.stdout.contains("--was-running") {
        vdb.cluster.start(platform)?;
    }
    Ok(meta)
}

/// `virtual.initialize`: an empty VDB — a new cluster made by initdb.
pub fn initialize(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let vdb = Vdb::from_input(input)?;
    platform.run_ok(
        "creating an empty cluster",
        &request(
            r#"set -eu; umask 077; mkdir -p -- "$FILES"; rm -rf -- "$DATA"
"$BIN/initdb" -D "$DATA" -U postgres -A trust --no-instructions >/dev/null"#,
            &[
                ("BIN", vdb.cluster.bin_dir.clone()),
                ("DATA", vdb.cluster.data_dir.clone()),
                ("FILES", vdb.files()),
            ],
        ),
    )?;
    vdb.write_config(platform, Vec::new())?;
    vdb.cluster.start(platform)?;
    vdb.set_password(platform)?;
    let major = input
        .pointer("/repository/major_version")
        .and_then(Value::as_u64);
    Ok(vdb.source_config(major))
}

/// `virtual.source_size`: bytes of the VDB's data directory.
pub fn source_size(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    Ok(json!(Vdb::from_input(input)?
        .cluster
        .data_size(platform)?))
}

/// pg_controldata's C-locale time (`Sun Nov 22 09:59:10 2026`, printed in
/// UTC: it runs with `TZ=UTC`) as RFC 3339; else the text.
fn to_rfc3339(text: &str) -> String {
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = text.split_whitespace().collect();
    if let [_, mon, day, time, year] = parts.as_slice() {
        if let (Some(m), Ok(day)) = (months.iter().position(|x| x == mon), day.parse::<u32>()) {
            return format!("{year}-{:02}-{day:02}T{time}Z", m + 1);
        }
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::to_rfc3339;

    #[test]
    fn reads_controldata_times() {
        assert_eq!(
            to_rfc3339("Sun Nov 22 09:59:10 2026"),
            "2026-11-22T09:59:10Z"
        );
        assert_eq!(
            to_rfc3339("Mon Feb  2 00:00:01 2026"),
            "2026-02-02T00:00:01Z"
        );
        assert_eq!(to_rfc3339("garbage"), "garbage");
    }
}
