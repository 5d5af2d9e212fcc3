//! The linked (staged) lifecycle: ingest a source cluster into a staging
//! cluster on an engine-provided mount, keep it in sync as a hot standby, and
//! bring it to a consistent point for each snapshot.
//!
//! Layout of the mount (`mount.path`):
//! - `data/`: the staging cluster's data directory (0700);
//! - `pgvirt/`: the connector's files — `pgpass` (0600, the replication
//!   password), `staging.log`, and per snapshot `backup_label`,
//!   `tablespace_map` and `snapshot.json`. These are inside the snapshot, so
//!   a VDB made from it finds the backup label it must recover with.
//!
//! Consistency without stopping replication: `pre_snapshot` runs a
//! non-exclusive backup on the standby (`pg_backup_start`), pauses replay
//! (WAL keeps streaming in), ends the backup (`pg_backup_stop`) and writes the
//! label; the engine snapshots the files; `post_snapshot` resumes replay.
//! With replay paused no restartpoint can recycle the WAL the backup needs,
//! and no page can be newer than the replay position, which the snapshot
//! records as the LSN a VDB recovers to.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::cluster::{Cluster, ClusterConfig};
use super::platform::{field, request, str_field, Platform};
use super::source::Source;
use crate::abi::OperationError;

/// The staging side of one dSource, from an operation's input.
struct Staging {
    cluster: Cluster,
    mount: String,
    params: Value,
    name: String,
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
                OperationError::new("invalid_input", "linked_source has no staging_port")
            })?;
        let name = input
            .pointer("/dsource/name")
            .and_then(Value::as_str)
            .unwrap_or("dsource")
            .to_owned();
        Ok(Self {
            cluster: Cluster {
                bin_dir: Cluster::bin_dir(input)?,
                data_dir: format!("{mount}/data"),
                port,
                socket_dir: format!("{mount}/pgvirt"),
                log_file: format!("{mount}/pgvirt/staging.log"),
            },
            mount,
            params,
            name,
        })
    }

    fn method(&self) -> &str {
        self.params
            .get("ingestion_method")
            .and_then(Value::as_str)
            .unwrap_or("basebackup_streaming")
    }

    fn streams(&self) -> bool {
        self.method() != "backup_log_shipping"
    }

    fn files(&self) -> String {
        format!("{}/pgvirt", self.mount)
    }

    /// The replication slot this dSource uses on the source, if any.
    fn slot(&self) -> Option<String> {
        if !self.streams() {
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
        self.streams()
            && self
                .params
                .pointer("/replication_slot/create")
                .and_then(Value::as_bool)
                .unwrap_or(true)
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

/// `linked.mount_specification`: where the staging dataset goes.
pub fn mount_specification(_platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let params = field(input, "linked_source")?;
    let path = params
        .get("mount_path")
        .and_then(Value::as_str)
        .or_else(|| input.get("default_mount_path").and_then(Value::as_str))
        .ok_or_else(|| {
            OperationError::new("invalid_input", "no mount_path and no default_mount_path")
        })?;
    Ok(json!({"mounts": [{"path": path}]}))
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
        ingest(platform, input, &staging)?;
    } else {
        staging.cluster.start(platform)?;
    }
    if staging.streams() {
        wait_for_streaming(
            platform,
            &staging,
            if resync || !ingested { 60 } else { 15 },
        )?;
    }
    consistent_point(platform, &staging)
}

/// `linked.post_snapshot`: resume replay and describe the snapshot.
pub fn post_snapshot(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    staging.cluster.psql(
        platform,
        "resuming WAL replay on staging",
        "SELECT pg_wal_replay_resume();",
        &[],
    )?;
    let info = platform.run_ok(
        "reading the snapshot's backup information",
        &request(
            r#"cat -- "$FILES/snapshot.json""#,
            &[("FILES", staging.files())],
        ),
    )?;
    let mut meta: Value = serde_json::from_str(&info.stdout).map_err(|e| {
        OperationError::new("internal", format!("snapshot.json is unreadable: {e}"))
    })?;
    meta["ingestion_method"] = json!(staging.method());
    meta["provisionable"] = json!(true);
    Ok(meta)
}

/// `linked.start_staging`: start the staging cluster.
pub fn start_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    if !has_cluster(platform, &staging)? {
        return Err(
            OperationError::new("invalid_state", "the staging data directory is empty")
                .with_action("run a sync with --resync to ingest the source again"),
        );
    }
    staging.cluster.start(platform)?;
    Ok(json!({}))
}

