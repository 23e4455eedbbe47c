//! Answers kept for `cache_ttl`, known and unknown alike: a bounded map in this
//! process, and with `[store]` the shared store, so that a fleet asks the directory
//! once per address. A client choosing addresses cannot grow the map past
//! [`MAX_ENTRIES`]: expired answers go first, then an arbitrary eighth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Answers kept in memory at most (keys are at most a few hundred bytes: some tens
/// of megabytes in the worst case).
pub(crate) const MAX_ENTRIES: usize = 50_000;

#[derive(Debug)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<String, (bool, Instant)>>,
    max: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::with_capacity(MAX_ENTRIES)
    }
}

impl Cache {
    pub(crate) fn with_capacity(max: usize) -> Cache {
        Cache { entries: Mutex::default(), max: max.max(1) }
    }

    /// The answer kept for `key`, if it has not expired.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<bool> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(&(known, until)) if now < until => Some(known),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn put(&self, key: String, known: bool, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= self.max {
                // Which eighth goes is the hash map's order: no client can aim at it.
                let drop: Vec<String> = entries.keys().take((self.max / 8).max(1)).cloned().collect();
                for k in drop {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (known, now + ttl));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire() {
        let cache = Cache::default();
        let now = Instant::now();
        cache.put("a".into(), true, Duration::from_secs(10), now);
        cache.put("b".into(), false, Duration::from_secs(10), now);
        cache.put("c".into(), true, Duration::ZERO, now);
        assert_eq!(cache.get("a", now), Some(true));
        assert_eq!(cache.get("b", now), Some(false));
        assert_eq!(cache.get("c", now), None);
        assert_eq!(cache.get("a", now + Duration::from_secs(10)), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn unique_addresses_cannot_grow_it() {
        let cache = Cache::with_capacity(1000);
        let now = Instant::now();
        for i in 0..100_000 {
            cache.put(format!("user{i}@example.com"), false, Duration::from_secs(600), now);
            assert!(cache.len() <= 1000);
        }
        // The newest answer is always kept.
        assert_eq!(cache.get("user99999@example.com", now), Some(false));
    }
}
