//! The admin endpoint (`[admin] bind`): the status page at `/` ([`page`]), `/metrics`
//! in Prometheus' text format, `/healthz` (the process answers), `/readyz` (listeners
//! bound and at least one backend up) and `/bans`, over plain HTTP/1.1 for people,
//! scrapers and container health checks. The bans (client addresses) and the one call that changes state, lifting a
//! ban (`DELETE /bans/ADDRESS`), need the token of `[admin] token_file`.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; more wait in the
//! kernel's queue, unaccepted, so the endpoint can never take the descriptors that
//! SMTP sessions need.

mod page;
mod samples;

use crate::backend::registry::Registry;
use crate::config::Live;
use crate::metrics;
use crate::screen::Screen;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Admin connections served at once, at most.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// What readiness is judged on.
pub(crate) struct Status {
    pub(crate) live: Arc<Live>,
    pub(crate) screen: Arc<Screen>,
    pub(crate) backends: Arc<Registry>,
    /// The certificates `[acme]` obtains, when it is configured.
    pub(crate) certs: Option<Arc<crate::acme::Certificates>>,
    /// Set once every listener is bound and the workers run; cleared when draining.
    pub(crate) serving: AtomicBool,
}

impl Status {
    pub(crate) fn new(
        live: Arc<Live>,
        screen: Arc<Screen>,
        backends: Arc<Registry>,
        certs: Option<Arc<crate::acme::Certificates>>,
    ) -> Arc<Self> {
        Arc::new(Self { live, screen, backends, certs, serving: AtomicBool::new(false) })
    }

    /// `Ok` when ready, else why not.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err("not serving (starting or draining)");
        }
        if !self.backends.any_up(&self.live.load().backends) {
            return Err("no backend is up");
        }
        Ok(())
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, status: Arc<Status>, shutdown: CancellationToken) {
    crate::http_endpoint::serve(listener, "admin", MAX_CONNECTIONS, shutdown, move |req, _peer| {
        let status = status.clone();
        async move { respond(&req, &status).await }
    })
    .await
}

async fn respond(req: &Request<hyper::body::Incoming>, status: &Status) -> Response<Full<Bytes>> {
    if let Some(target) = req.uri().path().strip_prefix("/bans/")
        && req.method() == Method::DELETE
    {
        return lift(req, target, status).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET (and DELETE /bans/ADDRESS)\n".into());
    }
    match req.uri().path() {
        "/bans" => {
            if let Some(refused) = unauthorized(req, status, "bans cannot be listed here") {
                return refused;
            }
            let lines: String = status
                .screen
                .bans()
                .await
                .iter()
                .map(|b| format!("{} {}s {}\n", b.client, b.remaining.as_secs(), b.reason.replace(' ', "_")))
                .collect();
            text(StatusCode::OK, lines)
        }
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics::render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/" => status_page(req, status).await,
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match status.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /, /metrics, /healthz or /readyz\n".into()),
    }
}

/// `GET /`, the status page; `?client=PREFIX` filters the refusals by address, `?login`
/// asks the browser for the token (as a Basic password) to show client addresses.
async fn status_page(req: &Request<hyper::body::Incoming>, status: &Status) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let query = req.uri().query().unwrap_or("");
    let param =
        |name: &str| form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let config = status.live.load();
    let on_loopback = config.admin.is_some_and(|a| a.ip().is_loopback());
    let show_clients = on_loopback || has_token(req, config.admin_token.as_deref());
    if !show_clients && query.split('&').any(|p| p == "login") {
        let mut response = text(StatusCode::UNAUTHORIZED, "the admin token is the password\n".into());
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"portcullis\", charset=\"UTF-8\""),
        );
        return response;
    }
    let client = param("client").map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    let data = page::gather(status, show_clients, client);
    let html = page::render(&data);
    tracing::debug!(took = ?started.elapsed(), bytes = html.len(), "status page rendered");
    let mut response = text(StatusCode::OK, html);
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    response
}

