//! One client session: Portcullis speaks SMTP to the client, applies the relay policy
//! at RCPT, and forwards each transaction to the backend, whose replies it relays.
//!
//! State lives in a few fields: `helo` (greeted or not), `tx` (inside a mail
//! transaction), `authenticated`, the client stream (plain or TLS) and `upstream`
//! (backend connection, opened by the first MAIL or by AUTH in backend mode). A
//! transaction without an upstream means the backend was lost mid-transaction, or
//! given back while the client was idle without a recipient (then the MAIL is sent
//! again on a new connection at the next RCPT).
//! STARTTLS and AUTH have their handlers in [`starttls`] and [`auth`].

mod auth;
mod starttls;

use super::upstream::{Upstream, UpstreamError};
use crate::addr::{ClientAddr, LocalAddr};
use crate::admin::metrics;
use crate::config::{AuthPolicy, Config, Listener, ListenerTls, Live};
use crate::identity::ClientFacts;
use crate::policy::{RelayClient, RelayVerdict, address};
use crate::smtp::command::{self, Command, CommandError, Param};
use crate::smtp::{Asked, Capabilities, DataScanner, Reply, Scan, mail};
use crate::tls::MaybeTls;
use bytes::BytesMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Read size while receiving a message body.
const DATA_CHUNK: usize = 16 * 1024;
/// Read size between commands; small, because idle sessions hold it.
const COMMAND_CHUNK: usize = 512;

/// How a session ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Quit,
    ClientClosed,
    ClientClosedInData,
    Timeout,
    BackendClosing,
    WriteFailed,
    TlsFailed,
    AuthFailures,
    TooManyErrors,
    NotSmtp,
    Pregreet,
    Shutdown,
    Pipelining,
    TooSlow,
}

impl Outcome {
    /// A short fixed name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Quit => "quit",
            Outcome::ClientClosed => "client_closed",
            Outcome::ClientClosedInData => "client_closed_in_data",
            Outcome::Timeout => "timeout",
            Outcome::BackendClosing => "backend_closing",
            Outcome::WriteFailed => "write_failed",
            Outcome::TlsFailed => "tls_failed",
            Outcome::AuthFailures => "auth_failures",
            Outcome::TooManyErrors => "too_many_errors",
            Outcome::NotSmtp => "not_smtp",
            Outcome::Pregreet => "pregreet",
            Outcome::Shutdown => "shutdown",
            Outcome::Pipelining => "pipelining",
            Outcome::TooSlow => "too_slow",
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Quit => "quit",
            Outcome::ClientClosed => "client closed",
            Outcome::ClientClosedInData => "client closed during DATA; backend transaction abandoned",
            Outcome::Timeout => "timeout",
            Outcome::BackendClosing => "backend closing (421)",
            Outcome::WriteFailed => "write to client failed",
            Outcome::TlsFailed => "TLS handshake failed",
            Outcome::AuthFailures => "too many authentication failures",
            Outcome::TooManyErrors => "too many errors",
            Outcome::NotSmtp => "not an SMTP client",
            Outcome::Pregreet => "client talked before the greeting",
            Outcome::Shutdown => "server shutting down",
            Outcome::Pipelining => "data sent before 354",
            Outcome::TooSlow => "message arriving too slowly",
        }
    }
}

/// What one read from the client brought.
enum Read {
    Data,
    Closed,
    TimedOut,
}

/// What the session knows of one open mail transaction.
#[derive(Debug, Default)]
struct Transaction {
    recipients: u32,
    /// The MAIL line as the backend got it, to send again when the backend connection
    /// was given back before any recipient (see `release_idle_upstream`).
    mail_line: Vec<u8>,
    /// The backend connection was given back while idle: reconnect at the next RCPT.
    released: bool,
}

