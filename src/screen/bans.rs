//! Automatic bans: a client that keeps failing (relay attempts, failed passwords,
//! protocol errors) within a window is refused at connect for a time. Bans can be
//! listed and lifted (the admin endpoint). Time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// When failures become a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BanPolicy {
    /// Failures within `window` that ban; 0: never.
    pub(crate) after: u32,
    pub(crate) window: Duration,
    /// How long a ban lasts.
    pub(crate) duration: Duration,
}

#[derive(Debug)]
struct Record {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Why the last ban was set (the kind of the failure that tipped it).
    reason: &'static str,
}

/// Failure counts and bans by key.
#[derive(Debug)]
pub(crate) struct Bans<K> {
    records: HashMap<K, Record>,
    full_misses: u64,
}

/// Clients tracked at most (failures and bans): about 10 MB.
const MAX_RECORDS: usize = 100_000;

impl<K> Default for Bans<K> {
    fn default() -> Self {
        Self { records: HashMap::new(), full_misses: 0 }
    }
}

/// One ban in force, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ban<K> {
    pub(crate) key: K,
    pub(crate) remaining: Duration,
    pub(crate) reason: &'static str,
}

impl<K: Hash + Eq + Clone> Bans<K> {
    /// Counts one failure of `kind`; true when it starts a ban.
    pub(crate) fn failure(&mut self, key: K, kind: &'static str, policy: &BanPolicy, now: Instant) -> bool {
        if policy.after == 0 {
            return false;
        }
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(&key) {
            // Full: make room once in a while, and while there is none, new clients go
            // uncounted rather than the table growing without bound.
            self.full_misses += 1;
            if self.full_misses.is_multiple_of(1024) {
                self.forget_old(policy, now);
            }
            if self.records.len() >= MAX_RECORDS {
                return false;
            }
        }
        let r = self.records.entry(key).or_insert(Record {
            failures: 0,
            window_start: now,
            banned_until: None,
            reason: kind,
        });
        if r.banned_until.is_some_and(|until| until > now) {
            return false;
        }
        if now.duration_since(r.window_start) > policy.window {
            r.failures = 0;
            r.window_start = now;
        }
        r.failures += 1;
        if r.failures < policy.after {
            return false;
        }
        r.failures = 0;
        r.window_start = now;
        r.banned_until = Some(now + policy.duration);
        r.reason = kind;
        true
    }

    /// The ban in force for `key`, if any: how long it still lasts.
    pub(crate) fn banned(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.records.get(key)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Lifts the ban on `key` (and forgets its failures); true if there was one.
    pub(crate) fn lift(&mut self, key: &K, now: Instant) -> bool {
        let was = self.banned(key, now).is_some();
        self.records.remove(key);
        was
    }

    pub(crate) fn list(&self, now: Instant) -> Vec<Ban<K>> {
        self.records
            .iter()
            .filter_map(|(k, r)| {
                let until = r.banned_until.filter(|u| *u > now)?;
                Some(Ban { key: k.clone(), remaining: until - now, reason: r.reason })
            })
            .collect()
    }

    fn forget_old(&mut self, policy: &BanPolicy, now: Instant) {
        self.records.retain(|_, r| {
            r.banned_until.is_some_and(|u| u > now) || now.duration_since(r.window_start) <= policy.window
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BanPolicy =
        BanPolicy { after: 3, window: Duration::from_secs(60), duration: Duration::from_secs(600) };

    #[test]
    fn failures_within_the_window_ban_for_a_time() {
        let mut b = Bans::default();
        let t0 = Instant::now();
        assert!(!b.failure("a", "relay", &POLICY, t0));
        assert!(!b.failure("a", "relay", &POLICY, t0));
        assert!(b.failure("a", "auth", &POLICY, t0 + Duration::from_secs(10)));
        assert_eq!(b.banned(&"a", t0 + Duration::from_secs(10)), Some(Duration::from_secs(600)));
        assert_eq!(b.banned(&"b", t0), None);
        assert_eq!(b.list(t0 + Duration::from_secs(20))[0].reason, "auth");
        assert_eq!(b.banned(&"a", t0 + Duration::from_secs(611)), None, "over");
    }

    #[test]
    fn slow_failures_do_not_add_up_and_bans_can_be_lifted() {
        let mut b = Bans::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(!b.failure("a", "relay", &POLICY, t0 + Duration::from_secs(61 * i)));
        }
        for _ in 0..3 {
            b.failure("c", "protocol", &POLICY, t0);
        }
        assert!(b.lift(&"c", t0));
        assert_eq!(b.banned(&"c", t0), None);
        assert!(!b.lift(&"c", t0));
        let never = BanPolicy { after: 0, ..POLICY };
        assert!(!b.failure("d", "relay", &never, t0));
    }
}
