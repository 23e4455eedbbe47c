//! Configuration: the raw TOML ([`raw`]) validated into the runtime [`Config`]. Every
//! error is collected with the key that holds it, so `check` can list them all at once.

pub(crate) mod acme;
pub(crate) mod diff;
mod document;
mod lints;
mod net;
pub mod raw;
mod recipients;

pub(crate) use net::parse_network;

use crate::auth::Users;
use crate::identity::Identity;
use crate::milter::protocol::Step;
use crate::milter::{Address, DefaultAction, MilterConfig};
use crate::policy::{Action, ConnectionRules, DomainSet, RelayPolicy, Rule, domains::check_domain};
use crate::screen::bans::BanPolicy;
use crate::screen::dns::DnsLists;
use crate::screen::dnsbl::Zone;
use crate::screen::rate::Rate;
use crate::screen::store::{DEFAULT_STORE_MAX_REPLY, MIN_STORE_MAX_REPLY, StoreConfig};
use crate::smtp::BareLf;
use crate::tls::{self as tlsconf, Verify};
use raw::{RawBackend, RawConfig, RawListener, RawSize};
use rustls::pki_types::ServerName;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50_000_000;
pub(crate) const DEFAULT_MAX_RECIPIENTS: u32 = 100;
/// Of a message held for content filters, the bytes kept in memory by default.
pub(crate) const DEFAULT_HELD_IN_MEMORY: u64 = 1024 * 1024;
/// Header fields of a message held for content filters: real mail has tens, a long
/// relay chain a few hundred (Postfix bounces past 50 Received), and each field is a
/// round trip to every filter.
pub(crate) const DEFAULT_MAX_HEADERS: usize = 1000;
/// Bytes of those header fields, Exchange Online's bound (256 KB); sendmail's
/// MaxHeadersLength is 32 KiB, Postfix's header_size_limit 100 KiB for one field.
pub(crate) const DEFAULT_MAX_HEADER_SIZE: u64 = 256 * 1024;
/// The header bytes bound may be set within these (field offsets are 32-bit; the
/// header section is kept in memory while the filters are asked).
const HEADER_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
/// Longest command line, CRLF included (Postfix's line_length_limit; RFC 5321 asks for
/// at least 512).
pub(crate) const DEFAULT_MAX_LINE_LENGTH: usize = 2048;
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
pub(crate) const DEFAULT_MAX_ERRORS: u32 = 10;
pub(crate) const DEFAULT_MAX_JUNK_COMMANDS: u32 = 100;
pub(crate) const DEFAULT_RECIPIENT_OVERSHOOT_LIMIT: u32 = 1000;
/// RFC 5321 4.5.3.2: 5 minutes between commands, 3 minutes per DATA block.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Postfix's smtpd_min_data_rate default, in bytes per second.
pub(crate) const DEFAULT_MIN_DATA_RATE: u64 = 500;
pub(crate) const DEFAULT_MIN_DATA_RATE_GRACE: Duration = Duration::from_secs(30);
/// RFC 5321 4.5.3.2 for the client side of the backend: 5 minutes a reply, 10 minutes
/// for the reply to end of data.
pub(crate) const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections Portcullis opens to one backend at once: half of Postfix's default
/// process limit (100), leaving room for everything else the backend serves.
pub(crate) const DEFAULT_BACKEND_MAX_CONNECTIONS: usize = 50;
/// How long a session waits for a backend connection when all are in use.
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend connection stays open while its session has no recipient.
pub(crate) const DEFAULT_BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Backend health checks: HAProxy's rise and fall, a slower interval (each check is a
/// connection the backend logs).
pub(crate) const DEFAULT_CHECK: HealthCheck =
    HealthCheck { interval: Duration::from_secs(10), timeout: Duration::from_secs(5), rise: 2, fall: 3 };

/// The config in force: replaced whole by a reload, read at every decision.
pub(crate) type Live = arc_swap::ArcSwap<Config>;

#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) hostname: String,
    /// Worker threads, each with its own single-threaded runtime.
    pub(crate) workers: usize,
    /// After SIGTERM, how long sessions may go on before they get 421.
    pub(crate) drain_timeout: Duration,
    pub listeners: Vec<Arc<Listener>>,
    pub(crate) relay: RelayPolicy,
    pub backends: Vec<Backend>,
    pub(crate) limits: Limits,
    /// Certificate and key for client-side TLS, when a listener offers it.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) auth: Option<Arc<Auth>>,
    /// Load balancers whose PROXY headers are believed.
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    pub log_format: LogFormat,
    /// Where /metrics, /healthz and /readyz are served; none when absent.
    pub(crate) admin: Option<SocketAddr>,
    /// The token calls that change state must present (`[admin] token_file`).
    pub(crate) admin_token: Option<String>,
    pub(crate) bans: BanPolicy,
    pub(crate) pregreet: Pregreet,
    /// DNS block- and allowlists; none when `[screen] dnsbl` is empty.
    pub(crate) dns_lists: Option<DnsLists>,
    /// Shared limits, bans and screen cache; each instance its own when absent.
    pub(crate) store: Option<StoreConfig>,
    /// Certificates from an ACME CA (`[acme]`); `tls` then only serves until the
    /// first one is there.
    pub(crate) acme: Option<acme::AcmeConfig>,
    /// Recipient validation tables (`[[recipients]]`), in order: a domain is answered
    /// by the first one that names it.
    pub(crate) recipients: Vec<crate::recipients::Table>,
}

