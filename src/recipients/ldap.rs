//! The directory source: `ldap3` over rustls (`ldaps://`, or `ldap://` with StartTLS),
//! a simple bind with the configured password, a subtree search under `base` with the
//! filter, asking for no attribute (`1.1`) and one entry at most: an entry found means
//! the recipient exists.
//!
//! Connections are kept in a small pool ([`POOL_SIZE`]) and run on the directory
//! thread (the worker that asks only waits for the answer), so a lookup never depends
//! on which worker opened the connection. A connection that fails is dropped; one
//! taken from the pool is tried once more on a fresh connection (directories close
//! idle ones: Active Directory after 15 minutes). After a failure the directory is
//! left alone for a backoff that doubles up to [`MAX_BACKOFF`], so while it is down a
//! lookup fails at once instead of making every client wait for the timeout.

use super::table;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

/// Connections open to one directory at most; lookups beyond wait for one.
pub(crate) const POOL_SIZE: usize = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Result codes a search may end with and still have answered (RFC 4511 4.1.9):
/// success, and sizeLimitExceeded (more than one entry matched).
const SEARCH_ANSWERED: [u32; 2] = [0, 4];

#[derive(Debug, Error)]
pub(crate) enum DirectoryError {
    #[error("not asked: the directory failed {0:?} ago and is left alone for now")]
    Resting(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("bind as {dn:?} refused: {error}")]
    Bind { dn: String, error: String },
    #[error("search failed: {0}")]
    Search(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("lookup task ended: {0}")]
    Task(String),
    #[error("{0} lookups already wait for the directory")]
    Busy(usize),
}

/// Lookups waiting for the directory at once, at most; more fail at once (451), so a
/// directory that hangs cannot gather an unbounded queue.
const MAX_WAITING: usize = 256;

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    since: Option<Instant>,
    until: Option<Instant>,
}

/// A lookup in flight on the directory's thread.
struct Waiting<'a> {
    task: tokio::task::JoinHandle<Result<bool, DirectoryError>>,
    count: &'a std::sync::atomic::AtomicUsize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.task.abort();
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One configured directory, live: its pool and its health.
pub(crate) struct Directory {
    settings: table::Directory,
    idle: Mutex<Vec<Ldap>>,
    slots: Arc<Semaphore>,
    /// Lookups started and not yet ended.
    waiting: std::sync::atomic::AtomicUsize,
    backoff: Mutex<Backoff>,
    /// The directory thread's runtime: connections are made and driven there.
    runtime: Handle,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("settings", &self.settings).finish()
    }
}

impl Directory {
    pub(crate) fn new(settings: table::Directory, runtime: Handle) -> Arc<Directory> {
        Arc::new(Directory {
            settings,
            idle: Mutex::default(),
            slots: Arc::new(Semaphore::new(POOL_SIZE)),
            waiting: Default::default(),
            backoff: Mutex::default(),
            runtime,
        })
    }

    /// Lookups in flight now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn settings(&self) -> &table::Directory {
        &self.settings
    }

    /// Whether an entry matches `filter`; within the lookup timeout, or an error.
    pub(crate) async fn exists(self: &Arc<Self>, filter: String) -> Result<bool, DirectoryError> {
        let now = Instant::now();
        if let Some(since) = self.resting(now) {
            return Err(DirectoryError::Resting(now.saturating_duration_since(since)));
        }
        use std::sync::atomic::Ordering;
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(DirectoryError::Busy(waiting));
        }
        let me = self.clone();
        let limit = self.settings.timeout;
        // The whole lookup (a free connection, connect, bind, search) within the limit,
        // on the directory's thread too: a lookup given up here does not go on there.
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(limit, me.search(&filter)).await.unwrap_or(Err(DirectoryError::Timeout(limit)))
        });
        // Aborted and uncounted however this ends (a session that goes away included).
        let mut task = Waiting { task, count: &self.waiting };
        let result = match tokio::time::timeout(limit, &mut task.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(DirectoryError::Task(e.to_string())),
            Err(_) => Err(DirectoryError::Timeout(limit)),
        };
        drop(task);
        self.noted(&result);
        result
    }

    fn resting(&self, now: Instant) -> Option<Instant> {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match (b.until, b.since) {
            (Some(until), Some(since)) if now < until => Some(since),
            _ => None,
        }
    }

    fn noted<T>(&self, result: &Result<T, DirectoryError>) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => *b = Backoff::default(),
            Err(DirectoryError::Resting(_)) => {}
            Err(_) => {
                let now = Instant::now();
                b.failures = b.failures.saturating_add(1);
                let wait = FIRST_BACKOFF.saturating_mul(1 << (b.failures - 1).min(10)).min(MAX_BACKOFF);
                b.since.get_or_insert(now);
                b.until = Some(now + wait);
            }
        }
    }

    /// Runs on the directory thread.
    async fn search(&self, filter: &str) -> Result<bool, DirectoryError> {
        let _slot = self.slots.acquire().await.map_err(|e| DirectoryError::Task(e.to_string()))?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A kept connection the directory closed meanwhile fails: once more on a new one.
        if let Some(mut ldap) = pooled
            && !ldap.is_closed()
            && let Ok(found) = self.search_on(&mut ldap, filter).await
        {
            self.give_back(ldap);
            return Ok(found);
        }
        let mut ldap = self.connect().await?;
        let found = self.search_on(&mut ldap, filter).await?;
        self.give_back(ldap);
        Ok(found)
    }

    fn give_back(&self, ldap: Ldap) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(ldap);
        }
    }

    async fn search_on(&self, ldap: &mut Ldap, filter: &str) -> Result<bool, DirectoryError> {
        let base = self.settings.base.as_str();
        let result = ldap
            .with_search_options(SearchOptions::new().sizelimit(1))
            .with_timeout(self.settings.timeout)
            .search(base, Scope::Subtree, filter, vec!["1.1"])
            .await
            .map_err(|e| DirectoryError::Search(e.to_string()))?;
        let (entries, outcome) = (result.0, result.1);
        if !SEARCH_ANSWERED.contains(&outcome.rc) {
            return Err(DirectoryError::Search(outcome.to_string()));
        }
        // Referrals (continuation references) are not entries: nothing found here.
        Ok(entries.iter().any(|e| !e.is_ref()))
    }

    async fn connect(&self) -> Result<Ldap, DirectoryError> {
        let s = &self.settings;
        let mut settings = LdapConnSettings::new().set_conn_timeout(s.timeout).set_starttls(s.starttls);
        if let Some(tls) = &s.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(settings, &s.url).await.map_err(|e| DirectoryError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        if let Some(bind) = &s.bind {
            let refused = |error: String| DirectoryError::Bind { dn: bind.dn.clone(), error };
            ldap.with_timeout(s.timeout)
                .simple_bind(&bind.dn, &bind.password)
                .await
                .map_err(|e| refused(e.to_string()))?
                .success()
                .map_err(|e| refused(e.to_string()))?;
        }
        Ok(ldap)
    }
}
