//! The backend side of a session: connect with failover, STARTTLS when configured,
//! hand over the client's identity, then send commands and read replies in lock step.
//!
//! Every reply must answer a command that is outstanding, with a code that fits that
//! command ([`Asked::allows`]). Bytes from the backend while nothing is outstanding,
//! more replies than commands, or an impossible code mean the backend and Portcullis
//! no longer agree on where the session is; the connection is then useless and
//! dangerous (a message body could be read as commands), so it is reported as
//! [`UpstreamError::OutOfStep`] and the caller drops it without sending another byte.

use super::registry::{BackendState, Registry};
use crate::config::{Backend, BackendTls};
use crate::deadline::Deadline;
use crate::identity::{ClientFacts, Identity, proxy, xclient, xforward};
use crate::metrics as admin_metrics;
use crate::smtp::{Asked, Capabilities, Reply, ReplyError, ReplyParser};
use crate::tls::MaybeTls;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

/// What a client is told when its backend connection went away.
pub(crate) const CONNECTION_LOST: &str = "451 4.4.2 Connection to the mail server lost, try again later";

/// Trouble on the backend side. None of it is proven to be the client's fault, so
/// every variant maps to a temporary (4xx) reply.
#[derive(Debug, Error)]
pub(crate) enum UpstreamError {
    #[error("no backend reachable ({0})")]
    Unreachable(String),
    #[error("every backend is at its connection limit ({0})")]
    Busy(String),
    #[error("identity step refused by {backend}: {detail}")]
    IdentityRefused { backend: String, detail: String },
    /// The backend refused a value that comes from the client (HELO name, login) in the
    /// identity step. Not a backend failure: no failover.
    #[error("backend {backend} refused the client's identity values: {detail}")]
    ClientValueRefused { backend: String, detail: String },
    #[error("backend {backend} is out of step: {detail}")]
    OutOfStep { backend: String, detail: String },
    #[error("backend connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("backend closed the connection")]
    Closed,
    #[error("backend did not answer in time")]
    Timeout,
    #[error("backend sent a bad reply: {0}")]
    BadReply(#[from] ReplyError),
    #[error("backend TLS failed: {0}")]
    Tls(String),
}

impl UpstreamError {
    /// The reply the client gets; it names no internals.
    pub(crate) fn client_reply(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Tls(_) => {
                "451 4.4.1 Service temporarily unavailable, try again later"
            }
            UpstreamError::Busy(_) => "451 4.3.2 Service busy, try again later",
            UpstreamError::IdentityRefused { .. } | UpstreamError::ClientValueRefused { .. } => {
                "451 4.3.0 Service temporarily unavailable, try again later"
            }
            _ => CONNECTION_LOST,
        }
    }

    /// The backend broke the protocol: it must not be tried again for this transaction.
    pub(crate) fn is_out_of_step(&self) -> bool {
        matches!(self, UpstreamError::OutOfStep { .. } | UpstreamError::BadReply(_))
    }

    /// A short fixed name for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => "unreachable",
            UpstreamError::Busy(_) => "busy",
            UpstreamError::IdentityRefused { .. } => "identity_refused",
            UpstreamError::ClientValueRefused { .. } => "client_value_refused",
            UpstreamError::OutOfStep { .. } | UpstreamError::BadReply(_) => "out_of_step",
            UpstreamError::Io(_) => "io",
            UpstreamError::Closed => "closed",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Tls(_) => "tls",
        }
    }

    /// A failure after which a fresh connection may do better, as long as nothing of
    /// the transaction was acknowledged yet: out of step, or closed under us (a reused
    /// connection the backend dropped while idle).
    pub(crate) fn worth_reconnecting(&self) -> bool {
        self.is_out_of_step() || matches!(self, UpstreamError::Closed | UpstreamError::Io(_))
    }
}

