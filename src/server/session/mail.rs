//! MAIL: the listener's conditions (TLS, AUTH), the parameters, then the backend's own
//! verdict on the sender, on a backend connection opened (or opened again) here.

use super::{Outcome, Session, Step, Transaction};
use crate::admin::metrics;
use crate::config::AuthPolicy;
use crate::server::upstream::UpstreamError;
use crate::smtp::command::{self, Command, Param};
use crate::smtp::mail::{self, MailRefusal};
use crate::smtp::{Capabilities, Reply};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn mail(&mut self, line: &[u8], path: &str, params: &[Param<'_>]) -> Step {
        let Some(esmtp) = self.phase.helo().map(|h| h.esmtp) else {
            return self.refuse("503 5.5.1 Error: send HELO/EHLO first");
        };
        if self.phase.transaction().is_some() {
            return self.refuse("503 5.5.1 Error: nested MAIL command");
        }
        if self.listener.require_tls && !self.client.is_tls() {
            return self.refuse("530 5.7.0 Must issue a STARTTLS command first");
        }
        if self.listener.auth == AuthPolicy::Required && self.authenticated.is_none() {
            return self.refuse("530 5.7.0 Authentication required");
        }
        let declared = match mail::check(path, params, esmtp, &self.offered) {
            Ok(declared) => declared,
            Err(refusal) => {
                if refusal == MailRefusal::TooBig {
                    tracing::info!(peer = %self.peer, "message refused: declared SIZE over the limit");
                    metrics::limit_refused("limits.max_message_size");
                }
                return self.refuse(&refusal.reply());
            }
        };

        if let Some(screen) = self.screen.clone()
            && screen.message(self.who(), self.config.limits.message_rate).await.is_err()
        {
            metrics::limit_refused("limits.max_message_rate");
            tracing::info!(peer = %self.peer, listener = %self.listener.name, "message refused: over the message rate");
            self.reply("450 4.7.1 Error: too many messages from you, try again later");
            return Ok(());
        }
        if self.enforced_refusal().is_some() {
            // Listed by the DNS lists ("enforce"): no backend for this client; each
            // RCPT is refused, so the log shows who it wanted to send to.
            let tx = Transaction { mail_line: line.to_vec(), smtputf8: declared.smtputf8, ..Transaction::default() };
            self.phase.begin_transaction(tx);
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
        let sent = self.start_backend_transaction(|caps| mail::for_backend(caps, line, path, params)).await;
        let reply = match sent {
            Ok(Ok(reply)) => reply,
            Ok(Err(refusal)) => return self.backend_lacks(&refusal.reply(), "MAIL"),
            Err(e) => return self.upstream_failed(e, "MAIL"),
        };
        if reply.is_positive() {
            let tx = Transaction {
                mail_line: line.to_vec(),
                smtputf8: declared.smtputf8,
                binary: declared.binary,
                ..Transaction::default()
            };
            self.phase.begin_transaction(tx);
            self.stats.transactions += 1;
            if discard {
                self.discard_current();
            }
        }
        self.relay_reply(&reply)?;
        if reply.code >= 500 {
            return self.count_error();
        }
        Ok(())
    }

    /// Sends MAIL (`line`, given the backend's capabilities) on the backend connection,
    /// opening one if needed; the inner error when the backend cannot take the MAIL
    /// the client sent (nothing was sent then). Nothing of the transaction is
    /// acknowledged yet, so when the connection fails here a fresh one may do better:
    /// once more, or on the next backend when this one broke the protocol.
    pub(super) async fn start_backend_transaction(
        &mut self,
        line: impl Fn(&Capabilities) -> Result<Vec<u8>, MailRefusal>,
    ) -> Result<Result<Reply, MailRefusal>, UpstreamError> {
        let mut skip = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.connect_upstream(&skip).await?;
            let facts = self.facts();
            let up = self.upstream.as_mut().expect("connected above");
            let forward = match line(up.capabilities()) {
                Ok(forward) => forward,
                Err(refusal) => return Ok(Err(refusal)),
            };
            match up.mail(&facts, &forward).await {
                Ok(reply) => return Ok(Ok(reply)),
                Err(e) if e.worth_reconnecting() && attempts <= self.config.backends.len() => {
                    let address = self.upstream.take().map(|u| u.address).unwrap_or_default();
                    tracing::warn!(
                        peer = %self.peer, backend = %address, error = ?e.to_string(),
                        "backend failed at MAIL; connection closed, trying a new one"
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
        let client_line = self.phase.transaction().map(|tx| tx.mail_line.clone()).unwrap_or_default();
        let text = &client_line[..client_line.len().saturating_sub(2)];
        let Ok(Command::Mail { path, params }) = command::parse(text) else {
            self.phase.end_transaction();
            self.reply("451 4.3.0 Transaction lost, try again later");
            return Ok(false);
        };
        match self.start_backend_transaction(|caps| mail::for_backend(caps, &client_line, path, &params)).await {
            Ok(Ok(reply)) if reply.is_positive() => {
                if let Some(tx) = self.phase.transaction_mut() {
                    tx.released = false;
                }
                Ok(true)
            }
            Ok(Err(refusal)) => {
                self.phase.end_transaction();
                self.backend_lacks(&refusal.reply(), "MAIL again")?;
                Ok(false)
            }
            Ok(Ok(reply)) => {
                tracing::warn!(
                    peer = %self.peer, reply = ?reply.first_line(),
                    "backend refused the MAIL sent again after an idle pause; transaction ended"
                );
                self.phase.end_transaction();
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
