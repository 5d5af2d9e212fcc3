//! The consistent point of a staging that is no replica (staging push,
//! single database): the cluster shut down cleanly, its snapshot described
//! from its control file. A clone of such a snapshot starts as it is: no
//! backup label is left in `pgvirt/` for it.

use serde_json::{json, Value};

use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::conf::parse_size;
use crate::connector::platform::{request, Platform};

/// What the data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Nothing at all (or no directory).
    Empty,
    /// Files, but no cluster (no `PG_VERSION`).
    NoCluster,
    /// A cluster; a postmaster runs on it when `running` names its pid.
    Cluster { running: Option<String> },
}

/// Looks at the data directory.
pub fn contents(platform: &Platform, staging: &Staging) -> Result<Contents, OperationError> {
    let out = platform.run_ok(
        "looking at the staging data directory",
        &request(
            r#"if [ ! -d "$DATA" ] || [ -z "$(ls -A -- "$DATA" 2>/dev/null)" ]; then echo empty
elif [ ! -f "$DATA/PG_VERSION" ]; then echo files
else echo cluster; fi"#,
            &[("DATA", staging.cluster.data_dir.clone())],
        ),
    )?;
    Ok(match out.stdout.trim() {
        "empty" => Contents::Empty,
        "files" => Contents::NoCluster,
        _ => Contents::Cluster {
            running: if staging.cluster.is_running(platform)? {
                Some(postmaster_pid(platform, staging))
            } else {
                None
            },
        },
    })
}

fn postmaster_pid(platform: &Platform, staging: &Staging) -> String {
    platform
        .run(&request(
            r#"head -n 1 -- "$DATA/postmaster.pid" 2>/dev/null"#,
            &[("DATA", staging.cluster.data_dir.clone())],
        ))
        .map(|o| o.stdout.trim().to_owned())
        .unwrap_or_default()
}

