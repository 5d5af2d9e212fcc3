//! Point in time: the provisionable ranges of a container's timeflows — its
//! snapshots and the WAL kept after them — and the snapshot and recovery
//! target a moment resolves to. A moment outside every range is refused,
//! with the ranges.
//!
//! What the WAL dataset holds is the connector's to read (`wal_range`); the
//! callers hand it in as a function, so this module knows no container.

use std::str::FromStr;

use serde::Serialize;
use serde_json::{json, Value};

use super::timeflow::Snapshot;
use crate::host::error::{Error, Result};

/// A moment to provision at.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The database as of this LSN (records that start before it).
    Lsn { text: String, lsn: u64 },
    /// Every transaction committed at or before this time.
    Time(jiff::Timestamp),
}

impl Target {
    /// Whether the moment lies past snapshot `s` (an LSN target at its
    /// very point is the snapshot itself: no recovery past it is asked).
    pub fn past(&self, s: &Snapshot) -> bool {
        match self {
            Self::Lsn { lsn, .. } => point(s).is_none_or(|(at, _)| *lsn != at),
            Self::Time(_) => true,
        }
    }

    /// `--at`: RFC 3339 or ISO 8601, with a zone or offset (`Z`, `+00`,
    /// `+05:30`); without one, in this host's time zone.
    pub fn parse_time(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        if let Ok(t) = jiff::Timestamp::from_str(trimmed) {
            return Ok(Self::Time(t));
        }
        if let Ok(z) = jiff::Zoned::from_str(trimmed) {
            return Ok(Self::Time(z.timestamp()));
        }
        match jiff::civil::DateTime::from_str(trimmed) {
            Ok(local) => local
                .to_zoned(jiff::tz::TimeZone::system())
                .map(|z| Self::Time(z.timestamp()))
                .map_err(|e| Error::usage(format!("--at {text:?}: {e}"))),
            Err(e) => Err(Error::usage(format!(
                "--at {text:?} is not a time (like '2026-12-02 14:03:00+00'): {e}"
            ))),
        }
    }

    /// `--at-lsn`: `0/5A000000`.
    pub fn parse_lsn(text: &str) -> Result<Self> {
        parse_lsn(text)
            .map(|lsn| Self::Lsn {
                text: lsn_text(lsn),
                lsn,
            })
            .ok_or_else(|| {
                Error::usage(format!("--at-lsn {text:?} is not an LSN (like 0/5A000000)"))
            })
    }

    /// What the connector gets as `recovery_target`.
    pub fn to_input(&self) -> Value {
        match self {
            Self::Lsn { text, .. } => json!({ "lsn": text }),
            // A numeric offset: PostgreSQL reads its configuration before
            // it knows zone abbreviations such as `Z`.
            Self::Time(t) => json!({ "time": t.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string() }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lsn { text, .. } => write!(f, "LSN {text}"),
            Self::Time(t) => write!(f, "{t}"),
        }
    }
}

/// What the WAL dataset holds from an LSN on (the connector's answer).
#[derive(Debug, Clone, Default)]
pub struct Kept {
    pub to_lsn: u64,
    pub to_time: Option<jiff::Timestamp>,
    pub bytes: u64,
}

impl Kept {
    /// Reads `wal_range`'s output.
    pub fn from_output(out: &Value) -> Self {
        Self {
            to_lsn: out["to_lsn"].as_str().and_then(parse_lsn).unwrap_or(0),
            to_time: out["to_time"]
                .as_str()
                .and_then(|t| jiff::Timestamp::from_str(t).ok()),
            bytes: out["bytes"].as_u64().unwrap_or(0),
        }
    }
}

/// One provisionable range: from a snapshot to the end of the WAL kept
/// after it (and after the snapshots within it).
#[derive(Debug, Clone, Serialize)]
pub struct Range {
    pub timeflow: i64,
    pub from_lsn: String,
    pub from_time: String,
    pub to_lsn: String,
    /// The last commit in the range (a time target must come before it).
    pub to_time: Option<String>,
    /// The snapshots that hold it (a range starts at its first).
    pub snapshots: Vec<i64>,
    /// Bytes of WAL kept for it.
    pub wal_bytes: u64,
    #[serde(skip)]
    lsns: (u64, u64),
    #[serde(skip)]
    times: (jiff::Timestamp, Option<jiff::Timestamp>),
}

/// A snapshot's point: its LSN and when it was taken.
pub fn point(s: &Snapshot) -> Option<(u64, jiff::Timestamp)> {
    let lsn = s.metadata["replayed_lsn"]
        .as_str()
        .or_else(|| s.metadata["checkpoint_lsn"].as_str())
        .and_then(parse_lsn)?;
    let time = s.metadata["taken_at"]
        .as_str()
        .and_then(|t| jiff::Timestamp::from_str(t).ok())
        .or_else(|| jiff::Timestamp::from_second(s.created_at).ok())?;
    Some((lsn, time))
}

/// The ranges of a container's snapshots. `kept(snapshot)` asks what WAL is
/// kept from that snapshot on.
pub fn ranges(
    snapshots: &[Snapshot],
    mut kept: impl FnMut(&Snapshot) -> Result<Kept>,
) -> Result<Vec<Range>> {
    let mut points: Vec<(&Snapshot, u64, jiff::Timestamp)> = snapshots
        .iter()
        .filter(|s| s.metadata["provisionable"] == json!(true))
        .filter_map(|s| point(s).map(|(l, t)| (s, l, t)))
        .collect();
    points.sort_by_key(|(s, l, _)| (s.timeflow_id, *l));
    let mut out: Vec<Range> = Vec::new();
    for (s, lsn, time) in points {
        if let Some(r) = out.last_mut() {
            if r.timeflow == s.timeflow_id && lsn <= r.lsns.1 {
                r.snapshots.push(s.id);
                continue;
            }
        }
        let k = kept(s)?;
        let end = k.to_lsn.max(lsn);
        out.push(Range {
            timeflow: s.timeflow_id,
            from_lsn: lsn_text(lsn),
            from_time: time.to_string(),
            to_lsn: lsn_text(end),
            to_time: k.to_time.filter(|t| *t > time).map(|t| t.to_string()),
            snapshots: vec![s.id],
            wal_bytes: k.bytes,
            lsns: (lsn, end),
            times: (time, k.to_time.filter(|t| *t > time)),
        });
    }
    Ok(out)
}

/// The snapshot a target is provisioned from (the latest at or before it,
/// in the range that holds it), or an error that prints the ranges.
pub fn resolve<'a>(
    snapshots: &'a [Snapshot],
    ranges: &[Range],
    target: &Target,
    what: &str,
) -> Result<&'a Snapshot> {
    let holds = |r: &Range| match target {
        Target::Lsn { lsn, .. } => r.lsns.0 <= *lsn && *lsn <= r.lsns.1,
        Target::Time(t) => r.times.0 <= *t && r.times.1.is_some_and(|end| *t < end),
    };
    // An LSN can lie on several timeflows (a rewound VDB's LSNs go on from
    // its branch point): the newest holds the moment the VDB has now.
    let Some(range) = ranges.iter().rev().find(|r| holds(r)) else {
        return Err(Error::Conflict(format!(
            "{target} is outside every provisionable range of {what}:\n{}",
            describe(ranges)
        )));
    };
    snapshots
        .iter()
        .filter(|s| range.snapshots.contains(&s.id))
        .filter_map(|s| point(s).map(|(l, t)| (s, l, t)))
        .filter(|(_, l, t)| match target {
            Target::Lsn { lsn, .. } => l <= lsn,
            Target::Time(at) => t <= at,
        })
        .max_by_key(|(_, l, _)| *l)
        .map(|(s, _, _)| s)
        .ok_or_else(|| Error::Conflict(format!("no snapshot of {what} lies at or before {target}")))
}

