//! Listeners: bind every configured address, accept, decide on the real peer with the
//! listener's connection rules, and start a session for each accepted client.

use super::session::Session;
use crate::addr::{ClientAddr, LocalAddr};
use crate::config::{Config, Listener};
use crate::policy::Action;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long running sessions may go on after shutdown was asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("listener {name:?}: cannot listen on {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: io::Error },
}

struct Bound {
    listener: Listener,
    name: Arc<str>,
    socket: TcpListener,
}

pub struct Server {
    config: Arc<Config>,
    bound: Vec<Bound>,
}

impl Server {
    /// Binds every listener, or fails naming the one that could not be bound.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let mut bound = Vec::new();
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.bind).await.map_err(|source| ServerError::Bind {
                name: listener.name.clone(),
                addr: listener.bind,
                source,
            })?;
            bound.push(Bound { listener: listener.clone(), name: listener.name.as_str().into(), socket });
        }
        Ok(Self { config: Arc::new(config), bound })
    }

    /// Each listener's name and the address it really listens on (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .map(|b| (b.listener.name.clone(), b.socket.local_addr().expect("bound socket has an address")))
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then lets sessions finish for up to
    /// [`DRAIN_TIMEOUT`].
    pub async fn run(self, shutdown: CancellationToken) {
        let sessions = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        for b in self.bound {
            if let Ok(addr) = b.socket.local_addr() {
                tracing::info!(listener = %b.name, %addr, "listening");
            }
            accept_loops.spawn(accept_loop(b, self.config.clone(), sessions.clone(), shutdown.clone()));
        }
        accept_loops.close();
        accept_loops.wait().await;
        sessions.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, sessions.wait()).await.is_err() {
            tracing::warn!(open = sessions.len(), "sessions still open after the drain deadline; stopping them");
        }
    }
}

async fn accept_loop(b: Bound, config: Arc<Config>, sessions: TaskTracker, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = b.socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(listener = %b.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = ClientAddr::new(peer);
        let local = match stream.local_addr() {
            Ok(a) => LocalAddr::new(a),
            Err(_) => continue,
        };
        let verdict = b.listener.rules.decide(peer.ip());
        if verdict.action == Action::Reject {
            tracing::info!(%peer, %local, listener = %b.name, rule = verdict.rule, "connection refused");
            sessions.spawn(refuse(stream));
            continue;
        }
        tracing::debug!(%peer, listener = %b.name, rule = verdict.rule, "connection accepted");
        let _ = stream.set_nodelay(true);
        let session = Session::new(config.clone(), b.name.clone(), stream, peer, local);
        sessions.spawn(session.run());
    }
}

/// The greeting of a refused client: says no, names nothing, closes.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(b"554 5.7.1 Access denied\r\n").await?;
        stream.shutdown().await
    })
    .await;
}
