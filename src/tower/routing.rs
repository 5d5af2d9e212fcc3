//! Operations routed to the engine that owns the object. The owner is
//! found in the inventory (`?engine=NAME` chooses when a name is on
//! several engines); the request goes on as it came, and the engine's
//! answer comes back as it is (status and JSON body), a job with its
//! `engine` and a `Location` under `/api/jobs/{engine}/{id}`. An engine
//! that does not answer is marked down: 503, naming it and why; one that
//! refuses the tower's token (401, 403) is a 502 (the caller's own token
//! is fine).

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::engines::{encode, poll};
use super::{client, with_store, TowerState};
use crate::api::error::ApiError;
use crate::host::error::Error;

/// The query without `engine=`, and the engine it named.
fn split_query(raw: Option<String>) -> (String, Option<String>) {
    let mut engine = None;
    let rest: Vec<String> = raw
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.strip_prefix("engine=") {
            Some(e) => {
                engine = Some(e.to_owned());
                None
            }
            None => Some(p.to_owned()),
        })
        .collect();
    let query = if rest.is_empty() {
        String::new()
    } else {
        format!("?{}", rest.join("&"))
    };
    (query, engine)
}

/// The engine that owns the dSource or VDB `name` (dSources and VDBs share
/// one name space on an engine).
pub async fn owner(
    state: &TowerState,
    name: &str,
    chosen: Option<String>,
) -> Result<String, ApiError> {
    let what = format!("finding the engine of {name}");
    let name = name.to_owned();
    with_store(state, &what, move |s| {
        if let Some(e) = chosen {
            return s.engine(&e).map(|e| e.name);
        }
        let mut owners = Vec::new();
        for kind in ["dsources", "vdbs"] {
            for (engine, body, _) in s.inventory(kind)? {
                let has = body
                    .as_array()
                    .is_some_and(|a| a.iter().any(|o| o["name"] == json!(name)));
                if has && !owners.contains(&engine) {
                    owners.push(engine);
                }
            }
        }
        match owners.len() {
            0 => Err(Error::NotFound(format!(
                "no engine has a dSource or VDB named {name:?} (as last seen); see GET /api/dsources and /api/vdbs"
            ))),
            1 => Ok(owners.remove(0)),
            _ => Err(Error::Conflict(format!(
                "{name:?} is on engines {}; add ?engine=NAME to choose",
                owners.join(", ")
            ))),
        }
    })
    .await
}

/// Sends the request to engine `name` and passes its answer on.
pub async fn forward(
    state: &TowerState,
    name: &str,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<Response, ApiError> {
    let what = format!("{method} {path_and_query} on engine {name}");
    let engine = {
        let name = name.to_owned();
        with_store(state, &what, move |s| s.engine(&name)).await?
    };
    let sent = if body.is_empty() {
        None
    } else {
        Some((body, content_type.unwrap_or("application/json")))
    };
    let changes = method != Method::GET && method != Method::HEAD;
    let reply = match client::call(&engine.endpoint(), method, path_and_query, sent).await {
        Ok(r) => r,
        Err(why) => return Err(down(state, &engine.name, &what, why).await),
    };
    if reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN {
        // About the tower's token on the engine, not the caller's: a 502.
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            &what,
            format!(
                "engine {} refused the tower's token ({}): {}",
                engine.name,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ),
            "give the tower a valid token of that engine: remove the engine and add it again with a new --token-file",
        ));
    }
    if changes && reply.status.is_success() {
        // The inventory follows at once (and again as the job goes on).
        let (state, engine) = (state.clone(), engine.clone());
        tokio::spawn(async move { poll(&state, &engine).await });
    }
    let mut headers = HeaderMap::new();
    if let Some(ct) = reply.content_type.clone() {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if reply.status == StatusCode::ACCEPTED {
        if let Some(mut job) = reply.json() {
            if let Some(id) = job["id"].as_i64() {
                job["engine"] = json!(engine.name);
                let location = format!("/api/jobs/{}/{id}", encode(&engine.name));
                return Ok((
                    StatusCode::ACCEPTED,
                    [(header::LOCATION, location)],
                    axum::Json(job),
                )
                    .into_response());
            }
        }
    }
    Ok((reply.status, headers, reply.body).into_response())
}

/// Marks the engine down and says so.
async fn down(state: &TowerState, name: &str, what: &str, why: client::Unreachable) -> ApiError {
    let (n, w) = (name.to_owned(), why.0.clone());
    let _ = with_store(state, "recording an engine down", move |s| {
        s.engine_down(&n, &w)
    })
    .await;
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        what,
        format!("engine {name} is down: {why}; its objects are shown as last seen"),
        "start the engine (or check its URL) and try again; the other engines are not affected",
    )
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn routed(
    state: &TowerState,
    name: &str,
    path: String,
    raw: Option<String>,
    method: Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (query, chosen) = split_query(raw);
    let engine = owner(state, name, chosen).await?;
    let ct = content_type(headers);
    forward(
        state,
        &engine,
        method,
        &format!("{path}{query}"),
        body,
        ct.as_deref(),
    )
    .await
}

