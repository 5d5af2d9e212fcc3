//! Discovery: PostgreSQL installations (repositories) and clusters (source
//! configs) on an environment.
//!
//! Both run one bash script on the environment as its user. The scripts take
//! their inputs from variables (never pasted into the script text) and print
//! tab-separated lines that the functions below turn into documents.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::platform::{field, str_field, Platform};
use crate::abi::{CommandRequest, ErrorKind, OperationError};

/// Finds installations: every `postgres` on PATH, the distribution layouts,
/// and the colon-separated `PGVIRT_PG_PATH`. Prints `ok<TAB>bin<TAB>version`
/// or `broken<TAB>dir<TAB>reason` per candidate.
const REPOSITORY_SCRIPT: &str = r#"
set -u
candidates=()
IFS=: read -r -a path_dirs <<< "${PATH:-}"
for d in "${path_dirs[@]}"; do
  [ -n "$d" ] && [ -x "$d/postgres" ] && candidates+=("$d")
done
for d in /usr/lib/postgresql/*/bin /usr/pgsql-*/bin /usr/local/pgsql/bin; do
  [ -d "$d" ] && candidates+=("$d")
done
if [ -n "${PGVIRT_PG_PATH:-}" ]; then
  IFS=: read -r -a extra <<< "$PGVIRT_PG_PATH"
  for d in "${extra[@]}"; do [ -n "$d" ] && candidates+=("$d"); done
fi
for d in "${candidates[@]}"; do
  if [ ! -d "$d" ]; then printf 'broken\t%s\tnot a directory\n' "$d"; continue; fi
  if [ ! -x "$d/postgres" ]; then printf 'broken\t%s\tno postgres executable\n' "$d"; continue; fi
  bin=$(dirname -- "$(readlink -f -- "$d/postgres")")
  missing=""
  for tool in pg_ctl initdb pg_controldata; do
    [ -x "$bin/$tool" ] || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then printf 'broken\t%s\tmissing%s\n' "$d" "$missing"; continue; fi
  if ! version=$("$bin/postgres" --version 2>&1); then
    printf 'broken\t%s\tpostgres --version failed: %s\n' "$d" "$(printf '%s' "$version" | tr '\t\n' '  ')"
    continue
  fi
  printf 'ok\t%s\t%s\n' "$bin" "$(printf '%s' "$version" | tr '\t\n' '  ')"
done
"#;

/// Finds clusters of one installation (`BIN_DIR`, `MAJOR`): running
/// postmasters of that binary (their working directory is the data
/// directory) and data directories in the usual places and in the
/// colon-separated `PGVIRT_PGDATA_PATH`. Prints
/// `cluster<TAB>datadir<TAB>port<TAB>running<TAB>socketdir`.
const SOURCE_CONFIG_SCRIPT: &str = r#"
set -u
postgres_bin=$(readlink -f -- "$BIN_DIR/postgres")
declare -A seen=()
report() { # datadir
  local dir=$1 port="" running=0 socket="" pid=""
  [ -n "${seen[$dir]:-}" ] && return
  seen[$dir]=1
  [ -r "$dir/PG_VERSION" ] || return
  [ "$(cat -- "$dir/PG_VERSION" 2>/dev/null)" = "$MAJOR" ] || return
  if [ -r "$dir/postmaster.pid" ]; then
    pid=$(sed -n 1p -- "$dir/postmaster.pid")
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      running=1
      port=$(sed -n 4p -- "$dir/postmaster.pid")
      socket=$(sed -n 5p -- "$dir/postmaster.pid")
    fi
  fi
  if [ -z "$port" ]; then
    for conf in "$dir/postgresql.conf" "$dir/postgresql.auto.conf" "${CONF_OF[$dir]:-}"; do
      [ -n "$conf" ] && [ -r "$conf" ] || continue
      p=$(sed -n -E "s/^[[:space:]]*port[[:space:]]*=?[[:space:]]*'?([0-9]+)'?.*/\1/p" -- "$conf" | tail -n 1)
      [ -n "$p" ] && port=$p
    done
  fi
  printf 'cluster\t%s\t%s\t%s\t%s\n' "$dir" "${port:-5432}" "$running" "$socket"
}
declare -A CONF_OF=()
for conf in /etc/postgresql/"$MAJOR"/*/postgresql.conf; do
  [ -r "$conf" ] || continue
  d=$(sed -n -E "s/^[[:space:]]*data_directory[[:space:]]*=?[[:space:]]*'([^']+)'.*/\1/p" -- "$conf" | tail -n 1)
  [ -n "$d" ] && CONF_OF[$d]=$conf
