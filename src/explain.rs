//! `portcullis explain`: what the server would do with one client, in words, from the
//! same policy code the server runs: the connection verdict and its rule, the relay
//! verdict for each recipient with its rule and the recipient's address form, and
//! the exact bytes the first backend would be told about the client. With
//! `[[recipients]]`, each recipient is also looked up for real, as at RCPT (the file
//! read, the directory asked; no cache), and the table that decided is named.

use crate::addr::{ClientAddr, LocalAddr};
use crate::config::{Config, Listener};
use crate::identity::{ClientFacts, Identity, proxy, xclient, xforward};
use crate::policy::{Action, RelayVerdict, address};
use crate::recipients::{Key, Recipients, Verdict};
use crate::smtp::{Capabilities, ReplyParser};
use std::fmt::Write;
use std::net::SocketAddr;
use thiserror::Error;

/// The EHLO reply of a Postfix that trusts us for XCLIENT and XFORWARD: explain assumes
/// the backend offers every attribute (a real one may offer fewer).
const FULL_EHLO: &[u8] =
    b"250-backend\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n\
250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n";

/// One client to explain.
#[derive(Debug, Clone)]
pub struct Question {
    pub client: SocketAddr,
    pub listener: Option<String>,
    /// The address the client connected to; the listener's bind when absent.
    pub local: Option<SocketAddr>,
    pub user: Option<String>,
    pub helo: String,
    pub rcpts: Vec<String>,
}

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("no listener named {0:?} (listeners: {1})")]
    NoListener(String, String),
}

pub fn explain(config: &Config, q: &Question) -> Result<String, ExplainError> {
    let listener = match &q.listener {
        Some(name) => config.listener(name).ok_or_else(|| {
            let names: Vec<String> = config.listeners.iter().map(|l| format!("{:?}", l.name)).collect();
            ExplainError::NoListener(name.clone(), names.join(", "))
        })?,
        None => &config.listeners[0],
    };
    let client = ClientAddr::new(q.client);
    let local = LocalAddr::new(q.local.unwrap_or(listener.bind));
    let mut out = String::new();
    let w = &mut out;
    let _ =
        writeln!(w, "client {} -> listener {:?} ({}), local address {}", client, listener.name, listener.bind, local);
    if !connection(w, config, listener, client) {
        return Ok(out);
    }
    relay(w, config, listener, client, local, q);
    identity(w, config, client, local, q);
    Ok(out)
}

/// The connection rules; false when the client is refused there.
fn connection(w: &mut String, config: &Config, listener: &Listener, client: ClientAddr) -> bool {
    if listener.proxy_protocol {
        let trusted = config.trusted_proxies.iter().any(|n| n.contains(&client.ip()));
        let _ = writeln!(
            w,
            "  note: this listener takes PROXY headers; the rules below judge the client the header names. \
             A direct connection from {} is {}.",
            client.ip(),
            if trusted { "a trusted proxy (trust.proxies)" } else { "refused: not in trust.proxies" }
        );
    }
    let verdict = listener.rules.decide(client.ip());
    let rule = match listener.rules.rules.iter().position(|r| r.name == verdict.rule) {
        Some(i) => format!("rule {} ({:?})", i + 1, verdict.rule),
        None => {
            format!("the listener's default ({})", if verdict.action == Action::Accept { "accept" } else { "reject" })
        }
    };
    match verdict.action {
        Action::Accept => {
            let _ = writeln!(w, "connection: accepted by {rule}");
            true
        }
        Action::Reject => {
            let _ = writeln!(w, "connection: REFUSED by {rule}: the client gets \"554 5.7.1 Access denied\"");
            false
        }
    }
}

fn relay(w: &mut String, config: &Config, listener: &Listener, client: ClientAddr, local: LocalAddr, q: &Question) {
    let who = crate::addr::Client::direct(client, local);
    let _ = writeln!(
        w,
        "relay: {}",
        match &q.user {
            Some(u) if listener.auth != crate::config::AuthPolicy::Off => format!("as user {u:?} (authenticated)"),
            Some(u) => format!("as user {u:?}, but this listener has auth = \"off\": the client cannot authenticate"),
            None => "not authenticated".to_string(),
        }
    );
    let authenticated = q.user.is_some() && listener.auth != crate::config::AuthPolicy::Off;
    let mut recipients = RecipientLookup::new(config);
    for rcpt in &q.rcpts {
        let path = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        let classified = if path.is_ascii() { address::classify(path) } else { address::classify_utf8(path) };
        let destination = match classified {
            Ok(d) => d,
            Err(e) => {
                let _ =
                    writeln!(w, "  <{path}>: REFUSED, bad syntax ({e}): \"501 5.1.3 Bad recipient address syntax\"");
                continue;
            }
        };
        let form = match &destination {
            address::Destination::Domain(d) => format!("plain address, domain {d}"),
            address::Destination::Postmaster => "<postmaster>".to_string(),
            address::Destination::Routed(form) => {
                format!("{form}: routed form, its real destination depends on the backend's rewriting")
            }
        };
        let relay = config.relay.decide(&who, authenticated, &destination);
        let denied = matches!(relay, RelayVerdict::Denied(_));
        let verdict = match relay {
            RelayVerdict::Local => "accepted: a local domain, not relaying".to_string(),
            RelayVerdict::Relay(rule) => format!("accepted: relaying allowed by {rule}"),
            RelayVerdict::Denied(rule) => {
                format!("REFUSED by {rule}: \"550 5.7.1 <{path}>: Relay access denied\"; the backend never sees it")
            }
        };
        let _ = writeln!(w, "  <{path}> ({form}): {verdict}");
        if !denied {
            recipients.explain(w, config, path);
        }
    }
}

