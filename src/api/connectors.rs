//! `/connectors`: list, and install or upgrade from the self-contained
//! `connector.json` that `pgvirt connector pack` makes (manifest, schemas
//! and the library in base64), through the same code as `pgvirt connector
//! install` ([`registry::install_bundle`]): a lower version is refused
//! (409, naming both), the same version is a no-op, a higher one runs its
//! data migrations and commits them with the switch, or changes nothing
//! (422 when a migrated document does not fit the new schemas).

use axum::extract::{DefaultBodyLimit, State};
use axum::Json;
use serde_json::{json, Value};

use super::body::Body;
use super::error::{ApiError, ErrorBody};
use super::{blocking, AppState};
use crate::host::connectors::registry;

/// The largest request body (a `connector.json` carries its library).
pub const UPLOAD_LIMIT: usize = 512 << 20;

#[utoipa::path(get, path = "/connectors", tag = "connectors",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)))]
pub async fn list_connectors(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = blocking(&state, "listing connectors".into(), |s| registry::list(s)).await?;
    Ok(Json(json!(all)))
}

/// Installs or upgrades a connector from its self-contained `connector.json`.
#[utoipa::path(post, path = "/connectors", tag = "connectors",
    request_body(content = Object, description = "The connector.json that `pgvirt connector pack` makes: format, manifest, schemas, and library {file, sha256, base64}"),
    responses((status = 200, description = "Installed, upgraded (`migrated` lists the data migrations run), or already installed (`unchanged`)", body = Object),
        (status = 400, description = "A malformed connector.json, with the JSON path of each problem", body = ErrorBody),
        (status = 409, description = "A downgrade (both versions named), or a job runs", body = ErrorBody),
        (status = 422, description = "A migrated document does not fit the new schemas: nothing changed", body = ErrorBody)))]
pub async fn upload_connector(
    State(state): State<AppState>,
    Body(bundle): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let what = "installing a connector".to_owned();
    let outcome = blocking(&state, what, move |store| {
        registry::install_bundle(store, bundle)
    })
    .await?;
    Ok(Json(json!(outcome)))
}

/// The body limit of uploads.
pub fn upload_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(UPLOAD_LIMIT)
}
