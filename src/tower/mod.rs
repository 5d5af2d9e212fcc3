//! The control tower (`pgvirt tower serve`): one place over several
//! engines (each a `pgvirt serve`).
//!
//! - [`store`]: its own SQLite store: tower tokens (hashes), the engines
//!   (URL and token), the inventory last seen on each, connector versions.
//! - [`client`]: HTTP to engines, with their tokens.
//! - [`engines`]: register (checked on add), poll health and inventory; a
//!   down engine's objects stay listed as last seen (`stale`).
//! - [`routing`]: operations on an object go to the engine that owns it
//!   and answer with that engine's job (`/api/jobs/{engine}/{id}`);
//!   engine errors pass through with their status and JSON body.
//! - [`connectors`]: upload a `connector.json` once, keep every version,
//!   refuse downgrades, install on chosen engines, report per engine.
//! - [`ui`]: the web UI (HTML, JS and CSS in the binary), at `/`.
//!
//! Every `/api/` request needs a tower token (`pgvirt tower token create`);
//! the UI's files do not (it asks for a token to log in).

pub mod client;
pub mod connectors;
pub mod engines;
mod routing;
pub mod store;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use crate::api::error::ApiError;
use store::TowerStore;

/// What every handler gets.
#[derive(Clone)]
pub struct TowerState {
    pub store_path: Arc<PathBuf>,
    /// One store connection, used briefly by one request at a time.
    store: Arc<std::sync::Mutex<Option<TowerStore>>>,
}

impl TowerState {
    pub fn new(store_path: PathBuf) -> Self {
        Self {
            store_path: Arc::new(store_path),
            store: Default::default(),
        }
    }
}

/// Runs `f` with the tower store on a blocking thread; errors become JSON
/// errors about `what`.
pub async fn with_store<T: Send + 'static>(
    state: &TowerState,
    what: &str,
    f: impl FnOnce(&TowerStore) -> crate::host::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let (store, path, what) = (
        state.store.clone(),
        state.store_path.clone(),
        what.to_owned(),
    );
    let what_here = what.clone();
    tokio::task::spawn_blocking(move || {
        let mut slot = store.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(TowerStore::open(&path).map_err(|e| ApiError::from_host(&what, e, ""))?);
        }
        match slot.as_ref() {
            Some(s) => f(s).map_err(|e| ApiError::from_host(&what, e, "")),
            None => Err(ApiError::internal(&what, "the tower store is not open")),
        }
    })
    .await
    .map_err(|e| ApiError::internal(&what_here, e.to_string()))?
}

async fn require_token(State(state): State<TowerState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(secret) = presented else {
        return unauthorized("the request carries no bearer token").into_response();
    };
    match with_store(&state, "authenticating the request", move |s| {
        s.verify_token(&secret)
    })
    .await
    {
        Err(e) => e.into_response(),
        Ok(None) => unauthorized("the bearer token is unknown to this tower").into_response(),
        Ok(Some(_)) => next.run(request).await,
    }
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "authenticating the request",
        why,
        "send `Authorization: Bearer <token>` with a token from `pgvirt tower token create NAME`",
    )
}

/// The tower's routes: `/api/...` (tokens required) and the UI.
pub fn router(state: TowerState) -> axum::Router {
    let api = axum::Router::new()
        .route("/engines", get(engines::list).post(engines::add_engine))
        .route(
            "/engines/{name}",
            axum::routing::delete(engines::remove_engine),
        )
        .route("/engines/{name}/proxy/{*rest}", any(routing::proxy))
        .route("/inventory", get(engines::inventory))
        .route("/environments", get(engines::list_environments))
        .route("/source-configs", get(engines::list_source_configs))
        .route("/snapshots", get(engines::list_snapshots))
        .route("/jobs", get(engines::list_jobs))
        .route("/jobs/{engine}/{id}", get(routing::job))
        .route("/jobs/{engine}/{id}/events", get(routing::job_events))
        .route("/dsources", get(engines::list_dsources))
        .route("/dsources/{name}", any(routing::dsource))
        .route("/dsources/{name}/{action}", any(routing::dsource_action))
        .route("/vdbs", get(engines::list_vdbs).post(routing::provision))
        .route("/vdbs/{name}", any(routing::vdb))
        .route("/vdbs/{name}/{action}", any(routing::vdb_action))
        .route(
            "/connectors",
            get(connectors::list).post(connectors::upload),
        )
        .route(
            "/connectors/{id}/{version}/install",
            post(connectors::install),
        )
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "routing the request",
                "no such route",
                "see the README's tower section for the routes",
            )
        })
        .layer(crate::api::connectors_upload_limit())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state);
    ui::routes().nest("/api", api)
}

/// How `tower serve` runs.
pub struct Options {
    pub listen: SocketAddr,
    pub store_path: PathBuf,
    /// How often engines are polled.
    pub poll: Duration,
}

/// Serves the tower until SIGINT or SIGTERM, polling its engines.
pub fn serve(options: Options) -> anyhow::Result<()> {
    let store = TowerStore::open(&options.store_path)?;
    // What an upload cut short by a kill left: its library written out
    // for validation (this tower's alone: one serves a store).
    let incoming = connectors::incoming(&store);
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming)
            .map_err(|e| anyhow::anyhow!("cannot clean {}: {e}", incoming.display()))?;
    }
    drop(store);
    let state = TowerState::new(options.store_path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
        let local = listener.local_addr()?;
        println!("pgvirt tower listening on http://{local}");
        log::info!("tower listening on {local}");
        tokio::spawn(engines::poll_forever(state.clone(), options.poll));
        axum::serve(listener, router(state))
            .with_graceful_shutdown(crate::api::shutdown())
            .await?;
        Ok(())
    })
}
