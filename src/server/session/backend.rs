//! The session's backend connection: taken from the kept ones ([`pool`]) or opened
//! with the client's facts, given back while the client idles without a recipient and
//! at the session's end, dropped when the backend fails. Inside a transaction the
//! connection is the transaction's [`Leg`]; between transactions it is `idle`.

use super::{Phase, Session, Step};
use crate::backend::pool;
use crate::backend::upstream::{self, Upstream, UpstreamError};
use crate::identity::ClientFacts;
use crate::metrics;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where an open transaction stands with the backend.
pub(super) enum Leg {
    /// On this connection, which has the transaction's MAIL (its reply perhaps still
    /// owed, see [`super::pipeline`]).
    Open(Box<Upstream>),
    /// The connection was given back while the client idled without a recipient (or
    /// dropped when a resent group failed): the MAIL goes again at the next RCPT.
    Released,
    /// No backend for this client (listed by DNS lists, "enforce"): every recipient is
    /// refused, so nothing is ever sent.
    Withheld,
}

impl Leg {
    pub(super) fn into_open(self) -> Option<Box<Upstream>> {
        match self {
            Leg::Open(up) => Some(up),
            Leg::Released | Leg::Withheld => None,
        }
    }
}

/// [`Session::facts`] from the fields it reads, for use beside a borrowed connection.
pub(super) fn facts_of<'a>(client: crate::addr::Client, phase: &'a Phase, login: Option<&'a str>) -> ClientFacts<'a> {
    let (helo, esmtp) = phase.helo().map_or(("", false), |h| (h.name.as_str(), h.esmtp));
    ClientFacts { client, helo, esmtp, login }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// The backend connection in use: the open transaction's leg, else the idle one.
    pub(super) fn connection(&self) -> Option<&Upstream> {
        match &self.phase {
            Phase::Transaction(_, super::Transaction { leg: Leg::Open(up), .. }) => Some(up),
            _ => self.idle.as_deref(),
        }
    }

    pub(super) fn connection_mut(&mut self) -> Option<&mut Upstream> {
        match &mut self.phase {
            Phase::Transaction(_, super::Transaction { leg: Leg::Open(up), .. }) => Some(up),
            _ => self.idle.as_deref_mut(),
        }
    }

    /// Takes the connection in use out of the session; an open transaction's leg is then
    /// released (its MAIL goes again on a new connection at the next RCPT).
    pub(super) fn take_connection(&mut self) -> Option<Box<Upstream>> {
        if let Phase::Transaction(_, tx) = &mut self.phase
            && matches!(tx.leg, Leg::Open(_))
        {
            return std::mem::replace(&mut tx.leg, Leg::Released).into_open();
        }
        self.idle.take()
    }

    /// Drops the connection in use (the backend sees it close, never a final dot).
    pub(super) fn drop_connection(&mut self) {
        drop(self.take_connection());
    }

    /// Ends the open transaction, if any; its connection stays for the next one.
    pub(super) fn end_transaction(&mut self) {
        if let Some(tx) = self.phase.end_transaction()
            && let Some(up) = tx.leg.into_open()
        {
            self.idle = Some(up);
        }
    }

    /// Ends the open transaction and drops the connection with it: the backend sees the
    /// connection close, so it keeps nothing of the transaction.
    pub(super) fn abandon_transaction(&mut self) {
        self.phase.end_transaction();
        self.idle = None;
    }

    /// What the backend is told of the client (MAIL and AUTH come after a greeting).
    pub(super) fn facts(&self) -> ClientFacts<'_> {
        facts_of(self.client, &self.phase, self.authenticated.as_deref())
    }

    /// The idle backend connection, or a new one (passing over the backends in `skip`);
    /// failures are logged here.
    pub(super) async fn connect_upstream(&mut self, skip: &[String]) -> Result<Box<Upstream>, UpstreamError> {
        if let Some(up) = self.idle.take() {
            return Ok(up);
        }
        let states = self.backend_states();
        if let Some(backend) = upstream::first_choice(&self.config.backends, &states, skip)
            && let Some(up) = pool::take(backend)
        {
            tracing::debug!(peer = %self.client.addr, backend = %up.address, "kept backend connection reused");
            return Ok(up);
        }
        let facts = self.facts();
        match Upstream::connect(&self.config.backends, &states, &facts, &self.config.hostname, skip).await {
            Ok(up) => Ok(Box::new(up)),
            Err(e) => {
                tracing::warn!(
                    peer = %self.client.addr, listener = %self.listener.name, error = ?e.to_string(),
                    "no backend for this session"
                );
                Err(e)
            }
        }
    }

    /// The backend failed: drop it and the transaction, tell the client to retry. Not
    /// the client's error, so not counted; nor are the transaction's later commands,
    /// which get 4xx too (see [`Self::transaction_lost`]).
    pub(super) fn upstream_failed(&mut self, error: UpstreamError, step: &'static str) -> Step {
        let failed = self.phase.lose_transaction().or_else(|| self.idle.take());
        match failed {
            Some(up) => {
                metrics::backend_error(&up.address, step, error.kind());
                let backend = up.address;
                tracing::warn!(peer = %self.client.addr, %backend, step, error = ?error.to_string(), "backend failed; client told to retry");
            }
            // No connection was made: `connect_upstream` logged why.
            None => tracing::info!(peer = %self.client.addr, step, "no backend connection; client told to retry"),
        }
        self.reply(error.client_reply());
        Ok(())
    }

    /// RCPT, DATA or BDAT of a transaction whose backend was lost: as temporary as the
    /// fault (a 503 here would make a sending MTA bounce what it should retry).
    pub(super) fn transaction_lost(&mut self) -> Step {
        tracing::info!(peer = %self.client.addr, listener = %self.listener.name, command = self.verb, "command in a transaction whose backend was lost; 451");
        self.reply(crate::backend::upstream::CONNECTION_LOST);
        Ok(())
    }

    /// The backend reached cannot take what the client was offered (a failover to a
    /// backend that supports less): a temporary refusal, not the client's error.
    pub(super) fn backend_lacks(&mut self, reply: &str, step: &'static str) -> Step {
        let backend = self.connection().map(|u| u.address.clone()).unwrap_or_default();
        tracing::warn!(peer = %self.client.addr, %backend, step, "the backend does not support what the client was offered; refused for now");
        metrics::backend_error(&backend, step, "lacks_extension");
        self.reply(reply);
        Ok(())
    }

    /// The client authenticated at the backend: that login lives on the open connection.
    pub(super) fn logged_in_at_backend(&self) -> bool {
        self.authenticated.is_some()
            && self.config.auth.as_ref().is_some_and(|a| matches!(a.source, crate::config::AuthSource::Backend))
    }

    /// How long the backend connection may wait on this client: only while it carries
    /// no accepted recipient (and no login made at the backend), so that sessions that
    /// have sent nothing worth delivering cannot hold the backend's connections.
    pub(super) fn idle_backend_timeout(&self) -> Option<Duration> {
        let up = self.connection()?;
        let logged_in_at_backend = self.logged_in_at_backend();
        let has_recipients = self.phase.transaction().is_some_and(|tx| tx.recipients > 0);
        (!has_recipients && !logged_in_at_backend).then_some(up.idle_timeout)
    }

    /// Closes an idle backend connection; an open transaction (MAIL accepted, no
    /// recipient yet) is taken up again on a new connection at the next RCPT.
    pub(super) async fn release_idle_upstream(&mut self) {
        let Some(up) = self.take_connection() else { return };
        tracing::debug!(
            peer = %self.client.addr, backend = %up.address,
            "client idle without a recipient; backend connection given back"
        );
        self.give_back(up).await;
    }

    /// The backend connection is done with this session: kept for another one when its
    /// backend reuses connections and no login at the backend is bound to it, else QUIT.
    pub(super) async fn give_back(&mut self, up: Box<Upstream>) {
        let backend = self.config.backends.iter().find(|b| b.address == up.address);
        if self.logged_in_at_backend() {
            return (*up).quit().await;
        }
        pool::give_back(up, backend, self.config.workers).await;
    }
}
