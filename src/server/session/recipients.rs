//! Recipient validation at RCPT, after the relay decision and before any content
//! filter or backend sees the recipient: an unknown recipient gets `550 5.1.1` and
//! counts as the client's error (toward `max_errors` and the bans: address
//! harvesting); a table whose source cannot answer gives `451 4.4.3`, not counted,
//! or passes the recipient on when it says `on_error = "accept"`.

use super::Session;
use crate::metrics;
use crate::recipients::{Recipients, Verdict};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Validate recipients against `recipients`' tables.
    pub(crate) fn with_recipients(mut self, recipients: Arc<Recipients>) -> Self {
        self.recipients = Some(recipients);
        self
    }

    /// Whether `path` may go on to the backend; false when refused (answered).
    pub(super) async fn recipient_known(&mut self, path: &str) -> Result<bool, super::Outcome> {
        let Some(recipients) = self.recipients.clone() else { return Ok(true) };
        let smtputf8 = self.phase.transaction().is_some_and(|tx| tx.smtputf8);
        let verdict = Box::pin(recipients.check(path, smtputf8)).await;
        let reply = verdict.reply(path);
        match verdict {
            Verdict::Untouched | Verdict::Known(_) => Ok(true),
            Verdict::Unknown(d) => {
                self.stats.rcpt_refused += 1;
                metrics::recipient("unknown");
                tracing::info!(
                    peer = %self.client.addr, listener = %self.listener.name, rcpt = ?path,
                    table = %d.table, key = ?d.key, via = d.via, "recipient refused: unknown"
                );
                crate::activity::refused(
                    self.client.addr.ip(),
                    &self.listener.name,
                    &format!("unknown recipient ({})", d.table),
                );
                self.reply(reply.as_deref().unwrap_or("550 5.1.1 Recipient address rejected: User unknown"));
                self.count_error_as("unknown recipient").map(|()| false)
            }
            Verdict::Unavailable { decision: d, accept: true, error } => {
                tracing::warn!(
                    peer = %self.client.addr, listener = %self.listener.name, rcpt = ?path,
                    table = %d.table, %error, "recipient passed to the backend unchecked: its table cannot answer (on_error = accept)"
                );
                Ok(true)
            }
            Verdict::Unavailable { decision: d, accept: false, error } => {
                self.stats.rcpt_refused += 1;
                metrics::recipient("deferred");
                tracing::info!(
                    peer = %self.client.addr, listener = %self.listener.name, rcpt = ?path,
                    table = %d.table, %error, "recipient deferred: its table cannot answer"
                );
                // Our fault, not the client's: not counted as its error.
                self.reply(reply.as_deref().unwrap_or("451 4.4.3 Recipient address rejected: directory unavailable"));
                Ok(false)
            }
        }
    }
}
