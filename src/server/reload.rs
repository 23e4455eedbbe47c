//! Live reload (SIGHUP): the new file is parsed, validated and compiled whole (TLS
//! certificates and the users file read again, new listeners bound); any error keeps
//! the running config and every error is logged. On success the config is swapped
//! atomically: the next connection, the next command of a session already open and
//! the next backend choice see only the new policy, so nothing of the old one (a relay
//! permission, a rule) survives anywhere.
//!
//! What lives across configs is carried over by identity: a listener with the same
//! name and address keeps its socket (its sessions go on), a backend with the same
//! address keeps its health state and, with the same `max_connections`, its count of
//! open connections. Recipient files are read again; a recipient directory with the
//! same settings keeps its connections (see `crate::recipients`). `server.workers`,
//! `log.format`, `admin.bind`, `[store]` and `[acme]` need a restart.

use super::shared::{Bound, ServerError, Shared};
use crate::config::{self, Config, ConfigError, Loaded, diff};
use crate::metrics;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigError),
    #[error(transparent)]
    Bind(#[from] ServerError),
}

/// Applies new configs to a running [`super::Server`]; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Reads `path` and applies it, logging the outcome: every error, or every change.
    /// Returns the changes applied.
    pub fn reload_file(&self, path: &Path) -> Result<Vec<String>, ReloadError> {
        tracing::info!(path = ?path.display().to_string(), "reloading the configuration");
        let result = match config::load(path) {
            Ok(loaded) => self.apply(loaded),
            Err(e) => {
                crate::activity::reloaded(false, e.problems.clone());
                Err(ReloadError::Config(e))
            }
        };
        match &result {
            Ok(changes) => {
                metrics::reload(true);
                for change in changes {
                    tracing::info!(change = %change, "config changed");
                }
                tracing::info!(changes = changes.len(), "configuration reloaded");
            }
            Err(ReloadError::Config(e)) => {
                metrics::reload(false);
                for problem in &e.problems {
                    tracing::error!(error = ?problem, "config not reloaded");
                }
                tracing::error!(
                    errors = e.problems.len(),
                    "configuration NOT reloaded; the running one stays in force"
                );
            }
            Err(e) => {
                metrics::reload(false);
                tracing::error!(error = %e, "configuration NOT reloaded; the running one stays in force");
            }
        }
        result
    }

    /// Swaps in a validated config; fails (changing nothing) when a new listener cannot
    /// be bound.
    pub fn apply(&self, loaded: Loaded) -> Result<Vec<String>, ReloadError> {
        let applied = self.swap(loaded);
        match &applied {
            Ok(changes) => crate::activity::reloaded(true, changes.clone()),
            Err(e) => crate::activity::reloaded(false, vec![e.to_string()]),
        }
        applied
    }

    fn swap(&self, loaded: Loaded) -> Result<Vec<String>, ReloadError> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
        for w in &loaded.warnings {
            tracing::warn!("config: {w}");
        }
        let old = self.shared.live.load_full();
        let mut new = loaded.config;
        let mut changes = carry_over(&old, &mut new);
        changes.extend(diff::changes(&old, &new));

        // Bind what is new before anything changes, so a failure changes nothing.
        let current = self.shared.listeners.borrow().clone();
        let mut next = Vec::new();
        for l in &new.listeners {
            let same = current.iter().find(|b| b.name == l.name && b.configured == l.bind);
            let same_address = current.iter().find(|b| b.configured == l.bind && l.bind.port() != 0);
            next.push(match (same, same_address) {
                (Some(b), _) => b.clone(),
                // Renamed: the socket stays, so no connection is refused meanwhile.
                (None, Some(b)) => Arc::new(Bound {
                    name: l.name.clone(),
                    configured: l.bind,
                    socket: b.socket.try_clone().map_err(|error| ServerError::Bind {
                        name: l.name.clone(),
                        addr: l.bind,
                        error,
                    })?,
                    stop: tokio_util::sync::CancellationToken::new(),
                }),
                (None, None) => Arc::new(Bound::new(&l.name, l.bind)?),
            });
        }

        // Recipient files are read again; one that cannot be read now keeps the running
        // config whole (the sockets bound above close again).
        self.shared
            .recipients
            .update(&new.recipients)
            .map_err(|e| ReloadError::Config(ConfigError { problems: e.0, warnings: Vec::new() }))?;
        self.shared.limits.set(new.limits.max_connections, new.limits.max_connections_per_ip);
        self.shared.backends.keep_only(&new.backends);
        self.shared.live.store(Arc::new(new));
        for gone in current.iter().filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b))) {
            gone.stop.cancel();
        }
        let next = Arc::new(next);
        self.shared.listeners.send_replace(next.clone());
        for b in next.iter() {
            if !current.iter().any(|c| Arc::ptr_eq(c, b)) {
                tracing::info!(listener = %b.name, addr = %b.local_addr(), "listening");
            }
        }
        Ok(changes)
    }
}

/// Keeps the settings that need a restart; returns a line for each setting kept.
/// (The backends' live state is not in the config: the registry keeps it by address.)
fn carry_over(old: &Config, new: &mut Config) -> Vec<String> {
    let mut kept = Vec::new();
    if new.workers != old.workers {
        kept.push(format!("server.workers: {} -> {} needs a restart; still {}", old.workers, new.workers, old.workers));
        new.workers = old.workers;
    }
    if new.log_format != old.log_format {
        kept.push(format!("log.format: {:?} needs a restart; still {:?}", new.log_format, old.log_format));
        new.log_format = old.log_format;
    }
    if new.admin != old.admin {
        let show = |a: Option<std::net::SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        kept.push(format!("admin.bind: {} needs a restart; still {}", show(new.admin), show(old.admin)));
        new.admin = old.admin;
    }
    if new.store != old.store {
        let show =
            |s: &Option<crate::screen::store::StoreConfig>| s.as_ref().map_or("none".to_string(), |s| s.url.clone());
        kept.push(format!("store: {} needs a restart; still {}", show(&new.store), show(&old.store)));
        new.store = old.store.clone();
    }
    // The ACME task, its HTTP listener and its state are started with the server.
    let acme = |c: &Config| c.acme.as_ref().map_or("none".to_string(), |a| a.settings());
    if acme(new) != acme(old) {
        kept.push(format!("acme: {} needs a restart; still {}", acme(new), acme(old)));
        new.acme = old.acme.clone();
    }
    kept
}
