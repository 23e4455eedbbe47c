//! STARTTLS (RFC 3207) toward the client, and the handshake of implicit-TLS listeners.

use super::{Outcome, Phase, Session, Step};
use crate::acme::Accepted;
use crate::config::ListenerTls;
use crate::metrics;
use crate::tls::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn starttls(&mut self) -> Step {
        if self.listener.tls == ListenerTls::None {
            return self.refuse("502 5.5.1 Error: command not implemented");
        }
        if self.stream.is_tls() {
            return self.refuse("503 5.5.1 Error: TLS already active");
        }
        if self.phase.transaction().is_some() {
            return self.refuse("503 5.5.1 Error: MAIL transaction in progress");
        }
        if !self.tls_available() {
            // [acme] before its first certificate: not offered in EHLO, refused here.
            return self.refuse("454 4.7.0 TLS not available due to temporary reason");
        }
        self.reply("220 2.0.0 Ready to start TLS");
        self.flush().await?;
        // Anything the client sent after STARTTLS, before the handshake, was sent in
        // clear text and may be an injection (CVE-2011-0411): never execute it.
        if !self.inbuf.is_empty() {
            tracing::warn!(
                peer = %self.client.addr, listener = %self.listener.name, bytes = self.inbuf.len(),
                "discarded data pipelined after STARTTLS"
            );
            self.inbuf.clear();
        }
        self.handshake().await?;
        // RFC 3207: forget everything learnt before TLS; the client must EHLO again.
        self.phase = Phase::Connected;
        self.authenticated = None;
        self.idle = None;
        Ok(())
    }

    /// Whether a handshake would have a certificate to present now: the `[tls]` files,
    /// or an `[acme]` certificate once one is there.
    pub(super) fn tls_available(&self) -> bool {
        self.config.tls.is_some() || self.certs.as_ref().is_some_and(|c| c.ready())
    }

    /// Turns the plain client stream into TLS.
    pub(super) async fn handshake(&mut self) -> Step {
        let Some(plain) = self.stream.take_plain() else {
            tracing::error!(peer = %self.client.addr, "TLS requested without a plain stream");
            return Err(Outcome::TlsFailed);
        };
        let accept = crate::acme::accept(self.certs.as_deref(), self.config.tls.clone(), plain);
        match timeout(self.config.limits.tls_handshake_timeout, accept).await {
            Ok(Ok(Accepted::Tls(stream))) => {
                self.stream = MaybeTls::Tls(stream);
                metrics::tls_handshake(&self.listener.name, "ok");
                Ok(())
            }
            Ok(Ok(Accepted::Challenge(name))) => {
                metrics::tls_handshake(&self.listener.name, "acme_challenge");
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, %name, "answered a TLS-ALPN-01 validation");
                Err(Outcome::AcmeChallenge)
            }
            Ok(Err(e)) => {
                metrics::tls_handshake(&self.listener.name, "failed");
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, error = %e, "TLS handshake failed");
                Err(Outcome::TlsFailed)
            }
            Err(_) => {
                metrics::tls_handshake(&self.listener.name, "timeout");
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, "TLS handshake timed out");
                Err(Outcome::TlsFailed)
            }
        }
    }
}