/// The recipient tables, live for `explain`: looked up as at RCPT, without a cache.
struct RecipientLookup {
    live: Option<Result<(std::sync::Arc<Recipients>, tokio::runtime::Runtime), String>>,
}

impl RecipientLookup {
    fn new(config: &Config) -> Self {
        if config.recipients.is_empty() {
            return Self { live: None };
        }
        let live = Recipients::new(&config.recipients, None).map_err(|e| e.to_string()).and_then(|r| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            Ok((r, rt))
        });
        Self { live: Some(live) }
    }

    fn explain(&mut self, w: &mut String, config: &Config, path: &str) {
        let Some(live) = &self.live else { return };
        let (recipients, rt) = match live {
            Ok(live) => live,
            Err(e) => {
                let _ = writeln!(w, "    recipient validation: the tables cannot be read: {e}");
                return;
            }
        };
        let smtputf8 = !path.is_ascii();
        let Some(key) = Key::parse(path, smtputf8) else {
            let _ = writeln!(w, "    recipient validation: not a plain mailbox; not validated");
            return;
        };
        let Some(table) = config.recipients.iter().find(|t| t.domains.contains(&key.domain)) else {
            let _ =
                writeln!(w, "    recipient validation: no [[recipients]] table names {}; not validated", key.domain);
            return;
        };
        if let crate::recipients::Source::Ldap(d) = &table.source {
            let _ = writeln!(
                w,
                "    recipient validation: {} searches base {:?} for {}",
                table.describe(),
                d.base,
                crate::recipients::key::filter(&d.filter, &key.address())
            );
        }
        let verdict = rt.block_on(recipients.check(path, smtputf8));
        let line = match &verdict {
            Verdict::Untouched => "not validated".to_string(),
            Verdict::Known(d) => format!("known: {} (key {}, answered by {})", d.table, d.key, d.via),
            Verdict::Unknown(d) => format!(
                "UNKNOWN to {} (key {}): \"{}\"; the backend never sees it",
                d.table,
                d.key,
                verdict.reply(path).unwrap_or_default()
            ),
            Verdict::Unavailable { decision, accept, error } => format!(
                "{} cannot answer ({error}): {}",
                decision.table,
                if *accept {
                    "on_error = \"accept\": passed to the backend unchecked".to_string()
                } else {
                    format!("\"{}\"", verdict.reply(path).unwrap_or_default())
                }
            ),
        };
        let _ = writeln!(w, "    recipient validation (looked up now): {line}");
    }
}

