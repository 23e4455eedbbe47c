//! Listeners and workers: bind every configured address, then run one single-threaded
//! runtime per worker thread, each accepting from every listener socket (like nginx's
//! workers). Each accepted client is judged by the listener's connection rules on the
//! real peer and, if accepted, gets a session on the worker that accepted it.

use super::limits::{ConnectionLimits, Permit};
use super::proxy_header;
use super::session::Session;
use crate::addr::{ClientAddr, LocalAddr};
use crate::config::{Config, Listener};
use crate::identity::proxy::Proxied;
use crate::policy::Action;
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After the drain deadline, how long sessions get to say 421 and go.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("listener {name:?}: cannot listen on {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: io::Error },
    #[error("cannot start worker thread: {0}")]
    Worker(io::Error),
    #[error(
        "a backend uses identity = \"transparent\", which needs the IP_TRANSPARENT socket option \
         (root or CAP_NET_ADMIN): {0}"
    )]
    Transparent(io::Error),
}

struct Bound {
    listener: Arc<Listener>,
    socket: std::net::TcpListener,
}

pub struct Server {
    config: Arc<Config>,
    bound: Vec<Bound>,
    limits: Arc<ConnectionLimits>,
}

impl Server {
    /// Binds every listener, or fails naming the one that could not be bound.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        if config.backends.iter().any(|b| b.identity == crate::identity::Identity::Transparent) {
            super::transparent::check_permitted().map_err(ServerError::Transparent)?;
        }
        let mut bound = Vec::new();
        for listener in &config.listeners {
            let socket = listen(listener.bind).map_err(|source| ServerError::Bind {
                name: listener.name.clone(),
                addr: listener.bind,
                source,
            })?;
            bound.push(Bound { listener: Arc::new(listener.clone()), socket });
        }
        let limits = ConnectionLimits::new(config.limits.max_connections, config.limits.max_connections_per_ip);
        Ok(Self { config: Arc::new(config), bound, limits })
    }

    /// Each listener's name and the address it really listens on (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .map(|b| (b.listener.name.clone(), b.socket.local_addr().expect("bound socket has an address")))
            .collect()
    }

    /// Serves on `config.workers` threads until `shutdown` is cancelled, then lets
    /// sessions finish for up to `server.drain_timeout`; those still open then get 421.
    /// Blocks until every worker is done.
    pub fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        for (name, addr) in self.local_addrs() {
            tracing::info!(listener = %name, %addr, workers = self.config.workers, "listening");
        }
        let mut threads = Vec::new();
        for i in 0..self.config.workers {
            let sockets = self
                .bound
                .iter()
                .map(|b| Ok((b.listener.clone(), b.socket.try_clone()?)))
                .collect::<io::Result<Vec<_>>>()
                .map_err(ServerError::Worker)?;
            let ctx = Arc::new(WorkerCtx {
                config: self.config.clone(),
                limits: self.limits.clone(),
                sessions: TaskTracker::new(),
                stop: CancellationToken::new(),
            });
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || worker(ctx, sockets, shutdown))
                .map_err(ServerError::Worker)?;
            threads.push(thread);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What one worker's accept loops and sessions share.
struct WorkerCtx {
    config: Arc<Config>,
    limits: Arc<ConnectionLimits>,
    sessions: TaskTracker,
    /// Cancelled at the drain deadline: open sessions answer 421 and end.
    stop: CancellationToken,
}

/// One worker: a single-threaded runtime accepting on every listener.
fn worker(ctx: Arc<WorkerCtx>, sockets: Vec<(Arc<Listener>, std::net::TcpListener)>, shutdown: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "worker runtime failed to start");
            shutdown.cancel();
            return;
        }
    };
    runtime.block_on(async move {
        let accept_loops = TaskTracker::new();
        for (listener, socket) in sockets {
            match TcpListener::from_std(socket) {
                Ok(socket) => {
                    let b = Accepting { listener, socket };
                    accept_loops.spawn(accept_loop(b, ctx.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::error!(listener = %listener.name, error = %e, "cannot use listener socket; stopping");
                    shutdown.cancel();
                }
            }
        }
        accept_loops.close();
        accept_loops.wait().await;
        let sessions = &ctx.sessions;
        sessions.close();
        if tokio::time::timeout(ctx.config.drain_timeout, sessions.wait()).await.is_err() {
            tracing::warn!(open = sessions.len(), "sessions still open at the drain deadline; telling them 421");
            ctx.stop.cancel();
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, sessions.wait()).await;
        }
    });
}

