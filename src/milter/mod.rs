//! Content filters through the milter protocol (`[[milter]]`, a listener's `milters`):
//! the filters of one session, asked in the listener's order at each step, and their
//! verdicts made into SMTP replies. [`protocol`] encodes and decodes, [`client`] talks
//! to one filter, [`message`] holds a message and applies the filters' changes.
//!
//! Filters are connected at the session's first MAIL (a session that never sends mail
//! costs them nothing) and told the connection (the real client) and the HELO then.
//! A filter that cannot be reached, times out or breaks the protocol is dropped for
//! the session and its `default_action` applies: `tempfail` (451 4.7.1, the default),
//! `reject` (550 5.7.1) or `accept` (the session goes on without it).

pub(crate) mod client;
pub(crate) mod message;
pub(crate) mod protocol;

use crate::addr::Client;
use crate::metrics;
use client::{Filter, MilterError};
use message::{ChangeBounds, Edits, Held};
use protocol::{Command, Family, Response, Step};
use std::sync::Arc;
use std::time::Duration;

/// Where a filter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Inet(String, u16),
    Unix(std::path::PathBuf),
}

impl Address {
    /// `inet:host:port` (also `inet:port@host`, sendmail's form) or `unix:/path`.
    pub(crate) fn parse(text: &str) -> Option<Address> {
        if let Some(path) = text.strip_prefix("unix:").or(text.strip_prefix("local:")) {
            return path.starts_with('/').then(|| Address::Unix(path.into()));
        }
        let rest = text.strip_prefix("inet:").or(text.strip_prefix("inet6:"))?;
        let (host, port) = match rest.split_once('@') {
            Some((port, host)) => (host, port),
            None => rest.rsplit_once(':')?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        (!host.is_empty()).then(|| Address::Inet(host.to_string(), port))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Inet(host, port) => write!(f, "inet:{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What happens when a filter cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultAction {
    Tempfail,
    Reject,
    Accept,
}

/// One `[[milter]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MilterConfig {
    pub(crate) name: String,
    pub(crate) address: Address,
    pub(crate) connect_timeout: Duration,
    /// For each step but the end of message.
    pub(crate) command_timeout: Duration,
    /// For the end of message (a scan of the whole message).
    pub(crate) message_timeout: Duration,
    pub(crate) default_action: DefaultAction,
    /// Protocol steps never sent to this filter (`SMFIP_NO*` flags).
    pub(crate) skip: u32,
}

/// The reply text Postfix gives for a filter's plain reject and tempfail.
const REJECTED: &str = "550 5.7.1 Command rejected";
const TEMPFAILED: &str = "451 4.7.1 Service unavailable - try again later";

/// What the filters decided at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Continue,
    /// The client gets this reply (a filter's own, or ours for its reject/tempfail).
    Refuse(String),
    /// Accept the message and drop it: the client gets 250, nobody gets the message.
    Discard,
    /// A filter asked to end the session (421).
    Close,
}

/// What the session knows that filters are told (as macros and in CONNECT/HELO).
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// Our hostname (`j`).
    pub(crate) hostname: String,
    /// The client as made at accept; filters are told its address only when it is
    /// known (not a proxy's own, after a PROXY header that did not say).
    pub(crate) client: Client,
    pub(crate) helo: String,
    pub(crate) tls_version: Option<String>,
    pub(crate) cipher: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) auth_mechanism: Option<String>,
}

struct Slot {
    config: Arc<MilterConfig>,
    filter: Option<Filter>,
    /// Accepted the session (at connect or HELO), or dropped after a failure: not asked again.
    done: bool,
    /// Failed: every later message of the session gets its default action (unless
    /// that is "accept"), as Postfix does; no message passes a filter that is down.
    failed: bool,
    /// Accepted this message: not asked again until the next.
    message_done: bool,
}

/// The filters of one session, in the listener's order.
pub(crate) struct Filters {
    slots: Vec<Slot>,
    connected: bool,
    /// A filter discarded at connect or HELO: every message of the session is dropped.
    discard_all: bool,
    queue_id: String,
    /// A transaction is open at the filters (MAIL sent, no end of message or abort yet).
    open: bool,
    /// A filter discarded the open transaction's message: accepted, then dropped.
    pub(crate) discard: bool,
    /// The RCPT lines the backend accepted in the open transaction, to send again when
    /// a filter changes the envelope.
    pub(crate) rcpt_lines: Vec<Vec<u8>>,
}