/// `linked.stop_staging`: stop the staging cluster; when the dSource is being
/// deleted (`purpose: delete`), also drop its replication slot on the source.
pub fn stop_staging(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    staging.cluster.stop(platform)?;
    if input.get("purpose").and_then(Value::as_str) == Some("delete") && staging.creates_slot() {
        if let Some(slot) = staging.slot() {
            let source = Source::from_params(&staging.params)?;
            if let Err(e) = source.drop_slot(&slot) {
                log::warn!("could not drop replication slot {slot} on the source: {e}");
            }
        }
    }
    Ok(json!({}))
}

/// `linked.status`: ACTIVE when the staging cluster runs.
pub fn status(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let staging = Staging::from_input(input)?;
    let active = staging.cluster.is_running(platform)?;
    Ok(json!({"status": if active { "ACTIVE" } else { "INACTIVE" }}))
}

/// `linked.worker`: replication health — connected or not, lag in bytes and
/// seconds behind the source.
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
        OperationError::new("internal", format!("unreadable replication state: {e}"))
    })?;
    health["running"] = json!(true);
    health["connected"] = json!(health["status"] == json!("streaming"));
    if staging.streams() {
        if let (Ok(source), Some(replayed)) = (
            Source::from_params(&staging.params),
            health["replayed_lsn"].as_str(),
        ) {
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

/// Whether the data directory holds a cluster.
fn has_cluster(platform: &Platform, staging: &Staging) -> Result<bool, OperationError> {
    let out = platform.run(&request(
        r#"[ -f "$DIR/PG_VERSION" ]"#,
        &[("DIR", staging.cluster.data_dir.clone())],
    ))?;
    Ok(out.exit_code == 0)
}

/// Ingests the source into an empty data directory and starts staging. On
/// failure, leaves no staging process, no files, and no slot it created.
fn ingest(platform: &Platform, input: &Value, staging: &Staging) -> Result<(), OperationError> {
    staging.cluster.stop(platform)?;
    let source = if staging.streams() {
        Some(Source::from_params(&staging.params)?)
    } else {
        None
    };
    // Check everything we can before making anything.
    port_is_free(platform, staging.cluster.port)?;
    if let Some(source) = &source {
        source.check_replication_access()?;
        if staging.creates_slot() {
            if let Some(slot) = staging.slot() {
                // A resync re-creates this dSource's own slot.
                source.drop_slot_if_exists(&slot)?;
            }
        }
    }
    let result = ingest_files(platform, input, staging, source.as_ref())
        .and_then(|()| write_staging_config(platform, staging, source.as_ref()))
        .and_then(|()| staging.cluster.start(platform));
    if let Err(e) = result {
        let _ = staging.cluster.stop(platform);
        let _ = platform.run(&request(
            r#"rm -rf -- "$DATA" && mkdir -m 0700 -- "$DATA"; rm -f -- "$FILES/pgpass""#,
            &[
                ("DATA", staging.cluster.data_dir.clone()),
                ("FILES", staging.files()),
            ],
        ));
        if let (Some(source), Some(slot), true) = (&source, staging.slot(), staging.creates_slot())
        {
            if let Err(drop_err) = source.drop_slot_if_exists(&slot) {
                log::warn!(
                    "could not drop replication slot {slot} after the failed ingest: {drop_err}"
                );
            }
        }
        return Err(e);
    }
    Ok(())
}

fn port_is_free(platform: &Platform, port: u16) -> Result<(), OperationError> {
    let out = platform.run(&request(
        r#"(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null"#,
        &[("PORT", port.to_string())],
    ))?;
    if out.exit_code == 0 {
        return Err(OperationError::new(
            "conflict",
            format!("staging port {port} is already in use"),
        )
        .with_action("choose another staging_port"));
    }
    Ok(())
}

/// Fills the empty data directory: pg_basebackup from the source, or the
/// customer's backup.
fn ingest_files(
    platform: &Platform,
    _input: &Value,
    staging: &Staging,
    source: Option<&Source>,
) -> Result<(), OperationError> {
    let files = staging.files();
    let data = staging.cluster.data_dir.clone();
    platform.run_ok(
        "preparing the staging directories",
        &request(
            r#"set -e; umask 077; mkdir -p -- "$FILES"; rm -rf -- "$DATA"; mkdir -m 0700 -- "$DATA""#,
            &[("FILES", files.clone()), ("DATA", data.clone())],
        ),
    )?;
    match staging.method() {
        "basebackup_streaming" => {
            let source = source.ok_or_else(|| {
                OperationError::new("invalid_input", "linked_source has no source")
            })?;
            basebackup(platform, staging, source)
        }
        method => {
            if method == "backup_streaming" && staging.creates_slot() {
                if let (Some(source), Some(slot)) = (source, staging.slot()) {
                    // pg_basebackup -C makes the slot for the engine's own
                    // backup; for the customer's, make it here.
                    source.create_slot(&slot)?;
                }
            }
            let backup = staging
                .params
                .get("backup_path")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    OperationError::new("invalid_input", "linked_source has no backup_path")
                })?;
            platform
                .run_ok(
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
                        &[("BACKUP", backup.to_owned()), ("DATA", data)],
                    ),
                )
                .map(|_| ())
        }
    }
}

