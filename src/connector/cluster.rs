//! A PostgreSQL cluster on an environment, driven through the platform:
//! `pg_ctl`, `psql` and `pg_controldata` from the repository's bin directory,
//! run as the environment user. Inputs reach the scripts as variables (and
//! psql variables, quoted by psql itself), never pasted into script text.

use std::collections::BTreeMap;

use serde_json::Value;

use super::conf::conf_value;
use super::platform::{str_field, Platform};
use crate::abi::{CommandRequest, ErrorKind, OperationError};

/// Where a cluster lives and how to reach it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub bin_dir: String,
    pub data_dir: String,
    pub port: u16,
    /// Directory of its unix socket.
    pub socket_dir: String,
    /// Its server log file.
    pub log_file: String,
}

impl Cluster {
    /// A cluster at these paths. `pg_ctl` hands the data directory and log
    /// path to `/bin/sh` inside double quotes, so a path with anything but
    /// plain characters is refused here, whatever the host checked before.
    pub fn new(
        bin_dir: String,
        data_dir: String,
        port: u16,
        socket_dir: String,
        log_file: String,
    ) -> Result<Self, OperationError> {
        for (what, path) in [
            ("bin_dir", &bin_dir),
            ("data directory", &data_dir),
            ("socket directory", &socket_dir),
            ("log file", &log_file),
        ] {
            if let Some(c) = path
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c)))
            {
                return Err(OperationError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the {what} {path:?} holds {c:?}; paths may hold only letters, digits and / . _ - + @"
                    ),
                ));
            }
        }
        Ok(Self {
            bin_dir,
            data_dir,
            port,
            socket_dir,
            log_file,
        })
    }

    /// The repository's bin directory, from an operation's input.
    pub fn bin_dir(input: &Value) -> Result<String, OperationError> {
        let repo = input.get("repository").ok_or_else(|| {
            OperationError::new(ErrorKind::InvalidInput, "input has no `repository`")
        })?;
        Ok(str_field(repo, "bin_dir", "repository")?.to_owned())
    }

    fn request(&self, script: &str, extra: Vec<(String, String)>) -> CommandRequest {
        let mut variables = BTreeMap::new();
        variables.insert("BIN".to_owned(), self.bin_dir.clone());
        variables.insert("PGDATA_DIR".to_owned(), self.data_dir.clone());
        variables.insert("PORT".to_owned(), self.port.to_string());
        variables.insert("SOCKET_DIR".to_owned(), self.socket_dir.clone());
        variables.insert("LOG_FILE".to_owned(), self.log_file.clone());
        variables.extend(extra);
        CommandRequest {
            command: script.to_owned(),
            variables,
            ..CommandRequest::default()
        }
    }

    /// Waits until the server has left recovery (it promoted), for at most
    /// `limit_secs`, promoting it at its recovery target when it pauses
    /// there (`recovery_target_action = pause`: a promotion then ends
    /// recovery with a record, where reaching the target with `promote`
    /// would wait for a whole end-of-recovery checkpoint); fails at once,
    /// with the log's last lines, when the server stopped. Each look is a
    /// query of its own: a query held open across replay would be cancelled
    /// by recovery conflicts.
    pub fn wait_out_of_recovery(
        &self,
        platform: &Platform,
        limit_secs: u64,
    ) -> Result<(), OperationError> {
        let script = r#"
set -u
end=$(( $(date +%s) + LIMIT ))
q() { "$BIN/psql" -X -A -t -q -h "$SOCKET_DIR" -p "$PORT" -U "${PGVIRT_DBUSER:-postgres}" -d postgres -c "$1" 2>/dev/null; }
promoted=
while :; do
  r=$(q "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 'f'
    WHEN current_setting('recovery_target_action') = 'pause'
     AND (current_setting('recovery_target_lsn') <> '' OR current_setting('recovery_target_time') <> '') THEN 'p'
    ELSE 't' END")
  [ "$r" = f ] && exit 0
  # Recovering to a target where it pauses: ask for the promotion now. Out
  # of standby mode nothing looks at the request before the target; there
  # replay finds it at once and promotes (an end-of-recovery record, its
  # checkpoint then spread in the background, not waited for). Asked only
  # once paused, it would wait out the pause's one-second sleep.
  if [ "$r" = p ] && [ -z "$promoted" ]; then
    q "SELECT pg_promote(false)" >/dev/null && promoted=1
  fi
  if [ ! -f "$PGDATA_DIR/postmaster.pid" ]; then
    echo "the server stopped while it recovered; the last lines of $LOG_FILE:" >&2
    tail -n 20 -- "$LOG_FILE" >&2; exit 4
  fi
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "still recovering after $LIMIT s" >&2; exit 5
  fi
  sleep 0.05
done
"#;
        platform.run_ok(
            "waiting for the server to leave recovery",
            &self.request(script, vec![("LIMIT".to_owned(), limit_secs.to_string())]),
        )?;
        Ok(())
    }

    /// Whether a postmaster runs on this data directory.
    pub fn is_running(&self, platform: &Platform) -> Result<bool, OperationError> {
        // A killed postmaster not yet reaped (a zombie) is not running,
        // whatever `pg_ctl status` says.
        let out = platform.run(&self.request(RUNNING, Vec::new()))?;
        Ok(out.exit_code == 0)
    }

    /// Starts the cluster and waits until it accepts connections.
    pub fn start(&self, platform: &Platform) -> Result<(), OperationError> {
        if self.is_running(platform)? {
            return Ok(());
        }
        let script = r#"
set -u
# A crashed postmaster leaves its pid file; the pid may still name a zombie,
# which PostgreSQL would take for a live server. Remove a stale file.
# The same goes for the socket's lock file.
stale() { # lock file -> exit 0 when the pid it names is gone or a zombie
  local pid state
  pid=$(head -n 1 -- "$1" 2>/dev/null) || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || echo gone)
  case $state in Z|X|gone|"") return 0;; *) ;; esac
  # A data directory copied from a running cluster names that cluster's
  # postmaster: a live pid that does not serve this directory is stale too.
  if [ -n "${2:-}" ]; then
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(cd -- "$2" 2>/dev/null && pwd -P)" ] || return 0
  fi
  return 1
}
if [ -f "$PGDATA_DIR/postmaster.pid" ] && stale "$PGDATA_DIR/postmaster.pid" "$PGDATA_DIR"; then
  rm -f -- "$PGDATA_DIR/postmaster.pid"