#[derive(Debug, Default)]
struct Stats {
    messages: u32,
    rcpt_accepted: u32,
    rcpt_refused: u32,
    errors: u32,
    /// Errors since the last delivered message; `limits.max_errors` of them end the
    /// session (Postfix's hard error limit: errors "without delivering mail").
    errors_since_delivery: u32,
    bytes_in: u64,
    bytes_out: u64,
}

/// Session ids: unique in the process and, being seeded with the start time, across
/// restarts; every log line of a session carries its id.
fn next_session_id() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() << 24)
    });
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Helo {
    name: String,
    esmtp: bool,
}

type Step = Result<(), Outcome>;

/// A command line (CRLF included), or the reply for a line that is not one.
type Line = Result<BytesMut, &'static str>;

pub struct Session<S> {
    id: u64,
    started: Instant,
    /// The config this session follows; `live`, when set, replaces it with the one in
    /// force before every command.
    config: Arc<Config>,
    live: Option<Arc<Live>>,
    listener: Arc<Listener>,
    client: MaybeTls<S, tokio_rustls::server::TlsStream<S>>,
    peer: ClientAddr,
    local: LocalAddr,
    inbuf: BytesMut,
    out: Vec<u8>,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    helo: Option<Helo>,
    tx: Option<Transaction>,
    /// The user name, once AUTH succeeded.
    authenticated: Option<String>,
    auth_failures: u32,
    /// False when a PROXY header said UNKNOWN: never relay for such a client.
    address_known: bool,
    upstream: Option<Upstream>,
    stats: Stats,
    /// Cancelled when a shutdown's drain deadline passes.
    stop: CancellationToken,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(config: Arc<Config>, listener: Arc<Listener>, client: S, peer: ClientAddr, local: LocalAddr) -> Self {
        Self {
            id: next_session_id(),
            started: Instant::now(),
            config,
            live: None,
            listener,
            client: MaybeTls::Plain(client),
            peer,
            local,
            inbuf: BytesMut::new(),
            out: Vec::new(),
            discarding: false,
            helo: None,
            tx: None,
            authenticated: None,
            auth_failures: 0,
            address_known: true,
            upstream: None,
            stats: Stats::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Follow the config in force: a reload applies from the next command on.
    pub fn with_live(mut self, live: Arc<Live>) -> Self {
        self.live = Some(live);
        self
    }

    /// The id every log line of this session carries.
    pub fn id(&self) -> String {
        format!("{:016x}", self.id)
    }

    /// Takes up the config in force if a reload replaced it. The listener is found by
    /// name; a session whose listener was removed goes on under its old settings.
    fn refresh(&mut self) {
        let Some(live) = &self.live else { return };
        let current = live.load();
        if Arc::ptr_eq(&current, &self.config) {
            return;
        }
        let config = arc_swap::Guard::into_inner(current);
        if let Some(listener) = config.listener(&self.listener.name) {
            self.listener = listener.clone();
        }
        self.config = config;
    }

    /// The token that, once cancelled, ends the session with 421 at its next read.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Bytes that arrived after a PROXY header, before the session started.
    pub fn with_input(mut self, input: BytesMut) -> Self {
        self.inbuf = input;
        self
    }

    /// Marks the client address as unknown (PROXY UNKNOWN): no relay.
    pub fn with_unknown_address(mut self) -> Self {
        self.address_known = false;
        self
    }

    pub async fn run(mut self) {
        metrics::session_opened();
        let served = async {
            if self.listener.tls == ListenerTls::Implicit {
                Box::pin(self.handshake()).await?;
            }
            self.before_greeting().await?;
            let greeting = format!("220 {} ESMTP", self.config.hostname);
            self.reply(&greeting);
            self.serve().await
        };
        let outcome = match served.await {
            Ok(()) => Outcome::Quit,
            Err(outcome) => outcome,
        };
        let _ = self.flush().await;
        // A backend connection is closed with QUIT after a clean end; otherwise it is
        // dropped: the backend sees the connection close, never a final dot.
        if let Some(upstream) = self.upstream.take()
            && outcome == Outcome::Quit
            && self.tx.is_none()
        {
            Box::pin(upstream.quit()).await;
        }
        tracing::info!(
            peer = %self.peer,
            local = %self.local,
            listener = %self.listener.name,
            tls = self.client.is_tls(),
            user = self.authenticated.as_deref().unwrap_or(""),
            helo = self.helo.as_ref().map(|h| h.name.as_str()).unwrap_or(""),
            messages = self.stats.messages,
            rcpt_accepted = self.stats.rcpt_accepted,
            rcpt_refused = self.stats.rcpt_refused,
            errors = self.stats.errors,
            bytes_in = self.stats.bytes_in,
            bytes_out = self.stats.bytes_out,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = outcome.as_str(),
            "session closed"
        );
        metrics::session_closed(&self.listener.name, outcome.label(), self.stats.bytes_in, self.stats.bytes_out);
    }

    /// A client must wait for the greeting (RFC 5321 3.1). With a `greeting_delay`
    /// the listener waits and watches; bytes already received (after a PROXY header,
    /// say) are caught either way.
    async fn before_greeting(&mut self) -> Step {
        let delay = self.listener.greeting_delay;
        if !delay.is_zero() && self.inbuf.is_empty() {
            self.inbuf.reserve(COMMAND_CHUNK);
            match timeout(delay, self.client.read_buf(&mut self.inbuf)).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Outcome::ClientClosed),
                Ok(Ok(_)) => {}
            }
        }
        if self.inbuf.is_empty() {
            return Ok(());
        }
        tracing::info!(
            peer = %self.peer, listener = %self.listener.name, bytes = self.inbuf.len(),
            "client talked before the greeting; refused"
        );
        self.inbuf.clear();
        self.reply("554 5.5.1 Error: talking before the greeting");
        Err(Outcome::Pregreet)
    }

