//! The HTTP-01 listener (`[acme] http_bind`): answers `GET
//! /.well-known/acme-challenge/<token>` with the key authorization while an order is in
//! progress, and 404 to everything else. Nothing else is served on it; like the admin
//! endpoint it takes at most [`MAX_CONNECTIONS`] at once, each for a bounded time.

use super::Certificates;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/.well-known/acme-challenge/";
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Serves challenge answers on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, certs: Arc<Certificates>, shutdown: CancellationToken) {
    crate::http_endpoint::serve(listener, "ACME HTTP-01", MAX_CONNECTIONS, shutdown, move |req, peer| {
        let answer = respond(req.method(), req.uri().path(), &certs);
        if answer.status() == StatusCode::OK {
            tracing::info!(%peer, path = req.uri().path(), "answered an HTTP-01 validation");
        }
        async move { answer }
    })
    .await
}

/// The answer to one request: the key authorization for a pending token, else 404.
fn respond(method: &Method, path: &str, certs: &Certificates) -> Response<Full<Bytes>> {
    let answer = (method == Method::GET || method == Method::HEAD)
        .then(|| path.strip_prefix(PREFIX))
        .flatten()
        .and_then(|token| certs.http_answer(token));
    let (code, body) = match answer {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs() -> Arc<Certificates> {
        let text = r#"
            [[listener]]
            name = "mx"
            bind = "127.0.0.1:0"
            [[backend]]
            address = "127.0.0.1:25"
            [acme]
            directory = "https://ca.test/dir"
            domains = ["mx.example.com"]
            state_dir = "/nonexistent/portcullis-acme"
        "#;
        let config = crate::config::parse(text).unwrap().config;
        Certificates::new(config.acme.as_ref().unwrap())
    }

    #[test]
    fn only_pending_tokens_are_answered() {
        let certs = certs();
        let path = "/.well-known/acme-challenge/tok123";
        assert_eq!(respond(&Method::GET, path, &certs).status(), StatusCode::NOT_FOUND);
        certs.answer_http("tok123", "tok123.thumb");
        assert_eq!(respond(&Method::GET, path, &certs).status(), StatusCode::OK);
        assert_eq!(respond(&Method::POST, path, &certs).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::GET, "/.well-known/acme-challenge/other", &certs).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::GET, "/tok123", &certs).status(), StatusCode::NOT_FOUND);
        certs.clear_answers();
        assert_eq!(respond(&Method::GET, path, &certs).status(), StatusCode::NOT_FOUND);
    }
}
