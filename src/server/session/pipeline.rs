//! Commands pipelined to the backend. When the backend offers PIPELINING (RFC 2920),
//! MAIL, RCPT and DATA go out without waiting for their replies, and those replies are
//! read, in order, when the client must have them: before the session writes to the
//! client or reads from it again, before any other command, and at DATA (which ends a
//! group). A client that pipelines MAIL, RCPT... and DATA so costs one backend round
//! trip instead of one per command; one that does not sees no difference.
//!
//! The client's replies keep its commands' order: a reply of our own (a relay refusal
//! between two forwarded recipients, say) waits in the same queue as the backend's.
//! What a pipelined command is checked against is what the replies before it would
//! make of the session: the transaction is open from MAIL on (and ends if the backend
//! refuses it), recipients still unanswered count toward the recipient limit (when
//! they would reach it, their replies are read first), and DATA goes to the backend
//! only while a recipient may still be accepted.
//!
//! Replies are matched to commands by position. A backend that answers a command twice
//! shifts every later reply by one; the shift is caught where it matters: DATA accepts
//! only 354 or a failure, a 354 after no accepted recipient drops the connection, and
//! anything after the reply to DATA is out of step ([`crate::backend::upstream`]). No
//! body byte leaves unless the reply read for DATA is the 354 to it.

use super::{Outcome, Session, Step};
use crate::backend::upstream::{Upstream, UpstreamError};
use crate::smtp::{Asked, Reply};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};

/// A client command whose reply is owed, in the client's order.
pub(super) enum Pending {
    /// MAIL sent to the backend.
    Mail,
    /// RCPT sent to the backend (its line, for the filters' record and to send again).
    Rcpt(Vec<u8>),
    /// DATA sent to the backend.
    Data,
    /// Our own replies (CRLF included), for commands the backend never saw.
    Local(Vec<u8>),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Whether MAIL, RCPT and DATA may go to the backend ahead of their replies.
    /// Listeners with content filters ask them between commands, in lock step.
    pub(super) fn pipelines(&self) -> bool {
        self.connection().is_some_and(|up| self.pipelines_on(up))
    }

    /// [`Self::pipelines`] on the connection `up`.
    pub(super) fn pipelines_on(&self, up: &Upstream) -> bool {
        self.listener.milters.is_empty() && up.capabilities().pipelining
    }

    /// Recipients sent to the backend whose replies are still to come.
    pub(super) fn recipients_pending(&self) -> u32 {
        self.pending.iter().filter(|p| matches!(p, Pending::Rcpt(_))).count() as u32
    }

    /// Reads every reply owed and queues the client's replies in order.
    pub(super) async fn settle(&mut self) -> Step {
        let body_follows = self.settle_group().await?;
        debug_assert!(!body_follows, "a pipelined DATA is settled where it is sent");
        Ok(())
    }

    /// [`Self::settle`], for a group that ends with DATA: true when the last reply
    /// was the backend's 354 to it, so the body follows.
    pub(super) async fn settle_group(&mut self) -> Result<bool, Outcome> {
        let mut owed = std::mem::take(&mut self.pending);
        let mut body_follows = false;
        while let Some(item) = owed.pop_front() {
            match item {
                Pending::Local(text) => self.out.extend_from_slice(&text),
                Pending::Mail => {
                    let result = match self.connection_mut() {
                        Some(up) => up.mail_reply().await,
                        None => Err(UpstreamError::Closed),
                    };
                    Box::pin(self.mail_replied(result, false, &owed)).await?;
                }
                Pending::Rcpt(line) => match self.reply_owed(&line, Asked::Rcpt).await {
                    Some(result) => self.recipient_replied(&line, result)?,
                    None => self.without_backend()?,
                },
                Pending::Data => {
                    body_follows = match self.reply_owed(b"DATA\r\n", Asked::Data).await {
                        Some(result) => {
                            let result = self.refuse_354_without_recipient(result);
                            self.data_replied(result, true)?
                        }
                        None => self.without_backend().map(|()| false)?,
                    }
                }
            }
        }
        Ok(body_follows)
    }

    /// The backend's reply to a pipelined command (`line`); `None` without a backend.
    /// A command not yet sent (after a MAIL sent again to a backend without
    /// PIPELINING, see [`Self::queue_again`]) goes now, one at a time.
    async fn reply_owed(&mut self, line: &[u8], asked: Asked) -> Option<Result<Reply, UpstreamError>> {
        let up = self.connection_mut()?;
        Some(if up.owes() { up.reply().await } else { up.command(line, asked).await })
    }

    /// A 354 to a pipelined DATA when no recipient was accepted: the backend has none
    /// either, or it would not have accepted what we refused, and its body would be
    /// read as commands. Out of step: the connection is dropped.
    fn refuse_354_without_recipient(&self, result: Result<Reply, UpstreamError>) -> Result<Reply, UpstreamError> {
        let no_recipient = self.phase.transaction().is_none_or(|tx| tx.recipients == 0);
        if !(result.as_ref().is_ok_and(|r| r.is_intermediate()) && no_recipient) {
            return result;
        }
        let backend = self.connection().map(|u| u.address.clone()).unwrap_or_default();
        Err(UpstreamError::OutOfStep { backend, detail: "answered DATA with 354 with no recipient accepted".into() })
    }

    /// The reply to a pipelined command whose backend connection failed before it:
    /// what the session would have said had the command come after the failure.
    pub(super) fn without_backend(&mut self) -> Step {
        if self.phase.transaction().is_none() && !self.phase.lost() {
            return self.refuse("503 5.5.1 Error: need MAIL command");
        }
        self.transaction_lost()
    }

    /// Commands pipelined after a MAIL that was sent again on a new connection go out
    /// again on it, in order: in one write where it offers PIPELINING, else one at a
    /// time as their replies are read. (They were checked against the first backend's
    /// extensions; a failover backend that lacks one refuses the command itself.)
    pub(super) fn queue_again(&mut self, after: &VecDeque<Pending>) {
        if !self.pipelines() {
            return;
        }
        let Some(up) = self.connection_mut() else { return };
        for item in after {
            let queued = match item {
                Pending::Rcpt(line) => up.queue(line, Asked::Rcpt),
                Pending::Data => up.queue(b"DATA\r\n", Asked::Data),
                Pending::Mail | Pending::Local(_) => Ok(()),
            };
            if queued.is_err() {
                // The backend spoke out of turn: the commands owed get the answer for
                // a lost backend, and the next RCPT sends the MAIL again.
                self.drop_connection();
                return;
            }
        }
    }
}