impl Config {
    pub(crate) fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// How log lines are written (on standard error). Client-controlled values are
/// escaped in both: one event is always one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerTls {
    None,
    StartTls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthPolicy {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub(crate) name: String,
    pub(crate) bind: SocketAddr,
    pub(crate) rules: ConnectionRules,
    pub(crate) tls: ListenerTls,
    /// MAIL is refused until the session is encrypted.
    pub(crate) require_tls: bool,
    pub(crate) auth: AuthPolicy,
    /// Offer AUTH on unencrypted sessions too.
    pub(crate) auth_plaintext: bool,
    /// Every connection starts with a PROXY header from a trusted proxy.
    pub(crate) proxy_protocol: bool,
    /// Wait this long before greeting; a client that talks meanwhile is refused.
    pub(crate) greeting_delay: Duration,
    /// Early-talker detection (postscreen's pregreet test) on this listener.
    pub(crate) pregreet: bool,
    /// What a DNS list score at the threshold does on this listener.
    pub(crate) screen_action: ScreenAction,
    /// Content filters asked for every message, in order.
    pub(crate) milters: Vec<Arc<MilterConfig>>,
}

/// What a client listed by the DNS lists (at or above the threshold) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScreenAction {
    /// The lists are not asked.
    Off,
    /// `554 5.7.1` instead of the greeting.
    Reject,
    /// The session goes on without a backend; every RCPT gets `550 5.7.1`, so the
    /// log shows sender and recipients (postscreen's "enforce"). Authenticated
    /// clients are not refused.
    Enforce,
    /// Only a log line and a metric: to try a policy safely.
    Log,
}

impl ScreenAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScreenAction::Off => "off",
            ScreenAction::Reject => "reject",
            ScreenAction::Enforce => "enforce",
            ScreenAction::Log => "log",
        }
    }
}

/// Early-talker detection: a `220-` line, `wait`, then the final greeting line; a
/// client that talks in between is refused, one that waits is greeted at once for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pregreet {
    pub(crate) wait: Duration,
    pub(crate) ttl: Duration,
}

/// Where credentials are checked.
#[derive(Debug)]
pub(crate) enum AuthSource {
    File(Arc<Users>),
    /// The AUTH exchange is passed to the backend, which decides.
    Backend,
}

#[derive(Debug)]
pub(crate) struct Auth {
    pub(crate) source: AuthSource,
    /// Failed attempts allowed in one session before it is closed with 421.
    pub(crate) max_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendTls {
    None,
    /// STARTTLS when the backend offers it.
    StartTls,
    /// STARTTLS or nothing: a backend that does not offer it is not used.
    Required,
}

/// When and how a backend is checked. `interval` zero: never (always up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthCheck {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// `host:port` as configured; resolved at connect time.
    pub(crate) address: String,
    pub(crate) identity: Identity,
    pub(crate) connect_timeout: Duration,
    /// Longest wait for a backend reply; for the reply to end of data, `data_timeout`.
    pub(crate) reply_timeout: Duration,
    pub(crate) data_timeout: Duration,
    pub(crate) tls: BackendTls,
    /// Client TLS config and the name to verify, when `tls` is not `None`.
    pub(crate) tls_client: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Connections open to this backend at once, at most; shared by every session.
    pub(crate) max_connections: usize,
    /// How long a session waits for one of `max_connections` before `451 4.3.2`.
    pub(crate) queue_timeout: Duration,
    /// How long a connection stays open while its session has no accepted recipient.
    pub(crate) idle_timeout: Duration,
    /// Sessions may fail over to this backend even though one listed before it tells
    /// the backend more about the client.
    pub(crate) allow_identity_downgrade: bool,
    pub(crate) check: HealthCheck,
    /// Greeted connections kept between sessions; none when off.
    pub(crate) reuse: Option<Reuse>,
}

/// Backend connection reuse (`reuse = true` on a `[[backend]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reuse {
    /// How long a kept connection waits for its next session before it is closed.
    pub(crate) idle: Duration,
    /// Messages one connection carries before it is closed.
    pub(crate) max_messages: u32,
}

/// The slowest a message body may arrive, against byte trickling. Checked once the
/// grace period has passed, at every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinDataRate {
    /// Bytes per second; 0 switches the check off.
    pub(crate) bytes_per_second: u64,
    pub(crate) grace: Duration,
}

