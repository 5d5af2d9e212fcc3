//! Printing: aligned tables for people, JSON (`--output json`) for programs.

use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;
use serde_json::Value;

use crate::host::connectors::package::Package;
use crate::host::connectors::registry::Installed;
use crate::host::environments::Environment;
use crate::host::lifecycle::discovery::{Repository, SourceConfig};
use crate::host::lifecycle::dsource::DSource;
use crate::host::lifecycle::timeflow::Listed;
use crate::host::lifecycle::vdb::Vdb;
use crate::host::storage::DatasetInfo;
use crate::host::store::display_time;
use crate::host::Problem;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

pub struct Out {
    format: Format,
}

impl Out {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    pub fn json(&self, value: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A one-line result for people, or its JSON form.
    pub fn message(&self, text: &str, value: Value) -> anyhow::Result<()> {
        match self.format {
            Format::Json => self.json(&value),
            Format::Table => {
                println!("{text}");
                Ok(())
            }
        }
    }

    fn table<T: Serialize>(
        &self,
        items: &[T],
        header: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) -> anyhow::Result<()> {
        if self.is_json() {
            return self.json(&items);
        }
        let mut t = Table::new();
        t.load_preset(NOTHING)
            .set_header(header.iter().map(|h| h.to_uppercase()));
        for item in items {
            t.add_row(row(item));
        }
        println!("{t}");
        Ok(())
    }

    pub fn connectors(&self, items: &[Installed]) -> anyhow::Result<()> {
        self.table(
            items,
            &["name", "version", "build", "id", "installed", "library"],
            |c| {
                vec![
                    c.name.clone(),
                    c.version.clone(),
                    c.build_number.clone(),
                    c.id.clone(),
                    display_time(c.installed_at),
                    c.library_path.display().to_string(),
                ]
            },
        )
    }

    pub fn tokens(&self, items: &[crate::host::tokens::Token]) -> anyhow::Result<()> {
        self.table(items, &["name", "rights", "created"], |t| {
            vec![
                t.name.clone(),
                if t.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
                .into(),
                display_time(t.created_at),
            ]
        })
    }

    pub fn environments(&self, items: &[Environment]) -> anyhow::Result<()> {
        self.table(
            items,
            &["name", "kind", "host", "user", "refreshed", "scratch"],
            |e| {
                vec![
                    e.name.clone(),
                    e.kind.to_string(),
                    e.ssh.as_ref().map_or_else(
                        || "this host".into(),
                        |t| format!("{}@{}:{}", t.ssh_user, t.host, t.port),
                    ),
                    e.os_user.clone(),
                    e.refreshed_at
                        .map(display_time)
                        .unwrap_or_else(|| "never".into()),
                    e.scratch.display().to_string(),
                ]
            },
        )
    }

    pub fn repositories(&self, items: &[Repository]) -> anyhow::Result<()> {
        self.table(
            items,
            &["id", "env", "name", "version", "bin dir", "state"],
            |r| {
                vec![
                    r.id.to_string(),
                    r.environment.clone(),
                    r.name.clone(),
                    text(&r.document, "version"),
                    text(&r.document, "bin_dir"),
                    r.state.to_string(),
                ]
            },
        )
    }

    pub fn source_configs(&self, items: &[SourceConfig]) -> anyhow::Result<()> {
        self.table(
            items,
            &[
                "id",
                "env",
                "repo",
                "data directory",
                "port",
                "running",
                "origin",
                "state",
            ],
            |s| {
                vec![
                    s.id.to_string(),
                    s.environment.clone(),
                    s.repository_id.to_string(),
                    text(&s.document, "data_directory"),
                    text(&s.document, "port"),
                    text(&s.document, "running"),
                    s.origin.to_string(),
                    s.state.to_string(),
                ]
            },
        )
    }

    pub fn datasets(&self, items: &[DatasetInfo]) -> anyhow::Result<()> {
        self.table(
            items,
            &[
                "dataset",
                "owner",
                "state",
                "own",
                "shared",
                "snapshots",
                "mount",
            ],
            |d| {
                vec![
                    d.dataset.name.clone(),
                    d.dataset.owner.clone().unwrap_or_default(),
                    d.dataset.state.to_string(),
                    bytes(d.space.exclusive),
                    bytes(d.space.shared),
                    d.snapshots
                        .iter()
                        .map(|s| {
                            if s.dependents.is_empty() {
                                s.snapshot.name.clone()
                            } else {
                                format!("{} (clones: {})", s.snapshot.name, s.dependents.join(", "))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    d.mount
                        .as_ref()
                        .map(|m| m.display().to_string())
                        .unwrap_or_default(),
                ]
            },
        )
    }

    pub fn dsources(&self, items: &[DSource]) -> anyhow::Result<()> {
        self.table(
            items,
            &[
                "name",
                "env",
                "source config",
                "state",
                "staging port",
                "mount",
            ],
            |d| {
                vec![
                    d.name.clone(),
                    d.environment.clone(),
                    d.source_config_id.to_string(),
                    d.state.to_string(),
                    text(&d.parameters, "staging_port"),
                    d.mount_path.display().to_string(),
                ]
            },
        )
    }

    pub fn vdbs(&self, items: &[Vdb]) -> anyhow::Result<()> {
        if self.is_json() {
            let with_conn: Vec<Value> = items
                .iter()
                .map(|v| {
                    let mut value = serde_json::to_value(v).unwrap_or(Value::Null);
                    value["connection"] = Value::String(v.connection_string());
                    value
                })
                .collect();
            return self.json(&with_conn);
        }
        self.table(
            items,
            &["name", "env", "parent", "port", "state", "connection"],
            |v| {
                vec![
                    v.name.clone(),
                    v.environment.clone(),
                    match &v.parent {
                        Some(name) => format!("{} {name}", v.parent_kind),
                        None => v.parent_kind.to_string(),
                    },
                    v.port.to_string(),
                    v.state.to_string(),
                    v.connection_string(),
                ]
            },
        )
    }

    pub fn snapshots(&self, items: &[Listed]) -> anyhow::Result<()> {
        self.table(
            items,
            &[
                "id",
                "of",
                "name",
                "timeflow",
                "taken",
                "lsn",
                "provisionable",
            ],
            |s| {
                vec![
                    s.id.to_string(),
                    s.of.to_string(),
                    s.name.clone(),
                    s.timeflow.to_string(),
                    display_time(s.created_at),
                    s.metadata
                        .get("replayed_lsn")
                        .or_else(|| s.metadata.get("checkpoint_lsn"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    text(&s.metadata, "provisionable"),
                ]
            },
        )
    }

    pub fn validation(&self, package: &Package, problems: &[Problem]) -> anyhow::Result<()> {
        if self.is_json() {
            return self.json(&serde_json::json!({
                "path": package.origin,
                "library": package.library,
                "valid": problems.is_empty(),
                "problems": problems,
            }));
        }
        if problems.is_empty() {
            let name = text(&package.manifest_value, "name");
            let version = text(&package.manifest_value, "version");
            let library = package
                .library
                .as_ref()
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            println!("connector {name} {version} is valid (library {library})");
        }
        // Problems are printed by the error that follows.
        Ok(())
    }
}

fn text(doc: &Value, key: &str) -> String {
    match doc.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A key list for people: a title, then aligned `key  value` lines.
pub fn key_list(title: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = format!("{title}\n");
    for (key, value) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        text.push_str(&format!("  {key:<width$}  {value}\n"));
    }
    text.trim_end().to_owned()
}

impl Out {
    /// `dsource show`: a key list, or the same data as JSON.
    pub fn dsource(&self, shown: &Value) -> anyhow::Result<()> {
        if self.is_json() {
            return self.json(shown);
        }
        let d = &shown["dsource"];
        let r = &shown["replication"];
        let p = &d["parameters"];
        let replication = if r["running"] == Value::Bool(false) {
            "staging is not running".to_owned()
        } else if r.get("status").is_none() && r.get("next").is_some() {
            // No replica (staging push, single database): nothing replicates.
            "staging runs".to_owned()
        } else {
            let mut t = text(r, "status");
            if let Some(lag) = r.get("lag_bytes").and_then(Value::as_u64) {
                t.push_str(&format!(
                    ", {} behind ({:.1} s)",
                    bytes(lag),
                    r.get("lag_seconds").and_then(Value::as_f64).unwrap_or(0.0)
                ));
            }
            if let Some(lsn) = r.get("replayed_lsn").and_then(Value::as_str) {
                t.push_str(&format!(", replayed to {lsn}"));
            }
            if r["replay_paused"] == Value::Bool(true) {
                t.push_str(", replay PAUSED");
            }
            t
        };
        let last = &shown["last_snapshot"];
        let last = if last.is_null() {
            "none".to_owned()
        } else {
            format!(
                "{} taken {} (LSN {})",
                text(last, "id"),
                last["created_at"]
                    .as_i64()
                    .map(display_time)
                    .unwrap_or_default(),
                last["metadata"]["replayed_lsn"].as_str().unwrap_or("?")
            )
        };
        let busy = shown["busy"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|j| format!("{} by process {}", text(j, "job"), text(j, "pid")))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let rows = [
            (
                "state",
                format!("{} (staging {})", text(d, "state"), text(shown, "status")),
            ),
            ("environment", text(d, "environment")),
            ("source config", text(d, "source_config_id")),
            (
                "method",
                p.get("ingestion_method")
                    .and_then(Value::as_str)
                    .unwrap_or("basebackup_streaming")
                    .to_owned(),
            ),
            (
                "source",
                match p.get("source") {
                    Some(s) => format!(
                        "{}:{} as {}",
                        text(s, "host"),
                        text(s, "port"),
                        s.get("replication_user")
                            .and_then(Value::as_str)
                            .unwrap_or("postgres")
                    ),
                    None => String::new(),
                },
            ),
            ("staging port", text(p, "staging_port")),
            ("mount", text(d, "mount_path")),
            ("dataset", text(d, "dataset")),
            ("replication", replication),
            ("problem", text(r, "problem")),
            ("next", text(shown, "next")),
            ("last snapshot", last),
            ("busy", busy),
            (
                "created",
                d["created_at"]
                    .as_i64()
                    .map(display_time)
                    .unwrap_or_default(),
            ),
        ];
        println!(
            "{}",
            key_list(&format!("dSource {}", text(d, "name")), &rows)
        );
        Ok(())
    }

    /// `vdb show` and what VDB commands print: a key list, or the same
    /// data as JSON (with its connection string).
    pub fn vdb(&self, v: &Vdb, headline: &str) -> anyhow::Result<()> {
        self.vdb_with_quota(v, headline, None)
    }

    /// One VDB, with what it has written of its quota (`used`, `quota`).
    pub fn vdb_with_quota(
        &self,
        v: &Vdb,
        headline: &str,
        usage: Option<(Option<u64>, u64)>,
    ) -> anyhow::Result<()> {
        if self.is_json() {
            return self.json(&crate::host::lifecycle::vdb::described(v, usage));
        }
        let parent = match (&v.parent, v.origin_snapshot) {
            (Some(name), Some(snap)) => format!("{} {name}, snapshot {snap}", v.parent_kind),
            (Some(name), None) => format!("{} {name}", v.parent_kind),
            (None, _) => v.parent_kind.to_string(),
        };
        let mut rows = vec![
            ("state", v.state.to_string()),
            ("connect", v.connection_string()),
            ("port", v.port.to_string()),
            ("parent", parent),
            ("environment", v.environment.clone()),
            ("mount", v.mount_path.display().to_string()),
            ("dataset", v.dataset.clone()),
            ("created", display_time(v.created_at)),
        ];
        if let Some(quota) = v.quota_bytes {
            let shown = match usage {
                Some((Some(used), _)) => format!("{} used of {}", bytes(used), bytes(quota)),
                _ => bytes(quota),
            };
            rows.push(("quota", shown));
        }
        println!(
            "{}",
            key_list(format!("VDB {} {headline}", v.name).trim_end(), &rows)
        );
        Ok(())
    }
}