/// Reads the control file and the layout of a stopped cluster.
const INSPECT: &str = r#"
set -u
export LC_ALL=C TZ=UTC
cd -- "$DATA" || exit 3
ctl=$("$BIN/pg_controldata" -D "$DATA" 2>&1) || { printf '%s\n' "$ctl" >&2; exit 4; }
field() { printf '%s\n' "$ctl" | sed -n "s/^$1: *//p" | head -n 1; }
printf 'state\t%s\n' "$(field 'Database cluster state')"
printf 'system_identifier\t%s\n' "$(field 'Database system identifier')"
printf 'checkpoint_lsn\t%s\n' "$(field 'Latest checkpoint location')"
printf 'redo_lsn\t%s\n' "$(field "Latest checkpoint's REDO location")"
printf 'timeline\t%s\n' "$(field "Latest checkpoint's TimeLineID")"
t=$(field 'Time of latest checkpoint')
printf 'checkpoint_time\t%s\n' "$(date -u -d "$t" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null)"
printf 'wal_segment_size\t%s\n' "$(field 'Bytes per WAL segment')"
printf 'major\t%s\n' "$(cat PG_VERSION)"
printf 'binary\t%s\n' "$("$BIN/postgres" -V | sed -E 's/.* ([0-9]+(\.[0-9]+)?).*/\1/')"
printf 'size_bytes\t%s\n' "$(du -sb -- . | cut -f1)"
printf 'taken_at\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
for t in pg_tblspc/*; do
  [ -L "$t" ] || continue
  loc=$(readlink -f -- "$t")
  case $loc in "$MOUNT"/*) ;; *) printf 'outside\t%s %s\n' "$(basename -- "$t")" "$(readlink -- "$t")";; esac
done
exit 0
"#;

/// Lists the running staging's databases, shuts it down cleanly, and
/// records the snapshot's facts ([`record`]).
pub fn stop_and_record(platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
    let databases = staging.cluster.psql(
        platform,
        "listing staging's databases",
        "SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate;",
        &[],
    )?;
    let databases: Value = serde_json::from_str(databases.trim()).unwrap_or(json!([]));
    staging.cluster.stop(platform)?;
    record(platform, staging, Some(databases))
}

/// Checks that the stopped cluster in the data directory was shut down
/// cleanly, is of the repository's major version, and keeps every
/// tablespace inside the mount; then records what its control file says
/// (and `databases`, when known) as the snapshot's facts, provisionable.
pub fn record(
    platform: &Platform,
    staging: &Staging,
    databases: Option<Value>,
) -> Result<Value, OperationError> {
    let out = platform.run_ok(
        "reading the staging cluster's control file",
        &request(
            INSPECT,
            &[
                ("DATA", staging.cluster.data_dir.clone()),
                ("BIN", staging.cluster.bin_dir.clone()),
                ("MOUNT", staging.mount.clone()),
            ],
        ),
    )?;
    let mut facts = serde_json::Map::new();
    let mut outside = Vec::new();
    for line in out.stdout.lines() {
        if let Some((k, v)) = line.split_once('\t') {
            if k == "outside" {
                outside.push(v.to_owned());
            } else {
                facts.insert(k.to_owned(), json!(v));
            }
        }
    }
    let text = |k: &str| {
        facts
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let data = &staging.cluster.data_dir;
    let state = text("state");
    if state != "shut down" && state != "shut down in recovery" {
        return Err(OperationError::new(
            ErrorKind::InvalidState,
            format!("the cluster in {data} was not shut down cleanly (pg_controldata says {state:?})"),
        )
        .with_action(format!(
            "start it, let it finish recovery, stop it with `pg_ctl -D {data} stop -m fast`, then sync again"
        )));
    }
    if let Some(first) = outside.first() {
        let (oid, path) = first.split_once(' ').unwrap_or((first, ""));
        return Err(OperationError::new(
            ErrorKind::InvalidState,
            format!(
                "tablespace {oid} of the cluster in {data} is at {path}, outside the mount {}{}",
                staging.mount,
                if outside.len() > 1 {
                    format!(" (and {} more)", outside.len() - 1)
                } else {
                    String::new()
                }
            ),
        )
        .with_action(format!(
            "restore every tablespace under {} (pg_basebackup --tablespace-mapping, pgbackrest restore --tablespace-map) and point pg_tblspc/{oid} there, then sync again",
            staging.mount
        )));
    }
    let major: u64 = text("major").parse().unwrap_or(0);
    let binary = text("binary");
    let binary_major: u64 = binary
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major != binary_major {
        return Err(OperationError::new(
            ErrorKind::InvalidState,
            format!(
                "the cluster in {data} is PostgreSQL {major}, and this environment's repository runs PostgreSQL {binary}"
            ),
        )
        .with_action("restore a backup of the repository's major version"));
    }
    let facts = json!({
        "postgres_version": binary,
        "major_version": major,
        "system_identifier": text("system_identifier"),
        "timeline": text("timeline").parse::<u64>().unwrap_or(1),
        "checkpoint_lsn": text("checkpoint_lsn"),
        "redo_lsn": text("redo_lsn"),
        "replayed_lsn": text("checkpoint_lsn"),
        "checkpoint_time": text("checkpoint_time"),
        "wal_segment_size": parse_size(&text("wal_segment_size")),
        "databases": databases.unwrap_or_else(|| json!([])),
        "size_bytes": text("size_bytes").parse::<u64>().unwrap_or(0),
        "taken_at": text("taken_at"),
        "provisionable": true,
    });
    write_facts(platform, staging, &facts)?;
    Ok(facts)
}

/// Writes the facts of a snapshot into `pgvirt/snapshot.json` (inside what
/// it captures), and removes what would make a clone recover: a backup
/// label, a tablespace map or kept WAL of an earlier snapshot.
pub fn write_facts(
    platform: &Platform,
    staging: &Staging,
    facts: &Value,
) -> Result<(), OperationError> {
    platform.run_ok(
        "writing the snapshot's facts",
        &request(
            r#"set -eu
umask 077
mkdir -p -- "$FILES"
rm -f -- "$FILES/backup_label" "$FILES/tablespace_map"
rm -rf -- "$FILES/wal"
printf '%s' "$FACTS" > "$FILES/snapshot.json""#,
            &[("FILES", staging.files()), ("FACTS", facts.to_string())],
        ),
    )?;
    Ok(())
}
