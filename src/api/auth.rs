//! Every request needs `Authorization: Bearer <token>` (401 without a
//! token the engine knows); a read-only token may only read (403 for
//! anything but GET and HEAD). Tokens are made with `pgvirt token create`
//! and only their hashes are stored ([`crate::host::tokens`]).

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::host::store::Store;
use crate::host::tokens;

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(secret) = presented else {
        return ApiError::unauthorized("the request carries no bearer token").into_response();
    };
    let found = verify(&state, &secret);
    match found {
        Err(e) => e.into_response(),
        Ok(None) => {
            ApiError::unauthorized("the bearer token is unknown or revoked").into_response()
        }
        Ok(Some(token))
            if token.read_only && !matches!(*request.method(), Method::GET | Method::HEAD) =>
        {
            ApiError::forbidden(&token.name).into_response()
        }
        Ok(Some(_)) => next.run(request).await,
    }
}

/// Looks the token up on the state's own connection (opened at first use).
fn verify(state: &AppState, secret: &str) -> Result<Option<tokens::Token>, ApiError> {
    let what = "authenticating the request";
    let mut slot = state.auth.lock().unwrap_or_else(|e| e.into_inner());
    let store = match slot.take() {
        Some(store) => store,
        None => Store::open(&state.store_path).map_err(|e| ApiError::from_host(what, e, ""))?,
    };
    let found = tokens::verify(&store, secret).map_err(|e| ApiError::from_host(what, e, ""));
    *slot = Some(store);
    found
}
