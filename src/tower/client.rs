//! The tower's HTTP client to engines: HTTP/1.1 over a fresh TCP
//! connection per request (hyper), the engine's bearer token, a timeout.
//! An engine that cannot be reached is an [`Unreachable`] (the engine is
//! down), apart from an answer with an error status (passed on as it is).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// How long a request to an engine may take (connect and whole answer).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection may take to open.
const CONNECT: Duration = Duration::from_secs(3);

/// The engine did not answer: why, in words.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An engine's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Checks an engine URL: `http://host:port` (a path prefix is kept).
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: the tower reaches engines over plain HTTP only for now (serve the engine on a private address, or put it behind a local proxy)"
            ))
        }
        _ => return Err(format!("{url:?} must start with http://")),
    }
    if uri.host().is_none() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(uri)
}

/// Sends one request to the engine at `base` and opens its answer (the
/// body still to read: for a stream of events).
pub async fn open(
    base: &str,
    token: &str,
    method: Method,
    path_and_query: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Response<Incoming>, Unreachable> {
    let uri = check_url(base).map_err(Unreachable)?;
    let host = uri.host().unwrap_or("localhost").to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/');
    let target = format!("{prefix}{path_and_query}");
    let stream = tokio::time::timeout(
        CONNECT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Unreachable(format!("no answer from {base} within {CONNECT:?}")))?
    .map_err(|e| Unreachable(format!("cannot connect to {base}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Unreachable(format!("{base}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (bytes, content_type) = body.unwrap_or((Bytes::new(), "application/json"));
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(bytes))
        .map_err(|e| Unreachable(format!("{base}: {e}")))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| Unreachable(format!("{base} did not answer: {e}")))
}

/// Sends one request and reads the whole answer.
pub async fn call(
    base: &str,
    token: &str,
    method: Method,
    path_and_query: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply, Unreachable> {
    let work = async {
        let response = open(base, token, method, path_and_query, body).await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Unreachable(format!("{base}: the answer was cut short: {e}")))?
            .to_bytes();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| Unreachable(format!("no answer from {base} within {TIMEOUT:?}")))?
}

/// How long a read of the inventory (a poll) may take.
const POLL: Duration = Duration::from_secs(5);

/// GET a JSON document (within a poll's time); an error status is an
/// error too (with its body).
pub async fn get_json(base: &str, token: &str, path: &str) -> Result<serde_json::Value, String> {
    let reply = tokio::time::timeout(POLL, call(base, token, Method::GET, path, None))
        .await
        .map_err(|_| format!("GET {path}: no answer from {base} within {POLL:?}"))?
        .map_err(|e| e.0)?;
    if !reply.status.is_success() {
        return Err(format!(
            "GET {path} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    reply
        .json()
        .ok_or_else(|| format!("GET {path} did not answer JSON"))
}
