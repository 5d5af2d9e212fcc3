//! What an export installs on its source, as SQL a person can review
//! (`pgvirt export ddl`), and the catalog reads it is made from.
//!
//! In a schema of its own, `pgvirt_export_<name>`:
//!
//! - `export`: one row, the install id (a fresh one per install, so a
//!   target's origin from an earlier install is never taken for this one's);
//! - `tables`: the tracked tables, numbered, with their key columns;
//! - `seq`: one sequence for all of them, the export's ordering;
//! - per table `n`: `changes_n` (the ordering number `pgvirt_seq`, the kind
//!   `pgvirt_kind` — I, U, D, K for the old key of an update that changed
//!   the key, T for a truncate — the transaction `pgvirt_xid`, and the key
//!   columns, typed as in the table), `track_n()` (the row trigger
//!   function) and `track_truncate_n()` (the statement one).
//!
//! The triggers on the tables, `pgvirt_export_<name>` and
//! `pgvirt_export_<name>_truncate`, depend on those functions, so
//! `DROP SCHEMA ... CASCADE` removes everything.

use serde::Deserialize;

use super::db::{ident, qualified};
use crate::abi::{ErrorKind, OperationError};

/// The columns the change tables add to the key.
pub const META_COLUMNS: [&str; 3] = ["pgvirt_seq", "pgvirt_kind", "pgvirt_xid"];

/// A column of a table, as the catalog describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
}

/// The unique index a table is keyed by, as the catalog describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyIndex {
    pub name: String,
    pub primary: bool,
    pub unique: bool,
    pub partial: bool,
    pub expressions: bool,
    #[serde(default)]
    pub columns: Vec<String>,
}

/// One wanted table, as the catalog describes it (`kind` is none when it
/// does not exist).
#[derive(Debug, Clone, Deserialize)]
pub struct Described {
    pub schema: String,
    pub table: String,
    pub wanted_key: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub columns: Vec<Column>,
    pub key: Option<KeyIndex>,
}

/// Describes the tables of `:'tables'` (a JSON array of `{schema, table,
/// key}`), in order: one JSON array.
pub const DESCRIBE_SQL: &str = r#"
WITH wanted AS (
  SELECT w.ord, w.t->>'schema' AS nsp, w.t->>'table' AS rel, w.t->>'key' AS key
  FROM json_array_elements(:'tables'::json) WITH ORDINALITY AS w(t, ord)
)
SELECT coalesce(json_agg(json_build_object(
  'schema', w.nsp, 'table', w.rel, 'wanted_key', w.key, 'kind', c.relkind,
  'columns', coalesce((
    SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                      'not_null', a.attnotnull) ORDER BY a.attnum)
    FROM pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]'::json),
  'key', (
    SELECT json_build_object('name', i.relname, 'primary', x.indisprimary, 'unique', x.indisunique,
      'partial', x.indpred IS NOT NULL, 'expressions', x.indexprs IS NOT NULL,
      'columns', (SELECT json_agg(a.attname ORDER BY k.n)
                  FROM unnest((x.indkey::int2[])[0:x.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n)
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum))
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = c.oid AND CASE WHEN w.key IS NULL THEN x.indisprimary ELSE i.relname = w.key END
    LIMIT 1)
) ORDER BY w.ord), '[]'::json)
FROM wanted w
LEFT JOIN pg_namespace n ON n.nspname = w.nsp
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel AND c.relkind IN ('r', 'p');
"#;

/// A table the export tracks: its number, name, key and columns.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// 1-based, in the definition's order.
    pub n: usize,
    pub schema: String,
    pub table: String,
    /// The unique index keying it.
    pub key_name: String,
    /// The key columns, with their types.
    pub key: Vec<Column>,
    /// Every column shipped (not generated).
    pub columns: Vec<Column>,
}

