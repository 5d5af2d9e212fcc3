//! WAL kept on the timeflow: staging archives every segment it replays
//! (`archive_mode = always`) into the dSource's WAL dataset, durably (copied,
//! synced, renamed, the directory synced); at each snapshot the segment in
//! progress is kept too, as `<segment>.partial-<end LSN>`, so the WAL up to
//! every snapshot is there before its segment completes. From it, a VDB
//! recovers to any moment in a range; what is no longer needed is pruned.

use serde_json::{json, Value};

use super::Staging;
use crate::abi::{ErrorKind, OperationError};
use crate::connector::cluster::segment_file;
use crate::connector::conf::{conf_quote, parse_lsn, shell_quote};
use crate::connector::platform::{field, request, str_field, Platform};

/// The `archive_command` that keeps each segment in `dir`, durably; a
/// segment kept already with the same bytes is done, different bytes fail.
fn archive_command(dir: &str) -> String {
    let dir = shell_quote(dir);
    format!(
        "f={dir}/%f; if [ -f \"$f\" ]; then cmp -s %p \"$f\"; exit $?; fi; cp %p \"$f.part\" && sync \"$f.part\" && mv \"$f.part\" \"$f\" && sync {dir}"
    )
}

/// Archiving every segment into `dir` ([`archive_command`]).
pub fn archive_settings(dir: &str) -> Vec<(String, String)> {
    settings_with(archive_command(dir))
}

/// The archive settings of a VDB: as [`archive_settings`], but a segment
/// is kept only once `dir/.keep` exists (the VDB's first snapshot makes
/// it): WAL older than every snapshot of it can recover nothing.
pub fn archive_settings_after_snapshot(dir: &str) -> Vec<(String, String)> {
    let marker = shell_quote(&format!("{dir}/.keep"));
    settings_with(format!(
        "[ -e {marker} ] || exit 0; {}",
        archive_command(dir)
    ))
}

fn settings_with(command: String) -> Vec<(String, String)> {
    vec![
        ("archive_mode".into(), "always".into()),
        ("archive_command".into(), conf_quote(&command)),
        ("archive_timeout".into(), "0".into()),
    ]
}

/// The `restore_command` that reads segments from `dir` (read-only): a whole
/// segment, else the longest partial one kept for it.
pub fn restore_command(dir: &str) -> String {
    let dir = shell_quote(dir);
    conf_quote(&format!(
        "cp {dir}/%f %p 2>/dev/null || {{ p=$(ls -1 {dir}/%f.partial-* 2>/dev/null | sort | tail -n 1); [ -n \"$p\" ] && cp \"$p\" %p; }}"
    ))
}

/// Keeps the segment holding `upto` (and any not archived yet since
/// `from`) from staging's pg_wal in the WAL dataset, as partials up to the
/// WAL staging has flushed: the WAL a snapshot's range starts from is kept
/// even before its segment completes.
pub fn keep_partial(
    platform: &Platform,
    staging: &Staging,
    timeline: u64,
    from: &str,
    upto: &str,
    segment_size: u64,
) -> Result<(), OperationError> {
    let Some(dir) = &staging.wal else {
        return Ok(());
    };
    let (Some(from), Some(upto)) = (parse_lsn(from), parse_lsn(upto)) else {
        return Ok(());
    };
    let flushed = staging
        .cluster
        .psql(
            platform,
            "reading what staging has received",
            "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text;",
            &[],
        )?
        .trim()
        .to_owned();
    let end = parse_lsn(&flushed).unwrap_or(upto).max(upto);
    let first = from / segment_size;
    let last = upto / segment_size;
    let names: Vec<String> = (first..=last)
        .map(|seg| segment_file(timeline, seg * segment_size, segment_size))
        .collect();
    // Segments before the last are whole (WAL went on past them): kept
    // under their own names. The last is kept as a partial, named by the
    // end of the WAL it holds.
    let script = r#"
set -eu
umask 077
keep() { # source, final name
  [ -f "$WAL/$2" ] && return 0
  cp --reflink=auto -- "$1" "$WAL/$2.keep.tmp" && sync -- "$WAL/$2.keep.tmp" && mv -- "$WAL/$2.keep.tmp" "$WAL/$2"
}
for seg in $WHOLE; do
  [ -f "$DATA/pg_wal/$seg" ] && keep "$DATA/pg_wal/$seg" "$seg"
done
if [ -n "$LAST" ] && [ ! -f "$WAL/$LAST" ] && [ -f "$DATA/pg_wal/$LAST" ]; then
  keep "$DATA/pg_wal/$LAST" "$LAST.partial-$END"
  for old in "$WAL/$LAST".partial-*; do [ "$old" = "$WAL/$LAST.partial-$END" ] || rm -f -- "$old"; done
fi
sync -- "$WAL"
"#;
    platform.run_ok(
        "keeping the WAL in progress",
        &request(
            script,
            &[
                ("WAL", dir.clone()),
                ("DATA", staging.cluster.data_dir.clone()),
                ("WHOLE", names[..names.len() - 1].join(" ")),
                ("LAST", names.last().cloned().unwrap_or_default()),
                ("END", format!("{end:016X}")),
            ],
        ),
    )?;
    Ok(())
}