impl Filters {
    pub(crate) fn new(configs: &[Arc<MilterConfig>]) -> Filters {
        Filters {
            slots: configs
                .iter()
                .map(|c| Slot { config: c.clone(), filter: None, done: false, failed: false, message_done: false })
                .collect(),
            connected: false,
            discard_all: false,
            queue_id: String::new(),
            open: false,
            discard: false,
            rcpt_lines: Vec::new(),
        }
    }

    /// Starts a transaction: connects the filters first if this is the session's first
    /// The id filters know the current message by (`i`), for our log lines.
    pub(crate) fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// one (CONNECT and HELO), then MAIL. `queue_id` names the message (`i`).
    pub(crate) async fn mail(&mut self, facts: &Facts, queue_id: String, args: &[&str]) -> Verdict {
        if self.open {
            // The last transaction ended at the backend without our knowing (a failed
            // MAIL there): the filters forget it first.
            self.abort().await;
        }
        self.open = true;
        self.queue_id = queue_id;
        self.discard = false;
        self.rcpt_lines.clear();
        for s in &mut self.slots {
            s.message_done = false;
        }
        if !self.connected {
            self.connected = true;
            let verdict = self.connect(facts).await;
            if verdict != Verdict::Continue {
                return verdict;
            }
        }
        if let Some(v) = self.failed_verdict() {
            return v;
        }
        let (address, host) = address_and_host(args);
        let mut macros = vec![("i", self.queue_id.clone()), ("{mail_addr}", address.to_string())];
        macros.push(("{mail_host}", host));
        macros.push(("{mail_mailer}", "smtp".into()));
        if let Some(user) = &facts.user {
            macros.push(("{auth_authen}", user.clone()));
            macros.push(("{auth_type}", facts.auth_mechanism.clone().unwrap_or_default()));
        }
        let verdict = self.each(Step::Mail, &macros, &Command::Mail(args)).await;
        if self.discard_all && verdict == Verdict::Continue { Verdict::Discard } else { verdict }
    }

    async fn connect(&mut self, facts: &Facts) -> Verdict {
        for s in &mut self.slots {
            match Filter::open(s.config.clone()).await {
                Ok(f) => s.filter = Some(f),
                Err(e) => {
                    let verdict = failed(s, "connect", &e);
                    if verdict != Verdict::Continue {
                        return verdict;
                    }
                }
            }
        }
        let client = facts.client.address_known().then_some(facts.client.addr);
        let client_addr = client.map(|c| c.ip().to_string()).unwrap_or_default();
        let mut macros = vec![
            ("j", facts.hostname.clone()),
            ("_", format!("unknown [{client_addr}]")),
            // Postfix's milter_macro_daemon_name: $myhostname (filters name the host with
            // it, as in rspamd's Authentication-Results).
            ("{daemon_name}", facts.hostname.clone()),
            ("{client_addr}", client_addr.clone()),
            ("{client_name}", "unknown".to_string()),
            ("{client_ptr}", "unknown".to_string()),
        ];
        if let Some(c) = client {
            macros.push(("{client_port}", c.socket().port().to_string()));
        }
        let local = facts.client.local;
        macros.push(("{daemon_addr}", local.ip().to_string()));
        macros.push(("{daemon_port}", local.socket().port().to_string()));
        macros.push(("{if_addr}", local.ip().to_string()));
        let family = match client {
            Some(c) => Family::Inet(c.ip(), c.socket().port()),
            None => Family::Unknown,
        };
        let connect = Command::Connect { hostname: "unknown", family };
        let verdict = self.each(Step::Connect, &macros, &connect).await;
        if verdict != Verdict::Continue {
            return verdict;
        }
        let mut macros = Vec::new();
        if let Some(v) = &facts.tls_version {
            macros.push(("{tls_version}", v.clone()));
        }
        if let Some(c) = &facts.cipher {
            macros.push(("{cipher}", c.clone()));
        }
        self.each(Step::Helo, &macros, &Command::Helo(&facts.helo)).await
    }

