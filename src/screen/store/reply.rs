//! A bound on the size of one store reply (`[store] max_reply_size`). The redis crate
//! keeps a reply whole in memory until it is complete and has no limit of its own, so a
//! store that announces `$1000000000` and streams would grow this process by gigabytes.
//! [`Bounded`] sits between the crate and the socket and follows the RESP framing of
//! what is read (types, lengths, nesting; not contents): a reply that announces or
//! reaches more than the bound fails the read, and with it the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplyError {
    #[error("store reply larger than max_reply_size ({max} bytes); connection dropped")]
    TooLarge { max: u64 },
    #[error("store reply is not RESP ({0}); connection dropped")]
    Garbled(&'static str),
}

/// Longest length or count line kept: an `i64` and some spaces.
const MAX_HEADER: usize = 32;

/// The fewest bytes one element of an aggregate takes (`_\r\n`).
const MIN_ELEMENT: u64 = 3;

/// Where the meter stands within the current reply.
#[derive(Debug)]
enum State {
    /// At the type byte of a value.
    Start,
    /// In the line after type byte `kind`; `header` holds it when it is a length or count.
    Line { kind: u8, header: Vec<u8>, cr: bool },
    /// In the body of a bulk value: bytes left, its CRLF included.
    Body(u64),
}

/// Follows replies as they are read and measures each against `max`.
#[derive(Debug)]
pub(crate) struct ReplyMeter {
    max: u64,
    /// Bytes of the current reply so far.
    used: u64,
    state: State,
    /// Elements still owed by each aggregate open in the current reply.
    open: Vec<u64>,
    /// Once failed, always failed: the stream is out of step.
    failed: Option<ReplyError>,
}

impl ReplyMeter {
    pub(crate) fn new(max: u64) -> ReplyMeter {
        ReplyMeter { max, used: 0, state: State::Start, open: Vec::new(), failed: None }
    }

    /// Follows `bytes`, just read; an error once a reply is over the bound or not RESP.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> Result<(), ReplyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !bytes.is_empty() {
            let (taken, reply_done) = self.step(bytes).inspect_err(|e| self.failed = Some(e.clone()))?;
            self.used += taken as u64;
            if self.used > self.max {
                let e = ReplyError::TooLarge { max: self.max };
                self.failed = Some(e.clone());
                return Err(e);
            }
            if reply_done {
                self.used = 0;
            }
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    /// Takes what it can of `bytes` (never nothing); whether that ended a reply.
    fn step(&mut self, bytes: &[u8]) -> Result<(usize, bool), ReplyError> {
        match &mut self.state {
            State::Start => {
                let kind = bytes[0];
                if !b"+-:_,#($!=*~>%|".contains(&kind) {
                    return Err(ReplyError::Garbled("unknown type"));
                }
                self.state = State::Line { kind, header: Vec::new(), cr: false };
                Ok((1, false))
            }
            State::Line { kind, header, cr } => {
                let kind = *kind;
                for (i, &b) in bytes.iter().enumerate() {
                    if *cr && b == b'\n' {
                        let header = std::mem::take(header);
                        let done = self.line_done(kind, &header, (i + 1) as u64)?;
                        return Ok((i + 1, done));
                    }
                    *cr = b == b'\r';
                    if has_header(kind) {
                        if header.len() == MAX_HEADER {
                            return Err(ReplyError::Garbled("length line too long"));
                        }
                        header.push(b);
                    }
                }
                Ok((bytes.len(), false))
            }
            State::Body(left) => {
                let taken = (*left).min(bytes.len() as u64);
                *left -= taken;
                let done = *left == 0 && self.value_done();
                Ok((taken as usize, done))
            }
        }
    }

    /// The line of a `kind` value ended, `taken` bytes into this read; whether that
    /// ended a reply.
    fn line_done(&mut self, kind: u8, header: &[u8], taken: u64) -> Result<bool, ReplyError> {
        self.state = State::Start;
        if !has_header(kind) {
            return Ok(self.value_done());
        }
        // As the redis crate reads it: trimmed, an i64.
        let n = std::str::from_utf8(&header[..header.len().saturating_sub(1)])
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or(ReplyError::Garbled("bad length"))?;
        let elements = match kind {
            // Nil, or for a push nothing.
            b'$' | b'*' | b'~' | b'>' if n < 0 => 0,
            _ if n < 0 => return Err(ReplyError::Garbled("negative length")),
            b'%' => n.unsigned_abs().saturating_mul(2),
            // Attributes, then the value they are about.
            b'|' => n.unsigned_abs().saturating_mul(2).saturating_add(1),
            _ => n.unsigned_abs(),
        };
        let bulk = matches!(kind, b'$' | b'!' | b'=');
        // The least this reply still needs, refused before any of it is read.
        let least = if bulk { elements.saturating_add(2) } else { elements.saturating_mul(MIN_ELEMENT) };
        if self.used.saturating_add(taken).saturating_add(least) > self.max {
            return Err(ReplyError::TooLarge { max: self.max });
        }
        match (bulk, elements) {
            (true, _) if n >= 0 => self.state = State::Body(elements + 2),
            (false, 1..) => self.open.push(elements),
            _ => return Ok(self.value_done()),
        }
        Ok(false)
    }

