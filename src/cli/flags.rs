//! Flags become documents: a `--params FILE` to start from, each flag
//! setting one field. The engine validates the document against the
//! connector's schema, as it would a file; [`Given`] then names the flag in
//! each problem found at a field a flag set (`--port
//! (virtual-source parameters#/port): 80 is less than the minimum of 1024`).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::host::{Error, Problem};

/// Which installed connector a command uses.
#[derive(clap::Args, Debug)]
pub struct ConnectorArg {
    /// Installed connector to use (name or id); default: the only one.
    #[arg(long)]
    pub connector: Option<String>,
}

/// The flags a command was given, with the JSON Pointer each one set.
#[derive(Default)]
pub struct Given {
    set: Vec<(&'static str, &'static str)>,
}

impl Given {
    /// Sets `pointer` in `doc` to `value` (making objects on the way) and
    /// remembers that `flag` did.
    pub fn set(
        &mut self,
        doc: &mut Value,
        flag: &'static str,
        pointer: &'static str,
        value: Value,
    ) {
        let mut cursor = doc;
        let parts: Vec<&str> = pointer.split('/').skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            if !cursor.is_object() {
                *cursor = json!({});
            }
            let Value::Object(map) = cursor else { return };
            if i + 1 == parts.len() {
                map.insert((*part).to_owned(), value);
                break;
            }
            cursor = map
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        self.set.push((flag, pointer));
    }

    /// Names the flags in an engine error's problems.
    pub fn name_flags(&self, error: Error) -> Error {
        match error {
            Error::Invalid { what, problems } => Error::Invalid {
                what,
                problems: problems
                    .into_iter()
                    .map(|p| {
                        let pointer = p.at.split_once('#').map(|(_, ptr)| ptr).unwrap_or("");
                        match self.set.iter().find(|(_, at)| {
                            pointer == *at || pointer.starts_with(&format!("{at}/"))
                        }) {
                            Some((flag, _)) => Problem {
                                at: format!("{flag} ({})", p.at),
                                message: p.message,
                            },
                            None => p,
                        }
                    })
                    .collect(),
            },
            other => other,
        }
    }
}

/// A size: bytes, or with a unit (K, M, G, T; powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 10G, 512M)"))?;
    let k = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text:?} is not a size (like 10G, 512M)")),
    };
    n.checked_mul(k)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `NAME=VALUE` pairs as a JSON object of settings (numbers stay numbers).
pub fn settings(pairs: &[String], flag: &str) -> Result<Map<String, Value>, Error> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("{flag} {pair:?} must be NAME=VALUE")))?;
        let value = v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(v));
        map.insert(k.trim().to_owned(), value);
    }
    Ok(map)
}

/// The document in `--params FILE` (an object), or an empty one.
pub fn object_from(file: &Option<PathBuf>) -> Result<Value, Error> {
    let doc = match file {
        Some(f) => read_document(f)?,
        None => json!({}),
    };
    if !doc.is_object() {
        return Err(Error::usage("--params must hold a JSON object"));
    }
    Ok(doc)
}

pub fn read_document(path: &Path) -> Result<Value, Error> {
    crate::host::files::read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn a_problem_at_a_field_a_flag_set_names_the_flag() {
        let mut given = Given::default();
        let mut doc = json!({});
        given.set(&mut doc, "--source-port", "/source/port", json!(80));
        assert_eq!(doc, json!({"source": {"port": 80}}));
        let err = given.name_flags(Error::invalid(
            "doc",
            vec![
                Problem {
                    at: "doc#/source/port".into(),
                    message: "too low".into(),
                },
                Problem {
                    at: "doc#/other".into(),
                    message: "x".into(),
                },
            ],
        ));
        let text = err.to_string();
        assert!(
            text.contains("--source-port (doc#/source/port): too low"),
            "{text}"
        );
        assert!(text.contains("  doc#/other: x"), "{text}");
    }
}
