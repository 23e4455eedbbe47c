//! Connection counting shared by every worker: a total cap and a cap per client
//! address. A [`Permit`] is held for the life of a connection and gives its place back
//! when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The caps can be changed by a reload; connections already over a lowered cap stay.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which limit a connection ran into (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Total,
    PerIp,
}

impl Exceeded {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Exceeded::Total => "limits.max_connections",
            Exceeded::PerIp => "limits.max_connections_per_ip",
        }
    }
}

/// One counted connection.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            counts: Mutex::new(Counts::default()),
        })
    }

    pub(crate) fn set(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Exceeded> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Exceeded::Total);
        }
        let mine = counts.per_ip.entry(ip).or_insert(0);
        if *mine >= self.max_per_ip.load(Ordering::Relaxed) {
            return Err(Exceeded::PerIp);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Permit { limits: self.clone(), ip })
    }

    /// Connections open now (total, from `ip`).
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (counts.total, counts.per_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_and_total_limits_and_release() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = limits.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.try_acquire(ip("192.0.2.1")).unwrap_err(), Exceeded::PerIp);
        let _b1 = limits.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(limits.try_acquire(ip("192.0.2.3")).unwrap_err(), Exceeded::Total);
        drop(a1);
        assert_eq!(limits.open(ip("192.0.2.1")), (2, 1));
        let _a3 = limits.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.open(ip("192.0.2.1")), (3, 2));
    }

    #[test]
    fn addresses_are_forgotten_when_their_last_connection_ends() {
        let limits = ConnectionLimits::new(10, 1);
        for i in 0..5 {
            let p = limits.try_acquire(ip(&format!("192.0.2.{i}"))).unwrap();
            drop(p);
        }
        assert!(limits.counts.lock().unwrap().per_ip.is_empty());
        assert_eq!(limits.open(ip("192.0.2.1")), (0, 0));
    }
}