/// Whether `req` carries the admin token: `Authorization: Bearer TOKEN`, or `Basic`
/// with TOKEN as the password (what a browser sends).
fn has_token(req: &Request<hyper::body::Incoming>, token: Option<&str>) -> bool {
    use base64::Engine;
    let Some(token) = token else { return false };
    let Some(given) = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some(bearer) = given.strip_prefix("Bearer ") {
        return constant_time_eq(bearer.as_bytes(), token.as_bytes());
    }
    let Some(basic) = given.strip_prefix("Basic ") else { return false };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else { return false };
    let password = decoded.iter().position(|b| *b == b':').map_or(&decoded[..0], |at| &decoded[at + 1..]);
    constant_time_eq(password, token.as_bytes())
}

/// `DELETE /bans/ADDRESS` with `Authorization: Bearer <token>` (`[admin] token_file`):
/// lifts the ban on the client network of ADDRESS.
async fn lift(req: &Request<hyper::body::Incoming>, target: &str, status: &Status) -> Response<Full<Bytes>> {
    if let Some(refused) = unauthorized(req, status, "bans cannot be lifted here") {
        return refused;
    }
    let config = status.live.load();
    let Ok(ip) = target.parse::<std::net::IpAddr>() else {
        return text(StatusCode::BAD_REQUEST, format!("{target:?} is not an IP address\n"));
    };
    let client = crate::addr::network(ip, config.limits.ipv6_prefix);
    match status.screen.lift(client).await {
        Ok(true) => {
            tracing::info!(%client, "ban lifted through the admin endpoint");
            text(StatusCode::OK, format!("lifted {client}\n"))
        }
        Ok(false) => text(StatusCode::NOT_FOUND, format!("{client} is not banned\n")),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{client}: {e}; its shared ban, if any, stays\n")),
    }
}

/// `None` when `req` carries the token of `[admin] token_file` (`Authorization:
/// Bearer`); otherwise the response that says why not (`without`: what cannot be done).
fn unauthorized(req: &Request<hyper::body::Incoming>, status: &Status, without: &str) -> Option<Response<Full<Bytes>>> {
    let config = status.live.load();
    if config.admin_token.is_none() {
        return Some(text(StatusCode::FORBIDDEN, format!("no [admin] token_file is configured: {without}\n")));
    }
    if !has_token(req, config.admin_token.as_deref()) {
        tracing::warn!(method = %req.method(), path = req.uri().path(), "admin endpoint: a call without the right token; refused");
        return Some(text(StatusCode::UNAUTHORIZED, "wrong or missing token\n".into()));
    }
    None
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
}

#[derive(Debug, Error)]
pub enum HealthError {
    #[error("cannot reach the admin endpoint at {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("admin endpoint at {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("admin endpoint at {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0}")]
    NotReady(String),
}

/// `portcullis health`: asks `/readyz` at `addr`; `Ok` with its text when ready.
pub async fn check_ready(addr: SocketAddr, limit: Duration) -> Result<String, HealthError> {
    call(addr, Method::GET, "/readyz", None, limit).await
}

/// One call to the admin endpoint at `addr`: the body when it answers 200, else the
/// status and body as the error. `token`: sent as `Authorization: Bearer`.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    limit: Duration,
) -> Result<String, HealthError> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| HealthError::Connect(addr, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HealthError::Http(addr, e))?;
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header(hyper::header::HOST, addr.to_string());
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| HealthError::NotReady(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| HealthError::Http(addr, e))?;
        let code = response.status();
        let body = response.into_body().collect().await.map_err(|e| HealthError::Http(addr, e))?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if code == StatusCode::OK { Ok(body) } else { Err(HealthError::NotReady(format!("{code}: {body}"))) }
    };
    tokio::time::timeout(limit, ask).await.map_err(|_| HealthError::Timeout(addr, limit))?
}
