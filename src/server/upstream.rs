//! The backend side of a session: connect with failover, STARTTLS when configured,
//! hand over the client's identity, then send commands and read replies.

use crate::config::{Backend, BackendTls};
use crate::identity::{ClientFacts, Identity, proxy, xclient, xforward};
use crate::smtp::{Capabilities, Reply, ReplyError, ReplyParser};
use crate::tls::MaybeTls;
use bytes::BytesMut;
use std::io;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Trouble on the backend side. None of it is the client's fault, so every variant
/// maps to a temporary (4xx) reply.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no backend reachable ({0})")]
    Unreachable(String),
    #[error("backend {backend} refused the identity step: {detail}")]
    IdentityRefused { backend: String, detail: String },
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
    pub fn client_reply(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Tls(_) => {
                "451 4.4.1 Service temporarily unavailable, try again later"
            }
            UpstreamError::IdentityRefused { .. } => "451 4.3.0 Service temporarily unavailable, try again later",
            _ => "451 4.4.2 Connection to the mail server lost, try again later",
        }
    }
}

type Stream = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

pub struct Upstream {
    stream: Stream,
    buf: BytesMut,
    caps: Capabilities,
    identity: Identity,
    /// The backend's configured address, for logs.
    pub address: String,
    reply_timeout: Duration,
    /// How long the backend may take to answer the end of data.
    pub data_timeout: Duration,
}

