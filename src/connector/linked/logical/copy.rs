//! The initial copy by a dump (`initial_copy: "dump"`, the default): a
//! replication connection to the source creates the subscription's slot
//! exporting its snapshot (`CREATE_REPLICATION_SLOT ... (SNAPSHOT
//! 'export')`) and stays open while `pg_dump -Fd -j N --snapshot` dumps
//! the database as of that snapshot (the data of tables outside the
//! publication left out) into the dSource's private directory, outside
//! every dataset; `pg_restore -j N` then loads it into staging, the data
//! before the indexes and constraints. The subscription is made on that
//! slot without a copy, disabled; its origin is advanced to the slot's
//! consistent point (the dump holds every transaction committed before
//! it, the slot every one after), then it is enabled.
//!
//! The session and pg_dump run as one process group whose pid is recorded
//! ([`super::super::progress`]): a killed pgvirt's is stopped, its dump
//! removed ([`Logical::clean_copy`]) and the slot dropped by the next
//! command, as a cut-short table synchronisation's.

use super::super::single_database::{SingleDatabase, DUMP};
use super::super::{progress, Staging};
use super::Logical;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::platform::{request, Platform};

/// Tables whose data stays out of the dump: those outside the
/// publication (staging has them empty, as the subscription leaves them),
/// as exact `pg_dump` patterns, one a line.
const OUTSIDE: &str = r#"SELECT format('"%s"."%s"', replace(n.nspname, '"', '""'), replace(c.relname, '"', '""'))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
   AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                    JOIN pg_namespace pn ON pn.nspname = p.schemaname
                    JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = p.tablename
                    -- A partition of a table published as its root's is in.
                    WHERE p.pubname = :'pub'
                      AND (pc.oid = c.oid OR pc.oid IN (SELECT relid FROM pg_partition_ancestors(c.oid))))
 ORDER BY 1"#;

