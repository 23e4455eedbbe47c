//! STARTTLS (RFC 3207) toward the client, and the handshake of implicit-TLS listeners.

use super::{Outcome, Phase, Session, Step};
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

    /// Turns the plain client stream into TLS.
    pub(super) async fn handshake(&mut self) -> Step {
        let (Some(tls), Some(plain)) = (self.config.tls.clone(), self.stream.take_plain()) else {
            tracing::error!(peer = %self.client.addr, "TLS requested without a server certificate or a plain stream");
            return Err(Outcome::TlsFailed);
        };
        match timeout(self.config.limits.tls_handshake_timeout, tokio_rustls::TlsAcceptor::from(tls).accept(plain))
            .await
        {
            Ok(Ok(stream)) => {
                self.stream = MaybeTls::Tls(Box::new(stream));
                metrics::tls_handshake(&self.listener.name, "ok");
                Ok(())
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
