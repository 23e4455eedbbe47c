//! When to renew and how long to wait after a failure: pure arithmetic on times, with
//! the randomness passed in, so it is tested with plain values.

use std::time::{Duration, SystemTime};

/// However large `renew_before` is, a certificate is kept for at least this share of
/// its life: with short-lived certificates (Let's Encrypt's 6-day ones, a test CA's
/// minutes) a `renew_before` longer than the whole life would otherwise renew at once,
/// again and again. Renewing at a third of the life leaves two thirds for retries.
const MIN_LIFE_USED: u32 = 3;
/// Jitter: up to this share of the life earlier, so that a fleet (and the CA) do not
/// see every instance renew in the same second.
const JITTER_SHARE: f64 = 0.05;

/// Longest wait between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// `renew_before` ahead of its end, made earlier by up to 5% of its life (`jitter`,
/// from 0 to 1), but never in the first third of its life.
pub(crate) fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Duration,
    jitter: f64,
) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let floor = not_before + life / MIN_LIFE_USED;
    let planned = not_after.checked_sub(renew_before).unwrap_or(not_before);
    let early = life.mul_f64(JITTER_SHARE * jitter.clamp(0.0, 1.0));
    let at = planned.checked_sub(early).unwrap_or(planned);
    at.max(floor)
}

/// What kind of failure an attempt met: it decides how soon the next one comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The CA could not be reached or did not answer in time: trying again costs the
    /// CA nothing, so the first retries come quickly.
    Unreachable,
    /// The CA answered with an error (a failed validation, a rate limit, a refused
    /// order): each new try counts against its limits, so they are spaced widely.
    Refused,
    /// Something here (the state directory, a key): retried like a refusal.
    Local,
}

/// The wait after `failures` failed attempts in a row (1 after the first): doubling
/// from 5 s (unreachable) or 1 min (refused, local), at most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32, kind: Failure) -> Duration {
    let base = match kind {
        Failure::Unreachable => Duration::from_secs(5),
        Failure::Refused | Failure::Local => Duration::from_secs(60),
    };
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn ninety_day_certificate_renews_thirty_days_before_its_end() {
        let (nb, na) = (t(0), t(0) + 90 * DAY);
        assert_eq!(renew_at(nb, na, 30 * DAY, 0.0), t(0) + 60 * DAY);
    }

    #[test]
    fn jitter_makes_it_earlier_by_at_most_five_percent_of_the_life() {
        let (nb, na) = (t(0), t(0) + 90 * DAY);
        let latest = renew_at(nb, na, 30 * DAY, 0.0);
        let earliest = renew_at(nb, na, 30 * DAY, 1.0);
        assert_eq!(latest.duration_since(earliest).unwrap(), (90 * DAY).mul_f64(0.05));
        // Out-of-range jitter is clamped, never later than planned.
        assert_eq!(renew_at(nb, na, 30 * DAY, 7.0), earliest);
        assert_eq!(renew_at(nb, na, 30 * DAY, -1.0), latest);
    }

    #[test]
    fn renew_before_longer_than_the_life_still_uses_a_third_of_it() {
        // A 6-day certificate with the default 30 days: renewed after 2 days, not at once.
        let (nb, na) = (t(0), t(0) + 6 * DAY);
        assert_eq!(renew_at(nb, na, 30 * DAY, 0.0), t(0) + 2 * DAY);
        assert_eq!(renew_at(nb, na, 30 * DAY, 1.0), t(0) + 2 * DAY);
        // A 30-second test certificate: after 10 s.
        assert_eq!(renew_at(t(0), t(30), 30 * DAY, 0.5), t(10));
    }

    #[test]
    fn odd_dates_do_not_panic() {
        // not_after before not_before: the floor is not_before itself.
        assert_eq!(renew_at(t(100), t(0), DAY, 0.0), t(100));
        assert_eq!(
            renew_at(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH, Duration::MAX, 1.0),
            SystemTime::UNIX_EPOCH
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let unreachable: Vec<u64> = (1..=6).map(|n| backoff(n, Failure::Unreachable).as_secs()).collect();
        assert_eq!(unreachable, [5, 10, 20, 40, 80, 160]);
        let refused: Vec<u64> = (1..=8).map(|n| backoff(n, Failure::Refused).as_secs()).collect();
        assert_eq!(refused, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(0, Failure::Local), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX, Failure::Unreachable), MAX_BACKOFF);
    }
}
