//! Secrets at rest: the values a connector's schemas mark
//! `"format": "password"` never sit in the store in plain text.
//!
//! A document is split before it is stored: the secret values leave it (a
//! JSON object from their JSON Pointers to the values) and are sealed with
//! the engine's own key (XChaCha20-Poly1305, a random nonce per seal, the
//! owning object's name as associated data, so a sealed blob cannot be moved
//! to another object). The key is a file of 32 random bytes beside the store
//! (`pgvirt.key`, mode 0600) or at `$PGVIRT_KEY_FILE`; a copy of the store
//! alone reveals nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};

use super::error::{Error, Result};

/// Environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "PGVIRT_KEY_FILE";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// The engine's key, loaded.
pub struct Keyring {
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl Keyring {
    /// The key file to use for a store in `data_dir`.
    pub fn path_for(data_dir: &Path) -> PathBuf {
        std::env::var_os(KEY_FILE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("pgvirt.key"))
    }

    /// Loads the key at `path`, making one (0600) when there is none.
    /// A key file others can read is refused.
    pub fn open(path: &Path) -> Result<Self> {
        let key = match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path)
                    .map_err(|e| Error::io("cannot stat", path, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(Error::usage(format!(
                        "key file {} is readable by others (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
                if bytes.len() != KEY_LEN {
                    return Err(Error::usage(format!(
                        "key file {} holds {} bytes, not {KEY_LEN}: it is not a pgvirt key",
                        path.display(),
                        bytes.len()
                    )));
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path)?,
            Err(e) => return Err(Error::io("cannot read the key file", path, e)),
        };
        Ok(Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
            path: path.to_owned(),
        })
    }

    fn create(path: &Path) -> Result<Vec<u8>> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("cannot create the key file", path, e))?;
        file.write_all(&key)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write the key file", path, e))?;
        Ok(key.to_vec())
    }

    /// Seals `plain` for the object `owner`.
    pub fn seal(&self, owner: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| Error::usage("cannot seal a secret"))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    /// Opens what [`Keyring::seal`] sealed for `owner`.
    pub fn unseal(&self, owner: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(self.unreadable(owner));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| self.unreadable(owner))
    }

    fn unreadable(&self, owner: &str) -> Error {
        Error::usage(format!(
            "the secrets of {owner} cannot be opened with the key {} (another engine's key, or a damaged store)",
            self.path.display()
        ))
    }
}

/// What a secret's place holds in a stored document.
pub const MASK: &str = "********";

/// Replaces every property named in `fields`, anywhere in `doc`, by
/// [`MASK`]; returns the values by JSON Pointer.
pub fn split(doc: &Value, fields: &[String]) -> (Value, BTreeMap<String, Value>) {
    let mut public = doc.clone();
    let mut taken = BTreeMap::new();
    take(&mut public, fields, "", &mut taken);
    (public, taken)
}

fn take(value: &mut Value, fields: &[String], at: &str, taken: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            let names: Vec<String> = map.keys().cloned().collect();
            for name in names {
                let pointer = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
                if fields.contains(&name) {
                    if let Some(v) = map.insert(name, Value::String(MASK.into())) {
                        taken.insert(pointer, v);
                    }
                } else if let Some(v) = map.get_mut(&name) {
                    take(v, fields, &pointer, taken);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                take(v, fields, &format!("{at}/{i}"), taken);
            }
        }
        _ => {}
    }
}

/// Puts split-off secrets back where they were (objects on the way are
/// made when missing).
pub fn merge(doc: &mut Value, secrets: BTreeMap<String, Value>) {
    for (pointer, value) in secrets {
        let Some((parent, last)) = pointer.rsplit_once('/') else {
            continue;
        };
        let mut at = String::new();
        for part in parent.split('/').skip(1) {
            let next = format!("{at}/{part}");
            if let Some(Value::Object(map)) = doc.pointer_mut(&at) {
                let key = part.replace("~1", "/").replace("~0", "~");
                map.entry(key).or_insert_with(|| Value::Object(Map::new()));
            }
            at = next;
        }
        if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
            map.insert(last.replace("~1", "/").replace("~0", "~"), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split_and_merge_round_trip() {
        let doc = json!({"source": {"host": "h", "replication_password": "pw"}, "n": [{"password": "x"}]});
        let fields = vec!["replication_password".to_owned(), "password".to_owned()];
        let (public, secrets) = split(&doc, &fields);
        assert_eq!(
            public,
            json!({"source": {"host": "h", "replication_password": MASK}, "n": [{"password": MASK}]})
        );
        assert_eq!(secrets.len(), 2);
        let mut back = public;
        merge(&mut back, secrets);
        assert_eq!(back, doc);
    }

    #[test]
    fn seals_for_one_owner_only_and_keeps_the_key_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let ring = Keyring::open(&path).expect("new key");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = ring.seal("dsource shop", b"hunter2").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let again = Keyring::open(&path).expect("same key");
        assert_eq!(
            again.unseal("dsource shop", &sealed).expect("open"),
            b"hunter2"
        );
        assert!(
            again.unseal("dsource other", &sealed).is_err(),
            "bound to its owner"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            Keyring::open(&path).is_err(),
            "a key others can read is refused"
        );
    }
}
