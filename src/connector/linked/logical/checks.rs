//! What the source must allow before anything is made, each refusal naming
//! the setting or privilege to change and where; and what link makes and
//! delete removes on the source: the publication (when pgvirt creates it)
//! and the replication slots (the subscription's, and the table
//! synchronisation slots a cut-short initial copy leaves).

use serde_json::Value;

use super::{Logical, Scope};
use crate::abi::{ErrorKind, OperationError};

/// The tables in scope, and the source's settings, as one JSON object.
const FACTS: &str = r#"WITH scope AS (
  SELECT c.oid, n.nspname, c.relname, c.relreplident,
         EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
         has_table_privilege(c.oid, 'SELECT') AS readable
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND c.relpersistence = 'p'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
    AND CASE :'mode'
      WHEN 'publication' THEN EXISTS (SELECT 1 FROM pg_publication_tables p
                                      WHERE p.pubname = :'pub' AND p.schemaname = n.nspname AND p.tablename = c.relname)
      WHEN 'schemas' THEN n.nspname = ANY (string_to_array(:'list', E'\n'))
      WHEN 'tables' THEN n.nspname || '.' || c.relname = ANY (string_to_array(:'list', E'\n'))
      ELSE true END
)
SELECT json_build_object(
  'wal_level', current_setting('wal_level'),
  'max_replication_slots', current_setting('max_replication_slots')::int,
  'slots_used', (SELECT count(*) FROM pg_replication_slots WHERE slot_name <> ALL (string_to_array(:'ours', E'\n'))),
  'max_wal_senders', current_setting('max_wal_senders')::int,
  'senders_used', (SELECT count(*) FROM pg_stat_replication),
  'may_replicate', (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
  'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
  'may_create', has_database_privilege(current_database(), 'CREATE'),
  'publication_exists', EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'pub'),
  'publication_filters', EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                                 WHERE p.pubname = :'pub' AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)),
  'tables', (SELECT count(*) FROM scope),
  'unreadable', (SELECT coalesce(json_agg(format('%I.%I', nspname, relname) ORDER BY nspname, relname), '[]') FROM scope WHERE NOT readable),
  'no_identity', (SELECT coalesce(json_agg(format('%I.%I', nspname, relname) ORDER BY nspname, relname), '[]') FROM scope
                  WHERE relreplident = 'n' OR (relreplident = 'd' AND NOT has_pk)),
  'missing', (SELECT coalesce(json_agg(t ORDER BY t), '[]') FROM unnest(string_to_array(:'list', E'\n')) t
              WHERE (:'mode' = 'tables' AND t NOT IN (SELECT nspname || '.' || relname FROM scope))
                 OR (:'mode' = 'schemas' AND t NOT IN (SELECT nspname FROM pg_namespace)))
)::text"#;

/// Makes (again) the publication pgvirt owns.
const CREATE_PUBLICATION: &str = r#"SELECT set_config('pgvirt.pub', :'pub', false), set_config('pgvirt.mode', :'mode', false), set_config('pgvirt.list', :'list', false);
DO $$
DECLARE
  pub text := current_setting('pgvirt.pub');
  mode text := current_setting('pgvirt.mode');
  list text[] := string_to_array(current_setting('pgvirt.list'), E'\n');
  what text;
BEGIN
  EXECUTE format('DROP PUBLICATION IF EXISTS %I', pub);
  IF mode = 'schemas' THEN
    SELECT 'FOR TABLES IN SCHEMA ' || string_agg(format('%I', s), ', ') INTO what FROM unnest(list) s;
  ELSIF mode = 'tables' THEN
    SELECT 'FOR TABLE ' || string_agg(format('%I.%I', split_part(t, '.', 1),
             substr(t, length(split_part(t, '.', 1)) + 2)), ', ') INTO what FROM unnest(list) t;
  ELSE
    what := 'FOR ALL TABLES';
  END IF;
  EXECUTE format('CREATE PUBLICATION %I ', pub) || what;
END $$"#;

const DROP_PUBLICATION: &str = r#"SELECT set_config('pgvirt.pub', :'pub', false);
DO $$ BEGIN EXECUTE format('DROP PUBLICATION IF EXISTS %I', current_setting('pgvirt.pub')); END $$"#;

/// Drops the subscription's slot (ending the walsender that holds it) and
/// the table synchronisation slots of staging cluster `sysid`.
const DROP_SLOTS: &str = r#"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
 WHERE active_pid IS NOT NULL AND (slot_name = :'slot' OR (:'sysid' <> '' AND slot_name ~ ('^pg_[0-9]+_sync_[0-9]+_' || :'sysid' || '$')));
