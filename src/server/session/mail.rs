//! MAIL: the listener's conditions (TLS, AUTH), the parameters, then the backend's own
//! verdict on the sender, on a backend connection opened (or opened again) here. The
//! transaction opens when MAIL goes to the backend and ends again if the backend
//! refuses it (its reply may come later: [`super::pipeline`]).

use super::backend::Leg;
use super::pipeline::Pending;
use super::{Outcome, Session, Step, Transaction};
use crate::backend::upstream::UpstreamError;
use crate::config::AuthPolicy;
use crate::metrics;
use crate::smtp::Reply;
use crate::smtp::command::{self, Command, Param};
use crate::smtp::mail::{self, MailRefusal};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn mail(&mut self, line: &[u8], path: &str, params: &[Param<'_>]) -> Step {
        let Some(esmtp) = self.phase.helo().map(|h| h.esmtp) else {
            return self.refuse("503 5.5.1 Error: send HELO/EHLO first");
        };
        if self.phase.transaction().is_some() {
            return self.refuse("503 5.5.1 Error: nested MAIL command");
        }
        if self.listener.require_tls && !self.stream.is_tls() {
            return self.refuse("530 5.7.0 Must issue a STARTTLS command first");
        }
        if self.listener.auth == AuthPolicy::Required && self.authenticated.is_none() {
            return self.refuse("530 5.7.0 Authentication required");
        }
        let declared = match mail::check(path, params, esmtp, &self.offered) {
            Ok(declared) => declared,
            Err(refusal) => {
                if refusal == MailRefusal::TooBig {
                    metrics::limit_refused("limits.max_message_size");
                }
                return self.refuse(&refusal.reply());
            }
        };

        if let Some(screen) = self.screen.clone()
            && screen.message(self.who(), self.config.limits.message_rate).await.is_err()
        {
            metrics::limit_refused("limits.max_message_rate");
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, "message refused: over the message rate");
            self.reply("450 4.7.1 Error: too many messages from you, try again later");
            return Ok(());
        }
        if self.enforced_refusal().is_some() {
            // Listed by the DNS lists ("enforce"): no backend for this client; each
            // RCPT is refused, so the log shows who it wanted to send to.
            self.phase.begin_transaction(Transaction::new(Leg::Withheld, line, &declared));
            self.reply("250 2.1.0 Ok");
            return Ok(());
        }
        let filtered = if self.listener.milters.is_empty() {
            super::filter::Filtered::Go
        } else {
            Box::pin(self.filter_mail(path, params)).await?
        };
        let discard = match filtered {
            super::filter::Filtered::Go => false,
            super::filter::Filtered::Discard => true,
            super::filter::Filtered::Refused => return Ok(()),
        };
        let mut up = match self.connect_upstream(&[]).await {
            Ok(up) => up,
            Err(e) => return self.upstream_failed(e, "MAIL"),
        };
        let forward = match mail::for_backend(up.capabilities(), line, path, params) {
            Ok(forward) => forward,
            Err(refusal) => {
                self.idle = Some(up);
                return self.backend_lacks(&refusal.reply(), "MAIL");
            }
        };
        let facts = self.facts();
        // (Never with filters, so never a message to discard.)
        let pipelined = self.pipelines_on(&up);
        let sent = if pipelined {
            up.queue_mail(&facts, &forward).map(|()| None)
        } else {
            up.mail(&facts, &forward).await.map(Some)
        };
        // Open until the backend refuses the MAIL: pipelined RCPTs are checked against it.
        self.phase.begin_transaction(Transaction::new(Leg::Open(up), line, &declared));
        match sent {
            Ok(None) => {
                self.pending.push_back(Pending::Mail);
                Ok(())
            }
            Ok(Some(reply)) => self.mail_replied(Ok(reply), discard, &Default::default()).await,
            Err(e) => self.mail_replied(Err(e), discard, &Default::default()).await,
        }
    }

    /// The backend's reply to MAIL, or its failure. Nothing of the transaction is
    /// acknowledged yet, so when the connection fails here a fresh one may do better:
    /// once more, or on the next backend when this one broke the protocol; commands
    /// pipelined after the MAIL (`after`) go out again on it.
    pub(super) async fn mail_replied(
        &mut self,
        result: Result<Reply, UpstreamError>,
        discard: bool,
        after: &VecDeque<Pending>,
    ) -> Step {
        let reply = match result {
            Ok(reply) => reply,
            Err(e) if e.worth_reconnecting() => {
                let address = self.take_connection().map(|u| u.address).unwrap_or_default();
                tracing::warn!(
                    peer = %self.client.addr, backend = %address, error = ?e.to_string(),
                    "backend failed at MAIL; connection closed, trying a new one"
                );
                let skip = if e.is_out_of_step() { vec![address] } else { Vec::new() };
                match self.send_mail_again(skip).await {
                    Ok(Ok(reply)) => {
                        self.queue_again(after);
                        reply
                    }
                    Ok(Err(refusal)) => {
                        self.end_transaction();
                        return self.backend_lacks(&refusal.reply(), "MAIL");
                    }
                    Err(e) => return self.upstream_failed(e, "MAIL"),
                }
            }
            Err(e) => return self.upstream_failed(e, "MAIL"),
        };
        if reply.is_positive() {
            self.stats.transactions += 1;
            if discard {
                self.discard_current();
            }
        } else {
            self.end_transaction();
        }
        self.relay_reply(&reply)?;
        if reply.code >= 500 {
            return self.count_error();
        }
        Ok(())
    }

    /// Sends the open transaction's MAIL on a new backend connection, passing over the
    /// backends in `skip`, and tries again while the failure is one a fresh connection
    /// may not have; the inner error when the backend cannot take the MAIL the client
    /// sent (nothing was sent then, and the connection is idle). On a reply the
    /// connection is the transaction's leg.
    async fn send_mail_again(&mut self, mut skip: Vec<String>) -> Result<Result<Reply, MailRefusal>, UpstreamError> {
        let client_line = self.phase.transaction().map(|tx| tx.mail_line.clone()).unwrap_or_default();
        let text = &client_line[..client_line.len().saturating_sub(2)];
        let Ok(Command::Mail { path, params }) = command::parse(text) else {
            return Err(UpstreamError::Unreachable("no MAIL to send again".into()));
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.drop_connection();
            let mut up = self.connect_upstream(&skip).await?;
            let facts = self.facts();
            let forward = match mail::for_backend(up.capabilities(), &client_line, path, &params) {
                Ok(forward) => forward,
                Err(refusal) => {
                    self.idle = Some(up);
                    return Ok(Err(refusal));
                }
            };
            match up.mail(&facts, &forward).await {
                Ok(reply) => {
                    if let Some(tx) = self.phase.transaction_mut() {
                        tx.leg = Leg::Open(up);
                    }
                    return Ok(Ok(reply));
                }
                Err(e) if e.worth_reconnecting() && attempts <= self.config.backends.len() => {
                    let address = up.address;
                    tracing::warn!(
                        peer = %self.client.addr, backend = %address, error = ?e.to_string(),
                        "backend failed at MAIL again; connection closed, trying a new one"
                    );
                    if e.is_out_of_step() {
                        skip.push(address);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A transaction whose backend connection was given back while the client was idle
    /// gets a new one, and its MAIL again. False when that failed; the client has its
    /// reply and the transaction is over.
    pub(super) async fn resume_transaction(&mut self) -> Result<bool, Outcome> {
        match self.send_mail_again(Vec::new()).await {
            Ok(Ok(reply)) if reply.is_positive() => Ok(true),
            Ok(Err(refusal)) => {
                self.end_transaction();
                self.backend_lacks(&refusal.reply(), "MAIL again")?;
                Ok(false)
            }
            Ok(Ok(reply)) => {
                tracing::warn!(
                    peer = %self.client.addr, reply = ?reply.first_line(),
                    "backend refused the MAIL sent again after an idle pause; transaction ended"
                );
                self.end_transaction();
                self.reply("451 4.3.0 Transaction lost, try again later");
                Ok(false)
            }
            Err(e) => {
                self.upstream_failed(e, "MAIL again")?;
                Ok(false)
            }
        }
    }
}