/// Runs pg_basebackup in the background and reports its progress.
fn basebackup(
    platform: &Platform,
    staging: &Staging,
    source: &Source,
) -> Result<(), OperationError> {
    let checkpoint = staging
        .params
        .pointer("/pg_basebackup/checkpoint")
        .and_then(Value::as_str)
        .unwrap_or("fast");
    let mut vars: Vec<(&str, String)> = vec![
        ("BIN", staging.cluster.bin_dir.clone()),
        ("DATA", staging.cluster.data_dir.clone()),
        ("FILES", staging.files()),
        ("PGHOST", source.host.clone()),
        ("PGPORT", source.port.to_string()),
        ("PGUSER", source.user.clone()),
        ("PGCONNECT_TIMEOUT", source.connect_timeout.to_string()),
        ("CHECKPOINT", checkpoint.to_owned()),
        ("SLOT", staging.slot().unwrap_or_default()),
        (
            "CREATE_SLOT",
            if staging.creates_slot() { "1" } else { "" }.to_owned(),
        ),
        (
            "MAX_RATE",
            staging
                .params
                .pointer("/pg_basebackup/max_rate")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        ),
    ];
    let mut secret = Vec::new();
    if let Some(pw) = &source.password {
        vars.push(("PGPASSWORD", pw.clone()));
        secret.push("PGPASSWORD".to_owned());
    }
    // Started detached (output to files), so progress can be read while it runs.
    let start = r#"
set -u
args=(-D "$DATA" -X stream -c "$CHECKPOINT" -P -v -w)
[ -n "$SLOT" ] && args+=(-S "$SLOT")
[ -n "$CREATE_SLOT" ] && [ -n "$SLOT" ] && args+=(-C)
[ -n "$MAX_RATE" ] && args+=(-r "$MAX_RATE")
rm -f -- "$FILES/basebackup.rc"
( "$BIN/pg_basebackup" "${args[@]}"; echo $? > "$FILES/basebackup.rc" ) \
  > "$FILES/basebackup.out" 2> "$FILES/basebackup.log" < /dev/null &
echo $!
"#;
    let mut req = request(start, &vars);
    req.secret_variables = secret;
    let out = platform.run_ok("starting pg_basebackup", &req)?;
    let pid = out.stdout.trim().to_owned();
    let total = source.database_size().unwrap_or(0);
    let poll = r#"
if [ -f "$FILES/basebackup.rc" ]; then echo "done $(cat -- "$FILES/basebackup.rc")"; exit 0; fi
kb=$(tr '\r' '\n' < "$FILES/basebackup.log" 2>/dev/null | grep -o '^ *[0-9]*/[0-9]* kB' | tail -n 1 | tr -dc '0-9/')
echo "running ${kb:-0/0}"
"#;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let out = platform.run_ok(
            "watching pg_basebackup",
            &request(poll, &[("FILES", staging.files()), ("PID", pid.clone())]),
        )?;
        let line = out.stdout.trim();
        if let Some(rc) = line.strip_prefix("done ") {
            if rc.trim() == "0" {
                if total > 0 {
                    platform.progress(total, total, "bytes");
                }
                return Ok(());
            }
            let log = platform
                .run(&request(
                    r#"tail -n 15 -- "$FILES/basebackup.log""#,
                    &[("FILES", staging.files())],
                ))
                .map(|o| o.stdout)
                .unwrap_or_default();
            return Err(OperationError::new("command_failed", "pg_basebackup failed")
                .with_cause(format!("exit code {}: {}", rc.trim(), last_meaningful_lines(&log)))
                .with_action("check the source host, port, replication user and password, and pg_hba.conf on the source"));
        }
        if let Some((done, all)) = line
            .strip_prefix("running ")
            .and_then(|s| s.split_once('/'))
        {
            let done: u64 = done.parse().unwrap_or(0);
            let all: u64 = all.parse().unwrap_or(0);
            if all > 0 {
                platform.progress(done * 1024, all * 1024, "bytes");
            }
        }
    }
}

