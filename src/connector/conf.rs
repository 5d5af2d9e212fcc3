//! Values as PostgreSQL and libpq read them: postgresql.conf literals,
//! connection-string values, shell words, LSNs and sizes. Every input that
//! reaches a configuration file or a command is quoted here.

use serde_json::Value;

/// `16MB` → bytes.
pub fn parse_size(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or(16);
    match text[digits.len()..].trim() {
        "kB" => n * 1024,
        "MB" => n * 1024 * 1024,
        "GB" => n * 1024 * 1024 * 1024,
        _ => n,
    }
}

/// Parses `16/B374D848` into a byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A postgresql.conf string literal.
/// Backslashes, quotes and line ends are escaped (postgresql.conf reads
/// `\n` and `\r` back as themselves; a raw line end would end the file's line).
pub fn conf_quote(value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    format!("'{escaped}'")
}

/// A postgresql.conf value from JSON: numbers and booleans bare, strings quoted.
pub fn conf_value(value: &Value) -> String {
    match value {
        Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => conf_quote(s),
        other => conf_quote(&other.to_string()),
    }
}

/// A libpq connection-string value.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A POSIX shell word.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoting_survives_hostile_values() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(
            conf_quote("a\nb"),
            r"'a\nb'",
            "a line end stays inside the string"
        );
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(shell_quote("/x'; rm -rf /"), r"'/x'\''; rm -rf /'");
        assert_eq!(conf_value(&json!(true)), "on");
        assert_eq!(conf_value(&json!(128)), "128");
        assert_eq!(conf_value(&json!("64MB")), "'64MB'");
    }

    #[test]
    fn reads_lsns_and_sizes() {
        assert_eq!(parse_lsn("1/10"), Some((1 << 32) + 16));
        assert_eq!(parse_size("16MB"), 16 * 1024 * 1024);
    }
}
