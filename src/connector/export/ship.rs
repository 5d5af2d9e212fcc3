//! One export to one target, exactly once.
//!
//! 1. The target's progress `P`: its replication origin
//!    `pgvirt_export.<name>.<install id>` (none: `P = 0`, ship everything).
//! 2. The target's tables are checked against the source's: each must
//!    exist with every source column, of the same type (the target may have
//!    more columns). Nothing is applied otherwise; the error names the
//!    table and column.
//! 3. The high-water mark `H`: the sequence's last value, read before a
//!    SHARE lock is taken and let go on each change table in turn — each
//!    waits for the writers in flight on its table, so afterwards every
//!    ordering number up to `H` belongs to a transaction that has ended.
//! 4. In one REPEATABLE READ snapshot taken after that, per table: the keys
//!    changed after `P` and the current rows for those keys (all rows when
//!    `P = 0` or a TRUNCATE came after `P`), into files in a private
//!    directory. Every change up to `H` is in the snapshot; later ones may
//!    be too, which only ships some rows twice.
//! 5. On the target, in ONE transaction: an advisory lock (one applier at
//!    a time), the origin made if missing and set up for the session, the
//!    progress checked to still be `P`, the keys deleted, the rows COPYed
//!    in (only the source's columns), then `pg_replication_origin_xact_setup`
//!    with `H` — so the commit that holds the rows also says how far they go.
//!
//! The ordering number `H` is handed to the origin as an LSN: `H >> 32` and
//! `H & 0xFFFFFFFF` in hex (`0/1F4` is ordering number 500), and read back
//! as `pg_replication_origin_progress(...) - '0/0'`.
//!
//! A kill anywhere leaves either the old progress with the old rows or the
//! new progress with the new rows on the target; the next export starts
//! from whatever the origin says. Another applier (one cut short and still
//! finishing) is waited for, and a progress that moved meanwhile makes the
//! pass start again.

use serde_json::{json, Value};

use super::db::{ident, Database};
use super::ddl::{changes_table, literal, Tracked};
use super::{fault_pause, fault_sleep_sql, Export};
use crate::abi::{ErrorKind, OperationError};
use crate::connector::Platform;

/// What the apply prints when another applier moved the progress first.
const MOVED: &str = "PGVIRT_PROGRESS_MOVED";

/// A change set is "few" when it times this is under the table's rows (or
/// the table was never counted, as right after a first export):
/// then its rows are found through the key's index, row by row. The
/// planner, counting random reads as dear, would rather scan the whole
/// table (10 s instead of 0.2 s for 100 000 keys of 10 million rows).
const FEW: u64 = 5;

/// Join methods off for one statement, so the key's index is used...
const INDEX_JOINS: &str = "SET LOCAL enable_hashjoin = off;\nSET LOCAL enable_mergejoin = off;\n";

/// ... and on again after it.
const ANY_JOINS: &str = "SET LOCAL enable_hashjoin = on;\nSET LOCAL enable_mergejoin = on;\n";

/// How many times a pass starts again after another applier got in first.
const ATTEMPTS: u32 = 8;

/// An ordering number as an LSN.
pub fn lsn(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n & 0xFFFF_FFFF)
}

/// The progress of `origin` on `target` (none when it does not exist).
pub fn progress(
    platform: &Platform,
    target: &Database,
    origin: &str,
) -> Result<Option<u64>, OperationError> {
    let out = target.psql(
        platform,
        "reading the export's progress",
        "SELECT pg_replication_origin_progress(roname, true) - '0/0'::pg_lsn FROM pg_replication_origin WHERE roname = :'origin';",
        &[("origin", origin)],
        None,
    )?;
    parse_number(out.trim(), "the origin's progress")
}

fn parse_number(text: &str, what: &str) -> Result<Option<u64>, OperationError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        OperationError::new(
            ErrorKind::Internal,
            format!("{what} {text:?} is not a number"),
        )
    })
}

/// Drops every origin of the export: `prefix` and an install id (twelve
/// hex digits, so export `a` never takes export `a.b`'s); how many.
pub fn drop_origins(
    platform: &Platform,
    target: &Database,
    prefix: &str,
) -> Result<usize, OperationError> {
    let out = target.psql(
        platform,
        "dropping the export's replication origins",
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin \
         WHERE starts_with(roname, :'prefix') AND substr(roname, length(:'prefix') + 1) ~ '^[0-9a-f]{12}$';",
        &[("prefix", prefix)],
        None,
    )?;
    Ok(out.lines().count())
}