    /// A value is complete: it counts toward the aggregates it is in; whether that
    /// ended a reply.
    fn value_done(&mut self) -> bool {
        self.state = State::Start;
        while let Some(owed) = self.open.last_mut() {
            *owed -= 1;
            if *owed > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

/// Whether the line after `kind` is a length or count.
fn has_header(kind: u8) -> bool {
    b"$!=*~>%|".contains(&kind)
}

/// A store connection whose replies are measured by a [`ReplyMeter`].
pub(crate) struct Bounded<S> {
    inner: S,
    meter: ReplyMeter,
}

impl<S> Bounded<S> {
    pub(crate) fn new(inner: S, max_reply: u64) -> Bounded<S> {
        Bounded { inner, meter: ReplyMeter::new(max_reply) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match this.meter.read(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                // The crate never sees a byte of the reply that failed.
                buf.set_filled(before);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` read whole, then split at every byte: the same outcome either way.
    fn metered(max: u64, input: &[u8]) -> Result<(), ReplyError> {
        let whole = ReplyMeter::new(max).read(input);
        for cut in 1..input.len() {
            let mut meter = ReplyMeter::new(max);
            let split = meter.read(&input[..cut]).and_then(|()| meter.read(&input[cut..]));
            assert_eq!(split, whole, "cut at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        let mut meter = ReplyMeter::new(max);
        let bytewise = input.iter().try_for_each(|b| meter.read(std::slice::from_ref(b)));
        assert_eq!(bytewise, whole);
        whole
    }

    #[test]
    fn replies_within_the_bound_pass_and_each_is_measured_alone() {
        let replies: &[&[u8]] = &[
            b":0\r\n",
            b":-1234\r\n",
            b"+OK\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\n0\r\n*3\r\n$3\r\nabc\r\n$-1\r\n:7\r\n",
            b"%1\r\n+server\r\n$5\r\nredis\r\n",
            b"|1\r\n+ttl\r\n:3\r\n:1\r\n",
            b">2\r\n+invalidate\r\n*0\r\n",
            b"_\r\n,1.5\r\n#t\r\n(12345678901234567890\r\n",
            b"!3\r\nERR\r\n=7\r\ntxt:abc\r\n",
        ];
        for reply in replies {
            assert_eq!(metered(64, reply), Ok(()), "{:?}", String::from_utf8_lossy(reply));
        }
        // Many replies in a row, each small: only one reply at a time counts.
        let many: Vec<u8> = b"$10\r\n0123456789\r\n".repeat(1000);
        assert_eq!(ReplyMeter::new(20).read(&many), Ok(()));
    }

    #[test]
    fn a_reply_over_the_bound_fails_announced_or_not() {
        let too_large = Err(ReplyError::TooLarge { max: 20 });
        assert_eq!(ReplyMeter::new(20).read(b"$1000000000\r\n"), too_large, "refused on its length alone");
        assert_eq!(ReplyMeter::new(20).read(b"*1000000000\r\n"), too_large, "or its count");
        assert_eq!(ReplyMeter::new(20).read(b"%1000000000\r\n"), too_large);
        assert_eq!(metered(20, b"$19\r\n"), too_large);
        assert_eq!(metered(20, b"$16\r\n0123456789abcdef\r\n"), too_large);
        assert_eq!(metered(20, &[b"+".as_slice(), &[b'x'; 30]].concat()), too_large, "a line never ended");
        assert_eq!(metered(20, &b"*1\r\n".repeat(10)), too_large, "nesting");
        assert_eq!(metered(20, &[b"*5\r\n".as_slice(), &b":12345\r\n".repeat(5)].concat()), too_large, "elements");
        let exact = b"$15\r\n0123456789abcde\r\n";
        assert_eq!(metered(exact.len() as u64, exact), Ok(()), "exactly the bound");
        assert_eq!(metered(exact.len() as u64 - 1, exact), Err(ReplyError::TooLarge { max: 21 }));
    }

    #[test]
    fn what_is_not_resp_fails_and_stays_failed() {
        let mut meter = ReplyMeter::new(1 << 20);
        assert_eq!(meter.read(b"HTTP/1.1 400\r\n"), Err(ReplyError::Garbled("unknown type")));
        assert_eq!(meter.read(b":1\r\n"), Err(ReplyError::Garbled("unknown type")), "the stream is out of step");
        assert_eq!(ReplyMeter::new(99).read(b"$abc\r\n"), Err(ReplyError::Garbled("bad length")));
        assert_eq!(ReplyMeter::new(99).read(b"%-1\r\n"), Err(ReplyError::Garbled("negative length")));
        let long = [b"$".as_slice(), &[b'1'; 40]].concat();
        assert_eq!(ReplyMeter::new(99).read(&long), Err(ReplyError::Garbled("length line too long")));
    }
}
