//! The engine's HTTP API (`pgvirt serve`): the same host operations as the
//! command line, with the same typed requests and validation, as REST.
//!
//! Routes by resource, one file each: [`connectors`], [`environments`]
//! (with repositories and source configs), [`dsources`], [`vdbs`],
//! [`snapshots`] (with timeflows and retention), [`exports`], [`pool`],
//! [`jobs`]. Long operations
//! return `202` with a job ([`jobs`]). Every request needs a bearer token
//! ([`auth`]); errors are JSON with what, why and what to do ([`error`]).
//! The OpenAPI 3.1 document at `/openapi.json` is made from the same route
//! table as the router (utoipa), so the two cannot disagree.
//!
//! Each request opens its own store connection (SQLite) on a blocking
//! thread; a job runs on a thread of its own.

mod auth;
pub(crate) mod body;
mod connectors;
mod dsources;
mod environments;
pub mod error;
mod exports;
mod jobs;
mod pool;
mod snapshots;
mod tls;
mod vdbs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::host::lifecycle::repair;
use crate::host::store::Store;
use error::ApiError;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store_path: Arc<PathBuf>,
    pub tasks: jobs::Tasks,
    /// Store connections kept open between requests (SQLite: one per
    /// request at a time; jobs open their own).
    pub idle: Arc<std::sync::Mutex<Vec<Store>>>,
    /// At most [`CONNECTIONS`] requests use the store at once (the rest
    /// wait their turn): that many connections, opened once and kept.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The connection tokens are checked on, in place (one indexed read,
    /// microseconds; the store is in WAL mode, so no writer blocks it):
    /// a request takes one trip to a blocking thread, not two.
    pub auth: Arc<std::sync::Mutex<Option<Store>>>,
}

/// How many store connections requests use at most.
const CONNECTIONS: usize = 32;

/// Opens new connections one at a time: opening sets the journal mode,
/// and a crowd of them doing it at once waits on SQLite's busy handler.
static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with a store connection of its own (an idle one, or a new
/// one) on a blocking thread; errors become JSON errors about `what`.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    what: String,
    f: impl FnOnce(&mut Store) -> crate::host::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let path = state.store_path.clone();
    let idle = state.idle.clone();
    let what_here = what.clone();
    let permit = state
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(&what_here, e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let kept = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut store = match kept {
            Some(store) => store,
            None => {
                let _one = OPENING.lock().unwrap_or_else(|e| e.into_inner());
                Store::open(&path).map_err(|e| ApiError::from_host(&what, e, ""))?
            }
        };
        let outcome = f(&mut store).map_err(|e| ApiError::from_host(&what, e, ""));
        // A connection left inside a transaction (an error midway) is not kept.
        if store.conn().is_autocommit() {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < CONNECTIONS {
                idle.push(store);
            }
        }
        outcome
    })
    .await
    .map_err(|e| ApiError::internal(&what_here, e.to_string()))?
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pgvirt",
        description = "PostgreSQL data virtualization: connectors, environments, dSources, snapshots, VDBs, jobs."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorBody, error::ProblemBody))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The routes, and the OpenAPI document made from the same table.
