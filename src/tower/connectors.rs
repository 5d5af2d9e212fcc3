//! Connector distribution: the same upload an engine takes (the
//! self-contained `connector.json` that `pgvirt connector pack` makes, its
//! library in base64), validated as the engine validates it. The tower
//! keeps every version (the library once per sha256, beside its store),
//! refuses a downgrade (naming both versions, before any engine is
//! touched), and installs on the chosen engines (or all), reporting per
//! engine what happened: an engine that refuses keeps its version and its
//! reason is shown.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::{now, KeptConnector, TowerStore};
use super::{client, with_store, TowerState};
use crate::api::error::ApiError;
use crate::host::connectors::manifest::Manifest;
use crate::host::connectors::package::{LibraryPlacement, Package};
use crate::host::error::{Error, Result};
use crate::host::files;

fn libraries(store: &TowerStore) -> std::path::PathBuf {
    store.data_dir().join("libraries")
}

/// Where an upload's library is written out while it is validated.
pub fn incoming(store: &TowerStore) -> std::path::PathBuf {
    store.data_dir().join("incoming")
}

/// Validates a `connector.json` as an engine does; keeps it (unless that
/// version is kept already), or says why it is refused.
fn validate_and_keep(store: &TowerStore, bundle: Value) -> Result<(KeptConnector, bool)> {
    let scratch = incoming(store);
    let package = Package::from_bundle(bundle.clone(), "connector.json", &scratch, &scratch)?;
    // Every check `connector install` makes; the bundle without its bytes.
    let mut kept_bundle = package.bundle(LibraryPlacement::Beside)?;
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
    let sha = kept_bundle["library"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kept = KeptConnector {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        version,
        sha256: sha.clone(),
        uploaded_at: now(),
        bundle: kept_bundle.take(),
    };
    if !same {
        let lib = package
            .library
            .as_deref()
            .ok_or_else(|| Error::usage("connector library not found"))?;
        let dir = libraries(store);
        files::create_private_dir(&dir)?;
        let bytes = std::fs::read(lib).map_err(|e| Error::io("cannot read", lib, e))?;
        files::write_atomic(&dir.join(&sha), &bytes, 0o600)?;
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
    let (kept, same) = with_store(&state, what, move |s| validate_and_keep(s, bundle)).await?;
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
        Ok((engines, bytes))
    })
    .await?;
    // The upload an engine takes: connector.json with its library inside.
    let mut bundle = kept.bundle.clone();
    bundle["library"]["base64"] =
        Value::String(base64::engine::general_purpose::STANDARD.encode(library));
    let bundle = Bytes::from(bundle.to_string());
    let mut report = Vec::new();
    for engine in engines {
        let outcome = client::call(
            &engine.endpoint(),
            Method::POST,
            "/connectors",
            Some((bundle.clone(), "application/json")),
        )
        .await;
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