/// pg_basebackup's -P progress lines say nothing a user needs in an error.
fn last_meaningful_lines(log: &str) -> String {
    log.split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty() && !l.contains(" kB (") && !l.contains("waiting for"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes the standby configuration: port, sockets, hot standby, the
/// replication connection (password in a 0600 passfile), restore_command for
/// log shipping, the user's settings, and a private pg_hba.conf.
fn write_staging_config(
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
    let mut pgpass = None;
    if let Some(source) = source {
        let passfile = format!("{}/pgpass", staging.files());
        let mut conninfo = format!(
            "host={} port={} user={} application_name={} connect_timeout={}",
            conninfo_quote(&source.host),
            source.port,
            conninfo_quote(&source.user),
            conninfo_quote(&default_slot_name(&staging.name)),
            source.connect_timeout
        );
        if source.password.is_some() {
            conninfo.push_str(&format!(" passfile={}", conninfo_quote(&passfile)));
            pgpass = Some((passfile, source.pgpass_line()));
        }
        settings.push(("primary_conninfo".into(), conf_quote(&conninfo)));
        if let Some(slot) = staging.slot() {
            settings.push(("primary_slot_name".into(), conf_quote(&slot)));
        }
    }
    if staging.method() == "backup_log_shipping" {
        let archive = staging
            .params
            .get("wal_archive_path")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OperationError::new("invalid_input", "log shipping needs wal_archive_path")
            })?;
        let command = format!("cp {}/%f %p", shell_quote(archive));
        settings.push(("restore_command".into(), conf_quote(&command)));
    }
    let mut comment_out: Vec<String> = [
        "data_directory",
        "external_pid_file",
        "include_dir",
        "hba_file",
        "ident_file",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(config) = staging.params.get("staging_config") {
        if let Some(set) = config.get("set").and_then(Value::as_object) {
            for (name, value) in set {
                settings.push((name.clone(), conf_value(value)));
            }
        }
        if let Some(list) = config.get("comment_out").and_then(Value::as_array) {
            comment_out.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    staging.cluster.write_config(
        platform,
        &ClusterConfig {
            settings,
            comment_out,
            // Only the environment user reaches staging (socket 0700, trust on it).
            hba: vec!["local all all trust".into()],
            signal: Some("standby.signal"),
            secret_file: pgpass,
        },
    )
}

/// Waits until the walreceiver streams; an error says when it does not.
fn wait_for_streaming(
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
        "replication_stopped",
        format!("streaming replication from {source} has stopped (walreceiver: {status})"),
    )
    .with_cause(format!("staging log: {}", log.trim()))
    .with_action(
        "check that the source is up and reachable; staging reconnects by itself once it is",
    ))
}

/// Runs the non-exclusive backup with replay paused and writes the label and
/// the snapshot's facts into `pgvirt/`, inside what the snapshot captures.
fn consistent_point(platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
    let script = r#"
SELECT pg_backup_start(:'label', true) IS NOT NULL;
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
  'size_bytes', (SELECT sum(pg_database_size(oid))::bigint FROM pg_database));
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
            let _ = staging.cluster.psql(
                platform,
                "resuming WAL replay",
                "SELECT pg_wal_replay_resume();",
                &[],
            );
            return Err(e);
        }
    };
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    let (Some(facts), Some(stop)) = (lines.first(), lines.get(1)) else {
        let _ = staging.cluster.psql(
            platform,
            "resuming WAL replay",
            "SELECT pg_wal_replay_resume();",
            &[],
        );
        return Err(OperationError::new(
            "internal",
            "unexpected output from the backup on staging",
        )
        .with_cause(out));
    };
    let mut facts: Value =
        serde_json::from_str(facts).map_err(|e| OperationError::new("internal", e.to_string()))?;
    let stop: Value =
        serde_json::from_str(stop).map_err(|e| OperationError::new("internal", e.to_string()))?;
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
    facts["checkpoint_time"] = json!(label
        .get("START TIME")
        .map(|t| label_time_to_rfc3339(t))
        .unwrap_or_default());
    facts["stop_lsn"] = stop["stop_lsn"].clone();
    facts["backup_label"] = json!(labelfile);
    if facts["databases"].is_null() {
        facts["databases"] = json!([]);
    }
    let spcmap = stop["spcmapfile"].as_str().unwrap_or_default().to_owned();
    if staging.method() == "backup_log_shipping" {
        let segment_size = facts["wal_segment_size"]
            .as_u64()
            .unwrap_or(16 * 1024 * 1024);
        let replayed = facts["replayed_lsn"].as_str().unwrap_or("").to_owned();
        keep_archived_wal(platform, staging, &labelfile, &replayed, segment_size)?;
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
        let _ = staging.cluster.psql(
            platform,
            "resuming WAL replay",
            "SELECT pg_wal_replay_resume();",
            &[],
        );
        return Err(e);
    }
    Ok(json!({"replayed_lsn": facts["replayed_lsn"], "stop_lsn": facts["stop_lsn"]}))
}