pub fn router(state: AppState) -> axum::Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            connectors::list_connectors,
            connectors::upload_connector
        ))
        .routes(routes!(
            environments::list_environments,
            environments::add_environment
        ))
        .routes(routes!(environments::get_environment))
        .routes(routes!(environments::refresh_environment))
        .routes(routes!(environments::list_repositories))
        .routes(routes!(
            environments::list_source_configs,
            environments::add_source_config
        ))
        .routes(routes!(environments::remove_source_config))
        .routes(routes!(dsources::list_dsources, dsources::link_dsource))
        .routes(routes!(dsources::get_dsource, dsources::delete_dsource))
        .routes(routes!(dsources::sync_dsource))
        .routes(routes!(dsources::enable_dsource))
        .routes(routes!(dsources::disable_dsource))
        .routes(routes!(dsources::set_dsource_password))
        .routes(routes!(vdbs::list_vdbs, vdbs::provision_vdb))
        .routes(routes!(vdbs::get_vdb, vdbs::delete_vdb))
        .routes(routes!(vdbs::vdb_status))
        .routes(routes!(vdbs::start_vdb))
        .routes(routes!(vdbs::stop_vdb))
        .routes(routes!(vdbs::enable_vdb))
        .routes(routes!(vdbs::disable_vdb))
        .routes(routes!(vdbs::refresh_vdb))
        .routes(routes!(vdbs::rewind_vdb))
        .routes(routes!(vdbs::snapshot_vdb))
        .routes(routes!(vdbs::set_vdb_quota))
        .routes(routes!(vdbs::create_empty_vdb))
        .routes(routes!(snapshots::set_dsource_retention))
        .routes(routes!(snapshots::set_vdb_retention))
        .routes(routes!(exports::list_exports, exports::add_export))
        .routes(routes!(exports::get_export, exports::remove_export))
        .routes(routes!(exports::export_ddl))
        .routes(routes!(exports::export_status))
        .routes(routes!(exports::install_export))
        .routes(routes!(exports::run_export))
        .routes(routes!(exports::reset_export))
        .routes(routes!(snapshots::list_snapshots))
        .routes(routes!(snapshots::show_timeflows))
        .routes(routes!(pool::pool_info))
        .routes(routes!(pool::pool_datasets))
        .routes(routes!(pool::pool_check))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::job_events))
        .split_for_parts();
    let mut doc = doc;
    describe_responses(&mut doc);
    let doc = Arc::new(doc);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "routing the request",
                "no such route",
                "see /openapi.json for the routes",
            )
        })
        .layer(connectors::upload_limit())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// Gives every response without a description (OpenAPI requires one) the
/// words its status code stands for.
fn describe_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(r) = response {
                    if r.description.is_empty() {
                        r.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("A response")
                            .to_owned();
                    }
                }
            }
        }
    }
}

/// The body limit of connector uploads (for the tower too).
pub(crate) fn connectors_upload_limit() -> axum::extract::DefaultBodyLimit {
    connectors::upload_limit()
}

/// How `serve` runs.
pub struct Options {
    pub listen: SocketAddr,
    pub store_path: PathBuf,
    /// TLS: the certificate chain and private key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Repairs what interrupted work left (jobs of a `serve` that was stopped
/// or killed among them), then serves until SIGINT or SIGTERM.
pub fn serve(options: Options) -> anyhow::Result<()> {
    repair_at_start(&options.store_path)?;
    let state = AppState {
        store_path: Arc::new(options.store_path),
        tasks: Default::default(),
        idle: Default::default(),
        permits: Arc::new(tokio::sync::Semaphore::new(CONNECTIONS)),
        auth: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    let app = router(state);
    runtime.block_on(async move {
        let listener = listen(options.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
        let local = listener.local_addr()?;
        match options.tls {
            None => {
                announce("http", local);
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown())
                    .await?;
            }
            Some((cert, key)) => {
                let tls = tls::TlsListener::new(listener, &cert, &key)?;
                announce("https", local);
                axum::serve(tls, app)
                    .with_graceful_shutdown(shutdown())
                    .await?;
            }
        }
        Ok(())
    })
}

/// A listening socket with a deep accept queue: a burst of connections
/// (CI jobs at once) waits there instead of losing SYNs to a full queue,
/// which costs each such client a 1 s retransmission.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The line a script waits for (the port, when it asked for port 0).
fn announce(scheme: &str, local: SocketAddr) {
    println!("pgvirt API listening on {scheme}://{local}");
    log::info!("listening on {local}");
}

fn repair_at_start(path: &Path) -> anyhow::Result<()> {
    let store = Store::open(path)?;
    for said in repair::repair_interrupted(&store)? {
        log::warn!("{said}");
        eprintln!("{said}");
    }
    Ok(())
}

pub(crate) async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