/// What the WAL dataset in `wal.path` holds contiguously from `from_lsn`
/// on `timeline`: up to which LSN, the commit time of its last
/// transaction, and its size. `linked.wal_range` and `virtual.wal_range`.
pub fn range(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let dir = str_field(field(input, "wal")?, "path", "wal")?.to_owned();
    let bin = crate::connector::cluster::Cluster::bin_dir(input)?;
    let from = input
        .get("from_lsn")
        .and_then(Value::as_str)
        .and_then(parse_lsn)
        .ok_or_else(|| OperationError::new(ErrorKind::InvalidInput, "input has no from_lsn"))?;
    let timeline = input.get("timeline").and_then(Value::as_u64).unwrap_or(1);
    let size = input
        .get("wal_segment_size")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .unwrap_or(16 * 1024 * 1024);
    // Walk segments from the one holding `from` while they are kept whole,
    // then take the partial after them, if any; its name says its end.
    let listing = platform.run_ok(
        "listing the kept WAL",
        &request(
            r#"ls -1 -- "$WAL" 2>/dev/null; true"#,
            &[("WAL", dir.clone())],
        ),
    )?;
    let files: std::collections::BTreeSet<&str> = listing.stdout.lines().collect();
    let mut seg = from / size;
    let mut end = from;
    let mut last_file = None;
    let mut bytes = 0u64;
    loop {
        let name = segment_file(timeline, seg * size, size);
        if files.contains(name.as_str()) {
            end = (seg + 1) * size;
            bytes += size;
            last_file = Some(name);
            seg += 1;
            continue;
        }
        let prefix = format!("{name}.partial-");
        let partial = files
            .iter()
            .filter(|f| f.starts_with(&prefix))
            .filter_map(|f| Some((u64::from_str_radix(&f[prefix.len()..], 16).ok()?, *f)))
            .max();
        match partial {
            // A partial that reaches past its segment is the whole segment.
            Some((e, f)) if e >= (seg + 1) * size => {
                end = (seg + 1) * size;
                bytes += size;
                last_file = Some(f.to_owned());
                seg += 1;
            }
            Some((e, f)) if e > end => {
                end = e;
                bytes += e - seg * size;
                last_file = Some(f.to_owned());
                break;
            }
            _ => break,
        }
    }
    let to_time = match &last_file {
        Some(file) => last_commit_time(platform, &bin, &dir, file)?,
        None => None,
    };
    Ok(json!({
        "from_lsn": lsn_text(from),
        "to_lsn": lsn_text(end),
        "to_time": to_time,
        "bytes": bytes,
    }))
}

