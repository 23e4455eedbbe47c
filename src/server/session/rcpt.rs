//! RCPT: syntax, the recipient limit and the relay policy first (a refused recipient
//! never reaches the backend), then the backend's verdict.

use super::backend::Leg;
use super::pipeline::Pending;
use super::{Session, Step};
use crate::backend::upstream::UpstreamError;
use crate::metrics;
use crate::policy::{RelayVerdict, address};
use crate::smtp::command::Param;
use crate::smtp::{Asked, Reply, rcpt};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn rcpt(&mut self, line: &[u8], path: &str, params: &[Param<'_>]) -> Step {
        if !self.recipient_allowed(path, params).await? || !self.recipient_known(path).await? {
            return Ok(());
        }
        let filtered = if self.listener.milters.is_empty() {
            super::filter::Filtered::Go
        } else {
            Box::pin(self.filter_rcpt(path, params)).await?
        };
        match filtered {
            super::filter::Filtered::Go => {}
            super::filter::Filtered::Discard => self.discard_current(),
            super::filter::Filtered::Refused => {
                self.stats.rcpt_refused += 1;
                return Ok(());
            }
        }
        let released = self.phase.transaction().is_some_and(|tx| matches!(tx.leg, Leg::Released));
        if released && !self.resume_transaction().await? {
            return Ok(());
        }
        let pipelines = self.pipelines();
        let Some(up) = self.connection_mut() else {
            return self.transaction_lost();
        };
        if let Err(refusal) = rcpt::for_backend(up.capabilities(), params) {
            return self.backend_lacks(&refusal.reply(), "RCPT");
        }
        if pipelines {
            return match up.queue(line, Asked::Rcpt) {
                Ok(()) => {
                    self.pending.push_back(Pending::Rcpt(line.to_vec()));
                    Ok(())
                }
                Err(e) => self.upstream_failed(e, "RCPT"),
            };
        }
        let reply = up.command(line, Asked::Rcpt).await;
        self.recipient_replied(line, reply)
    }

    /// The backend's verdict on a recipient (`line`), or its failure.
    pub(super) fn recipient_replied(&mut self, line: &[u8], result: Result<Reply, UpstreamError>) -> Step {
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => return self.upstream_failed(e, "RCPT"),
        };
        if reply.is_positive() {
            let Some(tx) = self.phase.transaction_mut() else {
                // Pipelined after a MAIL the backend refused: it has no transaction.
                let backend = self.connection().map(|u| u.address.clone()).unwrap_or_default();
                let detail = "accepted a recipient after refusing MAIL".to_string();
                return self.upstream_failed(UpstreamError::OutOfStep { backend, detail }, "RCPT");
            };
            tx.recipients += 1;
            self.stats.rcpt_accepted += 1;
            metrics::recipient("accepted");
            if let Some(filters) = self.filters.as_mut() {
                filters.rcpt_lines.push(line.to_vec());
            }
        } else {
            self.stats.rcpt_refused += 1;
            metrics::recipient("refused");
        }
        self.relay_reply(&reply)?;
        // Unknown recipients count like our own refusals (address harvesting).
        if reply.code >= 500 {
            return self.count_error();
        }
        Ok(())
    }

    /// Everything decided before the backend sees the recipient: sequence, parameters,
    /// syntax, the recipient limit, the relay policy. False when refused (answered).
    async fn recipient_allowed(&mut self, path: &str, params: &[Param<'_>]) -> Result<bool, super::Outcome> {
        let refused = |s: &mut Self, reply: &str| s.refuse(reply).map(|()| false);
        let Some(tx) = self.phase.transaction() else {
            if self.phase.lost() {
                return self.transaction_lost().map(|()| false);
            }
            return refused(self, "503 5.5.1 Error: need MAIL command");
        };
        if tx.chunks.is_some() {
            return refused(self, "503 5.5.1 Error: RCPT after BDAT");
        }
        if let Some(reply) = self.enforced_refusal() {
            let from = String::from_utf8_lossy(&tx.mail_line).trim_end().to_string();
            tracing::info!(
                peer = %self.client.addr, listener = %self.listener.name, from = ?from, rcpt = ?path,
                "recipient refused: client listed by DNS lists (enforce)"
            );
            crate::activity::refused(self.client.addr.ip(), &self.listener.name, "DNS lists (enforce)");
            self.stats.rcpt_refused += 1;
            return refused(self, &reply);
        }
        if let Err(refusal) = rcpt::check(params, &self.offered) {
            return refused(self, &refusal.reply());
        }
        if !path.is_ascii() && !tx.smtputf8 {
            return refused(self, "553 5.6.7 Error: a non-ASCII address needs SMTPUTF8 in MAIL");
        }
        let classified = if tx.smtputf8 { address::classify_utf8(path) } else { address::classify(path) };
        let destination = match classified {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(peer = %self.client.addr, rcpt = ?path, error = %e, "recipient refused: bad syntax");
                return refused(self, "501 5.1.3 Bad recipient address syntax");
            }
        };
        if tx.recipients + self.recipients_pending() >= self.config.limits.max_recipients {
            // Recipients whose replies are still to come may be refused: count them
            // only when they are known.
            if self.recipients_pending() > 0 {
                Box::pin(self.settle()).await?;
                return Box::pin(self.recipient_allowed(path, params)).await;
            }
            self.stats.rcpt_refused += 1;
            metrics::limit_refused("limits.max_recipients");
            let overshoot = self.phase.transaction_mut().map_or(0, |tx| {
                tx.overshoot += 1;
                tx.overshoot
            });
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, rcpt = ?path, overshoot, "recipient deferred: over max_recipients");
            // A sender retries these later (RFC 5321 4.5.3.1.10): not errors, up to the
            // overshoot allowance.
            if overshoot <= self.config.limits.recipient_overshoot_limit {
                self.reply("452 4.5.3 Error: too many recipients");
                return Ok(false);
            }
            return refused(self, "452 4.5.3 Error: too many recipients");
        }
        let verdict = self.config.relay.decide(&self.client, self.authenticated.is_some(), &destination);
        if let RelayVerdict::Denied(rule) = verdict {
            self.stats.rcpt_refused += 1;
            metrics::relay_refused(&self.listener.name, rule);
            crate::activity::refused(self.client.addr.ip(), &self.listener.name, &format!("relay ({rule})"));
            let form = match destination {
                address::Destination::Routed(form) => form,
                _ => "plain",
            };
            tracing::info!(
                peer = %self.client.addr, local = %self.client.local, listener = %self.listener.name,
                user = ?self.authenticated.as_deref().unwrap_or(""),
                rcpt = ?path, address_form = form, rule, "relay refused"
            );
            let reply = format!("550 5.7.1 <{path}>: Relay access denied");
            self.reply(&reply);
            return self.count_error_as("relay attempt").map(|()| false);
        }
        if let Some(screen) = self.screen.clone()
            && screen.recipient(self.who(), self.config.limits.recipient_rate).await.is_err()
        {
            metrics::limit_refused("limits.max_recipient_rate");
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, rcpt = ?path, "recipient refused: over the recipient rate");
            self.reply("450 4.7.1 Error: too many recipients from you, try again later");
            return Ok(false);
        }
        Ok(true)
    }
}
