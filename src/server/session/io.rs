//! Talking to the client: replies queued and flushed in one write per pipelined group,
//! lines read with their limits and timeouts, and the shutdown that can cut a read short.

use super::pipeline::Pending;
use super::{COMMAND_CHUNK, DATA_CHUNK, LINGER_BYTES, LINGER_TIME, Line, Outcome, Read, Session, Step};
use crate::metrics;
use crate::smtp::Reply;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Passes the backend's reply on unchanged. A 421 means the backend is closing:
    /// the session ends after relaying it.
    pub(super) fn relay_reply(&mut self, reply: &Reply) -> Step {
        debug_assert!(self.pending.is_empty(), "backend replies are relayed in order");
        reserve_batch(&mut self.out);
        self.out.extend_from_slice(reply.as_bytes());
        if reply.code == 421 {
            self.abandon_transaction();
            return Err(Outcome::BackendClosing);
        }
        Ok(())
    }

    /// Our own reply; it waits behind the backend's replies still owed, if any.
    pub(super) fn reply(&mut self, text: &str) {
        let out = self.reply_buf();
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Where our own next reply goes (whole lines, CRLF included): the next write, or
    /// behind the backend's replies still owed.
    pub(super) fn reply_buf(&mut self) -> &mut Vec<u8> {
        let out = if self.pending.is_empty() {
            &mut self.out
        } else {
            if !matches!(self.pending.back(), Some(Pending::Local(_))) {
                self.pending.push_back(Pending::Local(Vec::new()));
            }
            let Some(Pending::Local(out)) = self.pending.back_mut() else { unreachable!("pushed above") };
            out
        };
        reserve_batch(out);
        out
    }

    /// Reads more client bytes into `inbuf`, unless `limit` passes first or the server
    /// is shutting down (then the client gets 421).
    pub(super) async fn read_client(&mut self, limit: Duration) -> Result<Read, Outcome> {
        let stop = async {
            match &mut self.stop {
                Some(stop) => stop.as_mut().await,
                None => std::future::pending().await,
            }
        };
        // The stop first: a client that always has bytes waiting still gets its 421.
        tokio::select! {
            biased;
            () = stop => {
                let text = format!("421 4.3.2 {} Service shutting down, try again later", self.config.hostname);
                self.reply(&text);
                Err(Outcome::Shutdown)
            }
            read = self.deadline.within(limit, self.stream.read_buf(&mut self.inbuf)) => Ok(match read {
                Err(_) => Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
                Ok(Ok(n)) => {
                    self.stats.bytes_in += n as u64;
                    Read::Data
                }
            }),
        }
    }

    pub(super) fn timed_out<T>(&mut self) -> Result<T, Outcome> {
        metrics::limit_refused("timeout");
        let text = format!("421 4.4.2 {} Error: timeout exceeded", self.config.hostname);
        self.reply(&text);
        Err(Outcome::Timeout)
    }

    /// Inside a message body (DATA or BDAT): makes sure at least one byte is buffered,
    /// `received` bytes of the message having come since `started`. The data timeout
    /// and the minimum data rate apply.
    pub(super) async fn fill_body_buffer(&mut self, started: tokio::time::Instant, received: u64) -> Step {
        if !self.inbuf.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        self.inbuf.reserve(DATA_CHUNK);
        match self.read_client(self.config.limits.data_timeout).await? {
            Read::Data => {}
            Read::Closed => return Err(Outcome::ClientClosedInData),
            Read::TimedOut => return self.timed_out(),
        }
        let received = received + self.inbuf.len() as u64;
        if self.config.limits.min_data_rate.too_slow(received, started.elapsed()) {
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, received, "message arriving too slowly; closed");
            metrics::limit_refused("limits.min_data_rate");
            let text = format!("421 4.4.2 {} Error: data too slow", self.config.hostname);
            self.reply(&text);
            return Err(Outcome::TooSlow);
        }
        Ok(())
    }

    /// Closes as web servers do: writing is shut down first (the client reads the last
    /// reply, then the end), and what the client still sends is read and dropped for a
    /// moment. Closing with its bytes unread would make the kernel answer with a reset,
    /// which can destroy the last reply before the client reads it.
    pub(super) async fn linger(&mut self) {
        let (stream, input) = (&mut self.stream, &mut self.inbuf);
        let drain = async {
            let _ = stream.shutdown().await;
            let mut drained = 0;
            while drained < LINGER_BYTES {
                input.clear();
                input.reserve(DATA_CHUNK);
                match stream.read_buf(input).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = timeout(LINGER_TIME, drain).await;
    }

    /// Writes the replies, after reading those the backend still owes.
    pub(super) async fn flush(&mut self) -> Step {
        let settled = if self.pending.is_empty() { Ok(()) } else { Box::pin(self.settle()).await };
        if self.out.is_empty() {
            return settled;
        }
        self.stats.bytes_out += self.out.len() as u64;
        let written = self.deadline.within(self.config.limits.command_timeout, self.stream.write_all(&self.out)).await;
        // Given back, not kept: a session spends most of its life waiting, and its
        // memory then is what 10,000 idle sessions cost (a reply batch is one small
        // allocation).
        self.out = Vec::new();
        match written {
            Ok(Ok(())) => settled,
            _ => Err(Outcome::WriteFailed),
        }
    }

    /// The next complete line, CRLF included, or the reply for a malformed one. Replies
    /// are flushed only when no further line is buffered, so pipelined commands get
    /// their replies in one write, in order.
    pub(super) async fn next_line(&mut self) -> Result<Line, Outcome> {
        self.read_line(true).await
    }

    /// [`Self::next_line`]. For a `command` line (not an AUTH response), a backend
    /// connection that serves no recipient is given back while waiting (not inside an
    /// AUTH exchange with the backend, which lives on that connection), and a TLS
    /// handshake or binary data is caught before any line end comes.
    ///
    /// `command_timeout` is a deadline for the whole line, not an idle timer: a client
    /// trickling a byte at a time cannot hold the session longer (Postfix's
    /// `smtpd_per_request_deadline`). A line longer than `max_line_length` (CRLF
    /// included) gets one reply and the session ends: the rest of it is not read.
    pub(super) async fn read_line(&mut self, command: bool) -> Result<Line, Outcome> {
        let mut deadline = tokio::time::Instant::now() + self.config.limits.command_timeout;
        loop {
            let end = memchr::memchr(b'\n', &self.inbuf);
            if end.is_none() && command && self.inbuf.first().is_some_and(|&b| b == 0x16 || b == 0 || b >= 0x80) {
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, first = self.inbuf[0], "not an SMTP client (TLS or binary data); closed");
                self.inbuf.clear();
                self.reply("554 5.5.1 Error: this is an SMTP server");
                return Err(Outcome::NotSmtp);
            }
            // The one place a line's length is decided, however it arrived: whole in one
            // read, split across reads, or behind a message's final dot. Without its end
            // yet, the line is at least one byte longer than what is buffered.
            let length = end.map_or(self.inbuf.len() + 1, |nl| nl + 1);
            if length > self.config.limits.max_line_length {
                self.inbuf.clear();
                tracing::info!(peer = %self.client.addr, listener = %self.listener.name, length, "line too long; closed");
                metrics::limit_refused("limits.max_line_length");
                self.reply("500 5.5.2 Error: line too long");
                return Err(Outcome::LineTooLong);
            }
            if let Some(nl) = end {
                let line = self.inbuf.split_to(nl + 1);
                if nl == 0 || line[nl - 1] != b'\r' {
                    tracing::info!(peer = %self.client.addr, "line ended by bare LF; refused");
                    return Ok(Err("500 5.5.2 Error: command line must end with CRLF"));
                }
                return Ok(Ok(line));
            }
            let settles = !self.pending.is_empty();
            self.flush().await?;
            if settles {
                // The client was waiting on the backend's replies, not the other way round.
                deadline = tokio::time::Instant::now() + self.config.limits.command_timeout;
            }
            if self.inbuf.is_empty() && self.inbuf.capacity() > 4 * COMMAND_CHUNK {
                // Let go of a large DATA buffer while idle.
                self.inbuf = BytesMut::new();
            }
            self.inbuf.reserve(COMMAND_CHUNK);
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            if limit.is_zero() {
                return self.timed_out();
            }
            let read = match self.idle_backend_timeout().filter(|idle| command && *idle < limit) {
                Some(idle) => match self.read_client(idle).await? {
                    Read::TimedOut => {
                        Box::pin(self.release_idle_upstream()).await;
                        self.read_client(limit - idle).await?
                    }
                    read => read,
                },
                None => self.read_client(limit).await?,
            };
            match read {
                Read::Data => {}
                Read::Closed => return Err(Outcome::ClientClosed),
                Read::TimedOut => return self.timed_out(),
            }
        }
    }
}

/// A reply batch starts with room for a few replies, not just the first one's bytes:
/// the next reply then needs no reallocation.
fn reserve_batch(out: &mut Vec<u8>) {
    if out.capacity() == 0 {
        out.reserve(256);
    }
}