    /// The default action of a filter that failed earlier in this session, if it is
    /// not "accept": no step passes a filter that is down.
    fn failed_verdict(&self) -> Option<Verdict> {
        self.slots
            .iter()
            .find(|s| s.failed && s.config.default_action != DefaultAction::Accept)
            .map(|s| default_verdict(s.config.default_action))
    }

    /// One recipient, before the backend sees it.
    pub(crate) async fn rcpt(&mut self, args: &[&str]) -> Verdict {
        if let Some(v) = self.failed_verdict() {
            return v;
        }
        let (address, host) = address_and_host(args);
        let macros =
            [("{rcpt_addr}", address.to_string()), ("{rcpt_host}", host), ("{rcpt_mailer}", "smtp".to_string())];
        self.each(Step::Rcpt, &macros, &Command::Rcpt(args)).await
    }

    /// DATA, before the client gets its 354.
    pub(crate) async fn data(&mut self) -> Verdict {
        if let Some(v) = self.failed_verdict() {
            return v;
        }
        let macros = [("i", self.queue_id.clone())];
        self.each(Step::Data, &macros, &Command::Data).await
    }

    /// The whole message: headers, end of headers, body, end of message, filter by
    /// filter; the verdict and every change they asked for, within `bounds` (a filter
    /// whose changes pass them fails, and none of its changes are taken).
    pub(crate) async fn message(&mut self, held: &Held, bounds: ChangeBounds) -> (Verdict, Edits) {
        let mut edits = Edits::new(bounds);
        if let Some(v) = self.failed_verdict() {
            self.abort().await;
            return (v, edits);
        }
        let macros = [("i", self.queue_id.clone())];
        let mut chunk = Vec::new();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.done || slot.message_done {
                continue;
            }
            let Some(filter) = slot.filter.as_mut() else { continue };
            let started = std::time::Instant::now();
            let mut changes = edits.next();
            let outcome: Result<Option<Response>, MilterError> = async {
                for h in held.headers() {
                    let value = if filter.wants_leading_space() { format!(" {}", h.value).into() } else { h.value };
                    let r = filter.step(Step::Header, &[], &Command::Header { name: &h.name, value: &value }).await?;
                    if r != Response::Continue {
                        return Ok(Some(r));
                    }
                }
                let r = filter.step(Step::EndOfHeaders, &macros, &Command::EndOfHeaders).await?;
                if r != Response::Continue {
                    return Ok(Some(r));
                }
                if filter.wants(Step::Body) {
                    let mut body = held.body();
                    while body.next_chunk(&mut chunk)? {
                        match filter.step(Step::Body, &[], &Command::Body(&chunk)).await? {
                            Response::Continue => {}
                            Response::Skip => break,
                            r => return Ok(Some(r)),
                        }
                    }
                }
                Ok(Some(filter.end_of_message(&macros, &mut changes).await?))
            }
            .await;
            metrics::milter_time(&slot.config.name, started.elapsed());
            let verdict = match outcome {
                Ok(Some(r)) => {
                    edits.append(changes);
                    settle(slot, Step::EndOfMessage, r)
                }
                Ok(None) => Verdict::Continue,
                Err(e) => failed(slot, "message", &e),
            };
            if verdict != Verdict::Continue {
                // Filters after this one saw the transaction begin: they forget it.
                self.abort_from(index + 1).await;
                self.open = false;
                return (verdict, edits);
            }
        }
        self.open = false;
        (Verdict::Continue, edits)
    }

    /// The transaction ended without its end of message (RSET, a refusal, a new
    /// HELO): filters that took part forget it.
    pub(crate) async fn abort(&mut self) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        self.abort_from(0).await;
    }

    async fn abort_from(&mut self, first: usize) {
        for slot in &mut self.slots[first..] {
            if slot.done {
                continue;
            }
            if let Some(f) = slot.filter.as_mut()
                && let Err(e) = f.abort().await
            {
                failed(slot, "abort", &e);
            }
        }
    }

    /// The session ends.
    pub(crate) async fn quit(mut self) {
        self.abort().await;
        for slot in self.slots {
            if let Some(f) = slot.filter {
                f.quit().await;
            }
        }
    }

    /// Asks every filter still taking part about `step`, in order; the first that does
    /// not say "continue" decides.
    async fn each(&mut self, step: Step, macros: &[(&str, String)], command: &Command<'_>) -> Verdict {
        for slot in &mut self.slots {
            if slot.done || slot.message_done {
                continue;
            }
            let Some(filter) = slot.filter.as_mut() else { continue };
            let verdict = match filter.step(step, macros, command).await {
                Ok(r) => settle(slot, step, r),
                Err(e) => failed(slot, step.as_str(), &e),
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Discard if matches!(step, Step::Connect | Step::Helo) => self.discard_all = true,
                v => return v,
            }
        }
        Verdict::Continue
    }
}

