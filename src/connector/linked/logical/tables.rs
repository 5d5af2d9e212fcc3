//! Tables published on the source after staging subscribed (a new table in
//! an all-tables or schema publication, a table added to the user's
//! publication): at each sync their definitions (and any new schema) are
//! copied to staging and the subscription refreshed, so PostgreSQL copies
//! their rows and applies their changes from then on; the snapshot waits
//! until they are synchronised.

use super::Logical;
use crate::abi::OperationError;
use crate::connector::linked::Staging;
use crate::connector::platform::{request, Platform};

/// Makes the schemas of published tables staging lacks, then lists those
/// tables, one `"schema"."table"` a line (quoted as pg_dump's -t reads it).
const MISSING: &str = r#"\c :"db"
SELECT format('CREATE SCHEMA %I', n) FROM (SELECT DISTINCT x->>0 AS n FROM json_array_elements(:'published'::json) x) s
 WHERE to_regnamespace(quote_ident(n)) IS NULL \gexec
SELECT '"' || replace(x->>0, '"', '""') || '"."' || replace(x->>1, '"', '""') || '"'
  FROM json_array_elements(:'published'::json) x
 WHERE to_regclass(format('%I.%I', x->>0, x->>1)) IS NULL AND strpos(x::text, E'\\n') = 0
 ORDER BY 1;"#;

/// How many tables the subscription knows.
const KNOWN: &str = r#"\c :"db"
SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = :'sub';"#;

const REFRESH: &str = r#"\c :"db"
SELECT format('ALTER SUBSCRIPTION %I REFRESH PUBLICATION', subname) FROM pg_subscription WHERE subname = :'sub' \gexec"#;

impl Logical {
    /// Copies the definitions of newly published tables to staging and
    /// refreshes the subscription; returns the tables it added.
    pub(super) fn pick_up_new_tables(
        &self,
        platform: &Platform,
        staging: &Staging,
    ) -> Result<Vec<String>, OperationError> {
        let published = self.source.query(
            "listing the published tables",
            "SELECT coalesce(json_agg(json_build_array(schemaname, tablename) ORDER BY schemaname, tablename), '[]') FROM pg_publication_tables WHERE pubname = :'pub'",
            &[("pub", &self.publication)],
        )?;
        let published = published.into_iter().next().unwrap_or_else(|| "[]".into());
        let count = serde_json::from_str::<Vec<serde_json::Value>>(&published)
            .map(|v| v.len())
            .unwrap_or(0);
        let missing: Vec<String> = self
            .psql(
                platform,
                staging,
                "looking for new tables",
                MISSING,
                &[("published", &published)],
            )?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            self.copy_definitions(platform, staging, &missing)?;
        }
        let known: usize = self
            .psql(
                platform,
                staging,
                "counting the subscription's tables",
                KNOWN,
                &[],
            )?
            .trim()
            .parse()
            .unwrap_or(0);
        if known < count {
            log::info!(
                "subscription {}: {} table(s) published since it was made; refreshing",
                self.subscription,
                count - known
            );
            self.psql(
                platform,
                staging,
                "refreshing the subscription",
                REFRESH,
                &[],
            )?;
            self.wait_synchronised(platform, staging)?;
        }
        Ok(missing)
    }

    /// `pg_dump --schema-only` of `tables` from the source into staging,
    /// their schemas made first when staging has none of that name.
    fn copy_definitions(
        &self,
        platform: &Platform,
        staging: &Staging,
        tables: &[String],
    ) -> Result<(), OperationError> {
        let s = &self.source;
        platform.run_ok(
            "copying the definitions of new tables",
            &request(
                r#"set -eu -o pipefail
umask 077
args=()
while IFS= read -r t; do [ -n "$t" ] && args+=(-t "$t"); done <<< "$TABLES"
(
  "$BIN/pg_dump" -h "$SRC_HOST" -p "$SRC_PORT" -U "$SRC_USER" -d "$SRC_DB" -w --schema-only --no-publications --no-subscriptions "${args[@]}"
) > "$PRIVATE/new-tables.sql"
q() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres -d "$SRC_DB" "$@"; }
if ! q -f "$PRIVATE/new-tables.sql" > /dev/null 2> "$PRIVATE/new-tables.log"; then
  grep -m 3 ERROR -- "$PRIVATE/new-tables.log" >&2; rm -f -- "$PRIVATE/new-tables.sql"; exit 1
fi
rm -f -- "$PRIVATE/new-tables.sql" "$PRIVATE/new-tables.log""#,
                &[staging.dump_vars(s), vec![("PGPASSFILE", staging.passfile()), ("TABLES", tables.join("\n"))]].concat(),
            ),
        )?;
        Ok(())
    }
}
