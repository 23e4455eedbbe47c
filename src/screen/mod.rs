//! Screening clients before any backend spends a process on them: rate limits per
//! client address and per user ([`rate`]), automatic bans for clients that keep
//! failing ([`bans`]), DNS block- and allowlists ([`dnsbl`] decides, [`dns`] asks),
//! and the pregreet cache. The state is shared by every worker and kept across
//! reloads, and with `[store] redis` by every instance of a fleet ([`store`]; local
//! state stands in while the store cannot answer). The limits themselves come from
//! the config in force.
//!
//! Client addresses are grouped as an ISP hands them out: an IPv4 address alone, an
//! IPv6 address by its prefix (`limits.ipv6_prefix`, /64 by default), so that one host
//! cannot escape a limit by using many addresses of its own network.

pub(crate) mod bans;
pub(crate) mod dns;
pub(crate) mod dnsbl;
pub(crate) mod rate;
pub(crate) mod store;

use bans::{BanPolicy, Bans};
use ipnet::IpNet;
use rate::{Limiter, Rate};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;

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
pub(crate) enum Who {
    Client(IpNet),
    User(String),
}

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Banned, for this much longer.
    Banned(Duration),
    /// Over `limits.max_connection_rate`.
    Rate,
}

/// One ban in force, for listing: from this instance or from the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) client: String,
    pub(crate) remaining: Duration,
    pub(crate) reason: String,
}

/// The screening state of one running server: local, or in the shared store with the
/// local state standing in while the store cannot answer.
#[derive(Debug, Default)]
pub(crate) struct Screen {
    local: Arc<Local>,
    store: Option<Arc<Store>>,
}

#[derive(Debug, Default)]
struct Local {
    rates: Mutex<Limiter<RateKey>>,
    bans: Mutex<Bans<IpNet>>,
    /// Clients that waited for the whole greeting, until when they are trusted to.
    passed: Mutex<HashMap<IpNet, Instant>>,
}

/// Clients remembered as having passed the pregreet test, at most.
const MAX_PASSED: usize = 100_000;

impl Screen {
    /// With the shared store, when one is configured.
    pub(crate) fn new(store: Option<Arc<Store>>) -> Screen {
        Screen { local: Arc::default(), store }
    }

    /// A new connection from `client`: refused while banned or over `rate`.
    pub(crate) async fn admit(&self, client: IpNet, rate: Option<Rate>) -> Result<(), Refusal> {
        // Bans set here while the store was away still hold.
        if let Some(left) = self.local.banned(client) {
            return Err(Refusal::Banned(left));
        }
        if let Some(store) = &self.store
            && let Some(verdict) = Box::pin(store.admit(client, rate)).await
        {
            return verdict;
        }
        match self.local.check(RateKey::Connection(client), rate) {
            Ok(()) => Ok(()),
            Err(_) => Err(Refusal::Rate),
        }
    }

    /// One message (at MAIL): `Err` with how long to wait when over `rate`.
    pub(crate) async fn message(&self, who: Who, rate: Option<Rate>) -> Result<(), Duration> {
        self.check(RateKey::Message(who), rate).await
    }

    /// One recipient (at RCPT, before the relay decision is passed on).
    pub(crate) async fn recipient(&self, who: Who, rate: Option<Rate>) -> Result<(), Duration> {
        self.check(RateKey::Recipient(who), rate).await
    }

