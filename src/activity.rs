//! What the status page shows that the metrics do not: the last refusals (who, where,
//! why: a fixed ring of [`REFUSALS_KEPT`]), messages delivered and refused per minute
//! over the last hour (a fixed ring of [`MINUTES`]) and the last reload. Fixed rings, so
//! nothing here grows with traffic; on the ground floor with [`crate::metrics`], so
//! every part can record here without importing anything above it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Refusals kept for the status page, newest first.
pub(crate) const REFUSALS_KEPT: usize = 200;
/// Minutes of message history kept.
pub(crate) const MINUTES: usize = 60;

/// One refused client, command or recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) at: SystemTime,
    pub(crate) client: IpAddr,
    pub(crate) listener: String,
    /// The rule, limit or reason that decided.
    pub(crate) reason: String,
}

/// Messages in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Minute {
    /// Minutes since the Unix epoch.
    pub(crate) minute: u64,
    /// Accepted by the backend.
    pub(crate) delivered: u32,
    /// Refused by the backend or by us (scanner, filters, limits).
    pub(crate) refused: u32,
}

/// The last reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reload {
    pub(crate) at: SystemTime,
    pub(crate) ok: bool,
    /// What it changed, or why it failed.
    pub(crate) changes: Vec<String>,
}

struct Activity {
    started: (Instant, SystemTime),
    refusals: Mutex<VecDeque<Refusal>>,
    minutes: Mutex<[Minute; MINUTES]>,
    reload: Mutex<Option<Reload>>,
}

fn activity() -> &'static Activity {
    static ACTIVITY: OnceLock<Activity> = OnceLock::new();
    ACTIVITY.get_or_init(|| Activity {
        started: (Instant::now(), SystemTime::now()),
        refusals: Mutex::new(VecDeque::with_capacity(REFUSALS_KEPT)),
        minutes: Mutex::new([Minute::default(); MINUTES]),
        reload: Mutex::new(None),
    })
}

/// Marks the process start (the first call wins); uptime counts from here.
pub(crate) fn start() {
    activity();
}

/// When the process started, and how long ago.
pub(crate) fn started() -> (SystemTime, std::time::Duration) {
    let (instant, at) = activity().started;
    (at, instant.elapsed())
}

/// A client refused at `listener` for `reason`.
pub(crate) fn refused(client: IpAddr, listener: &str, reason: &str) {
    let refusal = Refusal { at: SystemTime::now(), client, listener: listener.to_string(), reason: reason.to_string() };
    let mut ring = activity().refusals.lock().unwrap_or_else(|e| e.into_inner());
    if ring.len() == REFUSALS_KEPT {
        ring.pop_back();
    }
    ring.push_front(refusal);
}

/// The refusals kept, newest first.
pub(crate) fn refusals() -> Vec<Refusal> {
    activity().refusals.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}

fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

/// One message's outcome, as [`crate::metrics::message`] names it.
pub(crate) fn message(outcome: &str) {
    let delivered = match outcome {
        "delivered" => true,
        "refused" | "rejected" => false,
        // Failed (backend trouble) and discarded messages are neither.
        _ => return,
    };
    let now = minute_of(SystemTime::now());
    let mut minutes = activity().minutes.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut minutes[(now % MINUTES as u64) as usize];
    if slot.minute != now {
        *slot = Minute { minute: now, ..Minute::default() };
    }
    if delivered {
        slot.delivered += 1;
    } else {
        slot.refused += 1;
    }
}

/// The last [`MINUTES`] minutes up to `now`, oldest first, minutes without a message
/// included.
pub(crate) fn history(now: SystemTime) -> Vec<Minute> {
    let now = minute_of(now);
    let minutes = activity().minutes.lock().unwrap_or_else(|e| e.into_inner());
    (0..MINUTES as u64)
        .rev()
        .map(|ago| {
            let minute = now.saturating_sub(ago);
            let slot = minutes[(minute % MINUTES as u64) as usize];
            if slot.minute == minute { slot } else { Minute { minute, ..Minute::default() } }
        })
        .collect()
}

/// A reload happened: `changes` says what it changed, or why it failed.
pub(crate) fn reloaded(ok: bool, changes: Vec<String>) {
    *activity().reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reload { at: SystemTime::now(), ok, changes });
}

pub(crate) fn last_reload() -> Option<Reload> {
    activity().reload.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_refusal_ring_keeps_the_newest() {
        for i in 0..(REFUSALS_KEPT + 10) {
            refused(IpAddr::from([192, 0, 2, (i % 250) as u8]), "mx", &format!("rule {i}"));
        }
        let kept = refusals();
        assert_eq!(kept.len(), REFUSALS_KEPT);
        assert_eq!(kept[0].reason, format!("rule {}", REFUSALS_KEPT + 9));
        assert!(kept.iter().all(|r| r.reason != "rule 9"), "the oldest went first");
    }

    #[test]
    fn history_is_an_hour_of_minutes_oldest_first() {
        message("delivered");
        message("refused");
        message("failed");
        let now = SystemTime::now();
        let hour = history(now);
        assert_eq!(hour.len(), MINUTES);
        let last = hour[MINUTES - 1];
        assert_eq!(last.minute, minute_of(now));
        assert!(last.delivered >= 1 && last.refused >= 1);
        // An hour later, nothing of it is left.
        let later = history(now + Duration::from_secs(3600));
        assert!(later.iter().all(|m| m.delivered == 0 && m.refused == 0));
        assert!(later.windows(2).all(|w| w[1].minute == w[0].minute + 1));
    }
}