    /// Runs commands until QUIT (`Ok`) or another end (`Err`).
    async fn serve(&mut self) -> Step {
        loop {
            let line = match self.next_line().await? {
                Ok(line) => line,
                Err(reply) => {
                    self.refuse(reply)?;
                    continue;
                }
            };
            self.refresh();
            // `line` still ends with CRLF, so forwarded commands are the client's own bytes.
            let text = &line[..line.len() - 2];
            match command::parse(text) {
                Err(CommandError::NotSmtp) => {
                    tracing::info!(peer = %self.peer, listener = %self.listener.name, "not an SMTP client (HTTP request); closed");
                    self.reply(CommandError::NotSmtp.reply());
                    return Err(Outcome::NotSmtp);
                }
                Err(e) => self.refuse(e.reply())?,
                // Handlers that wait on the backend are boxed: the idle session then
                // holds only the small state of waiting for the next line.
                Ok(Command::Helo(name)) => Box::pin(self.hello(name, false)).await?,
                Ok(Command::Ehlo(name)) => Box::pin(self.hello(name, true)).await?,
                Ok(Command::Mail { path, params }) => Box::pin(self.mail(&line, path, &params)).await?,
                Ok(Command::Rcpt { path, params }) => Box::pin(self.rcpt(&line, path, &params)).await?,
                Ok(Command::Data) => Box::pin(self.data()).await?,
                Ok(Command::Rset) => Box::pin(self.rset()).await?,
                Ok(Command::Noop) => self.reply("250 2.0.0 Ok"),
                Ok(Command::Vrfy) => {
                    self.reply("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
                }
                Ok(Command::Help) => {
                    self.reply("214 2.0.0 Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT")
                }
                Ok(Command::StartTls) => Box::pin(self.starttls()).await?,
                Ok(Command::Auth(args)) => Box::pin(self.auth(&line, args)).await?,
                Ok(Command::Quit) => {
                    self.reply("221 2.0.0 Bye");
                    return Ok(());
                }
                Ok(Command::NotImplemented(verb)) => {
                    tracing::debug!(peer = %self.peer, verb, "command not implemented");
                    self.refuse("502 5.5.1 Error: command not implemented")?;
                }
                Ok(Command::Spoof(verb)) => {
                    tracing::warn!(
                        peer = %self.peer, listener = %self.listener.name, verb,
                        "client tried to set its own identity; refused, not forwarded"
                    );
                    self.refuse("550 5.7.0 Error: insufficient authorization")?;
                }
            }
        }
    }

    // === command handlers ===

    async fn hello(&mut self, name: &str, esmtp: bool) -> Step {
        self.reset_transaction().await?;
        self.helo = Some(Helo { name: name.to_string(), esmtp });
        if esmtp {
            let mut ehlo = format!(
                "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n",
                self.config.hostname, self.config.limits.max_message_size
            );
            if self.listener.tls == ListenerTls::StartTls && !self.client.is_tls() {
                ehlo.push_str("250-STARTTLS\r\n");
            }
            if self.auth_offered() {
                ehlo.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            ehlo.push_str("250 ENHANCEDSTATUSCODES");
            self.reply(&ehlo);
        } else {
            let helo = format!("250 {}", self.config.hostname);
            self.reply(&helo);
        }
        Ok(())
    }

    async fn mail(&mut self, line: &[u8], path: &str, params: &[Param<'_>]) -> Step {
        let Some(helo) = &self.helo else {
            return self.refuse("503 5.5.1 Error: send HELO/EHLO first");
        };
        if self.tx.is_some() {
            return self.refuse("503 5.5.1 Error: nested MAIL command");
        }
        if !helo.esmtp && !params.is_empty() {
            return self.refuse("555 5.5.4 Error: MAIL parameters need EHLO");
        }
        if self.listener.require_tls && !self.client.is_tls() {
            return self.refuse("530 5.7.0 Must issue a STARTTLS command first");
        }
        if self.listener.auth == AuthPolicy::Required && self.authenticated.is_none() {
            return self.refuse("530 5.7.0 Authentication required");
        }
        for p in params {
            let value = p.value.unwrap_or("");
            if p.keyword.eq_ignore_ascii_case("SIZE") {
                let Ok(size) = value.parse::<u64>() else {
                    return self.refuse("501 5.5.4 Error: bad SIZE parameter");
                };
                if size > self.config.limits.max_message_size {
                    tracing::info!(peer = %self.peer, size, "message refused: declared SIZE over the limit");
                    metrics::limit_refused("limits.max_message_size");
                    return self.refuse("552 5.3.4 Message size exceeds fixed limit");
                }
            } else if !(p.keyword.eq_ignore_ascii_case("BODY")
                && (value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME")))
                // RFC 4954 AUTH=: accepted, not passed on (the backend did not see our AUTH).
                && !(p.keyword.eq_ignore_ascii_case("AUTH") && p.value.is_some())
            {
                return self.refuse("555 5.5.4 Error: unsupported MAIL parameter");
            }
        }

        let sent = self.start_backend_transaction(|caps| mail::for_backend(caps, line, path, params)).await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => return self.upstream_failed(e, "MAIL"),
        };
        if reply.is_positive() {
            self.tx = Some(Transaction { mail_line: line.to_vec(), ..Transaction::default() });
        }
        self.relay_reply(&reply)?;
        if reply.code >= 500 {
            return self.count_error();
        }
        Ok(())
    }

    /// Sends MAIL (`line`, given the backend's capabilities) on the backend connection,
    /// opening one if needed. Nothing of the transaction is acknowledged yet, so when
    /// the connection fails here a fresh one may do better: once more, or on the next
    /// backend when this one broke the protocol.
    async fn start_backend_transaction(
        &mut self,
        line: impl Fn(&Capabilities) -> Vec<u8>,
    ) -> Result<Reply, UpstreamError> {
        let mut skip = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.connect_upstream(&skip).await?;
            let facts = self.facts();
            let up = self.upstream.as_mut().expect("connected above");
            let forward = line(up.capabilities());
            match up.mail(&facts, &forward).await {
                Ok(reply) => return Ok(reply),
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

    async fn rcpt(&mut self, line: &[u8], path: &str, params: &[Param<'_>]) -> Step {
        let Some(tx) = &self.tx else {
            return self.refuse("503 5.5.1 Error: need MAIL command");
        };
        if self.upstream.is_none() && !tx.released {
            self.reply("451 4.4.2 Connection to the mail server lost, try again later");
            return Ok(());
        }
        if !params.is_empty() {
            return self.refuse("555 5.5.4 Error: unsupported RCPT parameter");
        }
        let destination = match address::classify(path) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(peer = %self.peer, rcpt = ?path, error = %e, "recipient refused: bad syntax");
                return self.refuse("501 5.1.3 Bad recipient address syntax");
            }
        };
        if tx.recipients >= self.config.limits.max_recipients {
            self.stats.rcpt_refused += 1;
            metrics::limit_refused("limits.max_recipients");
            return self.refuse("452 4.5.3 Error: too many recipients");
        }
        let client = RelayClient {
            ip: self.peer.ip(),
            local_ip: self.local.ip(),
            authenticated: self.authenticated.is_some(),
            address_known: self.address_known,
        };
        let verdict = self.config.relay.decide(&client, &destination);
        if let RelayVerdict::Denied(rule) = verdict {
            self.stats.rcpt_refused += 1;
            metrics::relay_refused(&self.listener.name, rule);
            let form = match destination {
                address::Destination::Routed(form) => form,
                _ => "plain",
            };
            tracing::info!(
                peer = %self.peer, local = %self.local, listener = %self.listener.name,
                user = ?self.authenticated.as_deref().unwrap_or(""),
                rcpt = ?path, address_form = form, rule, "relay refused"
            );
            let reply = format!("550 5.7.1 <{path}>: Relay access denied");
            return self.refuse(&reply);
        }
        if self.upstream.is_none() && !self.resume_transaction().await? {
            return Ok(());
        }
        let up = self.upstream.as_mut().expect("checked above");
        let reply = match up.command(line, Asked::Rcpt).await {
            Ok(r) => r,
            Err(e) => return self.upstream_failed(e, "RCPT"),
        };
        if reply.is_positive() {
            self.stats.rcpt_accepted += 1;
            metrics::recipient("accepted");
            if let Some(tx) = &mut self.tx {
                tx.recipients += 1;
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

    /// A transaction whose backend connection was given back while the client was idle
    /// gets a new one, and its MAIL again. False when that failed; the client has its
    /// reply and the transaction is over.
    async fn resume_transaction(&mut self) -> Result<bool, Outcome> {
        let client_line = self.tx.as_ref().map(|tx| tx.mail_line.clone()).unwrap_or_default();
        let text = &client_line[..client_line.len().saturating_sub(2)];
        let Ok(Command::Mail { path, params }) = command::parse(text) else {
            self.tx = None;
            self.reply("451 4.3.0 Transaction lost, try again later");
            return Ok(false);
        };
        match self.start_backend_transaction(|caps| mail::for_backend(caps, &client_line, path, &params)).await {
            Ok(reply) if reply.is_positive() => {
                if let Some(tx) = &mut self.tx {
                    tx.released = false;
                }
                Ok(true)
            }
            Ok(reply) => {
                tracing::warn!(
                    peer = %self.peer, reply = ?reply.first_line(),
                    "backend refused the MAIL sent again after an idle pause; transaction ended"
                );
                self.tx = None;
                self.reply("451 4.3.0 Transaction lost, try again later");
                Ok(false)
            }
            Err(e) => {
                self.upstream_failed(e, "MAIL again")?;
                Ok(false)
            }
        }
    }

    async fn data(&mut self) -> Step {
        match &self.tx {
            None => return self.refuse("503 5.5.1 Error: need MAIL command"),
            Some(tx) if tx.recipients == 0 => return self.refuse("503 5.5.1 Error: need RCPT command"),
            Some(_) => {}
        }
        if !self.inbuf.is_empty() {
            // RFC 2920: DATA ends a pipelined group; the client must wait for 354. Bytes
            // already here are a message sent blind, the shape of a smuggling attempt.
            tracing::warn!(
                peer = %self.peer, listener = %self.listener.name, bytes = self.inbuf.len(),
                "data sent before the 354 to DATA; refused, closed"
            );
            self.inbuf.clear();
            self.reply("554 5.5.0 Error: SMTP protocol synchronization (data sent before 354)");
            return Err(Outcome::Pipelining);
        }
        let Some(up) = self.upstream.as_mut() else {
            self.reply("451 4.4.2 Connection to the mail server lost, try again later");
            return Ok(());
        };
        let reply = match up.command(b"DATA\r\n", Asked::Data).await {
            Ok(r) => r,
            Err(e) => return self.upstream_failed(e, "DATA"),
        };
        if !reply.is_intermediate() {
            return self.relay_reply(&reply);
        }
        self.relay_reply(&reply)?;
        self.body().await
    }

    /// Streams the body to the backend chunk by chunk, as received, up to CRLF.CRLF.
    async fn body(&mut self) -> Step {
        let limits = &self.config.limits;
        let mut scanner = DataScanner::new(limits.max_message_size, limits.bare_lf);
        let mut upstream_error: Option<UpstreamError> = None;
        // Normalize mode forwards rewritten bytes; the other modes the client's own.
        let mut rewritten = Vec::new();
        let started = tokio::time::Instant::now();
        loop {
            if self.inbuf.is_empty() {
                self.flush().await?;
                self.inbuf.reserve(DATA_CHUNK);
                match self.read_client(self.config.limits.data_timeout).await? {
                    Read::Data => {}
                    Read::Closed => return Err(Outcome::ClientClosedInData),
                    Read::TimedOut => return self.timed_out(),
                }
                let received = scanner.size() + self.inbuf.len() as u64;
                if self.config.limits.min_data_rate.too_slow(received, started.elapsed()) {
                    tracing::info!(peer = %self.peer, listener = %self.listener.name, received, "message arriving too slowly; closed");
                    let text = format!("421 4.4.2 {} Error: data too slow", self.config.hostname);
                    self.reply(&text);
                    metrics::limit_refused("limits.min_data_rate");
                    return Err(Outcome::TooSlow);
                }
            }
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
            // A chunk holding a violation is never forwarded; neither is anything after it.
            if scanner.violation().is_none() && upstream_error.is_none() {
                let up = self.upstream.as_mut().expect("DATA needs an upstream");
                let bytes: &[u8] = if scanner.rewrites() { &rewritten } else { &chunk };
                if let Err(e) = up.send_body(bytes).await {
                    upstream_error = Some(e);
                }
            }
            if matches!(scan, Scan::End(_)) {
                break;
            }
        }
        self.tx = None;
        if let Some(v) = scanner.violation() {
            // Abandon the backend transaction: close without the final dot.
            self.upstream = None;
            tracing::info!(
                peer = %self.peer, listener = %self.listener.name, reason = v.reason(), size = scanner.size(),
                "message refused"
            );
            metrics::message("rejected");
            return self.refuse(v.reply());
        }
        if let Some(e) = upstream_error {
            metrics::message("failed");
            return self.upstream_failed(e, "message body");
        }
        let up = self.upstream.as_mut().expect("DATA needs an upstream");
        match up.end_of_data().await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.stats.messages += 1;
                    self.stats.errors_since_delivery = 0;
                    metrics::message("delivered");
                } else {
                    metrics::message("refused");
                }
                self.relay_reply(&reply)
            }
            Err(e) => {
                metrics::message("failed");
                self.upstream_failed(e, "end of data")
            }
        }
    }

    async fn rset(&mut self) -> Step {
        self.reset_transaction().await?;
        self.reply("250 2.0.0 Ok");
        Ok(())
    }

    // === helpers ===

    /// Ends any open transaction here and at the backend.
    async fn reset_transaction(&mut self) -> Step {
        if self.tx.take().is_some()
            && let Some(up) = self.upstream.as_mut()
        {
            match up.command(b"RSET\r\n", Asked::Rset).await {
                Ok(r) if r.is_positive() => {}
                Ok(r) => {
                    tracing::warn!(backend = %up.address, reply = ?r.first_line(), "backend refused RSET; reconnecting later");
                    self.upstream = None;
                }
                Err(e) => {
                    tracing::warn!(backend = %up.address, error = ?e.to_string(), "backend failed at RSET; reconnecting later");
                    self.upstream = None;
                }
            }
        }
        Ok(())
    }

    fn facts(&self) -> ClientFacts {
        let helo = self.helo.as_ref().expect("MAIL and AUTH require HELO");
        ClientFacts {
            addr: self.peer,
            local: self.local,
            helo: helo.name.clone(),
            esmtp: helo.esmtp,
            login: self.authenticated.clone(),
        }
    }

    /// Opens the backend connection if there is none; failures are logged here.
    /// Opens the backend connection if there is none, passing over the backends in
    /// `skip`; failures are logged here.
    async fn connect_upstream(&mut self, skip: &[String]) -> Result<(), UpstreamError> {
        if self.upstream.is_some() {
            return Ok(());
        }
        let facts = self.facts();
        match Upstream::connect(&self.config.backends, &facts, &self.config.hostname, skip).await {
            Ok(up) => {
                self.upstream = Some(up);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    peer = %self.peer, listener = %self.listener.name, error = ?e.to_string(),
                    "no backend for this session"
                );
                Err(e)
            }
        }
    }

    /// Our own refusal of a client's command: it counts as an error (see `count_error`).
    fn refuse(&mut self, reply: &str) -> Step {
        self.reply(reply);
        self.count_error()
    }

    /// One more client error: a refused command, bad syntax, a command out of
    /// sequence, a relay attempt, a recipient the backend does not know. After
    /// `limits.max_errors` of them without a delivered message, the session ends.
    fn count_error(&mut self) -> Step {
        self.stats.errors += 1;
        self.stats.errors_since_delivery += 1;
        if self.stats.errors_since_delivery >= self.config.limits.max_errors {
            tracing::info!(peer = %self.peer, listener = %self.listener.name, errors = self.stats.errors, "too many errors; closed");
            let text = format!("421 4.7.0 {} Error: too many errors", self.config.hostname);
            self.reply(&text);
            metrics::limit_refused("limits.max_errors");
            return Err(Outcome::TooManyErrors);
        }
        Ok(())
    }

    /// The backend failed: drop it and the transaction, tell the client to retry. Not
    /// the client's error, so not counted.
    fn upstream_failed(&mut self, error: UpstreamError, step: &'static str) -> Step {
        let backend = self.upstream.take().map(|u| u.address).unwrap_or_default();
        if !backend.is_empty() {
            metrics::backend_error(&backend, step, error.kind());
        }
        self.tx = None;
        tracing::warn!(peer = %self.peer, %backend, step, error = ?error.to_string(), "backend failed; client told to retry");
        self.reply(error.client_reply());
        Ok(())
    }

    /// Passes the backend's reply on unchanged. A 421 means the backend is closing:
    /// the session ends after relaying it.
    fn relay_reply(&mut self, reply: &Reply) -> Step {
        self.out.extend_from_slice(reply.as_bytes());
        if reply.code == 421 {
            self.upstream = None;
            self.tx = None;
            return Err(Outcome::BackendClosing);
        }
        Ok(())
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Reads more client bytes into `inbuf`, unless `limit` passes first or the server
    /// is shutting down (then the client gets 421).
    async fn read_client(&mut self, limit: Duration) -> Result<Read, Outcome> {
        tokio::select! {
            read = timeout(limit, self.client.read_buf(&mut self.inbuf)) => Ok(match read {
                Err(_) => Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
                Ok(Ok(n)) => {
                    self.stats.bytes_in += n as u64;
                    Read::Data
                }
            }),
            _ = self.stop.cancelled() => {
                let text = format!("421 4.3.2 {} Service shutting down, try again later", self.config.hostname);
                self.reply(&text);
                Err(Outcome::Shutdown)
            }
        }
    }

    fn timed_out<T>(&mut self) -> Result<T, Outcome> {
        metrics::limit_refused("timeout");
        let text = format!("421 4.4.2 {} Error: timeout exceeded", self.config.hostname);
        self.reply(&text);
        Err(Outcome::Timeout)
    }

    async fn flush(&mut self) -> Step {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stats.bytes_out += self.out.len() as u64;
        let written = timeout(self.config.limits.command_timeout, self.client.write_all(&self.out)).await;
        self.out.clear();
        if self.out.capacity() > 4096 {
            self.out = Vec::new();
        }
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(Outcome::WriteFailed),
        }
    }

    /// The next complete line, CRLF included, or the reply for a malformed one. Replies
    /// are flushed only when no further line is buffered, so pipelined commands get
    /// their replies in one write, in order.
    async fn next_line(&mut self) -> Result<Line, Outcome> {
        self.read_line(true).await
    }

    /// [`Self::next_line`]; with `release_idle`, a backend connection that serves no
    /// recipient is given back while waiting (not inside an AUTH exchange with the
    /// backend, which lives on that connection).
    async fn read_line(&mut self, release_idle: bool) -> Result<Line, Outcome> {
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.inbuf) {
                let line = self.inbuf.split_to(nl + 1);
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                if nl == 0 || line[nl - 1] != b'\r' {
                    tracing::info!(peer = %self.peer, "line ended by bare LF; refused");
                    return Ok(Err("500 5.5.2 Error: command line must end with CRLF"));
                }
                return Ok(Ok(line));
            }
            if self.inbuf.len() >= self.config.limits.max_line_length {
                self.inbuf.clear();
                if !self.discarding {
                    self.discarding = true;
                    tracing::info!(peer = %self.peer, "line too long; refused");
                    metrics::limit_refused("limits.max_line_length");
                    return Ok(Err("500 5.5.2 Error: line too long"));
                }
            }
            self.flush().await?;
            if self.inbuf.is_empty() && self.inbuf.capacity() > 4 * COMMAND_CHUNK {
                // Let go of a large DATA buffer while idle.
                self.inbuf = BytesMut::new();
            }
            self.inbuf.reserve(COMMAND_CHUNK);
            let limit = self.config.limits.command_timeout;
            let read = match self.idle_backend_timeout().filter(|idle| release_idle && *idle < limit) {
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

    /// How long the backend connection may wait on this client: only while it carries
    /// no accepted recipient (and no login made at the backend), so that sessions that
    /// have sent nothing worth delivering cannot hold the backend's connections.
    fn idle_backend_timeout(&self) -> Option<Duration> {
        let up = self.upstream.as_ref()?;
        let logged_in_at_backend = self.authenticated.is_some()
            && self.config.auth.as_ref().is_some_and(|a| matches!(a.source, crate::config::AuthSource::Backend));
        let has_recipients = self.tx.as_ref().is_some_and(|tx| tx.recipients > 0);
        (!has_recipients && !logged_in_at_backend).then_some(up.idle_timeout)
    }

    /// Closes an idle backend connection; an open transaction (MAIL accepted, no
    /// recipient yet) is taken up again on a new connection at the next RCPT.
    async fn release_idle_upstream(&mut self) {
        let Some(up) = self.upstream.take() else { return };
        tracing::debug!(
            peer = %self.peer, backend = %up.address,
            "client idle without a recipient; backend connection given back"
        );
        if let Some(tx) = &mut self.tx {
            tx.released = true;
        }
        up.quit().await;
    }
}

#[cfg(test)]
mod tests;
