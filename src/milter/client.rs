//! One connection to one filter: connect (TCP or a Unix socket), negotiate, send a
//! step with its macros and read the answer within the timeout (a filter's "progress"
//! packets restart it), and the end-of-message exchange with its modifications.

use super::message::{ChangeError, Edits};
use super::protocol::{self, ALL_ACTIONS, Command, Modification, OFFERED_PROTOCOL, Response, Step};
use super::{Address, MilterConfig};
use bytes::{Buf, BytesMut};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// How many times its timeout a step may take when the filter keeps sending "progress".
const PROGRESS_LIMIT: u32 = 10;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Error)]
pub(crate) enum MilterError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the filter")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("unexpected answer to {0}: {1:?}")]
    Unexpected(&'static str, Response),
    #[error("the filter speaks milter protocol version {0}; 2 to 6 are understood")]
    Version(u32),
    #[error("the filter sent a packet nobody asked for")]
    Unasked,
    #[error("the filter's changes: {0}")]
    Changes(#[from] ChangeError),
}

impl MilterError {
    /// A short fixed name for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            MilterError::Connect(_) | MilterError::ConnectTimeout(_) => "unreachable",
            MilterError::Timeout(..) => "timeout",
            MilterError::Io(_) | MilterError::Closed => "closed",
            MilterError::Protocol(_) | MilterError::Unexpected(..) | MilterError::Version(_) | MilterError::Unasked => {
                "protocol"
            }
            // Not the filter's doing: no room for its new body here.
            MilterError::Changes(ChangeError::Hold(_)) => "local",
            MilterError::Changes(_) => "protocol",
        }
    }
}

pub(crate) struct Filter {
    pub(crate) config: Arc<MilterConfig>,
    stream: Box<dyn Io>,
    /// The TCP socket, to ask for immediate ACKs (see [`quick_ack`]).
    tcp_fd: Option<RawFd>,
    /// The protocol options in force: what the filter asked us to skip or not expect
    /// answers to, plus the steps the config skips.
    protocol: u32,
    /// The modifications the filter may make.
    pub(crate) actions: u32,
    inbuf: BytesMut,
    out: BytesMut,
}

impl Filter {
    pub(crate) async fn open(config: Arc<MilterConfig>) -> Result<Filter, MilterError> {
        let limit = config.connect_timeout;
        let (stream, tcp_fd): (Box<dyn Io>, _) = match &config.address {
            Address::Inet(host, port) => {
                let s = timeout(limit, tokio::net::TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| MilterError::ConnectTimeout(limit))?
                    .map_err(MilterError::Connect)?;
                let _ = s.set_nodelay(true);
                let fd = s.as_raw_fd();
                (Box::new(s), Some(fd))
            }
            Address::Unix(path) => {
                let s = timeout(limit, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| MilterError::ConnectTimeout(limit))?
                    .map_err(MilterError::Connect)?;
                (Box::new(s), None)
            }
        };
        let mut filter = Filter {
            config,
            stream,
            tcp_fd,
            protocol: 0,
            actions: 0,
            inbuf: BytesMut::new(),
            out: BytesMut::with_capacity(256),
        };
        filter.quick_ack();
        filter.send(&Command::Negotiate { actions: ALL_ACTIONS, protocol: OFFERED_PROTOCOL }).await?;
        match filter.response("negotiation", filter.config.command_timeout).await? {
            Response::Negotiated { version, actions, protocol } => {
                if !(2..=protocol::VERSION).contains(&version) {
                    return Err(MilterError::Version(version));
                }
                filter.actions = actions & ALL_ACTIONS;
                // Options we did not offer are not honoured: the filter gets what we
                // offered, as libmilter expects of an MTA.
                filter.protocol = (protocol & OFFERED_PROTOCOL) | filter.config.skip;
            }
            other => return Err(MilterError::Unexpected("negotiation", other)),
        }
        Ok(filter)
    }

    /// Whether this filter gets `step` at all.
    pub(crate) fn wants(&self, step: Step) -> bool {
        !step.skipped(self.protocol)
    }

    /// Whether the filter keeps a header's leading space in the value it is shown.
    pub(crate) fn wants_leading_space(&self) -> bool {
        self.protocol & protocol::HEADER_LEADING_SPACE != 0
    }

    async fn send(&mut self, command: &Command<'_>) -> Result<(), MilterError> {
        self.ensure_quiet()?;
        self.out.clear();
        command.encode(&mut self.out);
        let limit = self.config.command_timeout;
        timeout(limit, self.stream.write_all(&self.out))
            .await
            .map_err(|_| MilterError::Timeout("a write", limit))??;
        Ok(())
    }