done
for p in /proc/[0-9]*; do
  exe=$(readlink -- "$p/exe" 2>/dev/null) || continue
  [ "$exe" = "$postgres_bin" ] || continue
  cwd=$(readlink -- "$p/cwd" 2>/dev/null) || continue
  report "$cwd"
done
candidates=(/var/lib/postgresql/"$MAJOR"/* /var/lib/pgsql/"$MAJOR"/data /var/lib/pgsql/data /usr/local/pgsql/data "${!CONF_OF[@]}")
[ -n "${PGDATA:-}" ] && candidates+=("$PGDATA")
if [ -n "${PGVIRT_PGDATA_PATH:-}" ]; then
  IFS=: read -r -a extra <<< "$PGVIRT_PGDATA_PATH"
  candidates+=("${extra[@]}")
fi
for d in "${candidates[@]}"; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  report "$(readlink -f -- "$d")"
done
exit 0
"#;

/// `discovery.repository`: the installations on the input's environment.
pub fn repository(platform: &Platform, _input: &Value) -> Result<Value, OperationError> {
    let out = platform.run_ok(
        "searching for PostgreSQL installations",
        &CommandRequest {
            command: REPOSITORY_SCRIPT.into(),
            ..CommandRequest::default()
        },
    )?;
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    for line in out.stdout.lines() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ok"), Some(bin), Some(version_text)) => match parse_version(version_text) {
                Some((version, major)) => {
                    found.entry(bin.to_owned()).or_insert_with(|| {
                        json!({
                            "name": format!("PostgreSQL {version} ({bin})"),
                            "bin_dir": bin,
                            "version": version,
                            "major_version": major,
                        })
                    });
                }
                None => log::warn!(
                    "ignoring PostgreSQL installation {bin}: unrecognised version {version_text:?}"
                ),
            },
            (Some("broken"), Some(dir), Some(reason)) => {
                log::warn!("ignoring broken PostgreSQL installation {dir}: {reason}");
            }
            _ => log::debug!("discovery: unexpected line {line:?}"),
        }
    }
    Ok(Value::Array(found.into_values().collect()))
}

/// `discovery.source_config`: the clusters of the input's repository.
pub fn source_config(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let repository = field(input, "repository")?;
    let bin_dir = str_field(repository, "bin_dir", "repository")?;
    let major = repository
        .get("major_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            OperationError::new(
                ErrorKind::InvalidInput,
                "repository has no integer major_version",
            )
        })?;
    let mut variables = BTreeMap::new();
    variables.insert("BIN_DIR".to_owned(), bin_dir.to_owned());
    variables.insert("MAJOR".to_owned(), major.to_string());
    let out = platform.run_ok(
        "searching for PostgreSQL clusters",
        &CommandRequest {
            command: SOURCE_CONFIG_SCRIPT.into(),
            variables,
            ..CommandRequest::default()
        },
    )?;
    let mut configs = Vec::new();
    for line in out.stdout.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        let ["cluster", dir, port, running, socket] = parts.as_slice() else {
            log::debug!("discovery: unexpected line {line:?}");
            continue;
        };
        let Ok(port) = port.trim().parse::<u16>() else {
            log::warn!("cluster {dir}: port {port:?} is not a port number; skipped");
            continue;
        };
        let mut config = json!({
            "name": format!("{dir} (port {port})"),
            "data_directory": dir,
            "port": port,
            "major_version": major,
            "running": *running == "1",
            "discovered": true,
        });
        if socket.starts_with('/') {
            config["socket_directory"] = json!(socket);
        }
        configs.push(config);
    }
    Ok(Value::Array(configs))
}

/// Reads `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` as
/// (`"15.18"`, 15); for 9.x the major version is 9.
fn parse_version(text: &str) -> Option<(String, u64)> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim();
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let major = version.split('.').next()?.parse().ok()?;
    Some((version.trim_end_matches('.').to_owned(), major))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn reads_postgres_version_lines() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 9.6.24"),
            Some(("9.6.24".into(), 9))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17devel"),
            Some(("17".into(), 17))
        );
        assert_eq!(parse_version("bash: postgres: command not found"), None);
    }
}
