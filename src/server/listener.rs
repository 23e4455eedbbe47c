//! Listeners and workers: bind every configured address, then run one single-threaded
//! runtime per worker thread, each accepting from every listener socket (like nginx's
//! workers). Each accepted client is judged by the listener's connection rules on the
//! real peer, with the config in force at that moment, and if accepted gets a session
//! on the worker that accepted it. A control thread runs the admin endpoint and the
//! backend health checks; [`Reloader`] swaps in a new config.

use super::limits::{ConnectionLimits, Permit};
use super::proxy_header;
use super::reload::Reloader;
use super::session::Session;
use super::shared::{Bound, ListenerSet, ServerError, Shared, listen};
use crate::addr::{Client, ClientAddr, LocalAddr, Origin};
use crate::admin::Status;
use crate::backend::registry::Registry;
use crate::config::{Config, Listener, Live};
use crate::identity::proxy::Proxied;
use crate::log_limit::log_refusal;
use crate::metrics;
use crate::policy::Action;
use crate::recipients::Recipients;
use crate::screen::Screen;
use crate::screen::store::Store;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// After the drain deadline, how long sessions get to say 421 and go.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Server {
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    /// `[acme] http_bind`, for HTTP-01 answers.
    acme_http: Option<std::net::TcpListener>,
}

impl Server {
    /// Binds every listener and the admin endpoint, or fails naming the one that could
    /// not be bound.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        metrics::handle();
        crate::activity::start();
        if config.backends.iter().any(|b| b.identity == crate::identity::Identity::Transparent) {
            crate::backend::transparent::check_permitted().map_err(ServerError::Transparent)?;
        }
        let mut bound = Vec::new();
        for listener in &config.listeners {
            bound.push(Arc::new(Bound::new(&listener.name, listener.bind)?));
        }
        let admin = match config.admin {
            Some(addr) => Some(listen(addr).map_err(|error| ServerError::Admin { addr, error })?),
            None => None,
        };
        let (certs, acme_http) = match &config.acme {
            Some(acme) => {
                let http = match acme.http_bind {
                    Some(addr) => Some(listen(addr).map_err(|error| ServerError::AcmeHttp { addr, error })?),
                    None => None,
                };
                (Some(start_certificates(acme)), http)
            }
            None => (None, None),
        };
        let limits = ConnectionLimits::new(config.limits.max_connections, config.limits.max_connections_per_ip);
        let store = match &config.store {
            Some(store) => Some(Store::start(store).map_err(ServerError::Store)?),
            None => None,
        };
        let recipients = Recipients::new(&config.recipients, store.clone()).map_err(ServerError::Recipients)?;
        let live = Arc::new(Live::from_pointee(config));
        let screen = Arc::new(Screen::new(store));
        let backends = Arc::new(Registry::default());
        let shared = Arc::new(Shared {
            status: Status::new(live.clone(), screen.clone(), backends.clone(), certs.clone()),
            screen,
            recipients,
            live,
            backends,
            limits,
            listeners: watch::Sender::new(Arc::new(bound)),
            certs,
            reloading: std::sync::Mutex::new(()),
        });
        Ok(Self { shared, admin, acme_http })
    }

    /// Each listener's name and the address it really listens on (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.shared.listeners.borrow().iter().map(|b| (b.name.clone(), b.local_addr())).collect()
    }

    /// Where the admin endpoint listens, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// A handle that applies a new config to the running server (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.shared.clone())
    }

    /// Serves on `config.workers` threads until `shutdown` is cancelled, then lets
    /// sessions finish for up to `server.drain_timeout`; those still open then get 421.
    /// A control thread runs the admin endpoint and the backend health checks.
    /// Blocks until every worker is done.
    pub fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let config = self.shared.live.load_full();
        for (name, addr) in self.local_addrs() {
            tracing::info!(listener = %name, %addr, workers = config.workers, "listening");
        }
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let ctx = Arc::new(WorkerCtx {
                live: self.shared.live.clone(),
                backends: self.shared.backends.clone(),
                screen: self.shared.screen.clone(),
                recipients: self.shared.recipients.clone(),
                limits: self.shared.limits.clone(),
                certs: self.shared.certs.clone(),
                sessions: TaskTracker::new(),
                stop: CancellationToken::new(),
            });
            let (listeners, shutdown) = (self.shared.listeners.subscribe(), shutdown.clone());
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || worker(ctx, listeners, shutdown))
                .map_err(ServerError::Worker)?;
            threads.push(thread);
        }
        let control_stop = CancellationToken::new();
        let control = {
            let (shared, admin, shutdown, stop) =
                (self.shared.clone(), self.admin, shutdown.clone(), control_stop.clone());
            let acme_http = self.acme_http;
            std::thread::Builder::new()
                .name("portcullis-control".into())
                .spawn(move || control(shared, admin, acme_http, shutdown, stop))
                .map_err(ServerError::Worker)?
        };
        self.shared.status.serving.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        control_stop.cancel();
        let _ = control.join();
        Ok(())
    }
}