impl MinDataRate {
    pub(crate) fn too_slow(&self, received: u64, elapsed: Duration) -> bool {
        self.bytes_per_second > 0
            && elapsed > self.grace
            && (received as f64) < self.bytes_per_second as f64 * elapsed.as_secs_f64()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_line_length: usize,
    pub(crate) max_message_size: u64,
    pub(crate) max_recipients: u32,
    /// Recipients past `max_recipients` in one transaction that get 452 without
    /// counting as errors (Postfix's smtpd_recipient_overshoot_limit): a list
    /// server sends to the first ones and retries the rest (RFC 5321 4.5.3.1.10).
    pub(crate) recipient_overshoot_limit: u32,
    pub(crate) bare_lf: BareLf,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    /// Bad commands allowed in one session before it is closed with 421.
    pub(crate) max_errors: u32,
    /// NOOP, VRFY, RSET and HELP allowed between messages; each one more counts as an
    /// error (Postfix's smtpd_junk_command_limit).
    pub(crate) max_junk_commands: u32,
    pub(crate) command_timeout: Duration,
    pub(crate) data_timeout: Duration,
    pub(crate) min_data_rate: MinDataRate,
    pub(crate) tls_handshake_timeout: Duration,
    /// New connections per client network.
    pub(crate) connection_rate: Option<Rate>,
    /// Messages (MAIL) per client network, or per user when authenticated.
    pub(crate) message_rate: Option<Rate>,
    /// Recipients (RCPT) per client network, or per user when authenticated.
    pub(crate) recipient_rate: Option<Rate>,
    /// IPv6 clients are counted by this prefix in rates and bans.
    pub(crate) ipv6_prefix: u8,
    /// Of a message held for content filters, bytes kept in memory.
    pub(crate) held_in_memory: usize,
    /// Header fields of a message held for content filters (past it: 552 5.3.4), and
    /// of the filters' changes to it (past it: the filter fails).
    pub(crate) max_headers: usize,
    /// Bytes of those header fields, likewise.
    pub(crate) max_header_size: usize,
}

/// A validated config and what `check` should warn about.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Why a config file could not be used: every problem found, each naming its key,
/// and the warnings found on the way.
#[derive(Debug, Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        Self { problems: vec![problem], warnings: Vec::new() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.problems.iter().map(|p| format!("error: {p}"));
        let warnings = self.warnings.iter().map(|w| format!("warning: {w}"));
        let lines: Vec<String> = errors.chain(warnings).collect();
        f.write_str(&lines.join("\n"))
    }
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::one(format!("{}: {e}", path.display())))?;
    parse(&text)
}