/// A listener socket registered with one worker's runtime.
struct Accepting {
    listener: Arc<Listener>,
    socket: TcpListener,
}

async fn accept_loop(b: Accepting, ctx: Arc<WorkerCtx>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = b.socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(listener = %b.listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else { continue };
        let (peer, local) = (ClientAddr::new(peer), LocalAddr::new(local));
        if !b.listener.proxy_protocol {
            // The common case stays in the accept loop: no task unless accepted.
            if let Some((session, permit)) = admit(&ctx, &b.listener, stream, peer, local) {
                ctx.sessions.spawn(async move {
                    session.run().await;
                    drop(permit);
                });
            }
            continue;
        }
        let (ctx2, listener) = (ctx.clone(), b.listener.clone());
        ctx.sessions.spawn(async move {
            let ctx = ctx2;
            let Some((stream, peer, local, input, known)) =
                behind_proxy(&ctx.config, &listener, stream, peer, local).await
            else {
                return;
            };
            if let Some((mut session, permit)) = admit(&ctx, &listener, stream, peer, local) {
                session = session.with_input(input);
                if !known {
                    session = session.with_unknown_address();
                }
                session.run().await;
                drop(permit);
            }
        });
    }
}

/// Applies the connection rules and limits to the real client: a session with its
/// place in the connection count, or a refusal.
fn admit(
    ctx: &WorkerCtx,
    listener: &Arc<Listener>,
    stream: TcpStream,
    peer: ClientAddr,
    local: LocalAddr,
) -> Option<(Session<TcpStream>, Permit)> {
    let verdict = listener.rules.decide(peer.ip());
    if verdict.action == Action::Reject {
        tracing::info!(%peer, %local, listener = %listener.name, rule = verdict.rule, "connection refused");
        tokio::spawn(say_and_close(stream, b"554 5.7.1 Access denied\r\n"));
        return None;
    }
    let permit = match ctx.limits.try_acquire(peer.ip()) {
        Ok(p) => p,
        Err(limit) => {
            tracing::warn!(%peer, listener = %listener.name, limit = limit.as_str(), "connection refused: over the limit");
            tokio::spawn(say_and_close(stream, b"421 4.7.0 Too many connections, try again later\r\n"));
            return None;
        }
    };
    tracing::debug!(%peer, listener = %listener.name, rule = verdict.rule, "connection accepted");
    let _ = stream.set_nodelay(true);
    let session = Session::new(ctx.config.clone(), listener.clone(), stream, peer, local).with_stop(ctx.stop.clone());
    Some((session, permit))
}

/// On a `proxy_protocol` listener: only trusted proxies may connect, and what their
/// header says replaces the socket addresses. Returns the stream, the client, the
/// local address, bytes read after the header, and whether the client is known.
async fn behind_proxy(
    config: &Config,
    listener: &Listener,
    mut stream: TcpStream,
    peer: ClientAddr,
    local: LocalAddr,
) -> Option<(TcpStream, ClientAddr, LocalAddr, BytesMut, bool)> {
    if !config.trusted_proxies.iter().any(|n| n.contains(&peer.ip())) {
        tracing::warn!(%peer, listener = %listener.name, "connection from outside [trust] proxies on a PROXY listener; refused");
        say_and_close(stream, b"554 5.7.1 Access denied\r\n").await;
        return None;
    }
    let mut input = BytesMut::new();
    match proxy_header::read(&mut stream, &mut input).await {
        Ok(Proxied::Tcp { source, destination }) => {
            Some((stream, ClientAddr::new(source), LocalAddr::new(destination), input, true))
        }
        // Health checks: the connection is the proxy's own.
        Ok(Proxied::Local) => Some((stream, peer, local, input, true)),
        Ok(Proxied::Unknown) => {
            tracing::info!(%peer, listener = %listener.name, "PROXY header without a client address; no relay for it");
            Some((stream, peer, local, input, false))
        }
        Err(e) => {
            tracing::warn!(%peer, listener = %listener.name, error = %e, "bad PROXY header; connection closed");
            None
        }
    }
}

/// The greeting of a refused client: says why (naming nothing internal), closes.
async fn say_and_close(mut stream: TcpStream, reply: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    })
    .await;
}
