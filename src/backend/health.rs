//! Active backend health checks, HAProxy's way: every `check_interval` a probe
//! connects, reads the greeting, says EHLO and QUIT; `fall` failures in a row take a
//! backend down, `rise` successes bring it back. Sessions pass over down backends
//! (see `Upstream::connect`), so an outage costs clients no connect timeout.
//!
//! The state lives in [`BackendHealth`], in the backend's entry of the
//! [`Registry`], which a reload keeps for the same address.

use super::registry::Registry;
use super::upstream::Upstream;
use crate::config::{Config, HealthCheck, Live};
use crate::metrics;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the checker looks for backends that are due.
const TICK: Duration = Duration::from_millis(250);

/// One backend's health: up or down, and how many checks in a row went the other way.
#[derive(Debug)]
pub(crate) struct BackendHealth {
    up: AtomicBool,
    /// Consecutive check results that disagree with `up`.
    streak: AtomicU32,
    probing: AtomicBool,
    next_check: Mutex<Option<Instant>>,
    /// When the last check ended, and how (for the status page).
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Default for BackendHealth {
    /// Up until checks say otherwise, as HAProxy starts its servers.
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            next_check: Mutex::new(None),
            last: Mutex::new(None),
        }
    }
}

impl BackendHealth {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts one check result; returns the new state when it changed.
    pub(crate) fn record(&self, ok: bool, check: &HealthCheck) -> Option<bool> {
        if ok == self.is_up() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { check.rise } else { check.fall };
        if streak < needed {
            return None;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.up.store(ok, Ordering::Relaxed);
        Some(ok)
    }

    /// The last check's end and result, if one ran.
    pub(crate) fn last_check(&self) -> Option<(Instant, Result<(), String>)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Claims the next check if it is due; false when not due or already running.
    fn claim(&self, interval: Duration, now: Instant) -> bool {
        let mut next = self.next_check.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|t| t > now) || self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        *next = Some(now + interval);
        true
    }
}

/// Checks every backend of the live config until `shutdown`; backends added by a reload
/// are picked up at the next tick.
pub(crate) async fn run(live: Arc<Live>, registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        let config = live.load_full();
        let now = Instant::now();
        for (i, backend) in config.backends.iter().enumerate() {
            if backend.check.interval.is_zero() || !registry.get(backend).health.claim(backend.check.interval, now) {
                continue;
            }
            let (config, registry) = (config.clone(), registry.clone());
            tokio::spawn(async move { check(&config, &registry, i).await });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn check(config: &Config, registry: &Registry, i: usize) {
    let backend = &config.backends[i];
    let health = registry.get(backend).health.clone();
    let probe = Upstream::probe(backend, registry, &config.hostname);
    let result = match tokio::time::timeout(backend.check.timeout, probe).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", backend.check.timeout)),
    };
    health.probing.store(false, Ordering::Release);
    *health.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), result.clone()));
    metrics::backend_check(&backend.address, result.is_ok());
    match (health.record(result.is_ok(), &backend.check), &result) {
        (Some(true), _) => {
            tracing::info!(backend = %backend.address, rise = backend.check.rise, "backend is up: health checks pass");
        }
        (Some(false), Err(e)) => {
            tracing::warn!(backend = %backend.address, fall = backend.check.fall, error = ?e, "backend is down: health checks fail; sessions pass it over");
        }
        (None, Err(e)) => tracing::debug!(backend = %backend.address, error = ?e, "health check failed"),
        _ => {}
    }
    metrics::backend_up(&backend.address, health.is_up());
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: HealthCheck =
        HealthCheck { interval: Duration::from_secs(1), timeout: Duration::from_secs(1), rise: 2, fall: 3 };

    #[test]
    fn down_after_fall_failures_up_after_rise_successes() {
        let h = BackendHealth::default();
        assert_eq!(h.record(false, &CHECK), None);
        assert_eq!(h.record(false, &CHECK), None);
        // A success in between starts the count again.
        assert_eq!(h.record(true, &CHECK), None);
        assert_eq!(h.record(false, &CHECK), None);
        assert_eq!(h.record(false, &CHECK), None);
        assert_eq!(h.record(false, &CHECK), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(false, &CHECK), None);
        assert_eq!(h.record(true, &CHECK), None);
        assert_eq!(h.record(true, &CHECK), Some(true));
        assert!(h.is_up());
    }

    /// A backend that greets (unless it `closes` on its first bytes) and answers EHLO
    /// with `ehlo`.
    async fn backend(ehlo: &'static str, closes: bool) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                let mut buf = [0u8; 512];
                if closes {
                    let _ = stream.read(&mut buf).await;
                    continue;
                }
                let _ = stream.write_all(b"220 test ESMTP\r\n").await;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = if buf.starts_with(b"EHLO") { ehlo } else { "221 2.0.0 Bye\r\n" };
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
            }
        });
        addr
    }

    async fn probe(addr: std::net::SocketAddr, identity: &str) -> Result<(), String> {
        let text = format!(
            "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{addr}\"\nidentity = \"{identity}\"\n"
        );
        let config = crate::config::parse(&text).unwrap().config;
        Upstream::probe(&config.backends[0], &Registry::default(), "proxy.test").await.map_err(|e| e.to_string())
    }

    /// A check proves what sessions need of the identity: a backend without XCLIENT
    /// (Exim), or one that closes on a PROXY header it does not take, is not healthy.
    #[tokio::test]
    async fn a_check_proves_the_identity_step() {
        let exim = backend("250-exim\r\n250 PIPELINING\r\n", false).await;
        let error = probe(exim, "xclient").await.unwrap_err();
        assert!(error.contains("XCLIENT ADDR is not offered"), "{error}");
        let error = probe(exim, "xforward").await.unwrap_err();
        assert!(error.contains("XFORWARD is not offered"), "{error}");
        assert_eq!(probe(exim, "none").await, Ok(()));
        let postfix =
            backend("250-postfix\r\n250-XCLIENT NAME ADDR PROTO HELO\r\n250 XFORWARD NAME ADDR\r\n", false).await;
        assert_eq!(probe(postfix, "xclient").await, Ok(()));
        assert_eq!(probe(postfix, "xforward").await, Ok(()));
        let strict = backend("", true).await;
        let error = probe(strict, "proxy-v1").await.unwrap_err();
        assert!(error.contains("after our proxy-v1 header"), "{error}");
    }

    #[test]
    fn one_check_at_a_time_and_only_when_due() {
        let h = BackendHealth::default();
        let now = Instant::now();
        assert!(h.claim(CHECK.interval, now));
        assert!(!h.claim(CHECK.interval, now + Duration::from_secs(5)), "still probing");
        h.probing.store(false, Ordering::Release);
        assert!(!h.claim(CHECK.interval, now + Duration::from_millis(500)), "not due");
        assert!(h.claim(CHECK.interval, now + Duration::from_secs(1)));
    }
}
