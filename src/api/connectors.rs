//! `/connectors`: list, and install or upgrade from the `connector.json`
//! that `pgvirt connector pack` makes, through the same code as `pgvirt
//! connector install` ([`registry::install`]): a lower version is refused
//! (409, naming both), the same version is a no-op, a higher one upgrades.
//!
//! The library travels apart from `connector.json` (which records its file
//! name and sha256): `PUT /connectors/libraries/{sha256}` first, then
//! `POST /connectors`.

use std::io::Write as _;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::Body;
use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::connectors::registry;
use crate::host::error::Error;
use crate::host::files;
use crate::host::store::Store;

/// The largest library an upload takes.
pub const LIBRARY_LIMIT: usize = 512 << 20;

/// Where uploaded libraries wait, by sha256.
fn uploads(store: &Store) -> std::path::PathBuf {
    store.data_dir().join("uploads")
}

#[utoipa::path(get, path = "/connectors", tag = "connectors",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_connectors(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing connectors".into(), |s| registry::list(s)).await?;
    Ok(Json(json!(all)))
}

/// Installs or upgrades a connector from its `connector.json` (upload its
/// library first).
#[utoipa::path(post, path = "/connectors", tag = "connectors",
    request_body(content = Object, description = "The connector.json that `pgvirt connector pack` makes"),
    responses((status = 200, description = "Installed (or already installed: `previous_version` equals the version)", body = Object),
        (status = 400, body = ErrorBody), (status = 409, description = "A downgrade", body = ErrorBody),
        (status = 422, description = "Its library was not uploaded", body = ErrorBody)))]
pub async fn upload_connector(
    State(state): State<AppState>,
    Body(bundle): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let what = "installing a connector".to_owned();
    let outcome = blocking(&state, what, move |store| {
        let (file, sha) = match (
            bundle.pointer("/library/file").and_then(Value::as_str),
            bundle.pointer("/library/sha256").and_then(Value::as_str),
        ) {
            (Some(f), Some(s)) if !f.contains('/') && is_sha256(s) => (f.to_owned(), s.to_owned()),
            _ => {
                return Err(Error::invalid(
                    "connector.json",
                    vec![crate::host::Problem {
                        at: "connector.json#/library".into(),
                        message: "must name the library's file and its sha256 (as `pgvirt connector pack` writes)".into(),
                    }],
                ))
            }
        };
        let uploaded = uploads(store).join(&sha);
        if !uploaded.exists() {
            return Err(Error::Refused(format!(
                "the library {file} (sha256 {sha}) was not uploaded; PUT it to /connectors/libraries/{sha} first"
            )));
        }
        // The package as `connector install` reads it: connector.json with
        // its library beside it.
        let dir = tempfile::tempdir_in(store.data_dir())
            .map_err(|e| Error::io("cannot make a directory in", &store.data_dir(), e))?;
        let lib = dir.path().join(&file);
        std::fs::hard_link(&uploaded, &lib)
            .or_else(|_| std::fs::copy(&uploaded, &lib).map(|_| ()))
            .map_err(|e| Error::io("cannot place the uploaded library at", &lib, e))?;
        let text = serde_json::to_vec(&bundle).map_err(|e| Error::usage(e.to_string()))?;
        let path = dir.path().join("connector.json");
        files::write_atomic(&path, &text, 0o600)?;
        registry::install(store, &path)
    })
    .await?;
    Ok(Json(json!(outcome)))
}

/// Uploads a connector library (the bytes of the file `connector.json`
/// names), kept under its sha256 for `POST /connectors`.
#[utoipa::path(put, path = "/connectors/libraries/{sha256}", tag = "connectors",
    params(("sha256" = String, Path, description = "The library's sha256, as connector.json records it")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Object), (status = 400, description = "The bytes do not have that sha256", body = ErrorBody)))]
pub async fn upload_library(
    State(state): State<AppState>,
    Path(sha): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let what = format!("uploading library {sha}");
    let kept = blocking(&state, what, move |store| {
        if !is_sha256(&sha) {
            return Err(Error::usage(format!(
                "{sha:?} is not a sha256 (64 hex digits)"
            )));
        }
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != sha {
            return Err(Error::usage(format!(
                "the uploaded bytes have sha256 {actual}, not {sha}"
            )));
        }
        let dir = uploads(store);
        files::create_private_dir(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("cannot write in", &dir, e))?;
        tmp.write_all(&bytes)
            .map_err(|e| Error::io("cannot write in", &dir, e))?;
        let path = dir.join(&sha);
        tmp.persist(&path)
            .map_err(|e| Error::io("cannot write", &path, e.error))?;
        Ok(json!({"sha256": sha, "bytes": bytes.len()}))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(kept)))
}

/// The body limit of library uploads.
pub fn library_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(LIBRARY_LIMIT)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