/// Per table, the changes after `progress` still in the change tables.
pub fn waiting(
    platform: &Platform,
    export: &Export,
    tables: &[Tracked],
    progress: u64,
) -> Result<Vec<Value>, OperationError> {
    let schema = export.schema();
    let mut script = String::new();
    for t in tables {
        script.push_str(&format!(
            "SELECT count(*) FROM {} WHERE pgvirt_seq > :'progress'::bigint;\n",
            changes_table(&schema, t.n)
        ));
    }
    let out = export.source.psql(
        platform,
        "counting the changes waiting",
        &script,
        &[("progress", &progress.to_string())],
        None,
    )?;
    let counts: Vec<&str> = out.lines().collect();
    Ok(tables
        .iter()
        .zip(counts)
        .map(|(t, c)| json!({"table": t.label(), "changes_waiting": c.trim().parse::<u64>().unwrap_or(0)}))
        .collect())
}

/// Deletes the changes every target holds (ordering up to `through`).
pub fn purge(
    platform: &Platform,
    export: &Export,
    tables: &[Tracked],
    through: u64,
) -> Result<(), OperationError> {
    let schema = export.schema();
    let script: String = tables
        .iter()
        .map(|t| {
            format!(
                "DELETE FROM {} WHERE pgvirt_seq <= :'through'::bigint;\n",
                changes_table(&schema, t.n)
            )
        })
        .collect();
    export.source.psql(
        platform,
        "purging the changes every target holds",
        &script,
        &[("through", &through.to_string())],
        None,
    )?;
    Ok(())
}

/// Where the rows in flight to target `index` go: [`work_dir_base`] and
/// the index.
pub fn work_dir_path(export: &Export, index: usize) -> String {
    format!("{}{index}", work_dir_base(export))
}

/// `<scratch>/export-<name>-`.
pub fn work_dir_base(export: &Export) -> String {
    format!(
        "{}/export-{}-",
        export.scratch.trim_end_matches('/'),
        export.name
    )
}

/// One export of every table to one target.
pub struct Pass<'a> {
    pub export: &'a Export,
    pub tables: &'a [Tracked],
    pub target: &'a Database,
    pub target_index: usize,
    pub origin: String,
}

/// What one table's export did.
struct Shipped {
    full: bool,
    keys: u64,
    rows: u64,
}

