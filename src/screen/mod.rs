//! Screening clients before any backend spends a process on them: rate limits per
//! client address and per user ([`rate`]), and automatic bans for clients that keep
//! failing ([`bans`]). The state is shared by every worker and kept across reloads;
//! the limits themselves come from the config in force.
//!
//! Client addresses are grouped as an ISP hands them out: an IPv4 address alone, an
//! IPv6 address by its prefix (`limits.ipv6_prefix`, /64 by default), so that one host
//! cannot escape a limit by using many addresses of its own network.

pub mod bans;
pub mod rate;

use bans::{Ban, BanPolicy, Bans};
use ipnet::IpNet;
use rate::{Limiter, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a rate limit counts, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Connection(IpNet),
    Message(Who),
    Recipient(Who),
}

/// Whose messages and recipients are counted: the user when authenticated, otherwise
/// the client's network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    Client(IpNet),
    User(String),
}

/// The screening state of one running server.
#[derive(Debug, Default)]
pub struct Screen {
    rates: Mutex<Limiter<RateKey>>,
    bans: Mutex<Bans<IpNet>>,
    /// Clients that waited for the whole greeting, until when they are trusted to.
    passed: Mutex<HashMap<IpNet, Instant>>,
}

/// Clients remembered as having passed the pregreet test, at most.
const MAX_PASSED: usize = 100_000;

/// The network a client address is counted in.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    let prefix = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    IpNet::new(ip, prefix).expect("prefix within range").trunc()
}

impl Screen {
    /// One new connection from `client`: `Err` with how long to wait when over `rate`.
    pub fn connection(&self, client: IpNet, rate: Option<Rate>) -> Result<(), Duration> {
        self.check(RateKey::Connection(client), rate)
    }

    /// One message (at MAIL).
    pub fn message(&self, who: Who, rate: Option<Rate>) -> Result<(), Duration> {
        self.check(RateKey::Message(who), rate)
    }

    /// One recipient (at RCPT, before the relay decision is passed on).
    pub fn recipient(&self, who: Who, rate: Option<Rate>) -> Result<(), Duration> {
        self.check(RateKey::Recipient(who), rate)
    }

    fn check(&self, key: RateKey, rate: Option<Rate>) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        self.rates.lock().unwrap_or_else(|e| e.into_inner()).check(key, rate, Instant::now())
    }

    /// Whether `client` passed the pregreet test recently enough to skip it.
    pub fn passed_pregreet(&self, client: IpNet) -> bool {
        let passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        passed.get(&client).is_some_and(|until| *until > Instant::now())
    }

    /// `client` waited for the whole greeting: greet it at once for `ttl`.
    pub fn pass_pregreet(&self, client: IpNet, ttl: Duration) {
        let now = Instant::now();
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        if passed.len() >= MAX_PASSED {
            passed.retain(|_, until| *until > now);
            if passed.len() >= MAX_PASSED {
                return;
            }
        }
        passed.insert(client, now + ttl);
    }

    /// A failure of `kind` by `client`; true when it starts a ban.
    pub fn failure(&self, client: IpNet, kind: &'static str, policy: &BanPolicy) -> bool {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).failure(client, kind, policy, Instant::now())
    }

    /// How long the ban on `client` still lasts, if there is one.
    pub fn banned(&self, client: IpNet) -> Option<Duration> {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).banned(&client, Instant::now())
    }

    pub fn bans(&self) -> Vec<Ban<IpNet>> {
        let mut list = self.bans.lock().unwrap_or_else(|e| e.into_inner()).list(Instant::now());
        list.sort_by_key(|b| b.key);
        list
    }

    /// Lifts the ban on `client`; true if there was one.
    pub fn lift(&self, client: IpNet) -> bool {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).lift(&client, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let a = client_key("2001:db8:1:2::7".parse().unwrap(), 64);
        let b = client_key("2001:db8:1:2:ffff::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, client_key("2001:db8:1:3::7".parse().unwrap(), 64));
        assert_eq!(client_key("192.0.2.7".parse().unwrap(), 64).to_string(), "192.0.2.7/32");
    }

    #[test]
    fn rates_are_kept_apart_by_what_they_count() {
        let s = Screen::default();
        let one = Some(Rate::parse("1/h").unwrap());
        let net = client_key("192.0.2.7".parse().unwrap(), 64);
        assert!(s.connection(net, one).is_ok());
        assert!(s.connection(net, one).is_err());
        assert!(s.message(Who::Client(net), one).is_ok());
        assert!(s.message(Who::User("alice".into()), one).is_ok());
        assert!(s.recipient(Who::Client(net), None).is_ok(), "no limit configured");
    }
}