/// Reads and validates a config; every mistake found is in the error, those of the
/// TOML document (unknown keys, wrong types, each with its line) first.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    let (raw, mistakes) = document::read(text);
    let Some(raw) = raw else {
        return Err(ConfigError { problems: mistakes, warnings: Vec::new() });
    };
    match Validator::default().run(raw) {
        Ok(loaded) if mistakes.is_empty() => Ok(loaded),
        Ok(loaded) => Err(ConfigError { problems: mistakes, warnings: loaded.warnings }),
        Err(mut e) => {
            e.problems.splice(0..0, mistakes);
            Err(e)
        }
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Validator {
    fn error(&mut self, key: impl fmt::Display, msg: impl fmt::Display) {
        self.problems.push(format!("{key}: {msg}"));
    }

    fn run(mut self, raw: RawConfig) -> Result<Loaded, ConfigError> {
        let hostname = match raw.server.hostname.clone() {
            Some(h) => {
                if let Err(e) =
                    check_domain(&h).and_then(|_| if h.starts_with('.') { Err("leading dot") } else { Ok(()) })
                {
                    self.error("server.hostname", format!("{h:?}: {e}"));
                }
                h
            }
            None => "localhost".to_string(),
        };
        let drain_timeout =
            self.duration("server.drain_timeout", raw.server.drain_timeout.as_deref(), DEFAULT_DRAIN_TIMEOUT, true);
        let workers = match raw.server.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if (1..=1024).contains(&n) => n,
            Some(n) => {
                self.error("server.workers", format!("{n}: expected 1 to 1024"));
                1
            }
        };

        if raw.listener.is_empty() {
            self.error("listener", "at least one [[listener]] is needed");
        }
        // With the index each had in the file, so that every error names the right one.
        let indexed: Vec<(usize, Listener)> =
            raw.listener.iter().enumerate().filter_map(|(i, l)| self.listener(i, l).map(|l| (i, l))).collect();
        let listeners: Vec<Listener> = indexed.iter().map(|(_, l)| l.clone()).collect();
        for (i, l) in listeners.iter().enumerate() {
            if let Some(prev) = listeners[..i].iter().find(|p| p.name == l.name) {
                self.error(format!("listener {:?}", l.name), format!("name used twice (also bound to {})", prev.bind));
            }
            if l.bind.port() != 0 && listeners[..i].iter().any(|p| p.bind == l.bind) {
                self.error(format!("listener {:?}.bind", l.name), format!("{} is bound by another listener", l.bind));
            }
        }

        let relay = self.relay(&raw.relay);
        let recipients = self.recipients(&raw.recipients, &relay);

        if raw.backend.is_empty() {
            self.error("backend", "at least one [[backend]] is needed");
        }
        let backends: Vec<Backend> = raw.backend.iter().enumerate().filter_map(|(i, b)| self.backend(i, b)).collect();
        self.identity_downgrades(&backends);

        let limits = self.limits(&raw.limits);

        let tls = match &raw.tls {
            Some(t) => tlsconf::server_config(Path::new(&t.certificate), Path::new(&t.private_key))
                .map_err(|e| self.error("tls", e))
                .ok(),
            None => None,
        };
        let auth = raw.auth.as_ref().and_then(|a| self.auth(a)).map(Arc::new);
        let trusted_proxies = self.networks("trust.proxies", &raw.trust.proxies);
        let log_format = self
            .choice(
                "log.format",
                raw.log.format.as_deref().unwrap_or("text"),
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )
            .unwrap_or(LogFormat::Text);
        let admin_token = raw.admin.as_ref().and_then(|a| a.token_file.as_deref()).and_then(|path| {
            match std::fs::read_to_string(path) {
                Ok(token) if token.trim().len() >= 16 => Some(token.trim().to_string()),
                Ok(_) => {
                    self.error("admin.token_file", format!("{path}: the token must be at least 16 characters"));
                    None
                }
                Err(e) => {
                    self.error("admin.token_file", format!("{path}: {e}"));
                    None
                }
            }
        });
        let bans = BanPolicy {
            after: raw.screen.ban_after.unwrap_or(0),
            window: self.duration(
                "screen.ban_window",
                raw.screen.ban_window.as_deref(),
                Duration::from_secs(600),
                false,
            ),
            duration: self.duration(
                "screen.ban_time",
                raw.screen.ban_time.as_deref(),
                Duration::from_secs(3600),
                false,
            ),
        };
        let pregreet = Pregreet {
            wait: self.duration(
                "screen.pregreet_wait",
                raw.screen.pregreet_wait.as_deref(),
                Duration::from_secs(6),
                false,
            ),
            ttl: self.duration(
                "screen.pregreet_ttl",
                raw.screen.pregreet_ttl.as_deref(),
                Duration::from_secs(86_400),
                false,
            ),
        };
        for m in &milters_unused(&raw) {
            self.warnings.push(format!("milter {m:?} is used by no listener (a listener's milters = [...])"));
        }
        let dns_lists = self.dns_lists(&raw.screen);
        let actions = [
            ("reject", ScreenAction::Reject),
            ("enforce", ScreenAction::Enforce),
            ("log", ScreenAction::Log),
            ("off", ScreenAction::Off),
        ];
        let default_action = self
            .choice("screen.action", raw.screen.action.as_deref().unwrap_or("reject"), &actions)
            .unwrap_or(ScreenAction::Reject);
        let store = self.store(&raw.store);
        let milters = self.milters(&raw.milter);
        let mut listeners = listeners;
        for (l, (i, _)) in listeners.iter_mut().zip(&indexed) {
            let r = &raw.listener[*i];
            // On by default where strangers connect: a public or wildcard address.
            l.pregreet = raw.screen.pregreet.unwrap_or_else(|| lints::faces_the_internet(l.bind.ip()));
            let action = match r.screen_action.as_deref() {
                Some(a) => self.choice(&format!("listener[{i}].screen_action"), a, &actions),
                None => Some(default_action),
            };
            for (j, name) in r.milters.iter().enumerate() {
                match milters.iter().find(|m| &m.name == name) {
                    Some(m) => l.milters.push(m.clone()),
                    None => self
                        .error(format!("listener[{i}].milters[{j}]"), format!("{name:?}: no [[milter]] has this name")),
                }
            }
            l.screen_action = if dns_lists.is_some() { action.unwrap_or(ScreenAction::Off) } else { ScreenAction::Off };
            if l.screen_action == ScreenAction::Reject && l.auth != AuthPolicy::Off {
                self.warnings.push(format!(
                    "listener[{i}] ({:?}) offers AUTH and refuses DNS-listed clients at connect: users on dynamic \
                     addresses (listed by policy lists such as Spamhaus PBL) cannot log in; \
                     screen_action = \"enforce\" spares authenticated clients",
                    l.name
                ));
            }
        }
        let admin = raw.admin.as_ref().and_then(|a| {
            a.bind
                .parse::<SocketAddr>()
                .map_err(|_| {
                    self.error("admin.bind", format!("{:?} is not an address:port (IPv6: [addr]:port)", a.bind))
                })
                .ok()
        });
        self.lint(&raw, &indexed, &relay, &backends, &trusted_proxies);
        let acme = raw.acme.as_ref().and_then(|a| self.acme(a, &indexed));
        if let Some(a) = &acme
            && !a.domains.contains(&hostname.to_ascii_lowercase())
        {
            self.warnings.push(format!(
                "acme.domains does not name server.hostname ({hostname:?}): clients that check the certificate \
                 against the name in the greeting or the MX record will not accept it"
            ));
        }
        for (i, l) in &indexed {
            let key = format!("listener[{i}]");
            if l.tls != ListenerTls::None && raw.tls.is_none() && raw.acme.is_none() {
                self.error(
                    format!("{key}.tls"),
                    "needs a [tls] section with certificate and private_key, or an [acme] section",
                );
            }
            if l.require_tls && l.tls == ListenerTls::None {
                self.error(format!("{key}.require_tls"), "needs tls = \"starttls\" or \"implicit\"");
            }
            if l.proxy_protocol && raw.trust.proxies.is_empty() {
                self.error(format!("{key}.proxy_protocol"), "needs [trust] proxies: whose headers to believe");
            }
            if l.auth != AuthPolicy::Off {
                if raw.auth.is_none() {
                    self.error(format!("{key}.auth"), "needs an [auth] section");
                }
                if l.tls == ListenerTls::None && !l.auth_plaintext {
                    self.error(
                        format!("{key}.auth"),
                        "AUTH without TLS sends passwords in clear text; set tls, or auth_plaintext = true",
                    );
                }
            }
        }

        if self.problems.is_empty() {
            let config = Config {
                hostname,
                workers,
                drain_timeout,
                listeners: listeners.into_iter().map(Arc::new).collect(),
                relay,
                backends,
                limits,
                tls,
                auth,
                trusted_proxies,
                log_format,
                admin,
                admin_token,
                bans,
                pregreet,
                dns_lists,
                store,
                acme,
                recipients,
            };
            Ok(Loaded { config, warnings: self.warnings })
        } else {
            Err(ConfigError { problems: self.problems, warnings: self.warnings })
        }
    }

    fn listener(&mut self, i: usize, raw: &RawListener) -> Option<Listener> {
        let key = format!("listener[{i}]");
        if raw.name.is_empty() || raw.name.contains(char::is_whitespace) {
            self.error(format!("{key}.name"), "must be a non-empty word");
        }
        let bind = raw.bind.parse::<SocketAddr>().map_err(|_| {
            self.error(format!("{key}.bind"), format!("{:?} is not an address:port (IPv6: [addr]:port)", raw.bind))
        });
        let default = self.action(format!("{key}.default"), &raw.default);
        let mut rules = Vec::new();
        for (j, r) in raw.rules.iter().enumerate() {
            let rkey = format!("{key}.rules[{j}]");
            let action = self.action(format!("{rkey}.action"), &r.action);
            if r.from.is_empty() {
                self.error(format!("{rkey}.from"), "empty: the rule could never match");
            }
            let from = self.networks(&format!("{rkey}.from"), &r.from);
            if let Some(action) = action {
                rules.push(Rule { name: r.name.clone(), action, from });
            }
        }
        let tls = self.choice(
            &format!("{key}.tls"),
            &raw.tls,
            &[("none", ListenerTls::None), ("starttls", ListenerTls::StartTls), ("implicit", ListenerTls::Implicit)],
        );
        let auth = self.choice(
            &format!("{key}.auth"),
            &raw.auth,
            &[("off", AuthPolicy::Off), ("optional", AuthPolicy::Optional), ("required", AuthPolicy::Required)],
        );
        let rules = ConnectionRules { rules, default: default? };
        for s in rules.shadowed() {
            self.warnings.push(format!(
                "{key}.rules[{}] ({:?}) can never match: every network it lists is matched earlier by {}",
                s.index,
                s.name,
                s.covered_by.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
        Some(Listener {
            name: raw.name.clone(),
            bind: bind.ok()?,
            rules,
            tls: tls?,
            require_tls: raw.require_tls,
            auth: auth?,
            auth_plaintext: raw.auth_plaintext,
            proxy_protocol: raw.proxy_protocol,
            pregreet: false,
            screen_action: ScreenAction::Off,
            milters: Vec::new(),
            greeting_delay: self.duration(
                &format!("{key}.greeting_delay"),
                raw.greeting_delay.as_deref(),
                Duration::ZERO,
                true,
            ),
        })
    }

    fn dns_lists(&mut self, raw: &raw::RawScreen) -> Option<DnsLists> {
        let mut zones = Vec::new();
        for (i, entry) in raw.dnsbl.iter().enumerate() {
            match Zone::parse(entry) {
                Ok(z) => zones.push(z),
                Err(e) => self.error(format!("screen.dnsbl[{i}]"), e),
            }
        }
        let mut nameservers = Vec::new();
        for (i, ns) in raw.nameservers.iter().enumerate() {
            let parsed = ns.parse::<SocketAddr>().or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(addr) => nameservers.push(addr),
                Err(_) => {
                    self.error(format!("screen.nameservers[{i}]"), format!("{ns:?} is not an address or address:port"))
                }
            }
        }
        let timeout =
            self.duration("screen.dnsbl_timeout", raw.dnsbl_timeout.as_deref(), Duration::from_secs(3), false);
        let threshold = raw.threshold.unwrap_or(1);
        if raw.dnsbl.is_empty() {
            return None;
        }
        if raw.nameservers.is_empty() {
            self.error(
                "screen.nameservers",
                "needed with dnsbl: the resolver to ask (a local recursive one; public resolvers are refused by most lists)",
            );
        }
        if threshold < 1 {
            self.error("screen.threshold", "must be 1 or more, or every client would be refused");
        }
        if zones.iter().all(|z| z.weight < 0) && !zones.is_empty() {
            self.warnings
                .push("screen.dnsbl: only allowlists (negative weights): no client can reach the threshold".into());
        }
        Some(DnsLists { zones: zones.into(), threshold, nameservers, timeout })
    }

    fn store(&mut self, raw: &raw::RawStore) -> Option<StoreConfig> {
        let timeout = self.duration("store.timeout", raw.timeout.as_deref(), Duration::from_millis(200), false);
        let url = raw.redis.clone()?;
        if let Err(e) = redis::Client::open(url.as_str()) {
            self.error("store.redis", format!("{url:?}: {e}"));
        }
        let max_reply_size = self.size("store.max_reply_size", raw.max_reply_size.as_ref(), DEFAULT_STORE_MAX_REPLY);
        if max_reply_size < MIN_STORE_MAX_REPLY {
            self.error("store.max_reply_size", "must be at least 256KiB: a batch of the ban list is one reply");
        }
        let prefix = raw.prefix.clone().unwrap_or_else(|| "portcullis:".into());
        Some(StoreConfig { url, timeout, prefix, max_reply_size })
    }

    /// A rate such as "60/min"; absent: none.
    fn rate(&mut self, key: &str, text: Option<&str>) -> Option<Rate> {
        Rate::parse(text?).map_err(|e| self.error(key, e)).ok()
    }

    /// A duration such as "30s" or "5m"; `zero_ok` allows "0s".
    fn duration(&mut self, key: &str, text: Option<&str>, default: Duration, zero_ok: bool) -> Duration {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if zero_ok || !d.is_zero() => d,
            _ => {
                self.error(key, format!("{text:?}: expected a duration such as \"30s\" or \"5m\""));
                default
            }
        }
    }

    fn auth(&mut self, raw: &raw::RawAuth) -> Option<Auth> {
        let max_failures = raw.max_failures.unwrap_or(3);
        if max_failures == 0 {
            self.error("auth.max_failures", "must be at least 1");
        }
        // A users file alone means mode "file".
        let mode = match (raw.mode.as_deref(), &raw.users_file) {
            (Some(mode), _) => mode,
            (None, Some(_)) => "file",
            (None, None) => {
                self.error("auth.mode", "missing: \"file\" (with users_file) or \"backend\"");
                return None;
            }
        };
        let source = match (mode, &raw.users_file) {
            ("file", Some(path)) => match Users::load(Path::new(path)) {
                Ok(users) => AuthSource::File(Arc::new(users)),
                Err(e) => {
                    self.error("auth.users_file", e);
                    return None;
                }
            },
            ("file", None) => {
                self.error("auth.users_file", "mode = \"file\" needs a users_file");
                return None;
            }
            ("backend", None) => AuthSource::Backend,
            ("backend", Some(_)) => {
                self.error("auth.users_file", "not used with mode = \"backend\"; remove it");
                return None;
            }
            (other, _) => {
                self.error("auth.mode", format!("{other:?}: expected \"file\" or \"backend\""));
                return None;
            }
        };
        Some(Auth { source, max_failures })
    }

    fn action(&mut self, key: String, value: &str) -> Option<Action> {
        self.choice(&key, value, &[("accept", Action::Accept), ("reject", Action::Reject)])
    }

    /// One of a fixed set of words; otherwise an error listing them.
    fn choice<T: Copy>(&mut self, key: &str, value: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return Some(*v);
        }
        let names: Vec<String> = options.iter().map(|(name, _)| format!("{name:?}")).collect();
        self.error(key, format!("{value:?}: expected one of {}", names.join(", ")));
        None
    }

    fn networks(&mut self, key: &str, values: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match parse_network(v) {
                Ok(net) => out.push(net),
                Err(e) => self.error(format!("{key}[{i}]"), format!("{v:?}: {e}")),
            }
        }
        out
    }

    fn relay(&mut self, raw: &raw::RawRelay) -> RelayPolicy {
        for (i, d) in raw.local_domains.iter().enumerate() {
            if let Err(e) = check_domain(d) {
                self.error(format!("relay.local_domains[{i}]"), format!("{d:?}: {e}"));
            }
        }
        let mut local_addresses = Vec::new();
        for (i, a) in raw.local_addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) => local_addresses.push(crate::addr::normalize(SocketAddr::new(ip, 0)).ip()),
                Err(_) => self.error(format!("relay.local_addresses[{i}]"), format!("{a:?} is not an IP address")),
            }
        }
        RelayPolicy {
            enabled: raw.enabled,
            local_domains: DomainSet::new(raw.local_domains.iter().map(String::as_str)),
            authenticated: raw.authenticated,
            networks: self.networks("relay.networks", &raw.networks),
            local_addresses,
            never: self.networks("relay.never", &raw.never),
        }
    }

    fn backend(&mut self, i: usize, raw: &RawBackend) -> Option<Backend> {
        let key = format!("backend[{i}]");
        let address_ok = match raw.address.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
            None => false,
        };
        if !address_ok {
            self.error(format!("{key}.address"), format!("{:?} is not host:port", raw.address));
        }
        let identity = self.choice(
            &format!("{key}.identity"),
            &raw.identity,
            &[
                ("xclient", Identity::Xclient),
                ("xforward", Identity::Xforward),
                ("proxy-v1", Identity::ProxyV1),
                ("proxy-v2", Identity::ProxyV2),
                ("transparent", Identity::Transparent),
                ("none", Identity::None),
            ],
        );
        let connect_timeout = self.duration(
            &format!("{key}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let reply_timeout =
            self.duration(&format!("{key}.reply_timeout"), raw.reply_timeout.as_deref(), DEFAULT_REPLY_TIMEOUT, false);
        let data_timeout =
            self.duration(&format!("{key}.data_timeout"), raw.data_timeout.as_deref(), DEFAULT_DATA_END_TIMEOUT, false);
        let tls = self.choice(
            &format!("{key}.tls"),
            &raw.tls,
            &[
                ("none", BackendTls::None),
                ("starttls", BackendTls::StartTls),
                ("starttls-required", BackendTls::Required),
            ],
        );
        let host = raw.address.rsplit_once(':').map_or("", |(h, _)| h);
        let tls_client = match tls {
            Some(BackendTls::None) | None => None,
            Some(_) => self.backend_tls(&key, raw, host),
        };
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_BACKEND_MAX_CONNECTIONS);
        if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&max_connections) {
            self.error(format!("{key}.max_connections"), "must be at least 1");
        }
        let queue_timeout =
            self.duration(&format!("{key}.queue_timeout"), raw.queue_timeout.as_deref(), DEFAULT_QUEUE_TIMEOUT, true);
        let idle_timeout = self.duration(
            &format!("{key}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            DEFAULT_BACKEND_IDLE_TIMEOUT,
            false,
        );
        let check = HealthCheck {
            interval: self.duration(
                &format!("{key}.check_interval"),
                raw.check_interval.as_deref(),
                DEFAULT_CHECK.interval,
                true,
            ),
            timeout: self.duration(
                &format!("{key}.check_timeout"),
                raw.check_timeout.as_deref(),
                DEFAULT_CHECK.timeout,
                false,
            ),
            rise: raw.rise.unwrap_or(DEFAULT_CHECK.rise),
            fall: raw.fall.unwrap_or(DEFAULT_CHECK.fall),
        };
        for (name, n) in [("rise", check.rise), ("fall", check.fall)] {
            if n == 0 {
                self.error(format!("{key}.{name}"), "must be at least 1");
            }
        }
        let identity = identity?;
        let reuse_wanted = raw.reuse.unwrap_or(identity == Identity::Xforward);
        if reuse_wanted && !matches!(identity, Identity::Xforward | Identity::None) {
            self.error(
                format!("{key}.reuse"),
                format!(
                    "identity {:?} binds a backend connection to one client: its connections cannot be reused",
                    identity.name()
                ),
            );
        }
        let reuse = reuse_wanted.then(|| Reuse {
            idle: self.duration(&format!("{key}.reuse_idle"), raw.reuse_idle.as_deref(), Duration::from_secs(5), false),
            max_messages: raw.reuse_max_messages.unwrap_or(100).max(1),
        });
        Some(Backend {
            address: raw.address.clone(),
            identity,
            connect_timeout,
            reply_timeout,
            data_timeout,
            tls: tls?,
            tls_client,
            max_connections,
            queue_timeout,
            idle_timeout,
            allow_identity_downgrade: raw.allow_identity_downgrade,
            check,
            reuse,
        })
        .filter(|_| address_ok)
    }

    /// A backend after one that tells more about the client takes over only with
    /// `allow_identity_downgrade`: say so either way, since without it that backend is
    /// never used, and with it failed-over sessions lose what the first one carried.
    fn identity_downgrades(&mut self, backends: &[Backend]) {
        for (i, b) in backends.iter().enumerate() {
            let Some(stronger) = backends[..i].iter().find(|p| p.identity.tells() > b.identity.tells()) else {
                continue;
            };
            let (was, now) = (stronger.identity.name(), b.identity.name());
            if b.allow_identity_downgrade {
                self.warnings.push(format!(
                    "backend[{i}] ({}): sessions failing over to it from {} tell it less about the client \
                     (identity {now:?} instead of {was:?})",
                    b.address, stronger.address
                ));
            } else {
                self.warnings.push(format!(
                    "backend[{i}] ({}) is never used: its identity {now:?} tells less about the client than \
                     {was:?} of {} before it; set allow_identity_downgrade = true to fail over to it anyway",
                    b.address, stronger.address
                ));
            }
        }
    }

    fn backend_tls(
        &mut self,
        key: &str,
        raw: &RawBackend,
        host: &str,
    ) -> Option<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
        let verify = match (&raw.ca_file, raw.tls_verify) {
            (_, false) => {
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    self.error(format!("{key}.tls_verify"), "may be false only for a loopback backend");
                    return None;
                }
                Verify::Nothing
            }
            (Some(ca), true) => Verify::CaFile(ca.into()),
            (None, true) => Verify::SystemRoots,
        };
        let config = tlsconf::client_config(&verify).map_err(|e| self.error(format!("{key}.ca_file"), e)).ok()?;
        let name = raw.tls_server_name.as_deref().unwrap_or(host);
        let name = tlsconf::server_name(name).map_err(|e| self.error(format!("{key}.tls_server_name"), e)).ok()?;
        Some((config, name))
    }

    fn limits(&mut self, raw: &raw::RawLimits) -> Limits {
        let max_message_size =
            self.size("limits.max_message_size", raw.max_message_size.as_ref(), DEFAULT_MAX_MESSAGE_SIZE);
        if max_message_size == 0 {
            self.error("limits.max_message_size", "must be more than 0");
        }
        let max_recipients = raw.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS);
        if max_recipients == 0 {
            self.error("limits.max_recipients", "must be at least 1");
        }
        let bare_lf = self
            .choice(
                "limits.bare_lf",
                raw.bare_lf.as_deref().unwrap_or("reject"),
                &[("reject", BareLf::Reject), ("normalize", BareLf::Normalize), ("allow", BareLf::Allow)],
            )
            .unwrap_or(BareLf::Reject);
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_connections_per_ip = raw.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP);
        let max_errors = raw.max_errors.unwrap_or(DEFAULT_MAX_ERRORS);
        for (key, value) in [
            ("limits.max_connections", max_connections),
            ("limits.max_connections_per_ip", max_connections_per_ip),
            ("limits.max_errors", max_errors as usize),
        ] {
            if value == 0 {
                self.error(key, "must be at least 1");
            }
        }
        let command_timeout =
            self.duration("limits.command_timeout", raw.command_timeout.as_deref(), DEFAULT_COMMAND_TIMEOUT, false);
        let data_timeout =
            self.duration("limits.data_timeout", raw.data_timeout.as_deref(), DEFAULT_DATA_TIMEOUT, false);
        let min_data_rate = MinDataRate {
            bytes_per_second: raw.min_data_rate.unwrap_or(DEFAULT_MIN_DATA_RATE),
            grace: self.duration(
                "limits.min_data_rate_grace",
                raw.min_data_rate_grace.as_deref(),
                DEFAULT_MIN_DATA_RATE_GRACE,
                true,
            ),
        };
        let tls_handshake_timeout = self.duration(
            "limits.tls_handshake_timeout",
            raw.tls_handshake_timeout.as_deref(),
            DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            false,
        );
        let max_line_length = raw.max_line_length.unwrap_or(DEFAULT_MAX_LINE_LENGTH);
        if !(512..=65536).contains(&max_line_length) {
            self.error(
                "limits.max_line_length",
                format!("{max_line_length}: expected 512 to 65536 (RFC 5321 needs 512)"),
            );
        }
        Limits {
            max_line_length,
            min_data_rate,
            max_message_size,
            max_recipients,
            recipient_overshoot_limit: raw.recipient_overshoot_limit.unwrap_or(DEFAULT_RECIPIENT_OVERSHOOT_LIMIT),
            bare_lf,
            max_connections,
            max_connections_per_ip,
            max_errors,
            max_junk_commands: raw.max_junk_commands.unwrap_or(DEFAULT_MAX_JUNK_COMMANDS),
            connection_rate: self.rate("limits.max_connection_rate", raw.max_connection_rate.as_deref()),
            message_rate: self.rate("limits.max_message_rate", raw.max_message_rate.as_deref()),
            recipient_rate: self.rate("limits.max_recipient_rate", raw.max_recipient_rate.as_deref()),
            ipv6_prefix: match raw.ipv6_prefix {
                None => 64,
                Some(p) if (16..=128).contains(&p) => p,
                Some(p) => {
                    self.error("limits.ipv6_prefix", format!("{p}: expected 16 to 128"));
                    64
                }
            },
            command_timeout,
            data_timeout,
            tls_handshake_timeout,
            held_in_memory: self.size("limits.held_in_memory", raw.held_in_memory.as_ref(), DEFAULT_HELD_IN_MEMORY)
                as usize,
            max_headers: self.max_headers(raw.max_headers),
            max_header_size: self.max_header_size(raw.max_header_size.as_ref()),
        }
    }

    fn max_headers(&mut self, raw: Option<usize>) -> usize {
        let max_headers = raw.unwrap_or(DEFAULT_MAX_HEADERS);
        if max_headers == 0 {
            self.error("limits.max_headers", "must be at least 1");
        }
        max_headers
    }

    fn max_header_size(&mut self, raw: Option<&RawSize>) -> usize {
        let size = self.size("limits.max_header_size", raw, DEFAULT_MAX_HEADER_SIZE);
        if !HEADER_SIZE_RANGE.contains(&size) {
            self.error("limits.max_header_size", format!("{size}: expected 1KiB to 64MiB"));
            return DEFAULT_MAX_HEADER_SIZE as usize;
        }
        size as usize
    }

    /// A size: bytes, or a string such as "50MB"; absent: `default`.
    fn size(&mut self, key: &str, raw: Option<&RawSize>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(RawSize::Bytes(n)) => *n,
            Some(RawSize::Text(t)) => t.parse::<bytesize::ByteSize>().map(|s| s.as_u64()).unwrap_or_else(|_| {
                self.error(key, format!("{t:?}: expected a size such as \"50MB\""));
                default
            }),
        }
    }

    fn milters(&mut self, raw: &[raw::RawMilter]) -> Vec<Arc<MilterConfig>> {
        let mut out: Vec<Arc<MilterConfig>> = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let key = format!("milter[{i}]");
            if m.name.is_empty() || m.name.contains(char::is_whitespace) {
                self.error(format!("{key}.name"), "must be a non-empty word");
            }
            if out.iter().any(|o| o.name == m.name) {
                self.error(format!("{key}.name"), format!("{:?} is used twice", m.name));
            }
            let address = Address::parse(&m.address);
            if address.is_none() {
                self.error(
                    format!("{key}.address"),
                    format!("{:?}: expected \"inet:host:port\" or \"unix:/path\"", m.address),
                );
            }
            let default_action = self.choice(
                &format!("{key}.default_action"),
                m.default_action.as_deref().unwrap_or("tempfail"),
                &[
                    ("tempfail", DefaultAction::Tempfail),
                    ("reject", DefaultAction::Reject),
                    ("accept", DefaultAction::Accept),
                ],
            );
            let mut skip = 0;
            for (j, step) in m.skip.iter().enumerate() {
                match Step::parse(step) {
                    Some(s) => skip |= s.flag(),
                    None => self.error(
                        format!("{key}.skip[{j}]"),
                        format!("{step:?}: expected connect, helo, mail, rcpt, data, header, eoh or body"),
                    ),
                }
            }
            let connect_timeout = self.duration(
                &format!("{key}.connect_timeout"),
                m.connect_timeout.as_deref(),
                Duration::from_secs(30),
                false,
            );
            let command_timeout = self.duration(
                &format!("{key}.command_timeout"),
                m.command_timeout.as_deref(),
                Duration::from_secs(30),
                false,
            );
            let message_timeout = self.duration(
                &format!("{key}.message_timeout"),
                m.message_timeout.as_deref(),
                Duration::from_secs(300),
                false,
            );
            if let (Some(address), Some(default_action)) = (address, default_action) {
                out.push(Arc::new(MilterConfig {
                    name: m.name.clone(),
                    address,
                    connect_timeout,
                    command_timeout,
                    message_timeout,
                    default_action,
                    skip,
                }));
            }
        }
        out
    }
}

/// `[[milter]]` names no listener lists.
fn milters_unused(raw: &raw::RawConfig) -> Vec<String> {
    raw.milter
        .iter()
        .filter(|m| !raw.listener.iter().any(|l| l.milters.contains(&m.name)))
        .map(|m| m.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
