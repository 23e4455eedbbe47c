//! The accept loop of the small HTTP/1.1 endpoints (the admin endpoint, the ACME
//! HTTP-01 listener): at most `max` connections at once, a slot taken before `accept`
//! so that more wait unaccepted in the kernel and cost no descriptor; each connection
//! with a deadline for its headers and one for its whole life.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last (a scrape or a page is one request).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown`: each request goes to `respond` with the peer's
/// address. `name` names the endpoint in log lines.
pub(crate) async fn serve<F, R>(
    listener: TcpListener,
    name: &'static str,
    max: usize,
    shutdown: CancellationToken,
    respond: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> R + Clone + Send + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, endpoint = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let answer = respond(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(%peer, endpoint = name, error = %e, "HTTP connection failed"),
                Err(_) => tracing::debug!(%peer, endpoint = name, "HTTP connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}
