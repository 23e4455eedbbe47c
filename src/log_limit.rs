//! Rate limit for repeated log lines: a flood of identical refusals (one address
//! opening thousands of connections) writes one line per kind and second, and the
//! next line that gets through says how many were left out.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct LogLimit {
    kinds: Mutex<HashMap<&'static str, Slot>>,
}

struct Slot {
    logged_at: Instant,
    suppressed: u64,
}

impl LogLimit {
    /// The process-wide limit.
    pub(crate) fn global() -> &'static LogLimit {
        static LIMIT: OnceLock<LogLimit> = OnceLock::new();
        LIMIT.get_or_init(LogLimit::default)
    }

    /// `Some(n)` when a line of `kind` may be written now, `n` being how many were left
    /// out since the last one; `None` when this one is left out.
    pub(crate) fn allow(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        match kinds.get_mut(kind) {
            Some(slot) if now.duration_since(slot.logged_at) < WINDOW => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                slot.logged_at = now;
                let n = std::mem::take(&mut slot.suppressed);
                if n > 0 {
                    crate::metrics::log_suppressed(n);
                }
                Some(n)
            }
            None => {
                kinds.insert(kind, Slot { logged_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

/// Logs a refused connection, at most once a second per kind; every one is kept for
/// the status page ([`crate::activity`]).
pub(crate) fn log_refusal(kind: &'static str, peer: crate::addr::ClientAddr, listener: &str, rule: &str) {
    crate::activity::refused(peer.ip(), listener, rule);
    if let Some(suppressed) = LogLimit::global().allow(kind, std::time::Instant::now()) {
        tracing::info!(%peer, listener, rule, suppressed, "connection refused: {kind}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_kind_then_the_count() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.allow("refused", t0), Some(0));
        assert_eq!(limit.allow("over limit", t0), Some(0), "kinds are counted apart");
        for i in 1..=99 {
            assert_eq!(limit.allow("refused", t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(limit.allow("refused", t0 + WINDOW), Some(99));
        assert_eq!(limit.allow("refused", t0 + WINDOW * 3), Some(0));
    }
}
