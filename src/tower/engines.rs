//! Engines: registered by URL and token (checked on add: the engine must
//! answer with its version and connectors), polled for health and
//! inventory. A poll that fails marks the engine down and keeps what it
//! last showed; one that answers replaces it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client;
use super::store::{Engine, Health, TowerStore};
use super::{with_store, TowerState};
use crate::api::error::ApiError;
use crate::host::error::Error;

/// What the tower keeps of each engine: its inventory, by kind, with the
/// engine route it is read from.
pub const KINDS: [(&str, &str); 7] = [
    ("connectors", "/connectors"),
    ("environments", "/environments"),
    ("source_configs", "/source-configs"),
    ("dsources", "/dsources"),
    ("vdbs", "/vdbs"),
    ("snapshots", "/snapshots"),
    ("jobs", "/jobs?limit=30"),
];

/// Asks an engine for its version (its OpenAPI document's) and connectors:
/// what `engine add` checks.
pub async fn check(to: &client::Endpoint) -> Result<(String, Value), String> {
    client::check_url(&to.url)?;
    if let Some(pem) = &to.ca_pem {
        client::check_ca(pem).map_err(|e| format!("its CA file: {e}"))?;
    }
    let doc = client::get_json(to, "/openapi.json").await?;
    let version = doc
        .pointer("/info/version")
        .and_then(Value::as_str)
        .ok_or("its /openapi.json names no version: is it a pgvirt engine?")?
        .to_owned();
    let connectors = client::get_json(to, "/connectors").await?;
    Ok((version, connectors))
}

/// Registers an engine after checking it answers.
pub async fn add(
    store_path: &std::path::Path,
    name: &str,
    mut to: client::Endpoint,
) -> crate::host::Result<Value> {
    crate::host::environments::check_name(name, "engine name")?;
    to.url = to.url.trim_end_matches('/').to_owned();
    let url = to.url.clone();
    let (version, connectors) = check(&to).await.map_err(|why| {
        Error::Refused(format!(
            "engine {name} at {url} did not pass the check: {why}"
        ))
    })?;
    let store = TowerStore::open(store_path)?;
    store.add_engine(name, &to, &version)?;
    store.put_inventory(name, "connectors", &connectors)?;
    Ok(json!({"name": name, "url": url, "version": version, "connectors": connectors}))
}

