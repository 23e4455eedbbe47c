//! One client session: Portcullis speaks SMTP to the client, applies the relay policy
//! at RCPT, and forwards each transaction to the backend, whose replies it relays.
//!
//! This file owns the state and the command loop; each verb group has its handler in
//! a module of its own: [`ehlo`], [`mail`], [`rcpt`], [`data`], [`bdat`], [`rset`],
//! [`starttls`], [`auth`]; [`backend`] keeps the backend connection, [`pipeline`] the
//! replies owed for commands pipelined to it, [`io`] the client's lines and replies,
//! [`screen`] the screening before the greeting, and [`filter`] the content filters.
//!
//! The state: the [`Phase`] (connected, greeted, in a transaction, lost), `authenticated`
//! and the client stream (plain or TLS). A transaction owns its backend leg
//! ([`backend::Leg`]): open on a connection, given back while the client idles without a
//! recipient (the MAIL goes again at the next RCPT), or withheld from a listed client; a
//! transaction whose backend failed is [`Phase::Lost`]. Between transactions the
//! connection (opened by AUTH in backend mode, or kept after a message) is `idle`.

mod auth;
mod backend;
mod bdat;
mod data;
mod ehlo;
mod filter;
mod io;
mod mail;
mod pipeline;
mod rcpt;
mod recipients;
mod rset;
mod screen;
mod starttls;

use crate::addr::Client;
use crate::backend::registry::{BackendState, Registry};
use crate::backend::upstream::Upstream;
use crate::config::{Config, Listener, ListenerTls, Live};
use crate::deadline::Deadline;
use crate::metrics;
use crate::smtp::command::{self, Command, CommandError};
use crate::smtp::ehlo::Offer;
use crate::tls::MaybeTls;
use bytes::BytesMut;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::timeout;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Read size while receiving a message body.
const DATA_CHUNK: usize = 16 * 1024;
/// Read size between commands; small, because idle sessions hold it.
const COMMAND_CHUNK: usize = 256;
/// After the last reply: how long, and how many bytes, the client's input is still
/// read and dropped before the connection closes (see `linger`).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// How a session ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
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
    BadBdat,
    LineTooLong,
    Banned,
    Blocklisted,
    Limited,
    FilterClosed,
    AcmeChallenge,
}

impl Outcome {
    /// A short fixed name for metrics.
    pub(crate) fn label(&self) -> &'static str {
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
            Outcome::BadBdat => "bad_bdat",
            Outcome::LineTooLong => "line_too_long",
            Outcome::Banned => "banned",
            Outcome::Blocklisted => "blocklisted",
            Outcome::Limited => "limited",
            Outcome::FilterClosed => "filter_closed",
            Outcome::AcmeChallenge => "acme_challenge",
        }
    }

    pub(crate) fn as_str(&self) -> &'static str {
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
            Outcome::BadBdat => "BDAT without a readable size",
            Outcome::LineTooLong => "command line too long",
            Outcome::Banned => "banned for its errors",
            Outcome::Blocklisted => "listed by DNS lists",
            Outcome::Limited => "over the connection rate",
            Outcome::FilterClosed => "closed by a content filter",
            Outcome::AcmeChallenge => "answered an ACME TLS-ALPN-01 validation",
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
struct Transaction {
    /// Where the transaction stands with the backend.
    leg: backend::Leg,
    recipients: u32,
    /// Recipients refused for `max_recipients` so far.
    overshoot: u32,
    /// The MAIL line as the backend got it, to send again when the backend connection
    /// was given back before any recipient (see `release_idle_upstream`).
    mail_line: Vec<u8>,
    /// MAIL said SMTPUTF8: addresses may be UTF-8.
    smtputf8: bool,
    /// The message is coming in BDAT chunks.
    chunks: Option<bdat::Chunks>,
    /// BODY=BINARYMIME: BDAT only, passed on untouched.
    binary: bool,
}