impl Pass<'_> {
    /// Runs the pass (again, when another applier got in first); returns
    /// what it did for the output, and the target's progress when known.
    pub fn run(&self, platform: &Platform) -> (Value, Option<u64>) {
        let mut known = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.once(platform, &mut known) {
                Ok(Some(done)) => return (done, known),
                Ok(None) if attempt < ATTEMPTS => {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Ok(None) => {
                    return (
                        self.failed(&OperationError::new(
                            ErrorKind::Conflict,
                            "another export kept applying to this target",
                        )),
                        known,
                    )
                }
                Err(e) if attempt < ATTEMPTS && busy(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return (self.failed(&e), known),
            }
        }
    }

    fn failed(&self, e: &OperationError) -> Value {
        json!({"name": self.target.name, "error": e.message, "cause": e.cause, "action": e.action})
    }

    /// One attempt: `None` when the progress moved under it.
    fn once(
        &self,
        platform: &Platform,
        known: &mut Option<u64>,
    ) -> Result<Option<Value>, OperationError> {
        let before = progress(platform, self.target, &self.origin)?.unwrap_or(0);
        *known = Some(before);
        self.check_target(platform)?;
        let high = self.high_water(platform)?;
        fault_pause("export.locked");
        if high < before {
            return Err(OperationError::new(
                ErrorKind::InvalidState,
                format!(
                    "target {} holds changes up to {before}, beyond the source's last change {high}",
                    self.target.label()
                ),
            )
            .with_action("the source was reinstalled or restored: run `pgvirt export reset`"));
        }
        if high == before {
            return Ok(Some(json!({
                "name": self.target.name, "progress_before": before, "progress": before,
                "tables": self.tables.iter().map(|t| json!({"table": t.label(), "full": false, "keys": 0, "rows": 0})).collect::<Vec<_>>(),
            })));
        }
        let dir = self.work_dir(platform)?;
        let result = self.ship(platform, &dir, before, high);
        let _ = platform.run(&self.target.request(r#"rm -rf -- "$DIR""#, &[("DIR", &dir)]));
        let Some(shipped) = result? else {
            return Ok(None);
        };
        *known = Some(high);
        fault_pause("export.applied");
        let tables: Vec<Value> = self
            .tables
            .iter()
            .zip(&shipped)
            .map(|(t, s)| json!({"table": t.label(), "full": s.full, "keys": s.keys, "rows": s.rows}))
            .collect();
        Ok(Some(json!({
            "name": self.target.name, "progress_before": before, "progress": high, "tables": tables,
        })))
    }

    /// A fresh private directory for the rows in flight (what a killed
    /// export left there goes).
    fn work_dir(&self, platform: &Platform) -> Result<String, OperationError> {
        let dir = work_dir_path(self.export, self.target_index);
        platform.run_ok(
            "making the export's work directory",
            &self.target.request(
                r#"set -e; umask 077; rm -rf -- "$DIR"; mkdir -p -- "$DIR"; chmod 0700 -- "$DIR""#,
                &[("DIR", &dir)],
            ),
        )?;
        Ok(dir)
    }

    /// Checks every table and column the source ships exists on the
    /// target, with the same type.
    fn check_target(&self, platform: &Platform) -> Result<(), OperationError> {
        let described = self.export.describe(platform, self.target)?;
        for (t, d) in self.tables.iter().zip(&described) {
            let refuse = |why: String| {
                Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot export {} to target {}: {why}",
                        t.label(),
                        self.target.label()
                    ),
                )
                .with_action("make the target's table match the source's (it may have more columns); nothing was applied"))
            };
            if d.kind.is_none() {
                return refuse("the table does not exist there".into());
            }
            for c in &t.columns {
                match d.columns.iter().find(|x| x.name == c.name) {
                    None => return refuse(format!("it has no column {:?}", c.name)),
                    Some(x) if x.type_name != c.type_name => {
                        return refuse(format!(
                            "its column {:?} is {}, the source's is {}",
                            c.name, x.type_name, c.type_name
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The ordering number every change up to which has ended.
    fn high_water(&self, platform: &Platform) -> Result<u64, OperationError> {
        let schema = self.export.schema();
        // The sequence first, then each change table's SHARE lock, alone
        // and let go at once: a writer holding a number up to the one read
        // took its table's lock before it drew the number, so each lock
        // waits for the writers in flight on that table. Holding one lock
        // at a time, an export never closes a deadlock with the writers.
        let mut script = format!(
            "SET lock_timeout = :'timeout';\n\
             SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}.seq;\n",
            ident(&schema)
        );
        for t in self.tables {
            script.push_str(&format!(
                "BEGIN;\nLOCK TABLE {} IN SHARE MODE;\nCOMMIT;\n",
                changes_table(&schema, t.n)
            ));
        }
        let timeout = format!("{}s", self.export.lock_timeout_seconds);
        let out = self.export.source.psql(
            platform,
            "waiting for the source's writers in flight",
            &script,
            &[("timeout", &timeout)],
            None,
        )?;
        parse_number(out.trim(), "the source's last change").map(Option::unwrap_or_default)
    }

    /// Steps 4 and 5: `None` when the progress moved under it.
    fn ship(
        &self,
        platform: &Platform,
        dir: &str,
        before: u64,
        high: u64,
    ) -> Result<Option<Vec<Shipped>>, OperationError> {
        let schema = self.export.schema();
        let mut extract = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n");
        for t in self.tables {
            let n = t.n;
            let changes = changes_table(&schema, n);
            let since = "pgvirt_seq > :'before'::bigint";
            extract.push_str(&format!(
                "SELECT (:'before'::bigint = 0 OR EXISTS (SELECT FROM {changes} WHERE {since} AND pgvirt_kind = 'T')) AS full_{n} \\gset\n\
                 \\if :full_{n}\n\
                 \\echo full {n}\n\
                 \\o rows_{n}.copy\n\
                 COPY (SELECT {cols} FROM {table}) TO STDOUT;\n\
                 \\o\n\
                 \\else\n\
                 SELECT (SELECT count(*) FROM {changes} WHERE {since}) * {FEW} < (SELECT CASE WHEN reltuples < 0 THEN 'Infinity' ELSE reltuples END FROM pg_class WHERE oid = {regclass}::regclass) AS few_{n} \\gset\n\
                 \\if :few_{n}\n{INDEX_JOINS}\\endif\n\
                 \\o keys_{n}.copy\n\
                 COPY (SELECT DISTINCT {keys} FROM {changes} WHERE {since} AND pgvirt_kind <> 'T') TO STDOUT;\n\
                 \\o\n\
                 \\o rows_{n}.copy\n\
                 COPY (SELECT {bcols} FROM (SELECT DISTINCT {keys} FROM {changes} WHERE {since} AND pgvirt_kind <> 'T') k JOIN {table} b ON {on}) TO STDOUT;\n\
                 \\o\n\
                 {ANY_JOINS}\
                 \\endif\n",
                regclass = literal(&t.qualified()),
                cols = t.column_list(),
                bcols = t.column_list_of("b."),
                table = t.qualified(),
                keys = t.key_list(""),
                on = t
                    .key
                    .iter()
                    .map(|c| format!("b.{0} = k.{0}", ident(&c.name)))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ));
        }
        extract.push_str("COMMIT;\n");
        let out = self.export.source.psql(
            platform,
            "reading the changed rows",
            &extract,
            &[("before", &before.to_string())],
            Some(dir),
        )?;
        let counts = platform.run_ok(
            "counting the changed rows",
            &self.target.request(
                r#"cd -- "$DIR" && for f in *.copy; do [ -e "$f" ] && printf '%s %s\n' "$f" "$(wc -l < "$f")"; done; true"#,
                &[("DIR", dir)],
            ),
        )?;
        let count = |file: &str| -> u64 {
            counts
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(file)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let shipped: Vec<Shipped> = self
            .tables
            .iter()
            .map(|t| Shipped {
                full: out.lines().any(|l| l.trim() == format!("full {}", t.n)),
                keys: count(&format!("keys_{}.copy ", t.n)),
                rows: count(&format!("rows_{}.copy ", t.n)),
            })
            .collect();
        fault_pause("export.extracted");

        let mut apply = String::from(
            "BEGIN;\n\
             SELECT pg_advisory_xact_lock(hashtextextended(:'origin', 0)) \\g /dev/null\n\
             SELECT pg_replication_origin_create(:'origin') WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = :'origin') \\g /dev/null\n\
             SELECT pg_replication_origin_session_setup(:'origin') \\g /dev/null\n\
             SELECT coalesce(pg_replication_origin_session_progress(true) - '0/0'::pg_lsn, 0) = :'before'::numeric AS progress_ok \\gset\n\
             \\if :progress_ok\n\\else\n",
        );
        apply.push_str(&format!("\\echo {MOVED}\nROLLBACK;\n\\q\n\\endif\n"));
        for (t, s) in self.tables.iter().zip(&shipped) {
            let n = t.n;
            let table = t.qualified();
            if s.full {
                apply.push_str(&format!("DELETE FROM {table};\n"));
            } else {
                let on: Vec<String> = t
                    .key
                    .iter()
                    .map(|c| format!("t.{0} = k.{0}", ident(&c.name)))
                    .collect();
                apply.push_str(&format!(
                    "CREATE TEMP TABLE pgvirt_keys_{n} ON COMMIT DROP AS SELECT {keys} FROM {table} WITH NO DATA;\n\
                     \\copy pgvirt_keys_{n} FROM 'keys_{n}.copy'\n\
                     ANALYZE pgvirt_keys_{n};\n\
                     SELECT (SELECT count(*) FROM pgvirt_keys_{n}) * {FEW} < (SELECT CASE WHEN reltuples < 0 THEN 'Infinity' ELSE reltuples END FROM pg_class WHERE oid = {regclass}::regclass) AS few_{n} \\gset\n\
                     \\if :few_{n}\n{INDEX_JOINS}\\endif\n\
                     DELETE FROM {table} t USING pgvirt_keys_{n} k WHERE {on};\n\
                     {ANY_JOINS}",
                    keys = t.key_list(""),
                    on = on.join(" AND "),
                    regclass = literal(&table),
                ));
            }
            apply.push_str(&format!(
                "\\copy {table} ({cols}) FROM 'rows_{n}.copy'\n",
                cols = t.column_list()
            ));
        }
        // The kill tests stop pgvirt while this transaction is open.
        apply.push_str(fault_sleep_sql("export.applying"));
        // An xid makes the commit record carry the origin's progress even
        // when no row changed.
        apply.push_str(
            "SELECT pg_current_xact_id() \\g /dev/null\n\
             SELECT pg_replication_origin_xact_setup(:'high'::pg_lsn, now()) \\g /dev/null\n\
             COMMIT;\n\
             SELECT pg_replication_origin_session_reset() \\g /dev/null\n",
        );
        let out = self.target.psql(
            platform,
            "applying the changed rows",
            &apply,
            &[
                ("origin", &self.origin),
                ("before", &before.to_string()),
                ("high", &lsn(high)),
            ],
            Some(dir),
        )?;
        if out.contains(MOVED) {
            return Ok(None);
        }
        Ok(Some(shipped))
    }
}

/// Whether a failure is another applier holding the target's origin.
fn busy(e: &OperationError) -> bool {
    e.cause
        .as_deref()
        .is_some_and(|c| c.contains("is already active") || c.contains("already exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_numbers_map_to_lsns_both_halves() {
        assert_eq!(lsn(500), "0/1F4");
        assert_eq!(lsn((3 << 32) + 16), "3/10");
    }
}