/// A standby restoring from an archive does not keep what it restored in
/// pg_wal. Copy the segments a clone needs (from the backup's start to the
/// replayed LSN) from the archive into `pgvirt/wal/`, inside the snapshot,
/// so a VDB recovers from its own copy and never reads the archive.
fn keep_archived_wal(
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
        .map(|pos| super::cluster::segment_file(timeline, pos, segment_size))
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

/// `KEY: value` lines of a backup label.
fn parse_backup_label(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `2026-11-22 10:00:00 UTC` → `2026-11-22T10:00:00Z` (other zones keep
/// their offset name out; PostgreSQL writes the label in the server's zone).
fn label_time_to_rfc3339(text: &str) -> String {
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(date), Some(time), Some("UTC" | "GMT")) => format!("{date}T{time}Z"),
        (Some(date), Some(time), Some(zone)) if zone.starts_with(['+', '-']) => {
            let zone = if zone.len() == 3 {
                format!("{zone}:00")
            } else {
                zone.to_owned()
            };
            format!("{date}T{time}{zone}")
        }
        (Some(date), Some(time), _) => format!("{date}T{time}Z"),
        _ => text.to_owned(),
    }
}

/// `16MB` → bytes.
fn parse_size(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or(16);
    match text[digits.len()..].trim() {
        "kB" => n * 1024,
        "MB" => n * 1024 * 1024,
        "GB" => n * 1024 * 1024 * 1024,
        _ => n,
    }
}

/// Parses `16/B374D848` into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A postgresql.conf string literal.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A postgresql.conf value from JSON: numbers and booleans bare, strings quoted.
pub fn conf_value(value: &Value) -> String {
    match value {
        Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => conf_quote(s),
        other => conf_quote(&other.to_string()),
    }
}

/// A libpq connection-string value.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A POSIX shell word.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_values() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(shell_quote("/x'; rm -rf /"), r"'/x'\''; rm -rf /'");
        assert_eq!(conf_value(&json!(true)), "on");
        assert_eq!(conf_value(&json!(128)), "128");
        assert_eq!(conf_value(&json!("64MB")), "'64MB'");
    }

    #[test]
    fn reads_labels_lsns_and_sizes() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIME: 2026-11-22 10:00:01 UTC\nSTART TIMELINE: 1\n";
        let l = parse_backup_label(label);
        assert_eq!(l["CHECKPOINT LOCATION"], "0/2000060");
        assert_eq!(
            label_time_to_rfc3339(&l["START TIME"]),
            "2026-11-22T10:00:01Z"
        );
        assert_eq!(parse_lsn("1/10"), Some((1 << 32) + 16));
        assert_eq!(parse_size("16MB"), 16 * 1024 * 1024);
        assert_eq!(default_slot_name("Orders-DB"), "pgvirt_orders_db");
    }
}