    /// Nothing may be waiting from the filter when we send: a packet it sent unasked (a
    /// reply to a step it said it would not answer, a second reply) would otherwise be
    /// read as the answer to the next step.
    fn ensure_quiet(&mut self) -> Result<(), MilterError> {
        if self.inbuf.is_empty() {
            self.inbuf.reserve(64);
            let mut cx = Context::from_waker(Waker::noop());
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.inbuf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(MilterError::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
        Err(MilterError::Unasked)
    }

    /// The next answer that is not "progress", each within `limit`, all of them within
    /// [`PROGRESS_LIMIT`] times it: a filter that only ever says "still working" does
    /// not hold a session forever.
    async fn response(&mut self, what: &'static str, limit: Duration) -> Result<Response, MilterError> {
        let deadline = tokio::time::Instant::now() + limit * PROGRESS_LIMIT;
        loop {
            let wait = limit.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let response = timeout(wait, self.packet()).await.map_err(|_| MilterError::Timeout(what, limit))??;
            if response != Response::Progress {
                return Ok(response);
            }
        }
    }

    async fn packet(&mut self) -> Result<Response, MilterError> {
        loop {
            if let Some(len) = protocol::packet_len(&self.inbuf)?
                && self.inbuf.len() >= 4 + len
            {
                self.inbuf.advance(4);
                let packet = self.inbuf.split_to(len);
                return Ok(protocol::decode(&packet)?);
            }
            self.inbuf.reserve(4096);
            if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                return Err(MilterError::Closed);
            }
            self.quick_ack();
        }
    }

    /// libmilter writes each reply packet on its own with Nagle's algorithm on, so a
    /// filter's second packet (a header it adds, then "accept") waits for our ACK of
    /// the first, which Linux delays by up to 40 ms: measured, 44 ms per filter per
    /// message. Asking for immediate ACKs (again after every read: the kernel drops the
    /// flag) removes the stall.
    fn quick_ack(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.tcp_fd {
            let on: libc::c_int = 1;
            // SAFETY: `fd` is the open socket `self.stream` owns; the option value is a
            // c_int of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Sends `step`'s macros and command; the answer, or `Continue` for a step the
    /// filter skips or does not answer.
    pub(crate) async fn step(
        &mut self,
        step: Step,
        macros: &[(&str, String)],
        command: &Command<'_>,
    ) -> Result<Response, MilterError> {
        if !self.wants(step) {
            return Ok(Response::Continue);
        }
        if !macros.is_empty() {
            self.send(&Command::Macros { step, pairs: macros }).await?;
        }
        self.send(command).await?;
        if step.unanswered(self.protocol) {
            return Ok(Response::Continue);
        }
        match self.response(step.as_str(), self.config.command_timeout).await? {
            Response::Modify(m) => Err(MilterError::Unexpected(step.as_str(), Response::Modify(m))),
            Response::Skip if step != Step::Body => Err(MilterError::Unexpected(step.as_str(), Response::Skip)),
            r => Ok(r),
        }
    }

    /// End of message: the modifications the filter makes, taken into `edits` as they
    /// come (within its bounds), then its verdict.
    pub(crate) async fn end_of_message(
        &mut self,
        macros: &[(&str, String)],
        edits: &mut Edits,
    ) -> Result<Response, MilterError> {
        if !macros.is_empty() {
            self.send(&Command::Macros { step: Step::EndOfMessage, pairs: macros }).await?;
        }
        self.send(&Command::EndOfMessage).await?;
        loop {
            match self.response("end of message", self.config.message_timeout).await? {
                Response::Modify(m) => {
                    if !allowed(&m, self.actions) {
                        return Err(MilterError::Unexpected(
                            "end of message (a change it did not ask to make)",
                            Response::Modify(m),
                        ));
                    }
                    if !writable(&m) {
                        return Err(MilterError::Unexpected(
                            "end of message (a change that cannot be written safely)",
                            Response::Modify(m),
                        ));
                    }
                    edits.take(m)?;
                }
                Response::Skip | Response::Negotiated { .. } => {
                    return Err(MilterError::Unexpected("end of message", Response::Skip));
                }
                verdict => return Ok(verdict),
            }
        }
    }

    /// The transaction ended without end of message; the connection stays for the next.
    pub(crate) async fn abort(&mut self) -> Result<(), MilterError> {
        self.send(&Command::Abort).await
    }

    pub(crate) async fn quit(mut self) {
        let _ = self.send(&Command::Quit).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Whether `m` can be applied without letting the filter end the message early or
/// inject commands toward the backend.
fn writable(m: &Modification) -> bool {
    match m {
        Modification::AddHeader { name, value }
        | Modification::InsertHeader { name, value, .. }
        | Modification::ChangeHeader { name, value, .. } => protocol::header_ok(name, value),
        Modification::AddRecipient { address, params } | Modification::ChangeFrom { address, params } => {
            protocol::envelope_ok(address, params.as_deref())
        }
        Modification::DeleteRecipient(address) => protocol::envelope_ok(address, None),
        Modification::ReplaceBody(_) | Modification::Quarantine(_) => true,
    }
}

/// Whether the filter negotiated the right to make `m`.
fn allowed(m: &Modification, actions: u32) -> bool {
    use protocol::*;
    let needed = match m {
        Modification::AddHeader { .. } | Modification::InsertHeader { .. } => ADD_HEADERS,
        Modification::ChangeHeader { .. } => CHANGE_HEADERS,
        Modification::ReplaceBody(_) => CHANGE_BODY,
        Modification::AddRecipient { params: None, .. } => ADD_RCPT,
        Modification::AddRecipient { params: Some(_), .. } => ADD_RCPT_PAR | ADD_RCPT,
        Modification::DeleteRecipient(_) => DELETE_RCPT,
        Modification::ChangeFrom { .. } => CHANGE_FROM,
        Modification::Quarantine(_) => QUARANTINE,
    };
    // Inserting needs ADD_HEADERS in libmilter; some filters ask for CHGHDRS only.
    actions & needed != 0 || matches!(m, Modification::InsertHeader { .. }) && actions & CHANGE_HEADERS != 0
}
