//! The tower's HTTP client to engines: HTTP/1.1 over a fresh TCP
//! connection per request (hyper), TLS for an `https://` engine (rustls,
//! trusting the engine's CA file given at add, else the system's CAs), the
//! engine's bearer token, a timeout.
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

/// Where an engine is and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub token: String,
    /// The CA certificates (PEM) that sign an `https://` engine's certificate.
    pub ca_pem: Option<String>,
}

/// The system's CA certificates, trusted for an `https://` engine given no CA file.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs: Vec<CertificateDer<'static>> = match ca_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the engine's CA file is not PEM certificates: {e}"))?,
        None => CertificateDer::pem_file_iter(SYSTEM_CAS)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| format!("cannot read the system's CAs ({SYSTEM_CAS}): {e}"))?,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate is refused: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Checks a CA file's text: PEM certificates, at least one.
pub fn check_ca(pem: &str) -> Result<(), String> {
    tls_config(Some(pem)).map(|_| ())?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("it holds no PEM certificate".into());
    }
    Ok(())
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
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if uri.host().is_none() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(uri)
}

/// Sends one request to the engine at `base` and opens its answer (the
/// body still to read: for a stream of events).
pub async fn open(
    to: &Endpoint,
    method: Method,
    path_and_query: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Response<Incoming>, Unreachable> {
    let (base, token) = (to.url.as_str(), to.token.as_str());
    let uri = check_url(base).map_err(Unreachable)?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or("localhost").to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let prefix = uri.path().trim_end_matches('/');
    let target = format!("{prefix}{path_and_query}");
    let stream = tokio::time::timeout(
        CONNECT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Unreachable(format!("no answer from {base} within {CONNECT:?}")))?
    .map_err(|e| Unreachable(format!("cannot connect to {base}: {e}")))?;
    let (bytes, content_type) = body.unwrap_or((Bytes::new(), "application/json"));
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(bytes))
        .map_err(|e| Unreachable(format!("{base}: {e}")))?;
    if !https {
        return send(TokioIo::new(stream), request, base).await;
    }
    let config = tls_config(to.ca_pem.as_deref()).map_err(Unreachable)?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Unreachable(format!("{base}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| Unreachable(format!("TLS with {base} failed: {e}")))?;
    send(TokioIo::new(tls), request, base).await
}

async fn send<S>(
    io: S,
    request: Request<Full<Bytes>>,
    base: &str,
) -> Result<Response<Incoming>, Unreachable>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Unreachable(format!("{base}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| Unreachable(format!("{base} did not answer: {e}")))
}

/// Sends one request and reads the whole answer.
pub async fn call(
    to: &Endpoint,
    method: Method,
    path_and_query: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply, Unreachable> {
    let base = to.url.as_str();
    let work = async {
        let response = open(to, method, path_and_query, body).await?;
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
pub async fn get_json(to: &Endpoint, path: &str) -> Result<serde_json::Value, String> {
    let base = to.url.as_str();
    let reply = tokio::time::timeout(POLL, call(to, Method::GET, path, None))
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
