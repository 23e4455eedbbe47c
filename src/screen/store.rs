//! The shared store (`[store] redis`): rate limits, bans and the pregreet cache kept in
//! Redis or Valkey, so that instances behind one load balancer act as one. Every
//! update is one Lua script or one command, so concurrent instances never lose a count;
//! time is the store's own (`TIME`), so instances need not agree on the clock.
//!
//! The store runs on a thread of its own (one connection, multiplexed; see `link.rs`);
//! sessions on every worker send it calls. A call that fails or takes longer than
//! `[store] timeout` returns `None`, and the caller applies its local state instead
//! (fail open with local limits); a reply larger than `[store] max_reply_size` is such
//! a failure (see `reply.rs`). After a failure the store is left alone for
//! [`RETRY_AFTER`], so a dead store costs no waiting on every connection.

use super::Refusal;
use super::bans::BanPolicy;
use super::rate::Rate;
use crate::log_limit::LogLimit;
use crate::metrics;
use ipnet::IpNet;
use link::Link;
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Script};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

mod link;
mod reply;

/// Largest store reply taken; our calls get a few bytes, a batch of the ban list some
/// tens of kilobytes.
pub(crate) const DEFAULT_STORE_MAX_REPLY: u64 = 1024 * 1024;
/// Below this, listing the fleet's bans (1000 keys a reply) could fail.
pub(crate) const MIN_STORE_MAX_REPLY: u64 = 256 * 1024;

/// The shared store (`[store] redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreConfig {
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) prefix: String,
    /// Bytes of one reply; past it the connection is dropped and the call fails open.
    pub(crate) max_reply_size: u64,
}

/// How long local limits stand in after the store failed, before it is tried again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The GCRA step (see `rate.rs`) on the key in `key`, ARGV[1] the interval and
/// ARGV[2] the burst in microseconds: 0 when allowed, else the microseconds until it
/// would be.
macro_rules! gcra_step {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local nxt = tat + interval
if nxt - burst > now then return nxt - burst - now end
redis.call('SET', key, string.format('%.0f', nxt), 'PX', math.max(1, math.ceil((nxt - now) / 1000)))
return 0
"
    };
}

/// GCRA on KEYS[1].
const GCRA: &str = concat!("local key = KEYS[1]\n", gcra_step!());

/// A new connection: the ban on KEYS[1] first (returns minus its remaining
/// milliseconds), then the GCRA on KEYS[2] when ARGV[1] (interval) is not 0
/// (returning microseconds to wait).
const ADMIT: &str = concat!(
    "local left = redis.call('PTTL', KEYS[1])\n",
    "if left > 0 then return -left end\n",
    "if tonumber(ARGV[1]) == 0 then return 0 end\n",
    "local key = KEYS[2]\n",
    gcra_step!()
);

/// One failure: KEYS[1] the failure count, KEYS[2] the ban; ARGV after, window ms,
/// ban ms, reason. Returns 1 when this failure started a ban.
const FAILURE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Bans listed at most.
const MAX_LISTED: usize = 10_000;

pub(crate) struct Store {
    link: Arc<Link>,
    /// The store thread's runtime: calls run there, whichever worker asks.
    runtime: Handle,
    prefix: String,
    timeout: Duration,
    gcra: Arc<Script>,
    admit: Arc<Script>,
    failure: Arc<Script>,
    /// While set and in the future, calls are not tried.
    down_until: Mutex<Option<Instant>>,
    up: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

impl Store {
    /// Starts the store thread; the connection itself is made at the first call (an
    /// unreachable store at start is one more failure, not a fatal error).
    pub(crate) fn start(config: &StoreConfig) -> RedisResult<Arc<Store>> {
        let info = redis::Client::open(config.url.as_str())?.get_connection_info().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("portcullis-store".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            })
            .map_err(redis::RedisError::from)?;
        let runtime = rx.recv().map_err(|_| std::io::Error::other("store thread ended at start"))??;
        metrics::store_up(true);
        Ok(Arc::new(Store {
            link: Arc::new(Link::new(info, config.timeout, config.max_reply_size)),
            runtime,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            gcra: Arc::new(Script::new(GCRA)),
            admit: Arc::new(Script::new(ADMIT)),
            failure: Arc::new(Script::new(FAILURE)),
            down_until: Mutex::new(None),
            up: AtomicBool::new(true),
        }))
    }