/// Polls one engine: health, version and every kind of its inventory,
/// with the timeflows of its dSources and VDBs.
pub async fn poll(state: &TowerState, engine: &Engine) {
    let mut found = Vec::new();
    let outcome: Result<Option<String>, String> = async {
        let to = engine.endpoint();
        let doc = client::get_json(&to, "/openapi.json").await?;
        for (kind, path) in KINDS {
            found.push((kind.to_owned(), client::get_json(&to, path).await?));
        }
        let mut timeflows = serde_json::Map::new();
        for (kind, list) in &found {
            if kind != "dsources" && kind != "vdbs" {
                continue;
            }
            for name in list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["name"].as_str())
            {
                let path = format!("/timeflows/{}", encode(name));
                if let Ok(t) = client::get_json(&to, &path).await {
                    timeflows.insert(name.to_owned(), t);
                }
            }
        }
        found.push(("timeflows".into(), Value::Object(timeflows)));
        Ok(doc
            .pointer("/info/version")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
    .await;
    let name = engine.name.clone();
    let _ = with_store(state, "recording a poll", move |store| match outcome {
        Ok(version) => {
            for (kind, body) in &found {
                store.put_inventory(&name, kind, body)?;
            }
            store.engine_up(&name, version.as_deref())
        }
        Err(why) => store.engine_down(&name, &why),
    })
    .await;
}

/// Polls every engine, every `every`, for as long as the tower runs.
pub async fn poll_forever(state: TowerState, every: Duration) {
    loop {
        poll_all(&state).await;
        tokio::time::sleep(every).await;
    }
}

pub async fn poll_all(state: &TowerState) {
    let Ok(engines) = with_store(state, "listing engines", |s| s.engines()).await else {
        return;
    };
    let polls = engines.iter().map(|e| poll(state, e));
    futures_util::future::join_all(polls).await;
}

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- the API

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    pub name: String,
    pub url: String,
    /// The engine's bearer token (`pgvirt token create` on the engine).
    pub token: String,
    /// For an `https://` engine: the CA certificates (PEM text) that sign
    /// its certificate (default: the system's CAs).
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// `GET /api/engines`: every engine with its health.
pub async fn list(State(state): State<TowerState>) -> Result<Json<Value>, ApiError> {
    let all = with_store(&state, "listing engines", |s| s.engines()).await?;
    Ok(Json(json!(all)))
}

/// `POST /api/engines`: registers an engine (checked first).
pub async fn add_engine(
    State(state): State<TowerState>,
    crate::api::body::Body(body): crate::api::body::Body<AddBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let what = format!("adding engine {}", body.name);
    let to = client::Endpoint {
        url: body.url.clone(),
        token: body.token.clone(),
        ca_pem: body.ca_pem.clone(),
    };
    let mut added = add(&state.store_path, &body.name, to)
        .await
        .map_err(|e| ApiError::from_host(&what, e, ""))?;
    if let Ok(engine) = with_store(&state, &what, {
        let name = body.name.clone();
        move |s| s.engine(&name)
    })
    .await
    {
        poll(&state, &engine).await;
        added["health"] = json!(Health::Up);
    }
    Ok((StatusCode::CREATED, Json(added)))
}

/// `DELETE /api/engines/{name}`: forgets an engine and what it showed.
pub async fn remove_engine(
    State(state): State<TowerState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let what = format!("removing engine {name}");
    let e = with_store(&state, &what, move |s| s.remove_engine(&name)).await?;
    Ok(Json(json!({"removed": e.name})))
}

/// One kind of object across engines: each with its `engine`, and
/// `stale` when that engine is down (shown as last seen, at `seen_at`).
pub async fn objects(state: &TowerState, kind: &'static str) -> Result<Vec<Value>, ApiError> {
    with_store(state, &format!("listing {kind}"), move |s| {
        let engines = s.engines()?;
        let mut out = Vec::new();
        for (engine, body, seen_at) in s.inventory(kind)? {
            let down = engines
                .iter()
                .any(|e| e.name == engine && e.health == Health::Down);
            for mut o in body.as_array().cloned().unwrap_or_default() {
                if let Value::Object(map) = &mut o {
                    map.insert("engine".into(), json!(engine));
                    map.insert("stale".into(), json!(down));
                    map.insert("seen_at".into(), json!(seen_at));
                }
                out.push(o);
            }
        }
        Ok(out)
    })
    .await
}

/// The whole inventory in one document (what the web UI draws).
pub async fn inventory(State(state): State<TowerState>) -> Result<Json<Value>, ApiError> {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "engines".into(),
        json!(with_store(&state, "listing engines", |s| s.engines()).await?),
    );
    for (kind, _) in KINDS {
        doc.insert(kind.into(), json!(objects(&state, kind).await?));
    }
    let timeflows = with_store(&state, "reading timeflows", |s| s.inventory("timeflows")).await?;
    doc.insert(
        "timeflows".into(),
        Value::Object(timeflows.into_iter().map(|(e, b, _)| (e, b)).collect()),
    );
    Ok(Json(Value::Object(doc)))
}

macro_rules! listing {
    ($fn_name:ident, $kind:literal) => {
        #[doc = concat!("`GET /api/", $kind, "`: across engines, each with its engine.")]
        pub async fn $fn_name(State(state): State<TowerState>) -> Result<Json<Value>, ApiError> {
            Ok(Json(json!(objects(&state, $kind).await?)))
        }
    };
}

listing!(list_connectors_installed, "connectors");
listing!(list_environments, "environments");
listing!(list_source_configs, "source_configs");
listing!(list_dsources, "dsources");
listing!(list_vdbs, "vdbs");
listing!(list_snapshots, "snapshots");
listing!(list_jobs, "jobs");