impl Upstream {
    /// Tries each backend in order; the first that greets and accepts the identity step wins.
    pub async fn connect(backends: &[Backend], facts: &ClientFacts, hostname: &str) -> Result<Self, UpstreamError> {
        let mut failures = Vec::new();
        let mut identity_refused = false;
        for backend in backends {
            match Self::connect_one(backend, facts, hostname).await {
                Ok(upstream) => return Ok(upstream),
                Err(UpstreamError::IdentityRefused { backend, detail }) => {
                    tracing::warn!(%backend, %detail, "backend refused the identity step, trying the next");
                    failures.push(format!("{backend}: {detail}"));
                    identity_refused = true;
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.address, error = %e, "backend unusable, trying the next");
                    failures.push(format!("{}: {e}", backend.address));
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
        Err(UpstreamError::Unreachable(failures.join("; ")))
    }

    async fn connect_one(backend: &Backend, facts: &ClientFacts, hostname: &str) -> Result<Self, UpstreamError> {
        let connecting = async {
            if backend.identity != Identity::Transparent {
                return TcpStream::connect(backend.address.as_str()).await;
            }
            let client = facts.addr.ip();
            let target = tokio::net::lookup_host(backend.address.as_str())
                .await?
                .find(|a| a.is_ipv4() == client.is_ipv4())
                .ok_or_else(|| {
                    io::Error::other(format!("no address of {} in the client's address family", backend.address))
                })?;
            super::transparent::connect(client, target).await
        };
        let stream = timeout(backend.connect_timeout, connecting).await.map_err(|_| UpstreamError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut up = Upstream {
            stream: MaybeTls::Plain(stream),
            buf: BytesMut::with_capacity(1024),
            caps: Capabilities::default(),
            identity: backend.identity,
            address: backend.address.clone(),
            reply_timeout: backend.reply_timeout,
            data_timeout: backend.data_timeout,
        };
        match backend.identity {
            Identity::ProxyV1 => up.stream.write_all(&proxy::v1_header(facts.addr, facts.local)).await?,
            Identity::ProxyV2 => up.stream.write_all(&proxy::v2_header(facts.addr, facts.local)).await?,
            _ => {}
        }
        let greeting = up.read_reply(up.reply_timeout).await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Unreachable(format!("greeting {}", greeting.first_line())));
        }
        up.hello(hostname).await?;
        if backend.tls != BackendTls::None {
            up.starttls(backend, hostname).await?;
        }
        if backend.identity == Identity::Xclient {
            up.xclient(facts).await?;
        }
        if backend.identity == Identity::Xforward && up.caps.xforward.is_none() {
            return Err(up.refused("XFORWARD is not offered in the EHLO reply"));
        }
        Ok(up)
    }

    /// EHLO, falling back to HELO for servers that do not speak ESMTP.
    async fn hello(&mut self, name: &str) -> Result<(), UpstreamError> {
        let reply = self.command(format!("EHLO {name}\r\n").as_bytes()).await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        let reply = self.command(format!("HELO {name}\r\n").as_bytes()).await?;
        if !reply.is_positive() {
            return Err(UpstreamError::Unreachable(format!("HELO refused: {}", reply.first_line())));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// STARTTLS toward the backend; without it, `starttls-required` makes this backend
    /// unusable while plain `starttls` goes on unencrypted.
    async fn starttls(&mut self, backend: &Backend, hostname: &str) -> Result<(), UpstreamError> {
        let required = backend.tls == BackendTls::Required;
        if !self.caps.starttls {
            if required {
                return Err(UpstreamError::Tls("STARTTLS is not offered".into()));
            }
            tracing::debug!(backend = %self.address, "backend does not offer STARTTLS; going on without TLS");
            return Ok(());
        }
        let reply = self.command(b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            if required {
                return Err(UpstreamError::Tls(format!("STARTTLS answered {}", reply.first_line())));
            }
            tracing::warn!(backend = %self.address, reply = %reply.first_line(), "backend refused STARTTLS; going on without TLS");
            return Ok(());
        }
        // Whatever followed the 220 came in clear text before the handshake: an injection.
        if !self.buf.is_empty() {
            tracing::warn!(backend = %self.address, bytes = self.buf.len(), "discarded data sent by the backend after its 220 to STARTTLS");
            self.buf.clear();
        }
        let (Some((config, name)), Some(tcp)) = (backend.tls_client.clone(), self.stream.take_plain()) else {
            return Err(UpstreamError::Tls("no TLS client configuration".into()));
        };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = timeout(super::session::HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| UpstreamError::Tls("handshake timed out".into()))?
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        self.stream = MaybeTls::Tls(Box::new(tls));
        // RFC 3207: start over with EHLO inside TLS.
        self.hello(hostname).await
    }

    async fn xclient(&mut self, facts: &ClientFacts) -> Result<(), UpstreamError> {
        let lines = xclient::commands(facts, &self.caps);
        if !self.caps.xclient_offers("ADDR") {
            return Err(self.refused("XCLIENT ADDR is not offered in the EHLO reply"));
        }
        for line in lines {
            let reply = self.command(line.as_bytes()).await?;
            // Postfix answers a successful XCLIENT with a fresh greeting.
            if !reply.is_positive() {
                return Err(self.refused(&format!("XCLIENT answered {}", reply.first_line())));
            }
        }
        // The session restarted as the client's: greet as the client did.
        self.hello(&facts.helo).await
    }

    /// Starts a transaction: XFORWARD first when that is the identity method (in the
    /// same write as MAIL if the backend pipelines), then the MAIL line. Returns the
    /// reply to MAIL. A refused XFORWARD is an error; the caller then drops this
    /// connection, which also ends a MAIL the backend may have accepted.
    pub async fn mail(&mut self, facts: &ClientFacts, mail_line: &[u8]) -> Result<Reply, UpstreamError> {
        if self.identity != Identity::Xforward {
            return self.command(mail_line).await;
        }
        let xforward = xforward::commands(facts, &self.caps);
        if self.caps.pipelining {
            let mut batch = xforward.concat().into_bytes();
            batch.extend_from_slice(mail_line);
            self.send(&batch).await?;
        }
        for line in &xforward {
            if !self.caps.pipelining {
                self.send(line.as_bytes()).await?;
            }
            let reply = self.read_reply(self.reply_timeout).await?;
            if !reply.is_positive() {
                return Err(self.refused(&format!("XFORWARD answered {}", reply.first_line())));
            }
        }
        if !self.caps.pipelining {
            self.send(mail_line).await?;
        }
        self.read_reply(self.reply_timeout).await
    }

    fn refused(&self, detail: &str) -> UpstreamError {
        UpstreamError::IdentityRefused { backend: self.address.clone(), detail: detail.to_string() }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Writes one command line (CRLF included) and reads its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, UpstreamError> {
        self.send(line).await?;
        self.read_reply(self.reply_timeout).await
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        timeout(self.reply_timeout, self.stream.write_all(bytes)).await.map_err(|_| UpstreamError::Timeout)??;
        Ok(())
    }

    pub async fn read_reply(&mut self, limit: Duration) -> Result<Reply, UpstreamError> {
        let read = async {
            loop {
                if let Some(reply) = ReplyParser::parse(&mut self.buf)? {
                    return Ok(reply);
                }
                self.buf.reserve(512);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
        };
        timeout(limit, read).await.map_err(|_| UpstreamError::Timeout)?
    }

    /// Polite end: QUIT, then close without waiting for the 221 (nothing depends on it).
    pub async fn quit(mut self) {
        let _ = self.send(b"QUIT\r\n").await;
    }
}