    /// The store's calls are boxed: a session's future stays the size of the local path.
    async fn check(&self, key: RateKey, rate: Option<Rate>) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        if let Some(store) = &self.store
            && let Some(verdict) = Box::pin(store.rate(key.kind(), &key.who(), rate)).await
        {
            return verdict;
        }
        self.local.check(key, Some(rate))
    }

    /// Whether `client` passed the pregreet test recently enough to skip it.
    pub(crate) async fn passed_pregreet(&self, client: IpNet) -> bool {
        if self.local.passed(client) {
            return true;
        }
        match &self.store {
            Some(store) => Box::pin(store.passed(client)).await.unwrap_or(false),
            None => false,
        }
    }

    /// `client` waited for the whole greeting: greet it at once for `ttl`.
    pub(crate) fn pass_pregreet(&self, client: IpNet, ttl: Duration) {
        self.local.pass(client, ttl);
        if let Some(store) = &self.store {
            store.pass(client, ttl);
        }
    }

    /// A failure of `kind` by `client`; true when it starts a ban here. With the
    /// shared store the failure is counted there, for the whole fleet (the ban then
    /// applies from the client's next connection), and here only when the store
    /// cannot take it.
    pub(crate) fn failure(&self, client: IpNet, kind: &'static str, policy: &BanPolicy) -> bool {
        if policy.after == 0 {
            return false;
        }
        match &self.store {
            None => self.local.failure(client, kind, policy),
            Some(store) => {
                let (local, policy) = (self.local.clone(), *policy);
                store.failure(client, kind, &policy, move || {
                    if local.failure(client, kind, &policy) {
                        tracing::warn!(%client, reason = kind, "client banned on this instance (shared store unreachable)");
                    }
                });
                false
            }
        }
    }

    /// Bans in force, here and in the store.
    pub(crate) async fn bans(&self) -> Vec<Listed> {
        let now = Instant::now();
        let mut list: Vec<Listed> = self
            .local
            .bans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list(now)
            .into_iter()
            .map(|b| Listed { client: b.key.to_string(), remaining: b.remaining, reason: b.reason.to_string() })
            .collect();
        if let Some(store) = &self.store {
            let here: std::collections::HashSet<String> = list.iter().map(|l| l.client.clone()).collect();
            for (client, remaining, reason) in store.bans().await.unwrap_or_default() {
                if !here.contains(&client) {
                    list.push(Listed { client, remaining, reason });
                }
            }
        }
        list.sort_by(|a, b| a.client.cmp(&b.client));
        list
    }

    /// Bans in force in this instance (the status page: no scan of the store).
    pub(crate) fn local_bans(&self) -> usize {
        self.local.bans.lock().unwrap_or_else(|e| e.into_inner()).list(Instant::now()).len()
    }

    /// Lifts the ban on `client` here and in the store; true if there was one. `Err`
    /// when the store could not be reached (its ban, if any, stays).
    pub(crate) async fn lift(&self, client: IpNet) -> Result<bool, StoreUnreachable> {
        let here = self.local.bans.lock().unwrap_or_else(|e| e.into_inner()).lift(&client, Instant::now());
        match &self.store {
            None => Ok(here),
            Some(store) => match store.lift(client).await {
                Some(there) => Ok(here || there),
                None => Err(StoreUnreachable),
            },
        }
    }
}

/// The shared store did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared store did not answer")]
pub(crate) struct StoreUnreachable;

impl RateKey {
    fn kind(&self) -> &'static str {
        match self {
            RateKey::Connection(_) => "rate:conn",
            RateKey::Message(_) => "rate:msg",
            RateKey::Recipient(_) => "rate:rcpt",
        }
    }

    fn who(&self) -> String {
        match self {
            RateKey::Connection(net) => net.to_string(),
            RateKey::Message(who) | RateKey::Recipient(who) => match who {
                Who::Client(net) => net.to_string(),
                Who::User(user) => format!("user:{user}"),
            },
        }
    }
}

impl Local {
    fn check(&self, key: RateKey, rate: Option<Rate>) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        self.rates.lock().unwrap_or_else(|e| e.into_inner()).check(key, rate, Instant::now())
    }

    fn banned(&self, client: IpNet) -> Option<Duration> {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).banned(&client, Instant::now())
    }

    fn failure(&self, client: IpNet, kind: &'static str, policy: &BanPolicy) -> bool {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).failure(client, kind, policy, Instant::now())
    }

    fn passed(&self, client: IpNet) -> bool {
        let passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        passed.get(&client).is_some_and(|until| *until > Instant::now())
    }

    fn pass(&self, client: IpNet, ttl: Duration) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::network as client_key;

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let a = client_key("2001:db8:1:2::7".parse().unwrap(), 64);
        let b = client_key("2001:db8:1:2:ffff::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, client_key("2001:db8:1:3::7".parse().unwrap(), 64));
        assert_eq!(client_key("192.0.2.7".parse().unwrap(), 64).to_string(), "192.0.2.7/32");
    }

    #[tokio::test]
    async fn rates_are_kept_apart_by_what_they_count() {
        let s = Screen::default();
        let one = Some(Rate::parse("1/h").unwrap());
        let net = client_key("192.0.2.7".parse().unwrap(), 64);
        assert_eq!(s.admit(net, one).await, Ok(()));
        assert_eq!(s.admit(net, one).await, Err(Refusal::Rate));
        assert!(s.message(Who::Client(net), one).await.is_ok());
        assert!(s.message(Who::User("alice".into()), one).await.is_ok());
        assert!(s.recipient(Who::Client(net), None).await.is_ok(), "no limit configured");
    }

    #[tokio::test]
    async fn bans_are_listed_and_lifted() {
        let s = Screen::default();
        let policy = BanPolicy { after: 2, window: Duration::from_secs(60), duration: Duration::from_secs(60) };
        let net = client_key("192.0.2.8".parse().unwrap(), 64);
        assert!(!s.failure(net, "relay attempt", &policy));
        assert!(s.failure(net, "relay attempt", &policy));
        assert!(matches!(s.admit(net, None).await, Err(Refusal::Banned(_))));
        assert_eq!(s.bans().await[0].client, "192.0.2.8/32");
        assert_eq!(s.lift(net).await, Ok(true));
        assert_eq!(s.admit(net, None).await, Ok(()));
    }
}