/// The control thread: admin endpoint and health checks, on a runtime of their own so
/// that busy workers never delay a health check or a scrape. Readiness ends when the
/// drain starts; the endpoint answers until the workers are done.
fn control(
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    acme_http: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "control runtime failed to start: no admin endpoint, no health checks");
            return;
        }
    };
    runtime.block_on(async move {
        if let Some(admin) = admin {
            match TcpListener::from_std(admin) {
                Ok(admin) => {
                    tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoint listening");
                    tokio::spawn(crate::admin::serve(admin, shared.status.clone(), stop.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot use the admin socket"),
            }
        }
        tokio::spawn(crate::backend::health::run(shared.live.clone(), shared.backends.clone(), shutdown.clone()));
        if let (Some(certs), Some(acme)) = (&shared.certs, shared.live.load().acme.clone()) {
            if let Some(http) = acme_http {
                match TcpListener::from_std(http) {
                    Ok(http) => {
                        tracing::info!(addr = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ACME HTTP-01 listener listening");
                        tokio::spawn(crate::acme::http01::serve(http, certs.clone(), stop.clone()));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot use the ACME HTTP socket"),
                }
            }
            crate::acme::start(acme, certs.clone(), stop.clone());
        }
        shutdown.cancelled().await;
        shared.status.serving.store(false, Ordering::Relaxed);
        stop.cancelled().await;
    });
}

/// What one worker's accept loops and sessions share.
struct WorkerCtx {
    live: Arc<Live>,
    backends: Arc<Registry>,
    screen: Arc<Screen>,
    recipients: Arc<Recipients>,
    limits: Arc<ConnectionLimits>,
    certs: Option<Arc<crate::acme::Certificates>>,
    sessions: TaskTracker,
    /// Cancelled at the drain deadline: open sessions answer 421 and end.
    stop: CancellationToken,
}

/// One worker: a single-threaded runtime accepting on every listener, starting accept
/// loops for listeners a reload adds.
fn worker(ctx: Arc<WorkerCtx>, mut listeners: watch::Receiver<ListenerSet>, shutdown: CancellationToken) {
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
        let mut started: Vec<Arc<Bound>> = Vec::new();
        loop {
            let set = listeners.borrow_and_update().clone();
            started.retain(|b| !b.stop.is_cancelled());
            let new: Vec<Arc<Bound>> =
                set.iter().filter(|b| !started.iter().any(|s| Arc::ptr_eq(s, b))).cloned().collect();
            for bound in new {
                match bound.socket.try_clone().and_then(TcpListener::from_std) {
                    Ok(socket) => {
                        accept_loops.spawn(accept_loop(bound.clone(), socket, ctx.clone(), shutdown.clone()));
                        started.push(bound.clone());
                    }
                    Err(e) => {
                        tracing::error!(listener = %bound.name, error = %e, "cannot use listener socket; stopping");
                        shutdown.cancel();
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = listeners.changed() => if changed.is_err() { break },
            }
        }
        accept_loops.close();
        accept_loops.wait().await;
        let sessions = &ctx.sessions;
        sessions.close();
        let drain_timeout = ctx.live.load().drain_timeout;
        if tokio::time::timeout(drain_timeout, sessions.wait()).await.is_err() {
            tracing::warn!(open = sessions.len(), "sessions still open at the drain deadline; telling them 421");
            ctx.stop.cancel();
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, sessions.wait()).await;
        }
    });
}

async fn accept_loop(bound: Arc<Bound>, socket: TcpListener, ctx: Arc<WorkerCtx>, shutdown: CancellationToken) {
    // Bound to one address, every connection arrives on it: no need to ask for each.
    let fixed_local = socket.local_addr().ok().filter(|a| !a.ip().is_unspecified());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = bound.stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(listener = %bound.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(local) = fixed_local.or_else(|| stream.local_addr().ok()) else { continue };
        // The policy of the moment: a reload applies from the next connection on.
        let config = ctx.live.load_full();
        let Some(listener) = config.listener(&bound.name).cloned() else { continue };
        let client = Client::direct(ClientAddr::new(peer), LocalAddr::new(local));
        if !listener.proxy_protocol {
            // The common case stays in the accept loop: no task unless accepted.
            if let Some((session, permit)) = admit(&ctx, config, &listener, stream, client) {
                // Boxed: the task then moves a pointer around, not a session's state
                // (kilobytes, copied at every step of spawning).
                ctx.sessions.spawn(Box::pin(run_session(session, permit)));
            }
            continue;
        }
        let ctx2 = ctx.clone();
        ctx.sessions.spawn(async move {
            let ctx = ctx2;
            let Some((stream, client, input)) = behind_proxy(&config, &listener, stream, client).await else {
                return;
            };
            if let Some((session, permit)) = admit(&ctx, config, &listener, stream, client) {
                Box::pin(run_session(session.with_input(input), permit)).await;
            }
        });
    }
}

async fn run_session(session: Session<TcpStream>, permit: Permit) {
    let span = tracing::info_span!("session", id = %session.id());
    session.run().instrument(span).await;
    drop(permit);
}

/// Applies the connection rules and limits to the real client: a session with its
/// place in the connection count, or a refusal.
fn admit(
    ctx: &WorkerCtx,
    config: Arc<Config>,
    listener: &Arc<Listener>,
    stream: TcpStream,
    client: Client,
) -> Option<(Session<TcpStream>, Permit)> {
    let peer = client.addr;
    let verdict = listener.rules.decide(peer.ip());
    if verdict.action == Action::Reject {
        metrics::connection(&listener.name, "rejected", verdict.rule);
        log_refusal("by rule", peer, &listener.name, verdict.rule);
        ctx.sessions.spawn(say_and_close(stream, b"554 5.7.1 Access denied\r\n"));
        return None;
    }
    let permit = match ctx.limits.try_acquire(peer.ip()) {
        Ok(p) => p,
        Err(limit) => {
            metrics::connection(&listener.name, "limited", verdict.rule);
            metrics::limit_refused(limit.as_str());
            log_refusal("over the limit", peer, &listener.name, limit.as_str());
            ctx.sessions.spawn(say_and_close(stream, b"421 4.7.0 Too many connections, try again later\r\n"));
            return None;
        }
    };
    metrics::connection(&listener.name, "accepted", verdict.rule);
    tracing::debug!(%peer, listener = %listener.name, rule = verdict.rule, "connection accepted");
    let session = Session::new(config, listener.clone(), stream, client)
        .with_live(ctx.live.clone())
        .with_backends(ctx.backends.clone())
        .with_screen(ctx.screen.clone())
        .with_certificates(ctx.certs.clone())
        .with_recipients(ctx.recipients.clone())
        .with_stop(ctx.stop.clone());
    Some((session, permit))
}

/// The certificates of `[acme]`, with the stored one served from the first connection
/// on when there is a servable one.
fn start_certificates(acme: &crate::config::acme::AcmeConfig) -> Arc<crate::acme::Certificates> {
    let certs = crate::acme::Certificates::new(acme);
    let state = crate::acme::stored::StateDir::new(&acme.state_dir);
    match certs.load_stored(&state) {
        Ok(Some(c)) => tracing::info!(
            serial = %c.serial,
            not_after = %humantime::format_rfc3339_seconds(c.not_after),
            "serving the stored certificate"
        ),
        Ok(None) => tracing::info!(dir = %acme.state_dir.display(), "no stored certificate yet; ordering one"),
        Err(e) => tracing::warn!(error = %e, "stored certificate not used; ordering a new one"),
    }
    certs
}

/// On a `proxy_protocol` listener: only trusted proxies may connect, and what their
/// header says replaces the socket addresses. Returns the stream, the client as the
/// header names it, and bytes read after the header.
async fn behind_proxy(
    config: &Config,
    listener: &Listener,
    mut stream: TcpStream,
    connected: Client,
) -> Option<(TcpStream, Client, BytesMut)> {
    let peer = connected.addr;
    if !config.trusted_proxies.iter().any(|n| n.contains(&peer.ip())) {
        metrics::connection(&listener.name, "untrusted", "trust.proxies");
        log_refusal("not from a trusted proxy (PROXY listener)", peer, &listener.name, "trust.proxies");
        say_and_close(stream, b"554 5.7.1 Access denied\r\n").await;
        return None;
    }
    let mut input = BytesMut::new();
    match proxy_header::read(&mut stream, &mut input).await {
        Ok(Proxied::Tcp { source, destination }) if usable_source(source) => {
            let (addr, local) = (ClientAddr::new(source), LocalAddr::new(destination));
            Some((stream, Client { addr, local, origin: Origin::Proxied { proxy: peer } }, input))
        }
        Ok(Proxied::Tcp { source, .. }) => {
            tracing::info!(%peer, listener = %listener.name, %source, "PROXY header names no usable client address; treated as unknown, no relay for it");
            Some((stream, Client { origin: Origin::Unknown { proxy: peer }, ..connected }, input))
        }
        // Health checks: the connection is the proxy's own.
        Ok(Proxied::Local) => Some((stream, connected, input)),
        Ok(Proxied::Unknown) => {
            tracing::info!(%peer, listener = %listener.name, "PROXY header without a client address; no relay for it");
            Some((stream, Client { origin: Origin::Unknown { proxy: peer }, ..connected }, input))
        }
        Err(e) => {
            tracing::warn!(%peer, listener = %listener.name, error = %e, "bad PROXY header; connection closed");
            None
        }
    }
}

/// Whether a PROXY header's source can be a client: not the unspecified address, not
/// multicast or broadcast, not port 0.
fn usable_source(source: SocketAddr) -> bool {
    let ip = crate::addr::normalize(source).ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    source.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// The greeting of a refused client: says why (naming nothing internal), closes.
async fn say_and_close(mut stream: TcpStream, reply: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    })
    .await;
}