impl Tracked {
    pub fn label(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.table)
    }

    /// The quoted key columns, joined by `, `, with an optional prefix.
    pub fn key_list(&self, prefix: &str) -> String {
        self.key
            .iter()
            .map(|c| format!("{prefix}{}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The quoted columns, joined by `, `.
    pub fn column_list(&self) -> String {
        self.column_list_of("")
    }

    /// The quoted columns, each after `prefix`, joined by `, `.
    pub fn column_list_of(&self, prefix: &str) -> String {
        self.columns
            .iter()
            .map(|c| format!("{prefix}{}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks described tables and makes them tracked ones: each must exist
/// and have a usable key (a primary key, or the named unique index, of
/// NOT NULL plain columns). The error names the table.
pub fn tracked(described: &[Described]) -> Result<Vec<Tracked>, OperationError> {
    let mut out = Vec::new();
    for (i, d) in described.iter().enumerate() {
        let label = format!("{}.{}", d.schema, d.table);
        let refuse = |why: String, action: &str| {
            Err(OperationError::new(
                ErrorKind::InvalidInput,
                format!("table {label} cannot be exported: {why}"),
            )
            .with_action(action.to_owned()))
        };
        if d.kind.is_none() {
            return refuse(
                "it does not exist on the source".into(),
                "check the schema and table names in --tables",
            );
        }
        for c in &d.columns {
            if c.name.contains(['\n', '\r']) {
                return refuse(
                    format!("its column {:?} has a line break in its name", c.name),
                    "rename the column",
                );
            }
        }
        let Some(key) = &d.key else {
            return match &d.wanted_key {
                Some(k) => refuse(
                    format!("it has no index named {k:?}"),
                    "name one of its unique indexes with --key",
                ),
                None => refuse(
                    "it has no primary key".into(),
                    "add a primary key, or name a unique index of NOT NULL columns with --key SCHEMA.TABLE=INDEX",
                ),
            };
        };
        if !key.unique || key.partial || key.expressions || key.columns.is_empty() {
            return refuse(
                format!(
                    "index {:?} is not a usable key (it must be unique, not partial, on plain columns)",
                    key.name
                ),
                "name another unique index with --key",
            );
        }
        let mut key_columns = Vec::new();
        for name in &key.columns {
            let Some(c) = d.columns.iter().find(|c| &c.name == name) else {
                return refuse(
                    format!("key column {name:?} is generated"),
                    "name another unique index with --key",
                );
            };
            if !c.not_null && !key.primary {
                return refuse(
                    format!("key column {name:?} of index {:?} may be NULL", key.name),
                    "make the key columns NOT NULL, or name another unique index",
                );
            }
            if META_COLUMNS.contains(&name.as_str()) {
                return refuse(
                    format!("key column {name:?} has a name the change table uses itself"),
                    "name another unique index with --key",
                );
            }
            key_columns.push(c.clone());
        }
        out.push(Tracked {
            n: i + 1,
            schema: d.schema.clone(),
            table: d.table.clone(),
            key_name: key.name.clone(),
            key: key_columns,
            columns: d.columns.clone(),
        });
    }
    Ok(out)
}

/// The export's schema on the source.
pub fn schema_name(export: &str) -> String {
    format!("pgvirt_export_{export}")
}

/// The change table of tracked table `n`, qualified.
pub fn changes_table(schema: &str, n: usize) -> String {
    qualified(schema, &format!("changes_{n}"))
}

/// A SQL string literal (standard_conforming_strings on, which the
/// scripts set).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut tag = "$pgvirt$".to_owned();
    let mut i = 0;
    while body.contains(&tag) {
        i += 1;
        tag = format!("$pgvirt{i}$");
    }
    tag
}

/// The SQL that installs tracking of `tables` for export `export`, in one
/// transaction.
pub fn install_sql(export: &str, tables: &[Tracked]) -> String {
    let schema = schema_name(export);
    let s = ident(&schema);
    let seq = qualified(&schema, "seq");
    let mut sql = format!(
        "-- pgvirt export {export:?}: change tracking on the source\n\
         BEGIN;\n\
         SET LOCAL standard_conforming_strings = on;\n\
         SET LOCAL lock_timeout = '60s';\n\
         CREATE SCHEMA {s};\n\
         CREATE TABLE {s}.export (install_id text NOT NULL, name text NOT NULL, installed_at timestamptz NOT NULL DEFAULT now());\n\
         INSERT INTO {s}.export (install_id, name) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 12), {});\n\
         CREATE TABLE {s}.tables (n integer PRIMARY KEY, schema_name text NOT NULL, table_name text NOT NULL,\n\
         \x20   key_name text NOT NULL, key_columns text[] NOT NULL);\n\
         -- The ordering of every change of this export (the high-water mark of a target is one of its values).\n\
         -- Number 1 is the install itself: a target holding it holds the tables as they were then.\n\
         CREATE SEQUENCE {seq};\n\
         SELECT nextval('{seq_lit}');\n\
         GRANT USAGE ON SCHEMA {s} TO PUBLIC;\n\
         GRANT USAGE ON SEQUENCE {seq} TO PUBLIC;\n",
        literal(export),
        seq_lit = seq.replace('\'', "''"),
    );
    let row_trigger = ident(&format!("pgvirt_export_{export}"));
    let truncate_trigger = ident(&format!("pgvirt_export_{export}_truncate"));
    for t in tables {
        let changes = changes_table(&schema, t.n);
        let key_defs: String = t
            .key
            .iter()
            .map(|c| format!(", {} {}", ident(&c.name), c.type_name))
            .collect();
        let keys = t.key_list("");
        let old = t.key_list("OLD.");
        let new = t.key_list("NEW.");
        let key_names: Vec<String> = t.key.iter().map(|c| literal(&c.name)).collect();
        sql.push_str(&format!(
            "\n-- {label}, keyed by {key_name}\n\
             INSERT INTO {s}.tables VALUES ({n}, {schema_lit}, {table_lit}, {key_lit}, ARRAY[{key_names}]::text[]);\n\
             CREATE TABLE {changes} (pgvirt_seq bigint PRIMARY KEY DEFAULT nextval('{seq_lit}'),\n\
             \x20   pgvirt_kind \"char\" NOT NULL, pgvirt_xid xid8 NOT NULL DEFAULT pg_current_xact_id(){key_defs});\n\
             GRANT INSERT ON {changes} TO PUBLIC;\n",
            label = t.label(),
            key_name = t.key_name,
            n = t.n,
            schema_lit = literal(&t.schema),
            table_lit = literal(&t.table),
            key_lit = literal(&t.key_name),
            key_names = key_names.join(", "),
            seq_lit = seq.replace('\'', "''"),
        ));
        let body = format!(
            "\nBEGIN\n\
             \x20 IF TG_OP = 'INSERT' THEN\n\
             \x20   INSERT INTO {changes} (pgvirt_kind, {keys}) VALUES ('I', {new});\n\
             \x20 ELSIF TG_OP = 'DELETE' THEN\n\
             \x20   INSERT INTO {changes} (pgvirt_kind, {keys}) VALUES ('D', {old});\n\
             \x20 ELSE\n\
             \x20   INSERT INTO {changes} (pgvirt_kind, {keys}) VALUES ('U', {new});\n\
             \x20   IF ROW({old}) IS DISTINCT FROM ROW({new}) THEN\n\
             \x20     INSERT INTO {changes} (pgvirt_kind, {keys}) VALUES ('K', {old});\n\
             \x20   END IF;\n\
             \x20 END IF;\n\
             \x20 RETURN NULL;\n\
             END\n"
        );
        let tag = dollar_tag(&body);
        let track = qualified(&schema, &format!("track_{}", t.n));
        sql.push_str(&format!(
            "CREATE FUNCTION {track}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag};\n"
        ));
        let body = format!(
            "\nBEGIN\n  INSERT INTO {changes} (pgvirt_kind) VALUES ('T');\n  RETURN NULL;\nEND\n"
        );
        let tag = dollar_tag(&body);
        let track_truncate = qualified(&schema, &format!("track_truncate_{}", t.n));
        sql.push_str(&format!(
            "CREATE FUNCTION {track_truncate}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag};\n\
             CREATE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OR DELETE ON {table}\n\
             \x20   FOR EACH ROW EXECUTE FUNCTION {track}();\n\
             CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table}\n\
             \x20   FOR EACH STATEMENT EXECUTE FUNCTION {track_truncate}();\n",
            table = t.qualified(),
        ));
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// The SQL that removes everything an install made (the triggers go with
/// the functions they call).
pub fn uninstall_sql(export: &str) -> String {
    format!(
        "BEGIN;\nSET LOCAL lock_timeout = '60s';\nDROP SCHEMA IF EXISTS {} CASCADE;\nCOMMIT;\n",
        ident(&schema_name(export))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, t: &str) -> Column {
        Column {
            name: name.into(),
            type_name: t.into(),
            not_null: true,
        }
    }

    fn described(key: Option<KeyIndex>) -> Described {
        Described {
            schema: "s".into(),
            table: "t".into(),
            wanted_key: None,
            kind: Some("r".into()),
            columns: vec![col("a", "integer"), col("b", "text")],
            key,
        }
    }

    #[test]
    fn a_table_without_a_key_is_refused_by_name() {
        let e = tracked(&[described(None)]).expect_err("no key");
        assert!(e.message.contains("s.t"), "{e:?}");
    }

    #[test]
    fn a_composite_key_is_tracked_and_the_sql_quotes_names() {
        let key = KeyIndex {
            name: "t_pkey".into(),
            primary: true,
            unique: true,
            partial: false,
            expressions: false,
            columns: vec!["a".into(), "b".into()],
        };
        let t = tracked(&[described(Some(key))]).expect("usable");
        assert_eq!(t[0].key.len(), 2);
        let sql = install_sql("x\"y", &t);
        assert!(sql.contains("\"pgvirt_export_x\"\"y\""), "{sql}");
        assert!(
            sql.contains("ROW(OLD.\"a\", OLD.\"b\") IS DISTINCT FROM ROW(NEW.\"a\", NEW.\"b\")")
        );
    }

    #[test]
    fn the_dollar_tag_avoids_the_body() {
        assert_eq!(dollar_tag("x"), "$pgvirt$");
        assert_eq!(dollar_tag("a $pgvirt$ b"), "$pgvirt1$");
    }
}
