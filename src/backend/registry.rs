//! What is live about each backend, kept here rather than in the config (which is
//! plain data): its connection slots, its health and the extensions it offered last,
//! keyed by address. A reload that keeps an address keeps its state, so it neither
//! forgets an outage nor marks a down backend up; a new `max_connections` gets new
//! slots (connections open on the old ones end with their sessions).

use super::health::BackendHealth;
use crate::config::{Backend, Config};
use crate::smtp::Capabilities;
use crate::smtp::capabilities::Learned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Semaphore;

/// One backend's live state.
#[derive(Debug)]
pub(crate) struct BackendState {
    /// Connections open to it at once, at most `max_connections`; shared by every session.
    pub(crate) slots: Arc<Semaphore>,
    max_connections: usize,
    /// What the health checks found.
    pub(crate) health: Arc<BackendHealth>,
    /// The extensions it offered last (health check or session).
    pub(crate) learned: Arc<Learned>,
    /// What it offers this proxy itself, before any identity step (a health check's
    /// EHLO, or a session's first): the XCLIENT attributes it lets us set.
    pub(crate) ours: Arc<Learned>,
}

/// Every backend's state, by address. One per server; sessions and checks share it.
#[derive(Debug, Default)]
pub(crate) struct Registry(Mutex<HashMap<String, Arc<BackendState>>>);

/// The states a thread looked up last, and for which registry and config: sessions
/// mostly follow the same config, and a lookup takes the registry's lock and hashes
/// every address. (The weak pointers keep the addresses from being reused.)
type LastStates = (Weak<Registry>, Weak<Config>, Arc<[Arc<BackendState>]>);

thread_local! {
    static LAST: RefCell<Option<LastStates>> = const { RefCell::new(None) };
}

impl Registry {
    /// The state of `backend`, made when first asked for.
    pub(crate) fn get(&self, backend: &Backend) -> Arc<BackendState> {
        let mut states = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Self::entry(&mut states, backend)
    }

    /// The states of `backends`, in order, under one lock (a session's connect asks
    /// about each).
    pub(crate) fn all(&self, backends: &[Backend]) -> Vec<Arc<BackendState>> {
        let mut states = self.0.lock().unwrap_or_else(|e| e.into_inner());
        backends.iter().map(|b| Self::entry(&mut states, b)).collect()
    }

    fn entry(states: &mut HashMap<String, Arc<BackendState>>, backend: &Backend) -> Arc<BackendState> {
        if let Some(state) = states.get(&backend.address)
            && state.max_connections == backend.max_connections
        {
            return state.clone();
        }
        let old = states.get(&backend.address);
        let state = Arc::new(BackendState {
            slots: Arc::new(Semaphore::new(backend.max_connections.max(1))),
            max_connections: backend.max_connections,
            health: old.map_or_else(Default::default, |o| o.health.clone()),
            learned: old.map_or_else(Default::default, |o| o.learned.clone()),
            ours: old.map_or_else(Default::default, |o| o.ours.clone()),
        });
        states.insert(backend.address.clone(), state.clone());
        state
    }

    /// The states of `config`'s backends, in order; the same as [`Registry::all`].
    pub(crate) fn states_for(self: &Arc<Self>, config: &Arc<Config>) -> Arc<[Arc<BackendState>]> {
        LAST.with_borrow_mut(|last| {
            if let Some((registry, known, states)) = last
                && std::ptr::eq(registry.as_ptr(), Arc::as_ptr(self))
                && std::ptr::eq(known.as_ptr(), Arc::as_ptr(config))
            {
                return states.clone();
            }
            let states: Arc<[Arc<BackendState>]> = self.all(&config.backends).into();
            *last = Some((Arc::downgrade(self), Arc::downgrade(config), states.clone()));
            states
        })
    }

    /// Forgets the backends a reload removed.
    pub(crate) fn keep_only(&self, backends: &[Backend]) {
        let mut states = self.0.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|address, _| backends.iter().any(|b| &b.address == address));
    }

    pub(crate) fn any_up(&self, backends: &[Backend]) -> bool {
        self.all(backends).iter().any(|s| s.health.is_up())
    }
}

/// What the backend a new session would most likely reach supports (`states` are the
/// configured backends'): the first one up, as it last showed itself. Nothing learned
/// yet: no extension.
pub(crate) fn with_expected_capabilities<R>(states: &[Arc<BackendState>], f: impl Fn(&Capabilities) -> R) -> R {
    let state = states.iter().find(|s| s.health.is_up()).or(states.first());
    state.and_then(|s| s.learned.read(&f)).unwrap_or_else(|| f(&Capabilities::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(max: &str) -> Vec<Backend> {
        let text = format!(
            "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10025\"\n\
             max_connections = {max}\n[[backend]]\naddress = \"127.0.0.1:10026\"\n"
        );
        crate::config::parse(&text).unwrap().config.backends
    }

    #[test]
    fn state_outlives_a_config_with_the_same_address() {
        let registry = Registry::default();
        let first = backends("2");
        let state = registry.get(&first[0]);
        assert_eq!(state.slots.available_permits(), 2);
        let held = state.slots.clone().try_acquire_owned().unwrap();
        state.health.record(false, &crate::config::HealthCheck { fall: 1, ..first[0].check });
        assert!(!registry.get(&first[0]).health.is_up());
        // Same address and limit: the same slots; a new limit: new slots, same health.
        assert_eq!(registry.get(&backends("2")[0]).slots.available_permits(), 1);
        let resized = registry.get(&backends("5")[0]);
        assert_eq!(resized.slots.available_permits(), 5);
        assert!(!resized.health.is_up());
        drop(held);
        registry.keep_only(&backends("5")[1..]);
        assert!(registry.get(&first[0]).health.is_up(), "forgotten, then made anew");
    }
}