    fn key(&self, kind: &str, what: impl std::fmt::Display) -> String {
        format!("{}{kind}:{what}", self.prefix)
    }

    /// Runs `call` on the store thread within the timeout; `None` when the store is
    /// down, failed or was too slow (then the caller uses its local state).
    async fn call<T, F>(
        self: &Arc<Self>,
        what: &'static str,
        call: impl FnOnce(MultiplexedConnection) -> F + Send + 'static,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if self.resting() {
            return None;
        }
        let link = self.link.clone();
        let task = self.runtime.spawn(async move { link.run(call).await });
        let result = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        self.noted(what, result)
    }

    /// [`Self::call`] without waiting for the answer, for updates nobody waits on;
    /// `on_failure` runs (on the store thread) when it did not reach the store.
    fn send<F>(
        self: &Arc<Self>,
        what: &'static str,
        call: impl FnOnce(MultiplexedConnection) -> F + Send + 'static,
        on_failure: impl FnOnce() + Send + 'static,
    ) where
        F: Future<Output = RedisResult<()>> + Send + 'static,
    {
        if self.resting() {
            on_failure();
            return;
        }
        let store = self.clone();
        self.runtime.spawn(async move {
            let result = store.link.run(call).await;
            if store.noted(what, result).is_none() {
                on_failure();
            }
        });
    }

    /// Whether the store failed lately and is left alone for now.
    fn resting(&self) -> bool {
        self.down_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| Instant::now() < until)
    }

    fn noted<T>(&self, what: &'static str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::warn!("shared store reachable again; shared limits apply");
                    metrics::store_up(true);
                }
                Some(value)
            }
            Err(error) => {
                metrics::store_error();
                *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + RETRY_AFTER);
                let was_up = self.up.swap(false, Ordering::Relaxed);
                if was_up {
                    metrics::store_up(false);
                }
                if let Some(suppressed) = LogLimit::global().allow("store failed", Instant::now()) {
                    tracing::warn!(
                        call = what, %error, suppressed,
                        "shared store failed; this instance applies its local limits (fail open) until it answers"
                    );
                }
                None
            }
        }
    }

    /// A new connection from `client`: banned, over the rate, or admitted.
    pub(crate) async fn admit(self: &Arc<Self>, client: IpNet, rate: Option<Rate>) -> Option<Result<(), Refusal>> {
        let (ban, key) = (self.key("ban", client), self.key("rate:conn", client));
        let (interval, burst) = rate.map(micros).unwrap_or((0, 0));
        let script = self.admit.clone();
        let answer: i64 = self
            .call("admit", move |mut c| async move {
                script.key(ban).key(key).arg(interval).arg(burst).invoke_async(&mut c).await
            })
            .await?;
        Some(match answer {
            0 => Ok(()),
            n if n < 0 => Err(Refusal::Banned(Duration::from_millis(n.unsigned_abs()))),
            _ => Err(Refusal::Rate),
        })
    }

    /// One event against `rate` on `key` (message or recipient rates).
    pub(crate) async fn rate(
        self: &Arc<Self>,
        kind: &'static str,
        who: &str,
        rate: Rate,
    ) -> Option<Result<(), Duration>> {
        let key = self.key(kind, who);
        let (interval, burst) = micros(rate);
        let script = self.gcra.clone();
        let wait: u64 =
            self.call("rate", move |mut c| async move {
                script.key(key).arg(interval).arg(burst).invoke_async(&mut c).await
            })
            .await?;
        Some(if wait == 0 { Ok(()) } else { Err(Duration::from_micros(wait)) })
    }

    /// Counts one failure toward a fleet-wide ban; `local` runs instead when the store
    /// cannot take it.
    pub(crate) fn failure(
        self: &Arc<Self>,
        client: IpNet,
        kind: &'static str,
        policy: &BanPolicy,
        local: impl FnOnce() + Send + 'static,
    ) {
        let (fail, ban) = (self.key("fail", client), self.key("ban", client));
        let script = self.failure.clone();
        let (after, window, duration) =
            (policy.after, policy.window.as_millis() as u64, policy.duration.as_millis() as u64);
        let call = move |mut c: MultiplexedConnection| async move {
            let started: i64 =
                script.key(fail).key(ban).arg(after).arg(window).arg(duration).arg(kind).invoke_async(&mut c).await?;
            if started == 1 {
                tracing::warn!(%client, reason = kind, ?duration, "client banned across the fleet (shared store)");
            }
            Ok(())
        };
        self.send("failure", call, local);
    }

    pub(crate) async fn passed(self: &Arc<Self>, client: IpNet) -> Option<bool> {
        let key = self.key("passed", client);
        self.call("passed", move |mut c| async move { redis::cmd("EXISTS").arg(key).query_async(&mut c).await }).await
    }

    pub(crate) fn pass(self: &Arc<Self>, client: IpNet, ttl: Duration) {
        let key = self.key("passed", client);
        let ms = ttl.as_millis().max(1) as u64;
        let call = move |mut c: MultiplexedConnection| async move {
            redis::cmd("SET").arg(key).arg(1).arg("PX").arg(ms).query_async(&mut c).await
        };
        self.send("pass", call, || {});
    }

    /// Every ban in the store: client network, time left, reason.
    pub(crate) async fn bans(self: &Arc<Self>) -> Option<Vec<(String, Duration, String)>> {
        let prefix = self.key("ban", "");
        self.call("bans", move |mut c| async move {
            let mut cursor = 0u64;
            let mut keys: Vec<String> = Vec::new();
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 || keys.len() >= MAX_LISTED {
                    break;
                }
            }
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let values: Vec<(Option<String>, i64)> =
                if keys.is_empty() { Vec::new() } else { pipe.query_async(&mut c).await? };
            Ok(keys
                .iter()
                .zip(values)
                .filter(|(_, (_, left))| *left > 0)
                .map(|(k, (reason, left))| {
                    (k[prefix.len()..].to_string(), Duration::from_millis(left as u64), reason.unwrap_or_default())
                })
                .collect())
        })
        .await
    }

    /// A recipient validation answer kept by any instance (`rcpt:` keys): whether the
    /// recipient exists and how long the answer is still good; `Some(None)` when none
    /// is kept.
    pub(crate) async fn recipient(self: &Arc<Self>, what: &str) -> Option<Option<(bool, Duration)>> {
        let key = self.key("rcpt", what);
        let (value, left): (Option<String>, i64) = self
            .call("recipient", move |mut c| async move {
                redis::pipe().cmd("GET").arg(&key).cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await?;
        Some(match value.as_deref() {
            Some("1") if left > 0 => Some((true, Duration::from_millis(left as u64))),
            Some("0") if left > 0 => Some((false, Duration::from_millis(left as u64))),
            _ => None,
        })
    }

    /// Keeps a recipient validation answer for `ttl`, for every instance.
    pub(crate) fn remember_recipient(self: &Arc<Self>, what: &str, known: bool, ttl: Duration) {
        let key = self.key("rcpt", what);
        let ms = ttl.as_millis().max(1) as u64;
        let call = move |mut c: MultiplexedConnection| async move {
            redis::cmd("SET").arg(key).arg(if known { "1" } else { "0" }).arg("PX").arg(ms).query_async(&mut c).await
        };
        self.send("remember recipient", call, || {});
    }

    /// Lifts the ban on `client` (and forgets its failures); whether there was one.
    pub(crate) async fn lift(self: &Arc<Self>, client: IpNet) -> Option<bool> {
        let (ban, fail) = (self.key("ban", client), self.key("fail", client));
        let (bans, _failures): (u32, u32) = self
            .call("lift", move |mut c| async move {
                redis::pipe().cmd("DEL").arg(ban).cmd("DEL").arg(fail).query_async(&mut c).await
            })
            .await?;
        Some(bans > 0)
    }
}

/// A rate as the scripts take it: interval and burst in microseconds.
fn micros(rate: Rate) -> (u64, u64) {
    let interval = (rate.period.as_micros() as u64 / u64::from(rate.count)).max(1);
    (interval, interval * u64::from(rate.count))
}

#[cfg(test)]
mod tests;