SELECT pg_sleep(0.2);
SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
 WHERE NOT active AND (slot_name = :'slot' OR (:'sysid' <> '' AND slot_name ~ ('^pg_[0-9]+_sync_[0-9]+_' || :'sysid' || '$')));
SELECT count(*) FROM pg_replication_slots
 WHERE slot_name = :'slot' OR (:'sysid' <> '' AND slot_name ~ ('^pg_[0-9]+_sync_[0-9]+_' || :'sysid' || '$'))"#;

fn refuse(message: String, action: String) -> OperationError {
    OperationError::new(ErrorKind::SourceError, message).with_action(action)
}

impl Logical {
    fn vars(&self) -> [(&'static str, &str); 5] {
        let mode: &'static str = self.scope.into();
        [
            ("mode", mode),
            ("pub", &self.publication),
            ("list", &self.list),
            ("slot", &self.subscription),
            ("ours", &self.ours),
        ]
    }

    /// Checks the source; answers the database's facts (encoding, locale,
    /// extensions) for the staging cluster.
    pub(super) fn check_source(&self) -> Result<Value, OperationError> {
        let facts = self.source_facts()?;
        let at = format!("the source {}:{}", self.source.host, self.source.port);
        let num = |k: &str| facts[k].as_i64().unwrap_or(0);
        let wal_level = facts["wal_level"].as_str().unwrap_or("");
        if wal_level != "logical" {
            return Err(refuse(
                format!("{at} has wal_level = {wal_level}; logical replication needs wal_level = logical"),
                "set wal_level = logical in the source's postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the source".into(),
            ));
        }
        // A slot for each database's subscription, and one per table
        // synchronised in parallel (with a dump, for tables published
        // later).
        let needed = self.ours.lines().count() as i64 + self.sync_workers as i64;
        let free_slots = num("max_replication_slots") - num("slots_used");
        if free_slots < needed {
            return Err(refuse(
                format!(
                    "{at} has {free_slots} free replication slots (max_replication_slots = {}, {} in use); this dSource needs {needed} (one per database, and one per table copied in parallel: sync_workers = {})",
                    num("max_replication_slots"), num("slots_used"), self.sync_workers
                ),
                "raise max_replication_slots on the source (a restart), drop unused slots, or lower logical_replication.sync_workers".into(),
            ));
        }
        let free_senders = num("max_wal_senders") - num("senders_used");
        if free_senders < needed {
            return Err(refuse(
                format!(
                    "{at} has {free_senders} free WAL senders (max_wal_senders = {}, {} in use); this dSource needs {needed}",
                    num("max_wal_senders"), num("senders_used")
                ),
                "raise max_wal_senders on the source (a restart), or lower logical_replication.sync_workers".into(),
            ));
        }
        let user = &self.source.user;
        if facts["may_replicate"] != Value::Bool(true) {
            return Err(refuse(
                format!("{at}: user {user} has no REPLICATION privilege"),
                format!("run `ALTER ROLE {user} REPLICATION` on the source, or name another logical_replication.user"),
            ));
        }
        let names = |k: &str| -> Vec<String> {
            facts[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let missing = names("missing");
        if !missing.is_empty() {
            let what = if self.scope == Scope::Schemas {
                "schemas"
            } else {
                "tables"
            };
            return Err(OperationError::new(
                ErrorKind::InvalidInput,
                format!(
                    "linked-source parameters#/logical_replication/{what}: database {} on {at} has no {}",
                    self.source.database,
                    missing.join(", ")
                ),
            )
            .with_action(format!("name {what} the source database holds")));
        }
        match self.scope {
            Scope::Publication if facts["publication_exists"] != Value::Bool(true) => {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "linked-source parameters#/logical_replication/publication: database {} on {at} has no publication {:?}",
                        self.source.database, self.publication
                    ),
                )
                .with_action("create it on the source (CREATE PUBLICATION), or leave publication out for pgvirt to create one"));
            }
            Scope::Publication
                if self.initial_copy == super::InitialCopy::Dump
                    && facts["publication_filters"] == Value::Bool(true) =>
            {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "linked-source parameters#/logical_replication/initial_copy: publication {:?} on {at} has row filters or column lists, which a dump of the tables would not apply",
                        self.publication
                    ),
                )
                .with_action("set logical_replication.initial_copy to \"table_sync\" (the subscription copies what the publication sends)"));
            }
            Scope::All | Scope::Schemas if facts["superuser"] != Value::Bool(true) => {
                return Err(refuse(
                    format!(
                        "{at}: user {user} may not create a publication FOR ALL TABLES or FOR TABLES IN SCHEMA (only a superuser may)"
                    ),
                    "create the publication on the source as a superuser and name it in logical_replication.publication, or list logical_replication.tables".into(),
                ));
            }
            Scope::Tables if facts["may_create"] != Value::Bool(true) => {
                return Err(refuse(
                    format!("{at}: user {user} has no CREATE privilege on database {}, needed to create the publication", self.source.database),
                    format!("GRANT CREATE ON DATABASE {} TO {user} on the source (and make it own the tables), or name an existing publication", self.source.database),
                ));
            }
            _ => {}
        }
        let unreadable = names("unreadable");
        if !unreadable.is_empty() {
            return Err(refuse(
                format!(
                    "{at}: user {user} may not read {} in database {}",
                    unreadable.join(", "),
                    self.source.database
                ),
                format!("GRANT SELECT on them (or pg_read_all_data) to {user} on the source"),
            ));
        }
        let no_identity = names("no_identity");
        if !no_identity.is_empty() {
            return Err(refuse(
                format!(
                    "{at}: in database {}, {} {} no primary key and no replica identity: updates and deletes on them could not be replicated",
                    self.source.database,
                    no_identity.join(", "),
                    if no_identity.len() == 1 { "has" } else { "have" }
                ),
                "add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL (or USING INDEX) on the source, or leave them out (logical_replication.tables)".into(),
            ));
        }
        self.source.database_facts()
    }

    fn source_facts(&self) -> Result<Value, OperationError> {
        let text = self
            .source
            .value("cannot read the source's settings", FACTS, &self.vars())?;
        serde_json::from_str(&text).map_err(|e| {
            OperationError::new(ErrorKind::Internal, format!("the source's facts: {e}"))
        })
    }

    /// Creates (again) the publication pgvirt owns; nothing for one the
    /// user named.
    pub(super) fn create_publication(&self) -> Result<(), OperationError> {
        if self.creates_publication {
            self.source.query(
                "cannot create the publication",
                CREATE_PUBLICATION,
                &self.vars(),
            )?;
        }
        Ok(())
    }

    /// Drops what this dSource made on the source: its slots (the
    /// subscription's, and the table synchronisation slots of staging
    /// cluster `sysid`), and with `publication` the publication if pgvirt
    /// made it.
    pub(super) fn drop_on_source(
        &self,
        sysid: &str,
        publication: bool,
    ) -> Result<(), OperationError> {
        let mut left = String::new();
        for _ in 0..25 {
            left = self
                .source
                .query(
                    "cannot drop the replication slots",
                    DROP_SLOTS,
                    &[("slot", &self.subscription), ("sysid", sysid)],
                )?
                .last()
                .cloned()
                .unwrap_or_default();
            if left.trim() == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if left.trim() != "0" {
            return Err(OperationError::new(
                ErrorKind::Conflict,
                format!(
                    "replication slot {} on the source {}:{} stays in use",
                    self.subscription, self.source.host, self.source.port
                ),
            )
            .with_action("stop what streams from it, then run the command again"));
        }
        if publication && self.creates_publication {
            self.source.query(
                "cannot drop the publication",
                DROP_PUBLICATION,
                &[("pub", &self.publication)],
            )?;
        }
        Ok(())
    }

    /// The source's sequences as they are now, as JSON
    /// (`[{"s": "schema.name", "v": last_value}]`; those the user may not
    /// read are left out). Logical replication does not carry them.
    pub(super) fn sequences(&self) -> Result<String, OperationError> {
        self.source.value(
            "cannot read the sequences",
            "SELECT coalesce(json_agg(json_build_object('s', format('%I.%I', schemaname, sequencename), 'v', last_value)), '[]')::text
               FROM pg_sequences WHERE last_value IS NOT NULL",
            &[],
        )
    }

    /// Whether the subscription's slot is on the source.
    pub(super) fn slot_exists(&self) -> Result<bool, OperationError> {
        Ok(self.source.value(
            "cannot list replication slots",
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot')",
            &[("slot", &self.subscription)],
        )? == "t")
    }

    /// The source's current WAL position, and the bytes from `lsn` to it.
    pub(super) fn source_position(&self, lsn: &str) -> Result<(String, i64), OperationError> {
        let row = self.source.value(
            "cannot read the WAL position",
            "SELECT pg_current_wal_lsn()::text || ' ' || coalesce(greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), nullif(:'lsn', '')::pg_lsn), 0), 0)::bigint",
            &[("lsn", lsn)],
        )?;
        let (at, lag) = row.split_once(' ').unwrap_or((&row, "0"));
        Ok((at.to_owned(), lag.trim().parse().unwrap_or(0)))
    }
}