/// The address of a MAIL or RCPT (the first argument, without angle brackets) and
/// its domain, for the `{mail_addr}`/`{rcpt_addr}` and `_host` macros.
fn address_and_host<'a>(args: &[&'a str]) -> (&'a str, String) {
    let address = args.first().map(|a| a.trim_start_matches('<').trim_end_matches('>')).unwrap_or("");
    let host = address.rsplit_once('@').map(|(_, h)| h).unwrap_or("").to_string();
    (address, host)
}

/// A filter's answer at `step`, made a verdict (and the slot's state updated).
fn settle(slot: &mut Slot, step: Step, response: Response) -> Verdict {
    let name = &slot.config.name;
    let (verdict, label) = match response {
        Response::Continue | Response::Skip => (Verdict::Continue, "continue"),
        Response::Accept => {
            if matches!(step, Step::Connect | Step::Helo) {
                slot.done = true;
            } else {
                slot.message_done = true;
            }
            (Verdict::Continue, "accept")
        }
        Response::Reject => (Verdict::Refuse(REJECTED.into()), "reject"),
        Response::Tempfail => (Verdict::Refuse(TEMPFAILED.into()), "tempfail"),
        Response::ReplyCode(text) if text.starts_with("421") => (Verdict::Close, "shutdown"),
        Response::ReplyCode(text) => {
            let label = if text.starts_with('4') { "tempfail" } else { "reject" };
            (Verdict::Refuse(text), label)
        }
        Response::Discard => (Verdict::Discard, "discard"),
        Response::Shutdown | Response::ConnectionFail => (Verdict::Close, "shutdown"),
        Response::Progress | Response::Negotiated { .. } | Response::Modify(_) => {
            return failed(slot, step.as_str(), &MilterError::Unexpected(step.as_str(), response));
        }
    };
    metrics::milter_verdict(name, step.as_str(), label);
    if !matches!(verdict, Verdict::Continue) {
        tracing::info!(milter = %name, step = step.as_str(), verdict = label, "content filter decided");
    }
    verdict
}

/// A filter failed: dropped for the session, and its default action applies.
fn failed(slot: &mut Slot, step: &'static str, error: &MilterError) -> Verdict {
    slot.filter = None;
    slot.done = true;
    slot.failed = true;
    let action = slot.config.default_action;
    tracing::warn!(
        milter = %slot.config.name, address = %slot.config.address, step, %error, default_action = ?action,
        "content filter failed; its default action applies"
    );
    metrics::milter_error(&slot.config.name, error.kind());
    default_verdict(action)
}

fn default_verdict(action: DefaultAction) -> Verdict {
    match action {
        DefaultAction::Tempfail => Verdict::Refuse(TEMPFAILED.into()),
        DefaultAction::Reject => Verdict::Refuse(REJECTED.into()),
        DefaultAction::Accept => Verdict::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_postfix_and_sendmail_forms() {
        assert_eq!(Address::parse("inet:127.0.0.1:7357"), Some(Address::Inet("127.0.0.1".into(), 7357)));
        assert_eq!(Address::parse("inet:7357@localhost"), Some(Address::Inet("localhost".into(), 7357)));
        assert_eq!(Address::parse("inet6:[::1]:7357"), Some(Address::Inet("::1".into(), 7357)));
        assert_eq!(Address::parse("unix:/run/milter.sock"), Some(Address::Unix("/run/milter.sock".into())));
        for bad in ["", "127.0.0.1:7357", "inet:host", "inet:host:0", "unix:relative", "inet::25"] {
            assert_eq!(Address::parse(bad), None, "{bad:?}");
        }
    }
}
