//! DATA: the body is streamed to the backend as it arrives, through the scanner that
//! finds its end and enforces size and line-ending rules; the reply to the final dot is
//! the backend's.

use super::pipeline::Pending;
use super::{Outcome, Session, Step};
use crate::backend::upstream::UpstreamError;
use crate::metrics;
use crate::smtp::{Asked, DataScanner, Reply, Scan, Violation};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// A message refused by the scanner (size, bare LF/CR, NUL): the backend transaction
    /// is abandoned by closing its connection (it never sees the final dot), and the
    /// client gets the refusal.
    pub(super) fn refuse_message(&mut self, v: Violation, size: u64) -> Step {
        self.abandon_transaction();
        tracing::info!(peer = %self.client.addr, listener = %self.listener.name, reason = v.reason(), size, "message refused");
        metrics::message("rejected");
        if v == Violation::TooBig {
            metrics::limit_refused("limits.max_message_size");
        }
        self.refuse(v.reply())
    }

    /// The backend's verdict on a whole message, counted: a delivered message starts
    /// the error and junk counts over.
    pub(super) fn count_message(&mut self, reply: &Reply) {
        if reply.is_positive() {
            self.stats.messages += 1;
            self.stats.errors_since_delivery = 0;
            self.stats.junk = 0;
            metrics::message("delivered");
        } else {
            metrics::message("refused");
        }
    }

    pub(super) async fn data(&mut self) -> Step {
        match self.phase.transaction() {
            None if self.phase.lost() => return self.transaction_lost(),
            None => return self.refuse("503 5.5.1 Error: need MAIL command"),
            Some(tx) if tx.recipients == 0 && self.recipients_pending() == 0 => {
                return self.refuse("503 5.5.1 Error: need RCPT command");
            }
            Some(tx) if tx.chunks.is_some() => return self.refuse("503 5.5.1 Error: DATA after BDAT"),
            Some(tx) if tx.binary => return self.refuse("503 5.5.1 Error: BODY=BINARYMIME needs BDAT"),
            Some(_) => {}
        }
        if !self.inbuf.is_empty() {
            // RFC 2920: DATA ends a pipelined group; the client must wait for 354. Bytes
            // already here are a message sent blind, the shape of a smuggling attempt.
            tracing::warn!(
                peer = %self.client.addr, listener = %self.listener.name, bytes = self.inbuf.len(),
                "data sent before the 354 to DATA; refused, closed"
            );
            self.inbuf.clear();
            self.reply("554 5.5.0 Error: SMTP protocol synchronization (data sent before 354)");
            return Err(Outcome::Pipelining);
        }
        if self.connection().is_some() && !self.listener.milters.is_empty() {
            return Box::pin(self.filtered_data()).await;
        }
        let body_follows = if self.pending.is_empty() {
            self.backend_data(true).await?
        } else {
            // DATA ends the pipelined group; its reply comes after the others.
            let queued = self.connection_mut().map(|up| up.queue(b"DATA\r\n", Asked::Data));
            match queued {
                Some(Ok(())) => self.pending.push_back(Pending::Data),
                Some(Err(e)) => self.upstream_failed(e, "DATA")?,
                None => self.without_backend()?,
            }
            Box::pin(self.settle_group()).await?
        };
        if body_follows {
            self.body().await?;
        }
        Ok(())
    }

    /// DATA at the backend: true when it said 354 (relayed to the client when
    /// `relay_354`); otherwise the client has the backend's refusal or ours.
    pub(super) async fn backend_data(&mut self, relay_354: bool) -> Result<bool, Outcome> {
        let Some(up) = self.connection_mut() else {
            self.reply(crate::backend::upstream::CONNECTION_LOST);
            return Ok(false);
        };
        let reply = up.command(b"DATA\r\n", Asked::Data).await;
        self.data_replied(reply, relay_354)
    }

    /// The backend's reply to DATA, or its failure: true when the body may follow.
    pub(super) fn data_replied(
        &mut self,
        result: Result<Reply, UpstreamError>,
        relay_354: bool,
    ) -> Result<bool, Outcome> {
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => return self.upstream_failed(e, "DATA").map(|()| false),
        };
        if !reply.is_intermediate() {
            return self.relay_reply(&reply).map(|()| false);
        }
        if relay_354 {
            self.relay_reply(&reply)?;
        }
        Ok(true)
    }

    /// Streams the body to the backend chunk by chunk, as received, up to CRLF.CRLF.
    pub(super) async fn body(&mut self) -> Step {
        let upstream_error = match self.receive_body(&mut BodySink::Backend(None)).await? {
            Some(BodySink::Backend(error)) => error,
            _ => return Ok(()),
        };
        if let Some(e) = upstream_error {
            metrics::message("failed");
            return self.upstream_failed(e, "message body");
        }
        self.finish_message().await
    }

    /// The backend's reply to the end of data (whose dot has gone out), counted and
    /// relayed to the client.
    pub(super) async fn finish_message(&mut self) -> Step {
        let Some(up) = self.connection_mut() else {
            metrics::message("failed");
            self.reply(crate::backend::upstream::CONNECTION_LOST);
            return Ok(());
        };
        match up.end_of_data().await {
            Ok(reply) => {
                self.count_message(&reply);
                self.relay_reply(&reply)
            }
            Err(e) => {
                metrics::message("failed");
                self.upstream_failed(e, "end of data")
            }
        }
    }

    /// Reads the body up to CRLF.CRLF through the scanner into `sink`, and ends the
    /// transaction. The sink back when the message passed the scanner; `None` when it
    /// was refused (the client has its reply).
    pub(super) async fn receive_body(&mut self, sink: &mut BodySink) -> Result<Option<BodySink>, Outcome> {
        let limits = &self.config.limits;
        let mut scanner = DataScanner::new(limits.max_message_size, limits.bare_lf);
        // Normalize mode forwards rewritten bytes; the other modes the client's own.
        let mut rewritten = Vec::new();
        let started = tokio::time::Instant::now();
        loop {
            self.fill_body_buffer(started, scanner.size()).await?;
            let scan = if scanner.rewrites() {
                rewritten.clear();
                scanner.normalize(&self.inbuf, &mut rewritten)
            } else {
                scanner.feed(&self.inbuf)
            };
            let n = match scan {
                Scan::End(n) => n,
                Scan::More => self.inbuf.len(),
            };
            let chunk = self.inbuf.split_to(n);
            // A chunk holding a violation is never passed on; neither is anything after it.
            if scanner.violation().is_none() {
                let bytes: &[u8] = if scanner.rewrites() { &rewritten } else { &chunk };
                match sink {
                    BodySink::Backend(error @ None) => {
                        let sent = match self.connection_mut() {
                            Some(up) => up.send_body(bytes).await,
                            None => Err(UpstreamError::Closed),
                        };
                        if let Err(e) = sent {
                            *error = Some(e);
                        }
                    }
                    BodySink::Backend(Some(_)) | BodySink::Hold(_, Some(_)) => {}
                    BodySink::Hold(spool, error @ None) => {
                        if let Err(e) = spool.write(bytes) {
                            *error = Some(e);
                        }
                    }
                }
            }
            if matches!(scan, Scan::End(_)) {
                break;
            }
        }
        // The client's transaction ends with its final dot; the connection stays for the
        // backend's reply to it.
        self.end_transaction();
        if let Some(v) = scanner.violation() {
            self.refuse_message(v, scanner.size())?;
            return Ok(None);
        }
        Ok(Some(std::mem::replace(sink, BodySink::Backend(None))))
    }
}

/// Where a message body goes as it arrives.
pub(super) enum BodySink {
    /// Straight to the backend; the error that stopped the forwarding, if any.
    Backend(Option<UpstreamError>),
    /// Held for content filters; the error that stopped the holding, if any.
    Hold(crate::milter::message::Spool, Option<std::io::Error>),
}