fn identity(w: &mut String, config: &Config, client: ClientAddr, local: LocalAddr, q: &Question) {
    let Some(backend) = config.backends.first() else { return };
    let who = crate::addr::Client::direct(client, local);
    let facts = ClientFacts { client: who, helo: &q.helo, esmtp: true, login: q.user.as_deref() };
    let _ = writeln!(w, "backend {} (identity {:?}) would be told:", backend.address, backend.identity.name());
    let mut caps_bytes = bytes::BytesMut::from(FULL_EHLO);
    let caps = ReplyParser::parse(&mut caps_bytes)
        .ok()
        .flatten()
        .map(|reply| Capabilities::from_ehlo(&reply))
        .unwrap_or_default();
    let lines = |w: &mut String, lines: Vec<String>| {
        for l in lines {
            let _ = writeln!(w, "  {}", l.trim_end());
        }
    };
    match backend.identity {
        Identity::ProxyV1 => {
            let _ = writeln!(w, "  (first bytes of the connection)");
            lines(w, vec![String::from_utf8_lossy(&proxy::v1_header(client, local)).to_string()]);
        }
        Identity::ProxyV2 => {
            let header = proxy::v2_header(client, local);
            let hex: Vec<String> = header.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(w, "  (first {} bytes of the connection, hex)", header.len());
            lines(w, vec![hex.join(" ")]);
        }
        Identity::Xclient => {
            let _ =
                writeln!(w, "  (after EHLO, assuming it offers every XCLIENT attribute; then EHLO {} again)", q.helo);
            lines(w, xclient::commands(&facts, &caps));
        }
        Identity::Xforward => {
            let _ = writeln!(w, "  (before every MAIL, assuming it offers every XFORWARD attribute)");
            lines(w, xforward::commands(&facts, &caps));
        }
        Identity::Transparent => {
            let _ =
                writeln!(w, "  nothing: the connection comes from {} itself (transparent source address)", client.ip());
        }
        Identity::None => {
            let _ = writeln!(w, "  nothing: the backend sees this proxy as the client");
        }
    }
    if q.user.is_some() && backend.identity != Identity::Xclient {
        let _ = writeln!(w, "  (the login is not passed on with this identity)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[listener]]
name = "mx"
bind = "192.0.2.25:25"
auth = "optional"
auth_plaintext = true
rules = [
  { name = "spammers", action = "reject", from = ["198.51.100.0/24"] },
]
[auth]
mode = "backend"
[relay]
local_domains = ["example.com"]
networks = ["10.0.0.0/8"]
never = ["10.66.0.0/16"]
[[backend]]
address = "127.0.0.1:10025"
identity = "xclient"
"#;

    fn ask(client: &str, user: Option<&str>, rcpts: &[&str]) -> String {
        let config = crate::config::parse(CONFIG).unwrap().config;
        let q = Question {
            client: client.parse().unwrap(),
            listener: None,
            local: None,
            user: user.map(String::from),
            helo: "client.example".into(),
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        };
        explain(&config, &q).unwrap()
    }

    #[test]
    fn refused_connection_names_the_rule_and_stops() {
        let text = ask("198.51.100.7:4000", None, &["u@example.com"]);
        assert!(text.contains("connection: REFUSED by rule 1 (\"spammers\")"), "{text}");
        assert!(!text.contains("relay"), "{text}");
    }

    #[test]
    fn each_recipient_with_its_rule_and_form() {
        let text = ask("203.0.113.9:4000", None, &["u@example.com", "<x@example.org>", "a%b@example.com", "bad@"]);
        assert!(text.contains("connection: accepted by the listener's default (accept)"), "{text}");
        assert!(
            text.contains("<u@example.com> (plain address, domain example.com): accepted: a local domain"),
            "{text}"
        );
        assert!(
            text.contains("<x@example.org> (plain address, domain example.org): REFUSED by no relay rule matched"),
            "{text}"
        );
        assert!(text.contains("<a%b@example.com> (percent hack: routed form"), "{text}");
        assert!(text.contains("<bad@>: REFUSED, bad syntax"), "{text}");
        assert!(text.contains("XCLIENT PROTO=ESMTP HELO=client.example PORT=4000 DESTADDR=192.0.2.25 DESTPORT=25 NAME=[UNAVAILABLE] ADDR=203.0.113.9"), "{text}");
    }

    #[test]
    fn recipients_looked_up_with_the_deciding_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients");
        std::fs::write(&file, "alice@example.com\n").unwrap();
        let text = format!("{CONFIG}[[recipients]]\ndomains = [\"example.com\"]\nfile = \"{}\"\n", file.display());
        let config = crate::config::parse(&text).unwrap().config;
        let q = Question {
            client: "203.0.113.9:4000".parse().unwrap(),
            listener: None,
            local: None,
            user: None,
            helo: "client.example".into(),
            rcpts: vec!["alice@example.com".into(), "bob@example.com".into(), "x@example.org".into()],
        };
        let text = explain(&config, &q).unwrap();
        assert!(text.contains("recipient validation (looked up now): known: recipients[0] (file "), "{text}");
        assert!(
            text.contains("UNKNOWN to recipients[0] (file ") && text.contains("550 5.1.1 <bob@example.com>"),
            "{text}"
        );
        // Refused by the relay policy first: never looked up.
        assert_eq!(text.matches("recipient validation").count(), 2, "{text}");
    }

    #[test]
    fn networks_never_and_authentication() {
        assert!(ask("10.1.2.3:1", None, &["x@example.org"]).contains("accepted: relaying allowed by relay.networks"));
        assert!(ask("10.66.0.1:1", None, &["x@example.org"]).contains("REFUSED by relay.never"));
        let text = ask("203.0.113.9:1", Some("alice"), &["x@example.org"]);
        assert!(text.contains("accepted: relaying allowed by relay.authenticated"), "{text}");
        assert!(text.contains("LOGIN=alice"), "{text}");
    }
}
