//! Connector distribution: the same upload an engine takes (the library
//! by its sha256, then `connector.json`), validated as the engine
//! validates it. The tower keeps every version, refuses a downgrade
//! (naming both versions, before any engine is touched), and installs on
//! the chosen engines (or all), reporting per engine what happened: an
//! engine that refuses keeps its version and its reason is shown.

use std::io::Write as _;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::store::{now, KeptConnector, TowerStore};
use super::{client, with_store, TowerState};
use crate::api::error::ApiError;
use crate::host::connectors::manifest::Manifest;
use crate::host::connectors::package::Package;
use crate::host::error::{Error, Problem, Result};
use crate::host::files;

fn libraries(store: &TowerStore) -> std::path::PathBuf {
    store.data_dir().join("libraries")
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// `PUT /api/connectors/libraries/{sha256}`: a connector library, kept
/// under its sha256.
pub async fn upload_library(
    State(state): State<TowerState>,
    Path(sha): Path<String>,
    bytes: Bytes,
) -> std::result::Result<(StatusCode, Json<Value>), ApiError> {
    let what = format!("uploading library {sha}");
    let kept = with_store(&state, &what, move |store| {
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
        let dir = libraries(store);
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

/// Validates a `connector.json` (with its uploaded library) as an engine
/// does; returns it kept, or the reason it is refused.
fn validate_and_keep(store: &TowerStore, bundle: &Value) -> Result<(KeptConnector, bool)> {
    let (file, sha) = match (
        bundle.pointer("/library/file").and_then(Value::as_str),
        bundle.pointer("/library/sha256").and_then(Value::as_str),
    ) {
        (Some(f), Some(s)) if !f.contains('/') && is_sha256(s) => (f.to_owned(), s.to_owned()),
        _ => {
            return Err(Error::invalid(
                "connector.json",
                vec![Problem {
                    at: "connector.json#/library".into(),
                    message: "must name the library's file and its sha256 (as `pgvirt connector pack` writes)".into(),
                }],
            ))
        }
    };
    let uploaded = libraries(store).join(&sha);
    if !uploaded.exists() {
        return Err(Error::Refused(format!(
            "the library {file} (sha256 {sha}) was not uploaded; PUT it to /api/connectors/libraries/{sha} first"
        )));
    }
    let dir = tempfile::tempdir_in(store.data_dir())
        .map_err(|e| Error::io("cannot make a directory in", &store.data_dir(), e))?;
    let lib = dir.path().join(&file);
    std::fs::hard_link(&uploaded, &lib)
        .or_else(|_| std::fs::copy(&uploaded, &lib).map(|_| ()))
        .map_err(|e| Error::io("cannot place the uploaded library at", &lib, e))?;
    let path = dir.path().join("connector.json");
    let text = serde_json::to_vec(bundle).map_err(|e| Error::usage(e.to_string()))?;
    files::write_atomic(&path, &text, 0o600)?;
    let package = Package::read(&path, None)?;
    package.bundle()?; // every check `connector install` makes
    let manifest: Manifest = serde_json::from_value(package.manifest_value.clone())
        .map_err(|e| Error::usage(format!("manifest: {e}")))?;
    let key = manifest.version_key()?;
    let version = format!("{}+{}", manifest.version, manifest.build_number);
    let mut same = false;
    for kept in store.connectors()?.iter().filter(|k| k.id == manifest.id) {
        let old: Manifest = serde_json::from_value(kept.bundle["manifest"].clone())
            .map_err(|e| Error::usage(format!("kept manifest: {e}")))?;
        let old_key = old.version_key()?;
        if old_key > key {
            return Err(Error::Conflict(format!(
                "connector {} {} (build {}) is older than {} (build {}), which the tower has; downgrades are not supported (no engine was changed)",
                manifest.name, manifest.version, manifest.build_number, old.version, old.build_number
            )));
        }
        same |= old_key == key;
    }
    let kept = KeptConnector {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        version,
        sha256: sha,
        uploaded_at: now(),
        bundle: bundle.clone(),
    };
    if !same {
        store.keep_connector(&kept)?;
    }
    Ok((kept, same))
}

#[derive(Debug, Deserialize, Default)]
pub struct UploadQuery {
    /// `all`, or engine names separated by commas: install there at once.
    install: Option<String>,
}

/// `POST /api/connectors`: keeps a connector version (validated; no
/// downgrade) and, with `?install=all` or `?install=a,b`, installs it.
pub async fn upload(
    State(state): State<TowerState>,
    Query(q): Query<UploadQuery>,
    crate::api::body::Body(bundle): crate::api::body::Body<Value>,
) -> std::result::Result<Json<Value>, ApiError> {
    let what = "uploading a connector to the tower";
    let (kept, same) = with_store(&state, what, move |s| validate_and_keep(s, &bundle)).await?;
    let installs = match q.install.as_deref() {
        None => Value::Null,
        Some("all") => json!(install_on(&state, &kept, None).await?),
        Some(list) => {
            let chosen = list.split(',').map(str::to_owned).collect();
            json!(install_on(&state, &kept, Some(chosen)).await?)
        }
    };
    Ok(Json(json!({
        "id": kept.id, "name": kept.name, "version": kept.version,
        "already_kept": same, "installs": installs,
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    /// The engines to install on (default: all).
    #[serde(default)]
    engines: Option<Vec<String>>,
}

/// `POST /api/connectors/{id}/{version}/install`: installs a kept version
/// on the chosen engines (or all); what happened on each.
pub async fn install(
    State(state): State<TowerState>,
    Path((id, version)): Path<(String, String)>,
    body: Bytes,
) -> std::result::Result<Json<Value>, ApiError> {
    let chosen: InstallBody = if body.iter().all(u8::is_ascii_whitespace) {
        InstallBody::default()
    } else {
        crate::api::body::parse(&body)?
    };
    let what = format!("installing connector {id} {version}");
    let kept = with_store(&state, &what, move |s| {
        s.connectors()?
            .into_iter()
            .find(|k| k.id == id && k.version == version)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "the tower has no connector {id} {version}; see GET /api/connectors"
                ))
            })
    })
    .await?;
    Ok(Json(json!(
        install_on(&state, &kept, chosen.engines).await?
    )))
}

/// Installs on each engine: the library, then `connector.json`.
async fn install_on(
    state: &TowerState,
    kept: &KeptConnector,
    chosen: Option<Vec<String>>,
) -> std::result::Result<Vec<Value>, ApiError> {
    let sha = kept.sha256.clone();
    let (engines, library) = with_store(state, "reading engines", move |s| {
        let all = s.engines()?;
        let engines = match chosen {
            None => all,
            Some(names) => names
                .iter()
                .map(|n| s.engine(n))
                .collect::<Result<Vec<_>>>()?,
        };
        let path = libraries(s).join(&sha);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        Ok((engines, Bytes::from(bytes)))
    })
    .await?;
    let bundle = Bytes::from(kept.bundle.to_string());
    let mut report = Vec::new();
    for engine in engines {
        let lib_path = format!("/connectors/libraries/{}", kept.sha256);
        let put = client::call(
            &engine.endpoint(),
            Method::PUT,
            &lib_path,
            Some((library.clone(), "application/octet-stream")),
        )
        .await;
        let outcome = match put {
            Ok(r) if !r.status.is_success() => Ok(r),
            Ok(_) => {
                client::call(
                    &engine.endpoint(),
                    Method::POST,
                    "/connectors",
                    Some((bundle.clone(), "application/json")),
                )
                .await
            }
            Err(e) => Err(e),
        };
        report.push(match outcome {
            Ok(r) if r.status.is_success() => json!({"engine": engine.name, "status": r.status.as_u16(), "installed": r.json()}),
            Ok(r) => json!({"engine": engine.name, "status": r.status.as_u16(), "error": r.json().unwrap_or_else(|| json!(String::from_utf8_lossy(&r.body)))}),
            Err(why) => json!({"engine": engine.name, "status": 503, "error": {"what": "reaching the engine", "why": format!("engine {} is down: {why}", engine.name), "action": "start the engine and install again"}}),
        });
        super::engines::poll(state, &engine).await;
    }
    Ok(report)
}

/// `GET /api/connectors`: the versions the tower keeps, and what each
/// engine has installed (as last seen).
pub async fn list(State(state): State<TowerState>) -> std::result::Result<Json<Value>, ApiError> {
    let kept = with_store(&state, "listing connectors", |s| s.connectors()).await?;
    let installed = super::engines::objects(&state, "connectors").await?;
    Ok(Json(json!({"kept": kept, "installed": installed})))
}