/// The slot made by a replication session kept open (its transaction
/// holds the exported snapshot) while pg_dump runs; the slot's consistent
/// point written to `$PRIVATE/logical-lsn`.
const SLOT_AND_DUMP: &str = r#"
set -u
umask 077
case "$SLOT" in ''|*[!a-z0-9_]*) echo "invalid slot name" >&2; exit 1;; esac
rm -rf -- "$DUMP_DIR"; rm -f -- "$PRIVATE/logical-slot" "$PRIVATE/logical-lsn"
out="$PRIVATE/logical-slot"
q=${out//\\/\\\\}; q=${q//\'/\'\'}
coproc REPL { PGHOST="$SRC_HOST" PGPORT="$SRC_PORT" PGUSER="$SRC_USER" PGDATABASE="$SRC_DB" exec "$BIN/psql" -X -q -A -t -w -v ON_ERROR_STOP=1 "replication=database application_name=$SLOT"; }
printf 'CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT '"'"'export'"'"') \\g '"'"'%s'"'"'\n' "$SLOT" "$q" >&"${REPL[1]}"
repl=$REPL_PID
while [ ! -s "$out" ]; do
  kill -0 "$repl" 2>/dev/null || { sleep 0.1; [ -s "$out" ] || { echo "the replication connection to the source failed" >&2; exit 1; }; }
  sleep 0.1
done
sleep 0.05
IFS='|' read -r _ lsn snapshot _ < "$out"
if [ -z "$lsn" ] || [ -z "$snapshot" ]; then echo "no snapshot exported: $(cat -- "$out")" >&2; exit 1; fi
SNAPSHOT="$snapshot" bash -c "$DUMP_SCRIPT"
rc=$?
fd=${REPL[1]}
eval "exec $fd>&-"
wait "$repl"
[ "$rc" = 0 ] || exit "$rc"
printf '%s\n' "$lsn" > "$PRIVATE/logical-lsn"
"#;

/// The subscription on the slot the dump was taken with: no copy, its
/// origin at the slot's consistent point, then enabled.
const SUBSCRIBE_AT: &str = r#"\c :"db"
SELECT format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I WITH (slot_name = %L, create_slot = false, copy_data = false, enabled = false)', :'sub', :'conninfo', :'pub', :'sub') \gexec
SELECT pg_replication_origin_advance('pg_' || oid, :'lsn'::pg_lsn) FROM pg_subscription WHERE subname = :'sub';
SELECT format('ALTER SUBSCRIPTION %I ENABLE', subname) FROM pg_subscription WHERE subname = :'sub' \gexec"#;

impl Logical {
    fn dump_dir(staging: &Staging) -> String {
        format!("{}/logical-dump", staging.private)
    }

    /// Removes what a copy leaves outside the mount: the processes of a
    /// killed one (the replication session, pg_dump, pg_restore), the dump.
    pub(super) fn clean_copy(platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        progress::stop_left(platform, &staging.private, &["logical-copy", "pg_restore"])?;
        platform.run_ok(
            "removing the dump",
            &request(
                r#"rm -rf -- "$DUMP_DIR"; rm -f -- "$PRIVATE/logical-slot" "$PRIVATE/logical-lsn""#,
                &[
                    ("DUMP_DIR", Self::dump_dir(staging)),
                    ("PRIVATE", staging.private.clone()),
                ],
            ),
        )?;
        Ok(())
    }

    /// The slot and the dump of its snapshot, restored into staging (its
    /// roles copied already); the subscription made on the slot, at its
    /// consistent point, enabled.
    pub(super) fn copy_by_dump(
        &self,
        platform: &Platform,
        staging: &Staging,
        facts: &serde_json::Value,
    ) -> Result<(), OperationError> {
        let s = &self.source;
        let outside = s
            .query(
                "cannot list the tables outside the publication",
                OUTSIDE,
                &[("pub", &self.publication)],
            )?
            .join("\n");
        let jobs = self.sync_workers.to_string();
        let mut vars = staging.dump_vars(s);
        vars.extend([
            ("DUMP_DIR", Self::dump_dir(staging)),
            ("SLOT", self.subscription.clone()),
            ("DUMP_JOBS", jobs.clone()),
            ("RESTORE_JOBS", jobs),
            ("DUMP_SCRIPT", DUMP.to_owned()),
            ("INCLUDE_SCHEMAS", String::new()),
            ("EXCLUDE_SCHEMAS", String::new()),
            ("INCLUDE_TABLES", String::new()),
            ("EXCLUDE_TABLES", String::new()),
            ("EXCLUDE_TABLE_DATA", outside),
        ]);
        if s.password.is_some() {
            vars.push(("PGPASSFILE", staging.passfile()));
        }
        let private = staging.private.clone();
        progress::run(
            platform,
            progress::Watched {
                what: "the slot and pg_dump",
                dir: &private,
                name: "logical-copy",
                script: SLOT_AND_DUMP,
                vars: vars.clone(),
                pattern: "dumping contents of table",
                total: facts["tables"].as_u64().unwrap_or(0),
                unit: "tables dumped",
            },
        )?;
        let lsn = platform
            .run_ok(
                "reading the slot's consistent point",
                &request(r#"cat -- "$PRIVATE/logical-lsn""#, &vars),
            )?
            .stdout
            .trim()
            .to_owned();
        if crate::connector::conf::parse_lsn(&lsn).is_none() {
            return Err(OperationError::new(
                ErrorKind::Internal,
                format!("the slot's consistent point {lsn:?} is not an LSN"),
            ));
        }
        SingleDatabase::restore(platform, staging, &vars)?;
        Self::clean_copy(platform, staging)?;
        let conninfo = self.conninfo(staging);
        self.psql(
            platform,
            staging,
            "creating the subscription on staging",
            SUBSCRIBE_AT,
            &[
                ("conninfo", &conninfo),
                ("pub", &self.publication),
                ("lsn", &lsn),
            ],
        )
        .map_err(|e| self.explain(platform, staging, e, "subscribing to the source"))?;
        Ok(())
    }
}
