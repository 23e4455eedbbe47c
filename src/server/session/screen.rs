//! Screening in the session, before the greeting: bans and the connection rate, the
//! DNS lists and early-talker detection (postscreen's pregreet test). Clients of our own (load balancers, `relay.networks`) and clients
//! whose address is unknown are not screened by DNS lists or pregreet.

use super::{COMMAND_CHUNK, Outcome, Session, Step};
use crate::config::ScreenAction;
use crate::metrics;
use crate::screen::Refusal;
use crate::screen::dns;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::timeout;

/// The DNS lists' verdict, kept when the listener refuses at RCPT ("enforce").
#[derive(Debug, Clone)]
pub(super) struct Listed {
    /// The blocklist that weighed most, named in the reply.
    pub(crate) zone: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Bans and the connection rate of the real client, first thing. The reply is
    /// written in clear even on an implicit-TLS listener: no handshake is spent on a
    /// client that is refused anyway.
    pub(super) async fn screen_connection(&mut self) -> Step {
        let Some(screen) = self.screen.clone() else { return Ok(()) };
        if !self.client.address_known() {
            return Ok(());
        }
        let client = self.client.network(self.config.limits.ipv6_prefix);
        match screen.admit(client, self.config.limits.connection_rate).await {
            Ok(()) => Ok(()),
            Err(Refusal::Banned(left)) => {
                metrics::connection(&self.listener.name, "banned", "screen.ban");
                crate::log_limit::log_refusal("banned", self.client.addr, &self.listener.name, "screen.ban");
                tracing::debug!(peer = %self.client.addr, remaining = ?left, "banned client refused");
                self.reply("421 4.7.0 Too many errors from your address, try again later");
                Err(Outcome::Banned)
            }
            Err(Refusal::Rate) => {
                metrics::connection(&self.listener.name, "limited", "limits.max_connection_rate");
                metrics::limit_refused("limits.max_connection_rate");
                crate::log_limit::log_refusal(
                    "over the connection rate",
                    self.client.addr,
                    &self.listener.name,
                    "limits.max_connection_rate",
                );
                self.reply("421 4.7.0 Too many connections from your address, try again later");
                Err(Outcome::Limited)
            }
        }
    }

    /// Load balancers (their health checks) and the networks we relay for are ours,
    /// as postscreen's access list permits mynetworks.
    fn ours(&self) -> bool {
        let ip = self.client.addr.ip();
        self.config.trusted_proxies.iter().chain(&self.config.relay.networks).any(|n| n.contains(&ip))
    }

    /// The DNS lists' verdict, then pregreet. The lists are asked first so that a
    /// refusal is the whole greeting (a `220-` line followed by a `554` would break
    /// RFC 5321's rule that every line of a reply has one code); with a local
    /// resolver and its cache that costs milliseconds, within `[screen] dnsbl_timeout`.
    pub(super) async fn screen_before_greeting(&mut self) -> Step {
        if self.screen.is_none() || self.ours() || !self.client.address_known() {
            return Ok(());
        }
        self.dns_lists().await?;
        self.pregreet().await
    }

    async fn dns_lists(&mut self) -> Step {
        let action = self.listener.screen_action;
        let Some(lists) = self.config.dns_lists.clone().filter(|_| action != ScreenAction::Off) else { return Ok(()) };
        let score = dns::score(&lists, self.client.addr.ip()).await;
        if score.total < lists.threshold {
            if !score.listed_by.is_empty() {
                tracing::debug!(peer = %self.client.addr, score = score.total, listed_by = ?score.listed_by, "DNS lists: under the threshold");
            }
            return Ok(());
        }
        let zone = score.worst(&lists.zones).map(|z| z.name.clone()).unwrap_or_default();
        metrics::dnsbl_verdict(&self.listener.name, action.as_str());
        tracing::info!(
            peer = %self.client.addr, listener = %self.listener.name, score = score.total, threshold = lists.threshold,
            listed_by = ?score.listed_by, action = action.as_str(), "client listed by DNS lists"
        );
        match action {
            ScreenAction::Reject => {
                crate::activity::refused(self.client.addr.ip(), &self.listener.name, &format!("DNS lists ({zone})"));
                let text =
                    format!("554 5.7.1 Service unavailable; client [{}] blocked using {zone}", self.client.addr.ip());
                self.reply(&text);
                self.failure("blocklisted")?;
                Err(Outcome::Blocklisted)
            }
            ScreenAction::Enforce => {
                self.listed = Some(Box::new(Listed { zone }));
                Ok(())
            }
            ScreenAction::Log | ScreenAction::Off => Ok(()),
        }
    }

    /// With "enforce": the refusal a listed, unauthenticated client gets at RCPT.
    pub(super) fn enforced_refusal(&self) -> Option<String> {
        let listed = self.listed.as_ref().filter(|_| self.authenticated.is_none())?;
        Some(format!("550 5.7.1 Service unavailable; client [{}] blocked using {}", self.client.addr.ip(), listed.zone))
    }

    /// Early-talker detection (postscreen's pregreet test), on listeners facing the
    /// Internet: the first line of a multi-line greeting, a wait, then (in `run`) the
    /// final line. Real SMTP clients wait for that final line; spam software often
    /// talks at once. A client that waited is greeted at once for `pregreet_ttl`.
    async fn pregreet(&mut self) -> Step {
        let Some(screen) = self.screen.clone().filter(|_| self.listener.pregreet) else { return Ok(()) };
        let client = self.client.network(self.config.limits.ipv6_prefix);
        if screen.passed_pregreet(client).await {
            return Ok(());
        }
        let first = format!("220-{} ESMTP", self.config.hostname);
        self.reply(&first);
        self.flush().await?;
        self.inbuf.reserve(COMMAND_CHUNK);
        match timeout(self.config.pregreet.wait, self.stream.read_buf(&mut self.inbuf)).await {
            Err(_) => {
                screen.pass_pregreet(client, self.config.pregreet.ttl);
                Ok(())
            }
            Ok(Ok(0)) | Ok(Err(_)) => Err(Outcome::ClientClosed),
            Ok(Ok(n)) => {
                tracing::info!(
                    peer = %self.client.addr, listener = %self.listener.name, bytes = n,
                    "client talked before the end of the greeting (pregreet); refused"
                );
                metrics::limit_refused("screen.pregreet");
                crate::activity::refused(self.client.addr.ip(), &self.listener.name, "screen.pregreet");
                self.inbuf.clear();
                self.reply("554 5.5.1 Error: talking before the greeting");
                self.failure("pregreet")?;
                Err(Outcome::Pregreet)
            }
        }
    }
}