/// The commit time (UTC, RFC 3339) of the last transaction in a kept
/// segment (or the one before it), read with `pg_waldump`.
fn last_commit_time(
    platform: &Platform,
    bin: &str,
    dir: &str,
    file: &str,
) -> Result<Option<String>, OperationError> {
    let script = r#"
set -u
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
seg=${FILE%%.partial-*}
cp -- "$WAL/$FILE" "$tmp/$seg"
TZ=UTC "$BIN/pg_waldump" --rmgr=Transaction "$tmp/$seg" 2>/dev/null \
  | sed -n -E 's/.*desc: COMMIT ([0-9-]+ [0-9:.]+) UTC.*/\1/p' | tail -n 1
"#;
    let out = platform.run_ok(
        "reading the last commit in the kept WAL",
        &request(
            script,
            &[
                ("WAL", dir.to_owned()),
                ("FILE", file.to_owned()),
                ("BIN", bin.to_owned()),
            ],
        ),
    )?;
    let text = out.stdout.trim();
    Ok((!text.is_empty()).then(|| format!("{}Z", text.replacen(' ', "T", 1))))
}

/// Removes kept WAL segments that end at or before `before_lsn` (the host
/// says what no kept snapshot and no range needs). `*.wal_prune`.
pub fn prune(platform: &Platform, input: &Value) -> Result<Value, OperationError> {
    let dir = str_field(field(input, "wal")?, "path", "wal")?.to_owned();
    let before = input
        .get("before_lsn")
        .and_then(Value::as_str)
        .and_then(parse_lsn)
        .ok_or_else(|| OperationError::new(ErrorKind::InvalidInput, "input has no before_lsn"))?;
    let size = input
        .get("wal_segment_size")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .unwrap_or(16 * 1024 * 1024);
    let listing = platform.run_ok(
        "listing the kept WAL",
        &request(
            r#"ls -1 -- "$WAL" 2>/dev/null; true"#,
            &[("WAL", dir.clone())],
        ),
    )?;
    // Islands to keep below `before_lsn`: [from, to] LSN pairs.
    let keep: Vec<(u64, u64)> = input
        .get("keep")
        .and_then(Value::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| {
                    let lsn = |i: usize| p.get(i).and_then(Value::as_str).and_then(parse_lsn);
                    Some((lsn(0)?, lsn(1)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut doomed = Vec::new();
    for file in listing.stdout.lines() {
        let seg = &file[..file.len().min(24)];
        if seg.len() != 24 || !seg.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let (Ok(hi), Ok(lo)) = (
            u64::from_str_radix(&seg[8..16], 16),
            u64::from_str_radix(&seg[16..24], 16),
        ) else {
            continue;
        };
        let per_id = 0x1_0000_0000 / size;
        let start = (hi * per_id + lo) * size;
        let end = start + size;
        // A segment holds [start, end): needed by an island that overlaps it.
        // (The island's end is where its WAL stops: exclusive too.)
        let needed = keep.iter().any(|(from, to)| *from < end && start < *to);
        if end <= before && !needed {
            doomed.push(file.to_owned());
        }
    }
    if !doomed.is_empty() {
        platform.run_ok(
            "pruning kept WAL",
            &request(
                r#"cd -- "$WAL" && for f in $FILES; do rm -f -- "$f"; done && sync -- "$WAL""#,
                &[("WAL", dir), ("FILES", doomed.join(" "))],
            ),
        )?;
    }
    Ok(json!({"removed": doomed.len()}))
}

/// `0/5A000000` form.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_and_restore_commands_quote_the_directory() {
        let a = archive_settings("/pool/mounts/dsource-x-wal");
        assert_eq!(a[0].1, "always");
        // Quoted for the shell, then for postgresql.conf (quotes doubled).
        assert!(
            a[1].1.contains("f=''/pool/mounts/dsource-x-wal''/%f"),
            "{}",
            a[1].1
        );
        assert!(restore_command("/w").contains("cp ''/w''/%f %p"));
        assert_eq!(lsn_text(0x1_0000_00A0), "1/A0");
    }
}