/// `/api/dsources/{name}`: show or delete, on its engine.
pub async fn dsource(
    State(state): State<TowerState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/dsources/{}", encode(&name));
    routed(&state, &name, path, raw, method, &headers, body).await
}

/// `/api/dsources/{name}/{action}`: sync, enable, disable.
pub async fn dsource_action(
    State(state): State<TowerState>,
    Path((name, action)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/dsources/{}/{}", encode(&name), encode(&action));
    routed(&state, &name, path, raw, method, &headers, body).await
}

/// `/api/vdbs/{name}`: show or delete, on its engine.
pub async fn vdb(
    State(state): State<TowerState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/vdbs/{}", encode(&name));
    routed(&state, &name, path, raw, method, &headers, body).await
}

/// `/api/vdbs/{name}/{action}`: start, stop, refresh, rewind, snapshot,
/// status, quota...
pub async fn vdb_action(
    State(state): State<TowerState>,
    Path((name, action)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/vdbs/{}/{}", encode(&name), encode(&action));
    routed(&state, &name, path, raw, method, &headers, body).await
}

/// `POST /api/vdbs`: provisions on the engine that has `from` (or the
/// body's `engine`), with the engine's own request body.
pub async fn provision(
    State(state): State<TowerState>,
    RawQuery(raw): RawQuery,
    crate::api::body::Body(mut body): crate::api::body::Body<Value>,
) -> Result<Response, ApiError> {
    let (_, mut chosen) = split_query(raw);
    if let Some(e) = body.as_object_mut().and_then(|o| o.remove("engine")) {
        chosen = e.as_str().map(str::to_owned);
    }
    let Some(from) = body["from"]
        .as_str()
        .map(|f| f.split('@').next().unwrap_or(f).to_owned())
    else {
        return Err(ApiError::bad_request(
            "provisioning a VDB",
            vec![crate::api::error::ProblemBody {
                at: "/from".into(),
                message: "must name the dSource or VDB to provision from (NAME or NAME@SNAPSHOT)"
                    .into(),
            }],
        ));
    };
    let engine = owner(&state, &from, chosen).await?;
    let bytes = Bytes::from(body.to_string());
    forward(&state, &engine, Method::POST, "/vdbs", bytes, None).await
}

/// `/api/engines/{name}/proxy/{*rest}`: any engine route, on that engine.
pub async fn proxy(
    State(state): State<TowerState>,
    Path((name, rest)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = raw.map(|q| format!("?{q}")).unwrap_or_default();
    let ct = content_type(&headers);
    forward(
        &state,
        &name,
        method,
        &format!("/{rest}{query}"),
        body,
        ct.as_deref(),
    )
    .await
}

/// `GET /api/jobs/{engine}/{id}`: the engine's job, with its engine.
pub async fn job(
    State(state): State<TowerState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let response = forward(
        &state,
        &name,
        Method::GET,
        &format!("/jobs/{id}"),
        Bytes::new(),
        None,
    )
    .await?;
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::internal("reading a job", e.to_string()))?;
    let mut job: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal("reading a job", e.to_string()))?;
    job["engine"] = json!(name);
    Ok(axum::Json(job).into_response())
}

/// `GET /api/jobs/{engine}/{id}/events`: the engine's event stream, as it comes.
pub async fn job_events(
    State(state): State<TowerState>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let what = format!("following job {id} of engine {name}");
    let engine = {
        let name = name.clone();
        with_store(&state, &what, move |s| s.engine(&name)).await?
    };
    let path = format!("/jobs/{id}/events");
    match client::open(&engine.endpoint(), Method::GET, &path, None).await {
        Ok(r) if r.status() == StatusCode::UNAUTHORIZED || r.status() == StatusCode::FORBIDDEN => {
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                &what,
                format!("engine {name} refused the tower's token ({})", r.status()),
                "give the tower a valid token of that engine: remove the engine and add it again with a new --token-file",
            ))
        }
        Ok(r) => {
            let (parts, body) = r.into_parts();
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Err(why) => Err(down(&state, &name, &what, why).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_taken_out_of_the_query_and_the_rest_kept() {
        assert_eq!(split_query(None), (String::new(), None));
        assert_eq!(
            split_query(Some("engine=a&with_children=true".into())),
            ("?with_children=true".into(), Some("a".into()))
        );
        assert_eq!(
            split_query(Some("with_vdbs=true".into())),
            ("?with_vdbs=true".into(), None)
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
