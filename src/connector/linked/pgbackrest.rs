//! Ingestion from the user's pgBackRest repository: the latest backup (or
//! the chosen set) restored into the mount, staging a standby whose
//! `restore_command` is `pgbackrest archive-get`; each snapshot is a
//! consistent point with replay paused, as for log shipping, with the
//! archived WAL it needs fetched into `pgvirt/wal/`. A resync restores over
//! the existing files (`--delta`).
//!
//! The repository is named by a `pgbackrest.conf` (`config_path`) or a
//! repository path (`repo_path`), or both; the stanza always.

use serde_json::Value;

use super::method::Ingestion;
use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::cluster::segment_file;
use crate::connector::conf::{conf_quote, parse_lsn, shell_quote};
use crate::connector::platform::{request, Platform};
use crate::connector::source::Source;

/// `pgbackrest`.
pub struct Pgbackrest;

fn path(field: &str) -> String {
    format!("linked-source parameters#/pgbackrest/{field}")
}

/// The repository and stanza, as pgBackRest options.
struct Repo {
    stanza: String,
    config: Option<String>,
    repo_path: Option<String>,
    set: Option<String>,
}

impl Repo {
    fn of(staging: &Staging) -> Result<Self, OperationError> {
        let p = staging.params.get("pgbackrest").ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                "linked-source parameters#/pgbackrest is required for the pgbackrest method",
            )
        })?;
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            stanza: text("stanza").ok_or_else(|| {
                OperationError::new(
                    ErrorKind::InvalidInput,
                    format!("{} is required", path("stanza")),
                )
            })?,
            config: text("config_path"),
            repo_path: text("repo_path"),
            set: text("backup_set"),
        })
    }

    /// The options every pgBackRest command of this dSource takes (but
    /// `info`, which takes no data directory).
    fn options(&self, staging: &Staging) -> Vec<String> {
        let mut opts = self.repo_options();
        opts.push(format!("--pg1-path={}", staging.cluster.data_dir));
        opts
    }

    /// The stanza, repository and logging options.
    fn repo_options(&self) -> Vec<String> {
        let mut opts = vec![format!("--stanza={}", self.stanza)];
        if let Some(c) = &self.config {
            opts.push(format!("--config={c}"));
        }
        if let Some(r) = &self.repo_path {
            opts.push(format!("--repo1-path={r}"));
        }
        opts.push("--log-level-file=off".into());
        opts.push("--log-level-console=warn".into());
        opts
    }

    fn where_(&self) -> String {
        match (&self.repo_path, &self.config) {
            (Some(r), _) => format!("repository {r}"),
            (None, Some(c)) => format!("the repository of {c}"),
            (None, None) => "the default repository".into(),
        }
    }

    fn repo_field(&self) -> String {
        if self.repo_path.is_some() || self.config.is_none() {
            path("repo_path")
        } else {
            path("config_path")
        }
    }
}

/// Runs `pgbackrest` with the options (one a line in `$OPTS`).
const RUN: &str = r#"
set -u
opts=()
while IFS= read -r x; do [ -n "$x" ] && opts+=("$x"); done <<< "$OPTS"
extra=()
while IFS= read -r x; do [ -n "$x" ] && extra+=("$x"); done <<< "$EXTRA"
exec pgbackrest "${opts[@]}" "${extra[@]}" "$COMMAND"
"#;

fn run(
    platform: &Platform,
    staging: &Staging,
    repo: &Repo,
    command: &str,
    extra: &[String],
) -> Result<crate::abi::CommandOutput, OperationError> {
    platform.run(&request(
        RUN,
        &[
            (
                "OPTS",
                if command == "info" {
                    repo.repo_options()
                } else {
                    repo.options(staging)
                }
                .join("\n"),
            ),
            ("EXTRA", extra.join("\n")),
            ("COMMAND", command.to_owned()),
        ],
    ))
}