fi
lock="$SOCKET_DIR/.s.PGSQL.$PORT.lock"
if [ -f "$lock" ] && stale "$lock"; then rm -f -- "$lock" "$SOCKET_DIR/.s.PGSQL.$PORT"; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "port $PORT on 127.0.0.1 is already in use" >&2; exit 3
fi
mkdir -p "$(dirname -- "$LOG_FILE")"
# After a crash, the dead postmaster's children may hold its shared memory
# for a moment: PostgreSQL then refuses to start. Give them time to exit.
for attempt in $(seq 1 40); do
  lines=$( { wc -l < "$LOG_FILE"; } 2>/dev/null || echo 0)
  if "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOG_FILE" -w -t 600 -o "-p $PORT" start >/dev/null; then
    # pg_ctl can report success for a server that then stopped at once.
    "$BIN/pg_isready" -q -h "$SOCKET_DIR" -p "$PORT" -t 10; ready=$?
    [ "$ready" -le 1 ] && exit 0
    rc=1
  else
    rc=$?
  fi
  tail -n +"$((lines + 1))" -- "$LOG_FILE" 2>/dev/null | grep -q "pre-existing shared memory block" || break
  sleep 0.25
done
echo "--- last lines of $LOG_FILE" >&2; tail -n 20 -- "$LOG_FILE" >&2; exit $rc
"#;
        let out = platform.run(&self.request(script, Vec::new()))?;
        match out.exit_code {
            0 => Ok(()),
            3 => Err(OperationError::new(
                ErrorKind::Conflict,
                format!("cannot start PostgreSQL on port {}", self.port),
            )
            .with_cause(out.stderr.trim().to_owned())
            .with_action("choose a free port")),
            code => {
                let (why, action) = self.likely_cause(&out.stderr);
                Err(OperationError::new(
                    ErrorKind::CommandFailed,
                    format!("PostgreSQL in {} did not start: {why}", self.data_dir),
                )
                .with_cause(format!(
                    "pg_ctl exit code {code}; the server log ends:\n{}",
                    log_tail(&out.stderr)
                ))
                .with_action(action))
            }
        }
    }

    /// The likely cause of a failed start, first, from what the server
    /// logged; and what to do.
    fn likely_cause(&self, log: &str) -> (String, String) {
        // The port the server tried: its hint names it (a setting may have
        // moved it from the one asked for).
        let port = log
            .split("on port ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(self.port);
        if log.contains("could not bind") && log.contains("Permission denied") {
            (
                format!("port {port} is below 1024, which only root may bind, and PostgreSQL never runs as root"),
                "choose a port from 1024 up".into(),
            )
        } else if log.contains("Address already in use") {
            (
                format!("port {port} is taken by another program"),
                "choose a free port".into(),
            )
        } else if log.contains("Permission denied") {
            (
                "the environment user may not read or write something the server needs (permission denied)".into(),
                format!("check the owner and mode of {} and its parents", self.data_dir),
            )
        } else if log.contains("database files are incompatible with server") {
            (
                "the data was made by another major version of PostgreSQL".into(),
                "use the repository of that version".into(),
            )
        } else if let Some(line) = log.lines().find(|l| {
            l.contains("invalid value for parameter")
                || l.contains("unrecognized configuration parameter")
        }) {
            (
                format!("a setting is not valid ({})", server_message(line)),
                "fix or remove the setting (--set, config.set)".into(),
            )
        } else if log.contains("could not create shared memory")
            || log.contains("could not map anonymous shared memory")
        {
            (
                "there is not enough shared memory".into(),
                "lower shared_buffers, or free memory".into(),
            )
        } else {
            (
                "see the server log below".into(),
                format!("see {}", self.log_file),
            )
        }
    }

    /// Writes a file only its owner can read, the content through standard
    /// input (in no process's argv or environment).
    pub fn write_private_file(
        platform: &Platform,
        path: &str,
        content: &str,
    ) -> Result<(), OperationError> {
        let mut request = CommandRequest {
            command: r#"umask 077; cat > "$FILE.tmp" && chmod 0600 -- "$FILE.tmp" && mv -f -- "$FILE.tmp" "$FILE""#.to_owned(),
            stdin: Some(format!("{content}\n")),
            ..CommandRequest::default()
        };
        request.variables.insert("FILE".to_owned(), path.to_owned());
        platform.run_ok(&format!("writing {path}"), &request)?;
        Ok(())
    }

    /// Bytes of the data directory on disk.
    pub fn data_size(&self, platform: &Platform) -> Result<u64, OperationError> {
        let out = platform.run_ok(
            &format!("measuring {}", self.data_dir),
            &self.request(r#"du -sb -- "$PGDATA_DIR" | cut -f1"#, Vec::new()),
        )?;
        Ok(out.stdout.trim().parse().unwrap_or(0))
    }

    /// Stops the cluster (fast shutdown) if it runs.
    pub fn stop(&self, platform: &Platform) -> Result<(), OperationError> {
        if !self.is_running(platform)? {
            return Ok(());
        }
        platform.run_ok(
            &format!("stopping PostgreSQL in {}", self.data_dir),
            &self.request(
                r#""$BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 300 stop"#,
                Vec::new(),
            ),
        )?;
        Ok(())
    }

    /// Runs a psql script (static text; inputs as psql variables `:'name'`)
    /// on database `postgres`; returns the unaligned, tuples-only output.
    pub fn psql(
        &self,
        platform: &Platform,
        what: &str,
        script: &str,
        vars: &[(&str, &str)],
    ) -> Result<String, OperationError> {
        let mut extra = vec![("PSQL_SCRIPT".to_owned(), script.to_owned())];
        let mut args = String::new();
        for (i, (name, value)) in vars.iter().enumerate() {
            // The psql variable name is ours (a fixed identifier); the value
            // travels in the environment and psql quotes it at :'name'.
            let var = format!("PSQL_VAR_{i}");
            args.push_str(&format!(" -v \"{name}=${{{var}}}\""));
            extra.push((var, (*value).to_owned()));
        }
        let command = format!(
            r#"printf '%s\n' "$PSQL_SCRIPT" | "$BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U "${{PGVIRT_DBUSER:-postgres}}" -d postgres{args} -f -"#
        );
        let out = platform.run_ok(what, &self.request(&command, extra))?;
        Ok(out.stdout)
    }
}

/// A server log line without its time, pid and level.
fn server_message(line: &str) -> &str {
    ["FATAL:", "ERROR:", "LOG:", "PANIC:"]
        .iter()
        .find_map(|level| line.split_once(level).map(|(_, rest)| rest.trim()))
        .unwrap_or(line.trim())
}

/// The server log lines worth showing: without pg_ctl's waiting dots and
/// its complaints about the pid file of a server that never came up.
fn log_tail(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| {
            let l = l.trim();
            let noise = l.is_empty()
                || l.starts_with("waiting for server")
                || l.starts_with("---")
                || (l.starts_with("pg_ctl:") && l.contains("No such file or directory"))
                || l.starts_with("pg_ctl: could not start server")
                || l.starts_with("Examine the log output");
            !noise
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The name of the WAL segment file holding byte position `lsn`.
pub fn segment_file(timeline: u64, lsn: u64, segment_size: u64) -> String {
    let size = segment_size.max(1);
    let segno = lsn / size;
    let per_id = 0x1_0000_0000 / size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// Exits 0 when the postmaster of `$PGDATA_DIR` runs (and is no zombie).
const RUNNING: &str = r#"
pid=$(head -n 1 -- "$PGDATA_DIR/postmaster.pid" 2>/dev/null) || exit 1
[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || exit 1
state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)
case $state in Z|X|"") exit 1;; esac
# The postmaster runs in its data directory: a pid file copied from another
# running cluster (a clone not yet cleaned) names a server of another one.
[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(cd -- "$PGDATA_DIR" 2>/dev/null && pwd -P)" ] || exit 1
"$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
"#;

/// The configuration pgvirt owns in a cluster's data directory.
pub struct ClusterConfig {
    /// Settings written to `pgvirt.conf`, included last (so they win).
    pub settings: Vec<(String, String)>,
    /// Settings commented out where the cluster's own files set them.
    pub comment_out: Vec<String>,
    /// The whole `pg_hba.conf`.
    pub hba: Vec<String>,
    /// The signal file to leave (`standby.signal`, `recovery.signal`), if any.
    pub signal: Option<&'static str>,
}

/// Settings a cluster's own files may not decide: pgvirt places the
/// cluster's files itself.
const ALWAYS_COMMENTED_OUT: [&str; 5] = [
    "data_directory",
    "external_pid_file",
    "include_dir",
    "hba_file",
    "ident_file",
];

/// Adds the user's configuration overlay (`{"set": {...}, "comment_out":
/// [...]}`, as in the `config` and `staging_config` parameters) to
/// `settings`, and returns what to comment out: the user's list after the
/// settings pgvirt always owns.
pub fn user_overlay(settings: &mut Vec<(String, String)>, overlay: Option<&Value>) -> Vec<String> {
    let mut comment_out: Vec<String> = ALWAYS_COMMENTED_OUT
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if let Some(overlay) = overlay {
        if let Some(set) = overlay.get("set").and_then(Value::as_object) {
            settings.extend(set.iter().map(|(k, v)| (k.clone(), conf_value(v))));
        }
        if let Some(list) = overlay.get("comment_out").and_then(Value::as_array) {
            comment_out.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    comment_out
}

impl Cluster {
    /// Writes `config` into the data directory. Recovery and replication
    /// settings the cluster's own files carry are commented out, so only
    /// `pgvirt.conf` decides them.
    pub fn write_config(
        &self,
        platform: &Platform,
        config: &ClusterConfig,
    ) -> Result<(), OperationError> {
        let conf: String = config
            .settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let extra = vec![
            (
                "PGVIRT_CONF".to_owned(),
                format!("# written by pgvirt (included last: these win)\n{conf}"),
            ),
            ("COMMENT_OUT".to_owned(), config.comment_out.join(" ")),
            (
                "HBA".to_owned(),
                format!("# written by pgvirt\n{}\n", config.hba.join("\n")),
            ),
            ("SIGNAL".to_owned(), config.signal.unwrap_or("").to_owned()),
        ];
        let script = r#"
set -eu
umask 077
cd -- "$PGDATA_DIR"
[ -f postgresql.conf ] || : > postgresql.conf
[ -f pg_ident.conf ] || : > pg_ident.conf
printf '%s' "$HBA" > pg_hba.conf
for name in $COMMENT_OUT primary_conninfo primary_slot_name restore_command archive_command \
    recovery_target recovery_target_lsn recovery_target_name recovery_target_time recovery_target_xid \
    recovery_target_inclusive recovery_target_action recovery_target_timeline; do
  for f in postgresql.conf postgresql.auto.conf; do
    [ -f "$f" ] && sed -i -E "s/^([[:space:]]*${name}[[:space:]]*(=|[[:space:]]))/#pgvirt# \1/" "$f"
  done
done
printf '%s' "$PGVIRT_CONF" > pgvirt.conf
grep -qx "include 'pgvirt.conf'" postgresql.conf || printf '\n%s\n' "include 'pgvirt.conf'" >> postgresql.conf
rm -f standby.signal recovery.signal
[ -n "$SIGNAL" ] && : > "$SIGNAL"
exit 0
"#;
        let request = self.request(script, extra);
        platform.run_ok(
            &format!("writing the configuration of {}", self.data_dir),
            &request,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_user_overlay_adds_settings_and_comments_out_after_what_pgvirt_owns() {
        let mut settings = vec![("port".to_owned(), "5433".to_owned())];
        let overlay = json!({"set": {"work_mem": "7MB", "jit": false}, "comment_out": ["shared_preload_libraries"]});
        let out = user_overlay(&mut settings, Some(&overlay));
        assert_eq!(out[..5], ALWAYS_COMMENTED_OUT.map(str::to_owned));
        assert_eq!(out[5..], ["shared_preload_libraries".to_owned()]);
        assert_eq!(settings[0], ("port".to_owned(), "5433".to_owned()));
        assert!(
            settings.contains(&("work_mem".to_owned(), "'7MB'".to_owned())),
            "{settings:?}"
        );
        assert_eq!(settings.len(), 3);
        let mut none = Vec::new();
        assert_eq!(user_overlay(&mut none, None).len(), 5);
        assert!(none.is_empty());
    }
}
