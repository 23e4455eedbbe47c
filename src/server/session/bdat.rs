//! BDAT (RFC 3030 CHUNKING) from the client. Every chunk is read whole, whatever
//! happens: its bytes are never taken for commands. Toward a backend that offers
//! CHUNKING (and when no line end is rewritten) chunks are forwarded as they come;
//! otherwise the message becomes a DATA body, dot-stuffed and held to the same
//! smuggling rules as DATA. Our own `250` to a chunk acknowledges only its bytes; the
//! reply to the last chunk is always the backend's.

use super::backend::Leg;
use super::{Outcome, Session, Step};
use crate::backend::upstream::UpstreamError;
use crate::metrics;
use crate::smtp::bdat::{Chunk, ChunkScanner};
use crate::smtp::{Asked, BareLf};
use tokio::io::{AsyncRead, AsyncWrite};

/// The BDAT side of a transaction, from its first chunk on.
#[derive(Debug)]
pub(super) struct Chunks {
    scanner: ChunkScanner,
    /// The backend gets a DATA body (it lacks CHUNKING, or line ends are rewritten).
    via_data: bool,
}

impl Chunks {
    /// Whether the backend is inside a DATA body that only our final dot can end: no
    /// other command may be sent on that connection.
    pub(super) fn holds_data_open(&self) -> bool {
        self.via_data
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn bdat(&mut self, chunk: Chunk) -> Step {
        let refusal = match self.phase.transaction() {
            // Not offered where messages are held for content filters; the chunk is
            // still read whole, never taken for commands.
            _ if self.offered.held => Some("502 5.5.1 Error: BDAT not offered here; use DATA"),
            None if self.phase.lost() => Some(crate::backend::upstream::CONNECTION_LOST),
            None => Some("503 5.5.1 Error: need MAIL command"),
            Some(tx) if tx.recipients == 0 => Some("503 5.5.1 Error: need RCPT command"),
            Some(tx) if !matches!(tx.leg, Leg::Open(_)) => Some(crate::backend::upstream::CONNECTION_LOST),
            Some(tx) => {
                let so_far = tx.chunks.as_ref().map_or(0, |c| c.scanner.size());
                (so_far.saturating_add(chunk.size) > self.config.limits.max_message_size)
                    .then_some("552 5.3.4 Message size exceeds fixed limit")
            }
        };
        if let Some(reply) = refusal {
            self.discard(chunk.size).await?;
            if reply.starts_with("552") {
                metrics::limit_refused("limits.max_message_size");
                metrics::message("rejected");
                self.abandon_transaction();
            }
            if reply.starts_with('4') {
                self.phase.lose_transaction();
                self.reply(reply);
                return Ok(());
            }
            return self.refuse(reply);
        }
        if self.phase.transaction().is_some_and(|tx| tx.chunks.is_none()) && !self.begin_chunks().await? {
            return self.discard(chunk.size).await;
        }
        let via_data = self.phase.transaction().and_then(|tx| tx.chunks.as_ref()).is_some_and(|c| c.via_data);
        let mut upstream_error: Option<UpstreamError> = None;
        if !via_data {
            let header = format!("BDAT {}{}\r\n", chunk.size, if chunk.last { " LAST" } else { "" });
            let sent = match self.connection_mut() {
                Some(up) => up.bdat(header.as_bytes(), chunk.last).await,
                None => Err(UpstreamError::Closed),
            };
            if let Err(e) = sent {
                upstream_error = Some(e);
            }
        }
        let upstream_error = self.stream_chunk(chunk, upstream_error).await?;
        self.end_chunk(chunk, via_data, upstream_error).await
    }

    /// The first chunk: DATA toward a backend without CHUNKING (or when line ends are
    /// rewritten, which changes chunk sizes). False when the backend refused DATA; the
    /// client has the backend's reply and the transaction is over.
    async fn begin_chunks(&mut self) -> Result<bool, Outcome> {
        let binary = self.phase.transaction().is_some_and(|tx| tx.binary);
        // Binary content has no lines: it goes on untouched (MAIL made sure the backend
        // takes BINARYMIME, hence BDAT).
        let policy = if binary { BareLf::Allow } else { self.config.limits.bare_lf };
        let Some(up) = self.connection_mut() else {
            self.phase.lose_transaction();
            self.reply(crate::backend::upstream::CONNECTION_LOST);
            return Ok(false);
        };
        let via_data = !binary && (!up.capabilities().chunking || policy == BareLf::Normalize);
        if via_data {
            let reply = match up.command(b"DATA\r\n", Asked::Data).await {
                Ok(r) => r,
                Err(e) => {
                    self.upstream_failed(e, "DATA")?;
                    return Ok(false);
                }
            };
            if !reply.is_intermediate() {
                // The backend's transaction stays open behind its refusal: drop it.
                self.abandon_transaction();
                self.relay_reply(&reply)?;
                return Ok(false);
            }
        }
        let scanner = ChunkScanner::new(self.config.limits.max_message_size, policy, via_data);
        if let Some(tx) = self.phase.transaction_mut() {
            tx.chunks = Some(Chunks { scanner, via_data });
        }
        Ok(true)
    }

    /// Reads the chunk's bytes, scans them and sends them on until a violation or a
    /// backend failure; the rest is read and dropped. The end of the last chunk is
    /// judged (a CR left bare at the very end) before its final bytes go out, with the
    /// end of a DATA body. Returns the backend failure.
    async fn stream_chunk(
        &mut self,
        chunk: Chunk,
        mut upstream_error: Option<UpstreamError>,
    ) -> Result<Option<UpstreamError>, Outcome> {
        let mut remaining = chunk.size;
        let mut out = Vec::new();
        let started = tokio::time::Instant::now();
        loop {
            let part = if remaining > 0 {
                self.fill_body_buffer(started, chunk.size - remaining).await?;
                let n = remaining.min(self.inbuf.len() as u64) as usize;
                remaining -= n as u64;
                self.inbuf.split_to(n)
            } else {
                bytes::BytesMut::new()
            };
            if let Some(tx) = self.phase.transaction_mut()
                && let Some(chunks) = tx.chunks.as_mut()
            {
                out.clear();
                chunks.scanner.scan(&part, &mut out);
                if chunk.last && remaining == 0 {
                    chunks.scanner.finish(&mut out);
                }
                let go_on = chunks.scanner.violation().is_none() && upstream_error.is_none() && !out.is_empty();
                if go_on
                    && let Leg::Open(up) = &mut tx.leg
                    && let Err(e) = up.send_body(&out).await
                {
                    upstream_error = Some(e);
                }
            }
            if remaining == 0 {
                return Ok(upstream_error);
            }
        }
    }

    /// After a chunk: a violation refuses the message (the backend connection is
    /// dropped, so the backend keeps nothing); otherwise the backend's reply, or ours
    /// to a chunk the backend has not seen the end of yet (DATA conversion).
    async fn end_chunk(&mut self, chunk: Chunk, via_data: bool, upstream_error: Option<UpstreamError>) -> Step {
        let Some(chunks) = self.phase.transaction_mut().and_then(|tx| tx.chunks.as_mut()) else {
            return Ok(());
        };
        if let Some(v) = chunks.scanner.violation() {
            let size = chunks.scanner.size();
            return self.refuse_message(v, size);
        }
        if let Some(e) = upstream_error {
            metrics::message("failed");
            return self.upstream_failed(e, "BDAT");
        }
        if via_data && !chunk.last {
            let text = format!("250 2.0.0 {} octets received", chunk.size);
            self.reply(&text);
            return Ok(());
        }
        let reply = match self.connection_mut() {
            Some(up) if via_data => up.end_of_data().await,
            Some(up) => up.reply().await,
            None => Err(UpstreamError::Closed),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                metrics::message("failed");
                return self.upstream_failed(e, if chunk.last { "end of data" } else { "BDAT" });
            }
        };
        if chunk.last {
            self.end_transaction();
            self.count_message(&reply);
        } else if !reply.is_positive() {
            // The backend refused a chunk inside its transaction: that connection is
            // in no state to start another one.
            self.abandon_transaction();
            self.count_message(&reply);
        }
        self.relay_reply(&reply)
    }

    /// Reads and drops the bytes of a refused chunk.
    async fn discard(&mut self, mut size: u64) -> Step {
        let started = tokio::time::Instant::now();
        let total = size;
        while size > 0 {
            self.fill_body_buffer(started, total - size).await?;
            let n = size.min(self.inbuf.len() as u64) as usize;
            let _ = self.inbuf.split_to(n);
            size -= n as u64;
        }
        Ok(())
    }
}