type Stream = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The name said in EHLO: ours, or the client's (whose refusal is not the backend's
/// failure).
#[derive(Debug, Clone, Copy)]
enum Name<'a> {
    Ours(&'a str),
    Clients(&'a str),
}

pub(crate) struct Upstream {
    stream: Stream,
    buf: BytesMut,
    caps: Capabilities,
    identity: Identity,
    /// The backend's configured address, for logs.
    pub(crate) address: String,
    reply_timeout: Duration,
    data_timeout: Duration,
    /// How long this connection may stay open while its session has no recipient.
    pub(crate) idle_timeout: Duration,
    /// Replies the backend owes, oldest first.
    owed: VecDeque<Asked>,
    /// The timer of every wait on the backend.
    deadline: Deadline,
    /// Commands queued for one write (a pipelined group), sent before the next read.
    queued: Vec<u8>,
    /// One of the backend's `max_connections`, given back when this is dropped (none
    /// for a health check).
    _slot: Option<OwnedSemaphorePermit>,
    reply_timer: metrics::Histogram,
    /// Transactions begun on this connection (MAIL sent), over every session it served.
    pub(crate) messages: u32,
    /// A transaction is open at the backend (MAIL sent, its end not yet answered).
    in_transaction: bool,
    /// AUTH went over this connection (finished or not): a login, or half of one, is
    /// bound to it, so it never serves another session.
    auth_used: bool,
}

impl Upstream {
    /// Tries each backend in order; the first that greets and accepts the identity step
    /// wins. Backends named in `skip` (out of step earlier in this transaction) are
    /// passed over, and so are backends that learn less about the client than one
    /// before them, unless they allow it (`allow_identity_downgrade`). Backends whose
    /// health checks fail are passed over too, unless no backend is up: then they are
    /// tried anyway. When every usable backend is at its connection limit, waits up to
    /// the first one's `queue_timeout` for a free connection.
    pub(crate) async fn connect(
        backends: &[Backend],
        states: &[Arc<BackendState>],
        facts: &ClientFacts<'_>,
        hostname: &str,
        skip: &[String],
    ) -> Result<Self, UpstreamError> {
        let mut failures = Vec::new();
        let mut identity_refused = false;
        let mut full = Vec::new();
        let any_up = states.iter().any(|s| s.health.is_up());
        for ((i, backend), state) in backends.iter().enumerate().zip(states) {
            if skip.contains(&backend.address) || !usable(backends, i) || (any_up && !state.health.is_up()) {
                continue;
            }
            let Ok(slot) = state.slots.clone().try_acquire_owned() else {
                full.push((backend, state));
                continue;
            };
            let result = Self::connect_one(backend, state, slot, facts, hostname).await;
            if let Err(e) = &result {
                admin_metrics::backend_error(&backend.address, "connect", e.kind());
            }
            match result {
                Ok(upstream) => return Ok(upstream),
                Err(e @ UpstreamError::ClientValueRefused { .. }) => return Err(e),
                Err(UpstreamError::IdentityRefused { backend, detail }) => {
                    tracing::warn!(%backend, detail = ?detail, "backend refused the identity step, trying the next");
                    failures.push(format!("{backend}: {detail}"));
                    identity_refused = true;
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.address, error = ?e.to_string(), "backend unusable, trying the next");
                    failures.push(format!("{}: {e}", backend.address));
                }
            }
        }
        if let Some(&(backend, state)) = full.first() {
            match timeout(backend.queue_timeout, state.slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => return Self::connect_one(backend, state, slot, facts, hostname).await,
                _ => {
                    let busy = full.iter().map(|(b, _)| format!("{}: {} in use", b.address, b.max_connections));
                    return Err(UpstreamError::Busy(busy.collect::<Vec<_>>().join("; ")));
                }
            }
        }
        if identity_refused {
            // A misconfiguration more than an outage: say so in the reply code too.
            return Err(UpstreamError::IdentityRefused {
                backend: "every backend".into(),
                detail: failures.join("; "),
            });
        }
        if failures.is_empty() {
            failures.push("none usable for this session".into());
        }
        Err(UpstreamError::Unreachable(failures.join("; ")))
    }

    async fn connect_one(
        backend: &Backend,
        state: &BackendState,
        slot: OwnedSemaphorePermit,
        facts: &ClientFacts<'_>,
        hostname: &str,
    ) -> Result<Self, UpstreamError> {
        if !facts.client.address_known()
            && matches!(backend.identity, Identity::ProxyV1 | Identity::ProxyV2 | Identity::Transparent)
        {
            // These identities cannot say "unknown" in a way the backend takes as such:
            // it would take the connection's own peer, this proxy, for the client (and
            // that address is often trusted). The client's load balancer did not say who
            // it is, so no backend of this kind may take it.
            return Err(UpstreamError::ClientValueRefused {
                backend: backend.address.clone(),
                detail: format!(
                    "client address unknown (PROXY UNKNOWN); identity {} cannot pass that on",
                    backend.identity.name()
                ),
            });
        }
        let connecting = async {
            if backend.identity != Identity::Transparent {
                return TcpStream::connect(backend.address.as_str()).await;
            }
            let client = facts.client.addr.ip();
            let target = tokio::net::lookup_host(backend.address.as_str())
                .await?
                .find(|a| a.is_ipv4() == client.is_ipv4())
                .ok_or_else(|| {
                    io::Error::other(format!("no address of {} in the client's address family", backend.address))
                })?;
            super::transparent::connect(client, target).await
        };
        // The connection's one timer (see [`Deadline`]) times the connect too.
        let mut deadline = Deadline::new();
        let stream =
            deadline.within(backend.connect_timeout, connecting).await.map_err(|_| UpstreamError::Timeout)??;
        // Identities that carry the client's HELO themselves greet with our name; with
        // the others the backend sees the client's own (checked) EHLO name, as it would
        // without a proxy, in its HELO checks, logs and Received: lines.
        // A connection kept for other sessions greets with our name too: it is nobody's.
        let name = match backend.identity {
            Identity::Xclient | Identity::Xforward => Name::Ours(hostname),
            Identity::None if backend.reuse.is_some() => Name::Ours(hostname),
            _ => Name::Clients(facts.helo),
        };
        let header = |identity| match identity {
            Identity::ProxyV1 => Some(proxy::v1_header(facts.client.addr, facts.client.local)),
            Identity::ProxyV2 => Some(proxy::v2_header(facts.client.addr, facts.client.local)),
            _ => None,
        };
        let mut up = Self::open(backend, stream, deadline, Some(slot), header).await?;
        // XCLIENT straight after the greeting when the backend is known to let us set
        // the client (Postfix takes it before any EHLO): one round trip, and the
        // backend's EHLO work, fewer. Not before STARTTLS: nothing goes out in clear
        // that would not without it.
        let known = (backend.identity == Identity::Xclient && backend.tls == BackendTls::None)
            .then(|| state.ours.read(|caps| caps.xclient_offers("ADDR").then(|| caps.clone())).flatten())
            .flatten();
        if let Some(ours) = known {
            up.caps = ours;
            match up.send_xclient(facts).await {
                Ok(()) => {
                    up.hello(Name::Clients(facts.helo)).await?;
                    state.learned.set(&up.caps);
                    return Ok(up);
                }
                // Refused before EHLO (even as a syntax error: an attribute no longer
                // allowed): what we knew is stale, or this backend wants EHLO first.
                // Ask it, and go the long way below, whose answer is final (and
                // learns what the backend offers now).
                Err(
                    UpstreamError::IdentityRefused { detail, .. } | UpstreamError::ClientValueRefused { detail, .. },
                ) => {
                    tracing::debug!(backend = %backend.address, detail = ?detail, "XCLIENT before EHLO refused; EHLO first");
                }
                Err(e) => return Err(e),
            }
        }
        up.hello(name).await?;
        if backend.tls != BackendTls::None {
            up.starttls(backend, name).await?;
        }
        up.identity_offered()?;
        if backend.identity == Identity::Xclient {
            state.ours.set(&up.caps);
            up.xclient(facts).await?;
        }
        // What the session will really deal with (after TLS and XCLIENT, EHLO again).
        state.learned.set(&up.caps);
        Ok(up)
    }

    /// A fresh connection up to the backend's greeting: the PROXY header (`header`)
    /// when the identity sends one, the greeting. (EHLO is the caller's.) `deadline` is
    /// the timer its connect ran under.
    async fn open(
        backend: &Backend,
        stream: TcpStream,
        deadline: Deadline,
        slot: Option<OwnedSemaphorePermit>,
        header: impl FnOnce(Identity) -> Option<Vec<u8>>,
    ) -> Result<Self, UpstreamError> {
        stream.set_nodelay(true)?;
        let mut up = Upstream {
            stream: MaybeTls::Plain(stream),
            buf: BytesMut::with_capacity(1024),
            caps: Capabilities::default(),
            identity: backend.identity,
            address: backend.address.clone(),
            reply_timeout: backend.reply_timeout,
            data_timeout: backend.data_timeout,
            idle_timeout: backend.idle_timeout,
            owed: VecDeque::from([Asked::Greeting]),
            deadline,
            queued: Vec::new(),
            _slot: slot,
            reply_timer: admin_metrics::backend_reply_timer(&backend.address),
            messages: 0,
            in_transaction: false,
            auth_used: false,
        };
        let header = header(backend.identity);
        if let Some(header) = &header {
            up.write(header).await?;
        }
        let greeting = match up.reply().await {
            // A backend that takes no PROXY header, or another version, often just
            // closes: say what it most likely means.
            Err(UpstreamError::Closed | UpstreamError::Io(_)) if header.is_some() => {
                return Err(up.out_of_step(format!(
                    "closed the connection after our {} header: does it expect another PROXY version, or none?",
                    backend.identity.name()
                )));
            }
            reply => reply?,
        };
        if greeting.code != 220 {
            return Err(UpstreamError::Unreachable(format!("greeting {:?}", greeting.first_line())));
        }
        Ok(up)
    }

    /// A health check: connect from our own address, the PROXY header of a connection
    /// that is ours (v1 UNKNOWN, v2 LOCAL) when the identity sends one, greeting, EHLO
    /// (offering XCLIENT or XFORWARD to us when that is the identity), QUIT. Takes none
    /// of the backend's `max_connections`.
    pub(crate) async fn probe(backend: &Backend, registry: &Registry, hostname: &str) -> Result<(), UpstreamError> {
        let mut deadline = Deadline::new();
        let stream = deadline
            .within(backend.connect_timeout, TcpStream::connect(backend.address.as_str()))
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        let mut up = Self::open(backend, stream, deadline, None, |identity| match identity {
            Identity::ProxyV1 => Some(proxy::v1_local()),
            Identity::ProxyV2 => Some(proxy::v2_local()),
            _ => None,
        })
        .await?;
        up.hello(Name::Ours(hostname)).await?;
        // The identity step as far as a check can prove it without a client: the PROXY
        // header answered by a greeting (above), the extension offered to us.
        up.identity_offered()?;
        // Sessions learn what the backend offers them (after TLS and XCLIENT, EHLO
        // again); the check's own view only fills in until the first session has. It
        // is what the backend offers us, though (without TLS: with it, the EHLO that
        // counts is the one inside).
        let state = registry.get(backend);
        if state.learned.read(|_| ()).is_none() {
            state.learned.set(&up.caps);
        }
        if backend.tls == BackendTls::None {
            state.ours.set(&up.caps);
        }
        up.quit().await;
        Ok(())
    }

    /// EHLO; HELO only for identities that need no extension. With a PROXY header, a
    /// refused EHLO is most likely the backend's answer to the header itself: such a
    /// backend is out of step from its first reply and is given up.
    async fn hello(&mut self, name: Name<'_>) -> Result<(), UpstreamError> {
        let (name, clients) = match name {
            Name::Ours(n) => (n, false),
            Name::Clients(n) => (n, true),
        };
        self.queue_parts(&[b"EHLO ", name.as_bytes(), b"\r\n"], Asked::Hello)?;
        let reply = self.reply().await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if self.identity.speaks_first() {
            return Err(self.out_of_step(format!(
                "EHLO answered {:?}: does this backend expect a PROXY header ({})?",
                reply.first_line(),
                self.identity.name()
            )));
        }
        if clients && reply.code == 501 {
            let detail = format!("EHLO {name:?} answered {:?}", reply.first_line());
            return Err(UpstreamError::ClientValueRefused { backend: self.address.clone(), detail });
        }
        if self.identity != Identity::None && self.identity != Identity::Transparent {
            return Err(UpstreamError::Unreachable(format!("EHLO refused: {:?}", reply.first_line())));
        }
        let reply = self.command(format!("HELO {name}\r\n").as_bytes(), Asked::Hello).await?;
        if !reply.is_positive() {
            return Err(UpstreamError::Unreachable(format!("HELO refused: {:?}", reply.first_line())));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// STARTTLS toward the backend; without it, `starttls-required` makes this backend
    /// unusable while plain `starttls` goes on unencrypted. Bytes after the 220 would
    /// be injected before the handshake: lock step refuses them.
    async fn starttls(&mut self, backend: &Backend, ehlo_name: Name<'_>) -> Result<(), UpstreamError> {
        let required = backend.tls == BackendTls::Required;
        if !self.caps.starttls {
            if required {
                return Err(UpstreamError::Tls("STARTTLS is not offered".into()));
            }
            tracing::debug!(backend = %self.address, "backend does not offer STARTTLS; going on without TLS");
            return Ok(());
        }
        let reply = self.command(b"STARTTLS\r\n", Asked::StartTls).await?;
        if reply.code != 220 {
            if required {
                return Err(UpstreamError::Tls(format!("STARTTLS answered {:?}", reply.first_line())));
            }
            tracing::warn!(backend = %self.address, reply = ?reply.first_line(), "backend refused STARTTLS; going on without TLS");
            return Ok(());
        }
        let (Some((config, name)), Some(tcp)) = (backend.tls_client.clone(), self.stream.take_plain()) else {
            return Err(UpstreamError::Tls("no TLS client configuration".into()));
        };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = timeout(self.reply_timeout, handshake)
            .await
            .map_err(|_| UpstreamError::Tls("handshake timed out".into()))?
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        self.stream = MaybeTls::Tls(Box::new(tls));
        // RFC 3207: start over with EHLO inside TLS.
        self.hello(ehlo_name).await
    }

    /// The extension the identity needs, offered in the EHLO reply (Postfix offers
    /// XCLIENT and XFORWARD only to the hosts it authorizes for them).
    fn identity_offered(&self) -> Result<(), UpstreamError> {
        match self.identity {
            Identity::Xclient if !self.caps.xclient_offers("ADDR") => Err(self.refused(
                "XCLIENT ADDR is not offered in the EHLO reply: the backend has no XCLIENT, or does not \
                 authorize this host (Postfix: smtpd_authorized_xclient_hosts)",
            )),
            Identity::Xforward if self.caps.xforward.is_none() => Err(self.refused(
                "XFORWARD is not offered in the EHLO reply: the backend has no XFORWARD, or does not \
                 authorize this host (Postfix: smtpd_authorized_xforward_hosts)",
            )),
            _ => Ok(()),
        }
    }

    async fn xclient(&mut self, facts: &ClientFacts<'_>) -> Result<(), UpstreamError> {
        self.send_xclient(facts).await?;
        // The session restarted as the client's: greet as the client did.
        self.hello(Name::Clients(facts.helo)).await
    }

    /// The XCLIENT commands, each answered (Postfix: with a fresh greeting).
    async fn send_xclient(&mut self, facts: &ClientFacts<'_>) -> Result<(), UpstreamError> {
        for line in xclient::commands(facts, &self.caps) {
            let reply = self.command(line.as_bytes(), Asked::Xclient).await?;
            self.check_identity_reply("XCLIENT", &reply)?;
        }
        Ok(())
    }

    /// A refused identity command. 501 is a syntax error in what was sent, and every
    /// value that can be wrong there is the client's (HELO name, login): that is not
    /// the backend's failure, and failing over would only hand the session to a
    /// backend that checks less.
    fn check_identity_reply(&self, verb: &str, reply: &Reply) -> Result<(), UpstreamError> {
        if reply.is_positive() {
            return Ok(());
        }
        let detail = format!("{verb} answered {:?}", reply.first_line());
        if reply.code == 501 {
            return Err(UpstreamError::ClientValueRefused { backend: self.address.clone(), detail });
        }
        Err(self.refused(&detail))
    }

    /// Starts a transaction: XFORWARD first when that is the identity method (in the
    /// same write as MAIL if the backend pipelines), then the MAIL line. Returns the
    /// reply to MAIL. A refused XFORWARD is an error; the caller then drops this
    /// connection, which also ends a MAIL the backend may have accepted.
    pub(crate) async fn mail(&mut self, facts: &ClientFacts<'_>, mail_line: &[u8]) -> Result<Reply, UpstreamError> {
        if self.caps.pipelining || self.identity != Identity::Xforward {
            self.queue_mail(facts, mail_line)?;
            return self.mail_reply().await;
        }
        self.messages += 1;
        self.in_transaction = true;
        for line in xforward::commands(facts, &self.caps) {
            let reply = self.command(line.as_bytes(), Asked::Xforward).await?;
            self.check_identity_reply("XFORWARD", &self.closing_unasked(reply)?)?;
        }
        let reply = self.command(mail_line, Asked::Mail).await?;
        self.closing_unasked(reply)
    }

    /// Queues the start of a transaction (XFORWARD when that is the identity method,
    /// then MAIL) for the next write; [`Upstream::mail_reply`] reads its replies. With
    /// XFORWARD this needs PIPELINING (see [`Upstream::mail`]).
    pub(crate) fn queue_mail(&mut self, facts: &ClientFacts<'_>, mail_line: &[u8]) -> Result<(), UpstreamError> {
        self.messages += 1;
        self.in_transaction = true;
        if self.identity == Identity::Xforward {
            for line in xforward::commands(facts, &self.caps) {
                self.queue(line.as_bytes(), Asked::Xforward)?;
            }
        }
        self.queue(mail_line, Asked::Mail)
    }

    /// The reply to a queued MAIL, after those to its XFORWARD commands, which must
    /// all accept.
    pub(crate) async fn mail_reply(&mut self) -> Result<Reply, UpstreamError> {
        while self.owed.front() == Some(&Asked::Xforward) {
            let reply = self.reply().await?;
            self.check_identity_reply("XFORWARD", &self.closing_unasked(reply)?)?;
        }
        let reply = self.reply().await?;
        self.closing_unasked(reply)
    }

    /// A 421 to the start of a transaction on a connection that carried one before is
    /// the backend closing it (its idle timeout) just as it was taken again, not an
    /// answer meant for this client: like a close in that window, worth a fresh
    /// connection.
    fn closing_unasked(&self, reply: Reply) -> Result<Reply, UpstreamError> {
        if reply.code == 421 && self.messages > 1 {
            return Err(UpstreamError::Closed);
        }
        Ok(reply)
    }

    fn refused(&self, detail: &str) -> UpstreamError {
        UpstreamError::IdentityRefused { backend: self.address.clone(), detail: detail.to_string() }
    }

    fn out_of_step(&self, detail: String) -> UpstreamError {
        UpstreamError::OutOfStep { backend: self.address.clone(), detail }
    }

    /// Whether a reply is owed for a command sent or queued.
    pub(crate) fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Writes one command line (CRLF included) and reads its reply.
    pub(crate) async fn command(&mut self, line: &[u8], asked: Asked) -> Result<Reply, UpstreamError> {
        self.queue(line, asked)?;
        self.reply().await
    }

    /// Queues one command line (CRLF included) for the next write, its reply owed;
    /// before the first of a group, makes sure the backend said nothing unasked.
    pub(crate) fn queue(&mut self, line: &[u8], asked: Asked) -> Result<(), UpstreamError> {
        self.queue_parts(&[line], asked)
    }

    /// [`Upstream::queue`] for a line given in parts.
    fn queue_parts(&mut self, parts: &[&[u8]], asked: Asked) -> Result<(), UpstreamError> {
        self.ensure_quiet()?;
        self.auth_used |= asked == Asked::Auth;
        for part in parts {
            self.queued.extend_from_slice(part);
        }
        self.owed.push_back(asked);
        Ok(())
    }

    /// Writes the queued commands, if any.
    async fn send_queued(&mut self) -> Result<(), UpstreamError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let written = self.deadline.within(self.reply_timeout, self.stream.write_all(&self.queued)).await;
        self.queued.clear();
        written.map_err(|_| UpstreamError::Timeout)??;
        Ok(())
    }

    /// Starts a BDAT chunk (`header` is its command line); its bytes follow with
    /// [`Upstream::send_body`], its reply with [`Upstream::reply`].
    pub(crate) async fn bdat(&mut self, header: &[u8], last: bool) -> Result<(), UpstreamError> {
        self.queue(header, if last { Asked::BdatLast } else { Asked::Bdat })?;
        self.send_queued().await
    }

    /// Writes message bytes after the 354 to DATA, or inside a BDAT chunk.
    pub(crate) async fn send_body(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.ensure_quiet()?;
        self.send_queued().await?;
        self.write(bytes).await
    }

    /// Reads the reply to the end of data, whose dot went out with the body.
    pub(crate) async fn end_of_data(&mut self) -> Result<Reply, UpstreamError> {
        self.ensure_quiet()?;
        self.owed.push_back(Asked::EndOfData);
        self.reply().await
    }

    /// Whether this connection may serve another session: nothing owed, nothing
    /// unasked from the backend (a 421 it sent while idle, or its close), the same
    /// identity as `backend` has now.
    pub(crate) fn reusable_for(&mut self, backend: &Backend) -> bool {
        !self.auth_used && self.identity == backend.identity && self.owed.is_empty() && self.ensure_quiet().is_ok()
    }

    /// Ends an open transaction (RSET), so the next session starts clean; false when
    /// the backend did not agree (the connection is then not kept).
    pub(crate) async fn reset_for_reuse(&mut self) -> bool {
        if !self.in_transaction {
            return true;
        }
        matches!(self.command(b"RSET\r\n", Asked::Rset).await, Ok(r) if r.is_positive())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let written = self.deadline.within(self.reply_timeout, self.stream.write_all(bytes)).await;
        written.map_err(|_| UpstreamError::Timeout)??;
        Ok(())
    }

    /// With no reply owed, the backend must be silent: anything it has sent since its
    /// last reply (found without waiting) answers nothing we asked.
    fn ensure_quiet(&mut self) -> Result<(), UpstreamError> {
        if !self.owed.is_empty() {
            return Ok(());
        }
        if self.buf.is_empty() {
            self.buf.reserve(512);
            let mut cx = Context::from_waker(Waker::noop());
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.buf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(UpstreamError::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
        let end = self.buf.iter().position(|&b| b == b'\n').map_or(self.buf.len(), |i| i + 1).min(200);
        let first = String::from_utf8_lossy(&self.buf[..end]).trim_end().to_string();
        Err(self.out_of_step(format!("sent {first:?} with no command outstanding")))
    }

    /// Reads the reply to the oldest outstanding command, the queued commands sent
    /// first, and checks that it fits.
    pub(crate) async fn reply(&mut self) -> Result<Reply, UpstreamError> {
        self.send_queued().await?;
        let Some(asked) = self.owed.pop_front() else {
            return Err(self.out_of_step("a reply was awaited with no command outstanding".into()));
        };
        let limit =
            if matches!(asked, Asked::EndOfData | Asked::BdatLast) { self.data_timeout } else { self.reply_timeout };
        let started = std::time::Instant::now();
        let (buf, stream) = (&mut self.buf, &mut self.stream);
        let read = async {
            loop {
                if let Some(reply) = ReplyParser::parse(buf)? {
                    return Ok(reply);
                }
                buf.reserve(512);
                if stream.read_buf(buf).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
        };
        let reply = self.deadline.within(limit, read).await.map_err(|_| UpstreamError::Timeout)??;
        if matches!(asked, Asked::EndOfData | Asked::BdatLast) {
            // Recorded for the reply that accepts a message only: a histogram sample
            // costs more than the rest of a reply's handling (callgrind), and this one is
            // what operators watch (scanners and slow disks show here).
            admin_metrics::record_reply(&self.reply_timer, started.elapsed());
        }
        if matches!(asked, Asked::EndOfData | Asked::BdatLast | Asked::Rset) {
            // The transaction is over, whatever the reply (RFC 5321 4.1.1.4, 4.1.1.5).
            self.in_transaction = false;
        }
        if !asked.allows(reply.code) {
            return Err(self.out_of_step(format!("answered {} with {:?}", asked.name(), reply.first_line())));
        }
        if self.owed.is_empty() && !self.buf.is_empty() {
            return Err(self.out_of_step(format!(
                "sent more after its reply to {} ({:?}), with no command outstanding",
                asked.name(),
                reply.first_line()
            )));
        }
        Ok(reply)
    }

    /// Polite end: QUIT, then close without waiting for the 221 (nothing depends on it).
    pub(crate) async fn quit(mut self) {
        let _ = self.write(b"QUIT\r\n").await;
    }
}

/// The backend a new connection would be tried on first: the first that is not in
/// `skip`, may take failed-over sessions, and is up (or any, when none is up).
pub(crate) fn first_choice<'a>(
    backends: &'a [Backend],
    states: &[Arc<BackendState>],
    skip: &[String],
) -> Option<&'a Backend> {
    let any_up = states.iter().any(|s| s.health.is_up());
    backends
        .iter()
        .enumerate()
        .find(|(i, b)| !skip.contains(&b.address) && usable(backends, *i) && (!any_up || states[*i].health.is_up()))
        .map(|(_, b)| b)
}

/// Whether backend `i` may take sessions that failed over to it: it must tell the
/// backend as much about the client as every backend before it, or allow less.
fn usable(backends: &[Backend], i: usize) -> bool {
    let floor = backends[..i].iter().map(|b| b.identity.tells()).max().unwrap_or(0);
    backends[i].identity.tells() >= floor || backends[i].allow_identity_downgrade
}