impl Ingestion for Pgbackrest {
    /// The stanza is in the repository, readable, with a backup (the
    /// chosen one, when one is chosen).
    fn check(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        let repo = Repo::of(staging)?;
        for (field, path_given, test) in [
            ("config_path", &repo.config, r#"[ -f "$P" ] && [ -r "$P" ]"#),
            (
                "repo_path",
                &repo.repo_path,
                r#"[ -d "$P" ] && [ -r "$P" ] && [ -x "$P" ]"#,
            ),
        ] {
            let Some(p) = path_given else { continue };
            let out = platform.run(&request(test, &[("P", p.clone())]))?;
            if out.exit_code != 0 {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: {p} does not exist or the environment user cannot read it",
                        path(field)
                    ),
                )
                .with_action("name a path the environment user can read"));
            }
        }
        let out = run(platform, staging, &repo, "info", &["--output=json".into()])?;
        if out.exit_code != 0 {
            let err = format!("{} {}", out.stderr.trim(), out.stdout.trim());
            let missing_command = out.exit_code == 127;
            return Err(OperationError::new(
                ErrorKind::InvalidInput,
                if missing_command {
                    "pgbackrest is not installed on the staging environment".to_owned()
                } else {
                    format!(
                        "{}: pgBackRest cannot read {}",
                        repo.repo_field(),
                        repo.where_()
                    )
                },
            )
            .with_cause(err.trim().to_owned())
            .with_action(if missing_command {
                "install pgBackRest (the pgbackrest package) on the staging environment"
            } else {
                "check the repository's path and that the environment user can read it"
            }));
        }
        let info: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            OperationError::new(
                ErrorKind::CommandFailed,
                format!("unreadable output of pgbackrest info: {e}"),
            )
        })?;
        let stanza = info
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == repo.stanza.as_str()));
        let code = stanza
            .and_then(|s| s.pointer("/status/code"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let message = stanza
            .and_then(|s| s.pointer("/status/message"))
            .and_then(Value::as_str)
            .unwrap_or("missing stanza path");
        if code == 1 || code == 3 {
            return Err(OperationError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: {} has no stanza {:?} ({message})",
                    path("stanza"),
                    repo.where_(),
                    repo.stanza
                ),
            )
            .with_action("name a stanza of the repository (see `pgbackrest info`)"));
        }
        let labels: Vec<&str> = stanza
            .and_then(|s| s["backup"].as_array())
            .map(|b| b.iter().filter_map(|b| b["label"].as_str()).collect())
            .unwrap_or_default();
        if labels.is_empty() || code == 2 {
            return Err(OperationError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: stanza {:?} in {} has no backup yet ({message})",
                    path("stanza"),
                    repo.stanza,
                    repo.where_()
                ),
            )
            .with_action("take a backup with `pgbackrest backup` first"));
        }
        if let Some(set) = &repo.set {
            if !labels.contains(&set.as_str()) {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: stanza {:?} has no backup set {set:?} (it has {})",
                        path("backup_set"),
                        repo.stanza,
                        labels.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        _source: Option<&Source>,
    ) -> Result<(), OperationError> {
        let repo = Repo::of(staging)?;
        let mut extra = vec!["--delta".to_owned(), "--type=standby".to_owned()];
        if let Some(set) = &repo.set {
            extra.push(format!("--set={set}"));
        }
        let out = run(platform, staging, &repo, "restore", &extra)?;
        if out.exit_code != 0 {
            return Err(OperationError::new(
                ErrorKind::CommandFailed,
                format!("pgbackrest restore from {} failed", repo.where_()),
            )
            .with_cause(format!(
                "exit code {}: {} {}",
                out.exit_code,
                out.stderr.trim(),
                out.stdout.trim()
            )));
        }
        Ok(())
    }

    fn keeps_data_on_resync(&self) -> bool {
        true
    }

    fn restore_command(&self, staging: &Staging) -> Result<Option<String>, OperationError> {
        let repo = Repo::of(staging)?;
        let opts: Vec<String> = repo
            .options(staging)
            .iter()
            .map(|o| shell_quote(o))
            .collect();
        Ok(Some(conf_quote(&format!(
            "pgbackrest {} archive-get %f \"%p\"",
            opts.join(" ")
        ))))
    }

    /// Fetches the segments from the label's start to `replayed` (and the
    /// timeline's history) into `pgvirt/wal/`.
    fn keep_archived_wal(
        &self,
        platform: &Platform,
        staging: &Staging,
        label: &str,
        replayed: &str,
        segment_size: u64,
    ) -> Result<(), OperationError> {
        let repo = Repo::of(staging)?;
        let names = segments(label, replayed, segment_size);
        if names.is_empty() {
            return Ok(());
        }
        let script = r#"
set -eu
umask 077
mkdir -p -- "$FILES/wal"
opts=()
while IFS= read -r x; do [ -n "$x" ] && opts+=("$x"); done <<< "$OPTS"
for seg in $NAMES; do
  [ -f "$FILES/wal/$seg" ] && continue
  pgbackrest "${opts[@]}" archive-get "$seg" "$FILES/wal/$seg"
done
"#;
        platform.run_ok(
            "keeping the archived WAL the snapshot needs",
            &request(
                script,
                &[
                    ("FILES", staging.files()),
                    ("OPTS", repo.options(staging).join("\n")),
                    ("NAMES", names.join(" ")),
                ],
            ),
        )?;
        Ok(())
    }
}

/// The archived files a snapshot needs: the segments from the label's start
/// through the one holding the last byte replayed (a point on a segment
/// boundary needs nothing of the next), and the timeline's history.
fn segments(label: &str, replayed: &str, segment_size: u64) -> Vec<String> {
    let start = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(parse_lsn);
    let timeline = label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1);
    let (Some(start), Some(end)) = (start, parse_lsn(replayed)) else {
        return Vec::new();
    };
    let size = segment_size.max(1);
    let mut names = Vec::new();
    let mut pos = start - start % size;
    loop {
        names.push(segment_file(timeline, pos, size));
        pos += size;
        if pos >= end {
            break;
        }
    }
    if timeline > 1 {
        names.push(format!("{timeline:08X}.history"));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::segments;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn a_boundary_needs_nothing_of_the_next_segment() {
        let label =
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n";
        assert_eq!(
            segments(label, "0/4000000", MB16),
            ["000000010000000000000002", "000000010000000000000003"]
        );
        assert_eq!(
            segments(label, "0/4000028", MB16),
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ]
        );
        assert_eq!(
            segments(label, "0/2000100", MB16),
            ["000000010000000000000002"]
        );
    }

    #[test]
    fn a_later_timeline_brings_its_history() {
        let label =
            "START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\nSTART TIMELINE: 2\n";
        assert_eq!(
            segments(label, "0/5000100", MB16),
            ["000000020000000000000005", "00000002.history"]
        );
    }
}