/// The ranges, a line each, for people.
pub fn describe(ranges: &[Range]) -> String {
    if ranges.is_empty() {
        return "  (none: no provisionable snapshot)".into();
    }
    ranges
        .iter()
        .map(|r| {
            format!(
                "  from {} ({}) to {} ({}), held by snapshot{} {}",
                r.from_time,
                r.from_lsn,
                r.to_time.as_deref().unwrap_or("its snapshot's time"),
                r.to_lsn,
                if r.snapshots.len() == 1 { "" } else { "s" },
                r.snapshots
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `16/B374D848` into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// `0/5A000000` form.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: i64, tf: i64, lsn: &str, at: &str) -> Snapshot {
        Snapshot {
            id,
            timeflow_id: tf,
            dataset_snapshot_id: id,
            metadata: json!({"replayed_lsn": lsn, "taken_at": at, "provisionable": true}),
            created_at: 0,
            prepared_id: None,
        }
    }

    #[test]
    fn times_read_with_their_zone() {
        let a = Target::parse_time("2026-12-02 14:03:00+00").expect("offset");
        let b = Target::parse_time("2026-12-02T19:33:00+05:30").expect("offset");
        assert_eq!(a, b);
        assert!(Target::parse_time("yesterday-ish").is_err());
        assert!(Target::parse_lsn("0/5A000000").is_ok());
        assert!(Target::parse_lsn("5A000000").is_err());
    }

    #[test]
    fn a_target_resolves_to_the_latest_snapshot_before_it_or_is_refused() {
        let snaps = vec![
            snap(1, 1, "0/1000000", "2026-12-02T10:00:00Z"),
            snap(2, 1, "0/3000000", "2026-12-02T10:05:00Z"),
        ];
        let ranges = ranges(&snaps, |s| {
            Ok(Kept {
                to_lsn: if s.id == 1 { 0x500_0000 } else { 0 },
                to_time: jiff::Timestamp::from_str("2026-12-02T10:10:00Z").ok(),
                bytes: 1,
            })
        })
        .expect("ranges");
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert_eq!(ranges[0].snapshots, vec![1, 2]);
        let t = Target::parse_time("2026-12-02T10:06:00Z").expect("time");
        assert_eq!(resolve(&snaps, &ranges, &t, "x").expect("held").id, 2);
        let t = Target::parse_lsn("0/2000000").expect("lsn");
        assert_eq!(resolve(&snaps, &ranges, &t, "x").expect("held").id, 1);
        let before = Target::parse_time("2026-12-02T09:59:59Z").expect("time");
        let err = resolve(&snaps, &ranges, &before, "dSource x").expect_err("refused");
        assert!(
            err.to_string()
                .contains("outside every provisionable range"),
            "{err}"
        );
        let after = Target::parse_time("2026-12-02T10:10:00Z").expect("time");
        assert!(
            resolve(&snaps, &ranges, &after, "x").is_err(),
            "not past the last commit"
        );
    }
}
