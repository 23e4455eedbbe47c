//! Configuration: the raw TOML ([`raw`]) validated into the runtime [`Config`]. Every
//! error is collected with the key that holds it, so `check` can list them all at once.

mod net;
pub mod raw;

pub use net::parse_network;

use crate::identity::Identity;
use crate::policy::{Action, ConnectionRules, DomainSet, RelayPolicy, Rule, domains::check_domain};
use crate::smtp::BareLf;
use raw::{RawBackend, RawConfig, RawListener, RawSize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50_000_000;
pub const DEFAULT_MAX_RECIPIENTS: u32 = 100;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    /// Worker threads, each with its own single-threaded runtime.
    pub workers: usize,
    pub listeners: Vec<Listener>,
    pub relay: RelayPolicy,
    pub backends: Vec<Backend>,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub rules: ConnectionRules,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// `host:port` as configured; resolved at connect time.
    pub address: String,
    pub identity: Identity,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: u32,
    pub bare_lf: BareLf,
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
    pub warnings: Vec<String>,
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
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("{}: {e}", path.display())))?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigError::one(e.to_string().trim_end().to_string()))?;
    Validator::default().run(raw)
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
        let hostname = match raw.server.hostname {
            Some(h) => {
                if let Err(e) = check_domain(&h).and_then(|_| if h.starts_with('.') { Err("leading dot") } else { Ok(()) }) {
                    self.error("server.hostname", format!("{h:?}: {e}"));
                }
                h
            }
            None => "localhost".to_string(),
        };
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
        let listeners: Vec<Listener> =
            raw.listener.iter().enumerate().filter_map(|(i, l)| self.listener(i, l)).collect();
        for (i, l) in listeners.iter().enumerate() {
            if let Some(prev) = listeners[..i].iter().find(|p| p.name == l.name) {
                self.error(format!("listener {:?}", l.name), format!("name used twice (also bound to {})", prev.bind));
            }
            if l.bind.port() != 0 && listeners[..i].iter().any(|p| p.bind == l.bind) {
                self.error(format!("listener {:?}.bind", l.name), format!("{} is bound by another listener", l.bind));
            }
        }

        let relay = self.relay(&raw.relay);

        if raw.backend.is_empty() {
            self.error("backend", "at least one [[backend]] is needed");
        }
        let backends: Vec<Backend> =
            raw.backend.iter().enumerate().filter_map(|(i, b)| self.backend(i, b)).collect();

        let limits = self.limits(&raw.limits);

        if self.problems.is_empty() {
            Ok(Loaded { config: Config { hostname, workers, listeners, relay, backends, limits }, warnings: self.warnings })
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
        let rules = ConnectionRules { rules, default: default? };
        for s in rules.shadowed() {
            self.warnings.push(format!(
                "{key}.rules[{}] ({:?}) can never match: every network it lists is matched earlier by {}",
                s.index,
                s.name,
                s.covered_by.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
        Some(Listener { name: raw.name.clone(), bind: bind.ok()?, rules })
    }

    fn action(&mut self, key: String, value: &str) -> Option<Action> {
        match value {
            "accept" => Some(Action::Accept),
            "reject" => Some(Action::Reject),
            other => {
                self.error(key, format!("{other:?}: expected \"accept\" or \"reject\""));
                None
            }
        }
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
        let identity = match raw.identity.as_str() {
            "xclient" => Some(Identity::Xclient),
            "xforward" => Some(Identity::Xforward),
            "proxy-v1" => Some(Identity::ProxyV1),
            "proxy-v2" => Some(Identity::ProxyV2),
            "none" => Some(Identity::None),
            "transparent" => {
                self.error(format!("{key}.identity"), "\"transparent\" is not supported by this version yet");
                None
            }
            other => {
                self.error(
                    format!("{key}.identity"),
                    format!("{other:?}: expected \"xclient\", \"xforward\", \"proxy-v1\", \"proxy-v2\" or \"none\""),
                );
                None
            }
        };
        let connect_timeout = match &raw.connect_timeout {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    self.error(format!("{key}.connect_timeout"), format!("{text:?}: expected a duration such as \"10s\""));
                    None
                }
            },
        };
        Some(Backend { address: raw.address.clone(), identity: identity?, connect_timeout: connect_timeout? })
            .filter(|_| address_ok)
    }

    fn limits(&mut self, raw: &raw::RawLimits) -> Limits {
        let max_message_size = match &raw.max_message_size {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(RawSize::Bytes(n)) => *n,
            Some(RawSize::Text(t)) => match t.parse::<bytesize::ByteSize>() {
                Ok(size) => size.as_u64(),
                Err(_) => {
                    self.error("limits.max_message_size", format!("{t:?}: expected a size such as \"50MB\""));
                    DEFAULT_MAX_MESSAGE_SIZE
                }
            },
        };
        if max_message_size == 0 {
            self.error("limits.max_message_size", "must be more than 0");
        }
        let max_recipients = raw.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS);
        if max_recipients == 0 {
            self.error("limits.max_recipients", "must be at least 1");
        }
        let bare_lf = match raw.bare_lf.as_deref() {
            None | Some("reject") => BareLf::Reject,
            Some("allow") => BareLf::Allow,
            Some(other) => {
                self.error("limits.bare_lf", format!("{other:?}: expected \"reject\" or \"allow\""));
                BareLf::Reject
            }
        };
        Limits { max_message_size, max_recipients, bare_lf }
    }
}

#[cfg(test)]
mod tests;
