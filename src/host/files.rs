//! Small file operations the engine needs with exact permissions: private
//! directories, modes, atomic writes, checksums.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// Creates `dir` (and parents) with mode 0700 for what it creates.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot chmod", path, e))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers see the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("cannot create a file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("cannot write", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("cannot sync", tmp.path(), e))?;
    set_mode(tmp.path(), mode)?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot replace", path, e.error))?;
    Ok(())
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Reads and parses a JSON file; a parse error names the file, line and column.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            vec![super::error::Problem {
                at: format!("{}:{}:{}", path.display(), e.line(), e.column()),
                message: format!("not valid JSON: {e}"),
            }],
        )
    })
}

/// What a path that may reach a shell (directly, or through a tool that
/// uses one, as `pg_ctl` does) may hold, for error messages.
pub const PLAIN_PATH_CHARACTERS: &str = "letters, digits and / . _ - + @";

/// Checks a path holds only [`PLAIN_PATH_CHARACTERS`] and no `..`
/// component. The error says which character is not allowed.
pub fn check_plain_path(path: &Path) -> std::result::Result<(), String> {
    let text = path.to_str().ok_or("is not valid UTF-8")?;
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c)))
    {
        return Err(format!(
            "holds {c:?}; a path may hold only {PLAIN_PATH_CHARACTERS}"
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err("must not contain '..'".into());
    }
    if text.len() > 1024 {
        return Err("is longer than 1024 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_refuse_what_a_shell_would_read() {
        assert!(check_plain_path(Path::new("/srv/pg-data/v1.2_x+y@z")).is_ok());
        for bad in [
            "/srv/m $(touch /tmp/x)",
            "/srv/`id`",
            "/srv/\"q\"",
            "/srv/a;b",
            "/srv/a\nb",
            "/srv/../etc",
            "/srv/a b",
            "/srv/$HOME",
        ] {
            assert!(check_plain_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