impl Transaction {
    fn new(leg: backend::Leg, mail_line: &[u8], declared: &crate::smtp::mail::MailParams) -> Self {
        Self {
            leg,
            recipients: 0,
            overshoot: 0,
            mail_line: mail_line.to_vec(),
            smtputf8: declared.smtputf8,
            chunks: None,
            binary: declared.binary,
        }
    }
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
    /// NOOP, VRFY, RSET, HELP since the last delivered message.
    junk: u32,
    /// Transactions begun (MAIL accepted), for filters' queue ids.
    transactions: u32,
}

/// Whether a login made under `old` stands under `new`: the same users file entry,
/// or logins still checked by the backend.
fn login_stands(old: &Config, new: &Config, user: &str) -> bool {
    use crate::config::AuthSource;
    match (old.auth.as_ref().map(|a| &a.source), new.auth.as_ref().map(|a| &a.source)) {
        (Some(AuthSource::File(old)), Some(AuthSource::File(new))) => new.still_admits(old, user),
        (Some(AuthSource::Backend), Some(AuthSource::Backend)) => true,
        _ => false,
    }
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

/// Where the session is in RFC 5321's sequence. A transaction needs a greeting, so
/// neither can be out of step with the other.
enum Phase {
    /// Before HELO/EHLO (and again after STARTTLS).
    Connected,
    Greeted(Helo),
    /// MAIL accepted: the transaction is open.
    Transaction(Helo, Transaction),
    /// The backend was lost inside a transaction: its later commands get 4xx (the
    /// fault is temporary) until RSET, MAIL or a new greeting.
    Lost(Helo),
}

impl Phase {
    fn helo(&self) -> Option<&Helo> {
        match self {
            Phase::Connected => None,
            Phase::Greeted(h) | Phase::Transaction(h, _) | Phase::Lost(h) => Some(h),
        }
    }

    fn transaction(&self) -> Option<&Transaction> {
        match self {
            Phase::Transaction(_, tx) => Some(tx),
            _ => None,
        }
    }

    fn transaction_mut(&mut self) -> Option<&mut Transaction> {
        match self {
            Phase::Transaction(_, tx) => Some(tx),
            _ => None,
        }
    }

    /// Opens a transaction; only a greeted session can (MAIL checks that first).
    fn begin_transaction(&mut self, tx: Transaction) {
        match std::mem::replace(self, Phase::Connected) {
            Phase::Greeted(h) | Phase::Lost(h) => *self = Phase::Transaction(h, tx),
            other => *self = other,
        }
    }

    /// Ends the open transaction, if any, and returns it; a lost one is forgotten.
    fn end_transaction(&mut self) -> Option<Transaction> {
        match std::mem::replace(self, Phase::Connected) {
            Phase::Transaction(h, tx) => {
                *self = Phase::Greeted(h);
                Some(tx)
            }
            Phase::Lost(h) => {
                *self = Phase::Greeted(h);
                None
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// The backend went away inside the open transaction, if any: its leg goes with it.
    fn lose_transaction(&mut self) -> Option<Box<Upstream>> {
        match std::mem::replace(self, Phase::Connected) {
            Phase::Transaction(h, tx) => {
                *self = Phase::Lost(h);
                tx.leg.into_open()
            }
            other => {
                *self = other;
                None
            }
        }
    }

    fn lost(&self) -> bool {
        matches!(self, Phase::Lost(_))
    }
}

type Step = Result<(), Outcome>;

/// A command line (CRLF included), or the reply for a line that is not one.
type Line = Result<BytesMut, &'static str>;

pub(crate) struct Session<S> {
    id: u64,
    started: Instant,
    /// The config this session follows; `live`, when set, replaces it with the one in
    /// force before every command.
    config: Arc<Config>,
    live: Option<Arc<Live>>,
    /// Rates and bans, shared with every session; none in tests that do not need them.
    screen: Option<Arc<crate::screen::Screen>>,
    /// Recipient validation (`[[recipients]]`), shared with every session.
    recipients: Option<Arc<crate::recipients::Recipients>>,
    /// The backends' live state (slots, health, what they offered), shared with every
    /// session and the health checks (a registry of its own when none was given).
    backends: Option<Arc<Registry>>,
    /// The states of the configured backends, looked up once per config.
    backend_states: Option<Arc<[Arc<BackendState>]>>,
    listener: Arc<Listener>,
    /// The connection to the client, plain or TLS.
    stream: MaybeTls<S, tokio_rustls::server::TlsStream<S>>,
    /// The client, as made at accept.
    client: Client,
    inbuf: BytesMut,
    out: Vec<u8>,
    phase: Phase,
    /// What the last EHLO offered; MAIL and RCPT parameters are checked against it.
    offered: Offer,
    /// The user name, once AUTH succeeded.
    authenticated: Option<String>,
    auth_failures: u32,
    /// The DNS lists' verdict when the listener enforces it at RCPT.
    listed: Option<Box<screen::Listed>>,
    /// The content filters, connected at the first MAIL (listeners with `milters`).
    filters: Option<Box<crate::milter::Filters>>,
    /// The SASL mechanism the client logged in with (for filters' `{auth_type}`).
    auth_mechanism: Option<&'static str>,
    /// The backend connection between transactions (see [`backend::Leg`] for the one a
    /// transaction holds).
    idle: Option<Box<Upstream>>,
    /// Replies owed to the client for commands pipelined to the backend, in order.
    pending: std::collections::VecDeque<pipeline::Pending>,
    stats: Stats,
    /// Ready when a shutdown's drain deadline passes; kept registered for the whole
    /// session rather than for every read.
    stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The timer of every wait on the client.
    deadline: Deadline,
    /// The verb of the command being handled ("-" for a line that is none), for the
    /// log line of a refusal.
    verb: &'static str,
    /// The certificates of `[acme]`, when configured.
    certs: Option<Arc<crate::acme::Certificates>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn new(config: Arc<Config>, listener: Arc<Listener>, stream: S, client: Client) -> Self {
        Self {
            id: next_session_id(),
            started: Instant::now(),
            config,
            live: None,
            screen: None,
            recipients: None,
            backends: None,
            backend_states: None,
            listener,
            stream: MaybeTls::Plain(stream),
            client,
            inbuf: BytesMut::new(),
            out: Vec::new(),
            phase: Phase::Connected,
            offered: Offer::default(),
            authenticated: None,
            auth_failures: 0,
            listed: None,
            filters: None,
            auth_mechanism: None,
            idle: None,
            pending: Default::default(),
            stats: Stats::default(),
            stop: None,
            deadline: Deadline::new(),
            verb: "-",
            certs: None,
        }
    }

    /// Serve the certificates of `[acme]` (and answer its TLS-ALPN-01 validations).
    pub(crate) fn with_certificates(mut self, certs: Option<Arc<crate::acme::Certificates>>) -> Self {
        self.certs = certs;
        self
    }

    /// Follow the config in force: a reload applies from the next command on.
    pub(crate) fn with_live(mut self, live: Arc<Live>) -> Self {
        self.live = Some(live);
        self
    }

    /// The live states of the configured backends, in order.
    fn backend_states(&mut self) -> Arc<[Arc<BackendState>]> {
        if let Some(states) = &self.backend_states {
            return states.clone();
        }
        let states = self.backends.get_or_insert_with(Arc::default).states_for(&self.config);
        self.backend_states = Some(states.clone());
        states
    }

    /// Share the backends' live state with the server's other sessions.
    pub(crate) fn with_backends(mut self, backends: Arc<Registry>) -> Self {
        self.backends = Some(backends);
        self
    }

    /// Count this session's messages, recipients and failures in `screen`.
    pub(crate) fn with_screen(mut self, screen: Arc<crate::screen::Screen>) -> Self {
        self.screen = Some(screen);
        self
    }

    /// The id every log line of this session carries.
    pub(crate) fn id(&self) -> String {
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
        if let Some(user) = &self.authenticated
            && !login_stands(&self.config, &config, user)
        {
            // Nothing of the old policy lingers: a login the new one would refuse is
            // taken back (relay then follows the client's address alone).
            tracing::warn!(peer = %self.client.addr, listener = %self.listener.name, %user, "login no longer valid after reload; taken back");
            self.authenticated = None;
            self.auth_mechanism = None;
        }
        self.config = config;
        self.backend_states = None;
    }

    /// The token that, once cancelled, ends the session with 421 at its next read.
    pub(crate) fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = Some(Box::pin(stop.cancelled_owned()));
        self
    }

    /// Bytes that arrived after a PROXY header, before the session started.
    pub(crate) fn with_input(mut self, input: BytesMut) -> Self {
        self.inbuf = input;
        self
    }

    pub(crate) async fn run(mut self) {
        metrics::session_opened();
        let served = async {
            Box::pin(self.screen_connection()).await?;
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
        // A backend connection is given back after a clean end (kept for another session
        // where the backend reuses connections, else QUIT); after the client's QUIT also
        // with a transaction open (RSET before it is kept), so the backend logs a client
        // that left, not a lost connection. Otherwise, and always inside a message body,
        // it is dropped: the backend sees the connection close, never a final dot.
        let in_body =
            self.phase.transaction().is_some_and(|tx| tx.chunks.as_ref().is_some_and(|c| c.holds_data_open()));
        let clean = match outcome {
            Outcome::Quit => !in_body,
            Outcome::ClientClosed => self.phase.transaction().is_none(),
            _ => false,
        };
        if let Some(upstream) = self.take_connection()
            && clean
        {
            Box::pin(self.give_back(upstream)).await;
        }
        if let Some(filters) = self.filters.take() {
            Box::pin(filters.quit()).await;
        }
        // After QUIT only when the client sent more: a client that waits for the 221
        // closes by itself, and a clean end stays as cheap as it was.
        let linger = match outcome {
            Outcome::ClientClosed | Outcome::ClientClosedInData | Outcome::WriteFailed => false,
            Outcome::Quit => !self.inbuf.is_empty(),
            _ => true,
        };
        if linger {
            self.linger().await;
        }
        tracing::info!(
            peer = %self.client.addr,
            local = %self.client.local,
            listener = %self.listener.name,
            proxy = self.client.origin.proxy().map(|p| p.to_string()).unwrap_or_default(),
            tls = self.stream.is_tls(),
            user = self.authenticated.as_deref().unwrap_or(""),
            helo = self.phase.helo().map(|h| h.name.as_str()).unwrap_or(""),
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
            match timeout(delay, self.stream.read_buf(&mut self.inbuf)).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Outcome::ClientClosed),
                Ok(Ok(_)) => {}
            }
        }
        if self.inbuf.is_empty() {
            return Box::pin(self.screen_before_greeting()).await;
        }
        tracing::info!(
            peer = %self.client.addr, listener = %self.listener.name, bytes = self.inbuf.len(),
            "client talked before the greeting; refused"
        );
        metrics::limit_refused("screen.pregreet");
        crate::activity::refused(self.client.addr.ip(), &self.listener.name, "greeting_delay (pregreet)");
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
                    self.verb = "-";
                    self.refuse(reply)?;
                    continue;
                }
            };
            self.refresh();
            // `line` still ends with CRLF, so forwarded commands are the client's own bytes.
            let text = &line[..line.len() - 2];
            let parsed = command::parse(text);
            self.verb = parsed.as_ref().map_or("-", Command::verb);
            let joins_group = matches!(parsed, Ok(Command::Rcpt { .. } | Command::Data)) && self.pipelines();
            if !self.pending.is_empty() && !joins_group {
                // Only RCPT and DATA join a pipelined group at the backend, and only while
                // the session pipelines (a reload may just have given the listener filters).
                Box::pin(self.settle()).await?;
            }
            if let Ok(command) = &parsed {
                self.pace(command)?;
            }
            match parsed {
                Err(CommandError::BadBdat) => {
                    tracing::info!(peer = %self.client.addr, listener = %self.listener.name, "BDAT without a readable size; closed");
                    self.reply(CommandError::BadBdat.reply());
                    return Err(Outcome::BadBdat);
                }
                Err(CommandError::NotSmtp) => {
                    let start = String::from_utf8_lossy(&text[..text.len().min(40)]).to_string();
                    tracing::info!(peer = %self.client.addr, listener = %self.listener.name, start = ?start, "not an SMTP client; closed");
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
                Ok(Command::Bdat(chunk)) => Box::pin(self.bdat(chunk)).await?,
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
                    tracing::debug!(peer = %self.client.addr, verb, "command not implemented");
                    self.refuse("502 5.5.1 Error: command not implemented")?;
                }
                Ok(Command::Spoof(verb)) => {
                    tracing::warn!(
                        peer = %self.client.addr, listener = %self.listener.name, verb,
                        "client tried to set its own identity; refused, not forwarded"
                    );
                    self.refuse("550 5.7.0 Error: insufficient authorization")?;
                }
            }
        }
    }

    /// Rules on how commands come, before any is handled: RFC 2920's group ends (a
    /// client that does not wait for the reply is closed, as Postfix's
    /// `smtpd_forbid_unauth_pipelining` does) and the junk command limit.
    fn pace(&mut self, command: &Command<'_>) -> Step {
        if command.ends_group() && !self.inbuf.is_empty() {
            tracing::info!(
                peer = %self.client.addr, listener = %self.listener.name, bytes = self.inbuf.len(),
                "commands sent after one that ends a pipelined group; closed"
            );
            self.inbuf.clear();
            self.reply("554 5.5.0 Error: SMTP protocol synchronization");
            return Err(Outcome::Pipelining);
        }
        if command.is_junk() {
            self.stats.junk += 1;
            if self.stats.junk > self.config.limits.max_junk_commands {
                metrics::limit_refused("limits.max_junk_commands");
                return self.count_error();
            }
        }
        Ok(())
    }

    // === errors ===

    /// One failure of `kind` toward a ban.
    fn failure(&mut self, kind: &'static str) -> Step {
        let Some(screen) = &self.screen else { return Ok(()) };
        let client = self.client.network(self.config.limits.ipv6_prefix);
        if !self.client.address_known() || !screen.failure(client, kind, &self.config.bans) {
            return Ok(());
        }
        tracing::warn!(
            peer = %self.client.addr, listener = %self.listener.name, %client, reason = kind,
            duration = ?self.config.bans.duration, "client banned"
        );
        metrics::limit_refused("screen.ban");
        crate::activity::refused(self.client.addr.ip(), &self.listener.name, &format!("banned ({kind})"));
        let text = format!("421 4.7.0 {} Error: too many errors, try again later", self.config.hostname);
        self.reply(&text);
        Err(Outcome::Banned)
    }

    /// Whose messages and recipients are counted: the user, or the client's network.
    fn who(&self) -> crate::screen::Who {
        match &self.authenticated {
            Some(user) => crate::screen::Who::User(user.clone()),
            None => crate::screen::Who::Client(self.client.network(self.config.limits.ipv6_prefix)),
        }
    }

    /// Our own refusal of a client's command: it counts as an error (see `count_error`).
    fn refuse(&mut self, reply: &str) -> Step {
        tracing::info!(peer = %self.client.addr, listener = %self.listener.name, command = self.verb, reply, "command refused");
        self.reply(reply);
        self.count_error()
    }

    /// One more client error: a refused command, bad syntax, a command out of
    /// sequence, a relay attempt, a recipient the backend does not know. After
    /// `limits.max_errors` of them without a delivered message, the session ends.
    fn count_error(&mut self) -> Step {
        self.count_error_as("protocol error")
    }

    /// [`Self::count_error`] for a failure of `kind`, which also counts toward a ban
    /// (`[screen] ban_after`); a client banned here is told so and the session ends.
    fn count_error_as(&mut self, kind: &'static str) -> Step {
        self.failure(kind)?;
        self.stats.errors += 1;
        self.stats.errors_since_delivery += 1;
        if self.stats.errors_since_delivery >= self.config.limits.max_errors {
            tracing::info!(peer = %self.client.addr, listener = %self.listener.name, errors = self.stats.errors, "too many errors; closed");
            let text = format!("421 4.7.0 {} Error: too many errors", self.config.hostname);
            self.reply(&text);
            metrics::limit_refused("limits.max_errors");
            crate::activity::refused(self.client.addr.ip(), &self.listener.name, "limits.max_errors");
            return Err(Outcome::TooManyErrors);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
