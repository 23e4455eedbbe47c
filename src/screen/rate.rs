//! Rate limits by GCRA (the generic cell rate algorithm): each key keeps one instant,
//! its theoretical arrival time; an event is allowed while that time is no further
//! ahead of now than the burst allows. `60/min` lets 60 events through at once and
//! then one a second. Time is passed in, so the decisions are plain values to test.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};
use thiserror::Error;

/// `count` events per `period`, all of them allowed in a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) count: u32,
    pub(crate) period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?}: expected a rate such as \"60/min\", \"120/h\" or \"10/s\"")]
pub(crate) struct RateError(String);

impl Rate {
    /// Reads `N/s`, `N/min`, `N/h` or `N/d` (also `N/second`, `N/minute`, ...).
    pub(crate) fn parse(text: &str) -> Result<Rate, RateError> {
        let bad = || RateError(text.to_string());
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, period })
    }

    /// The time one event uses up.
    fn interval(&self) -> Duration {
        self.period / self.count
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Theoretical arrival times by key.
#[derive(Debug)]
pub(crate) struct Limiter<K> {
    tat: HashMap<K, Instant>,
    checks: u64,
}

impl<K> Default for Limiter<K> {
    fn default() -> Self {
        Self { tat: HashMap::new(), checks: 0 }
    }
}

impl<K: Hash + Eq> Limiter<K> {
    /// Counts one event for `key` at `now`: `Ok` if `rate` allows it, else how long
    /// until it would.
    pub(crate) fn check(&mut self, key: K, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.checks += 1;
        if self.checks.is_multiple_of(1024) {
            // Keys at rest hold nothing a fresh key would not: forget them.
            self.tat.retain(|_, tat| *tat > now);
        }
        let interval = rate.interval();
        let burst = interval * rate.count;
        let tat = self.tat.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next > now + burst {
            return Err(next - now - burst);
        }
        self.tat.insert(key, next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(Rate::parse("60/min"), Ok(Rate { count: 60, period: Duration::from_secs(60) }));
        assert_eq!(Rate::parse("120/h").unwrap().to_string(), "120/h");
        for bad in ["", "60", "0/min", "x/min", "10/week", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let rate = Rate::parse("60/min").unwrap();
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..60 {
            assert_eq!(l.check("a", rate, t0), Ok(()), "event {i}");
        }
        assert_eq!(l.check("a", rate, t0), Err(Duration::from_secs(1)));
        assert_eq!(l.check("b", rate, t0), Ok(()), "keys are apart");
        assert_eq!(l.check("a", rate, t0 + Duration::from_secs(1)), Ok(()));
        assert!(l.check("a", rate, t0 + Duration::from_secs(1)).is_err());
        // After a full period at rest, the whole burst again.
        let later = t0 + Duration::from_secs(62);
        for _ in 0..60 {
            assert_eq!(l.check("a", rate, later), Ok(()));
        }
    }
}
