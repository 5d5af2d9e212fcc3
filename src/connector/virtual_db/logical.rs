//! A clone of a logical-replication staging snapshot holds staging's
//! subscription (disabled when the snapshot was taken). Before the VDB
//! starts for anyone, it is started alone — no TCP, a private socket and
//! trust file of its own, no logical replication worker — and every
//! subscription is disabled, detached from its slot (`slot_name = NONE`,
//! so the source is never contacted) and dropped; then it is stopped.

use super::Vdb;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};

const DETACH: &str = r#"
set -u
priv=$(umask 077; mktemp -d /tmp/pgvirt-detach.XXXXXX) || exit 1
trap 'rm -rf -- "$priv"' EXIT
printf 'local all all trust\n' > "$priv/hba"
"$BIN/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t 600 \
  -o "-p $PORT -c listen_addresses='' -c unix_socket_directories=$priv -c unix_socket_permissions=0700 -c hba_file=$priv/hba -c max_logical_replication_workers=0 -c archive_mode=off" \
  start > /dev/null || { tail -n 5 -- "$LOG_FILE" >&2; exit 1; }
rc=0
q() { "$BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$priv" -p "$PORT" -U postgres "$@"; }
dbs=$(q -d postgres -c "SELECT DISTINCT d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid") || rc=1
while IFS= read -r db; do
  [ -n "$db" ] || continue
  q -d "$db" <<'SQL' || rc=1
SELECT format('ALTER SUBSCRIPTION %I DISABLE', subname) FROM pg_subscription
 WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND subenabled \gexec
SELECT format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', subname) FROM pg_subscription
 WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \gexec
SELECT format('DROP SUBSCRIPTION %I', subname) FROM pg_subscription
 WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \gexec
SQL
done <<< "$dbs"
left=$(q -d postgres -c "SELECT count(*) FROM pg_subscription") || rc=1
[ "${left:-1}" = 0 ] || rc=1
"$BIN/pg_ctl" -D "$DATA" -m fast -w -t 300 stop > /dev/null || rc=1
exit $rc
"#;

/// Drops the clone's subscriptions without reaching their publisher.
pub(super) fn detach_subscriptions(platform: &Platform, vdb: &Vdb) -> Result<(), OperationError> {
    let out = platform.run(&request(
        DETACH,
        &[
            ("BIN", vdb.cluster.bin_dir.clone()),
            ("DATA", vdb.cluster.data_dir.clone()),
            ("LOG_FILE", vdb.cluster.log_file.clone()),
            ("PORT", vdb.cluster.port.to_string()),
        ],
    ))?;
    if out.exit_code != 0 {
        return Err(OperationError::new(
            ErrorKind::CommandFailed,
            format!(
                "could not drop the staging's subscription in VDB {} (the VDB is not started)",
                vdb.name
            ),
        )
        .with_cause(out.stderr.trim().to_owned())
        .with_action(format!("see {}", vdb.cluster.log_file)));
    }
    Ok(())
}

/// Whether a snapshot comes from a logical-replication staging.
pub(super) fn from_subscriber(snapshot: &serde_json::Value) -> bool {
    snapshot
        .get("ingestion_method")
        .and_then(serde_json::Value::as_str)
        == Some("logical_replication")
}
