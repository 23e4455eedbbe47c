//! Backend connections kept between sessions (`reuse` on a `[[backend]]`): a session
//! that ends cleanly gives its greeted connection back instead of sending QUIT, and the
//! next session's MAIL takes it, saving the TCP handshake, the greeting, EHLO and QUIT
//! of every message. Only for identities that do not bind a connection to one client
//! (XFORWARD, which tells the backend the client again with every transaction, and
//! none); never across a transaction that did not end, a reply that left the state
//! unclear, or a login made at the backend (the session does not give those back).
//!
//! Connections live on the worker thread whose runtime owns their sockets: one pool per
//! worker and backend address. A kept connection is checked before it is used again
//! (anything the backend sent while it waited, such as a 421 or its close, discards
//! it), waits at most `reuse_idle` and carries at most `reuse_max_messages`.

use super::upstream::Upstream;
use crate::config::Backend;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections kept per backend and worker, at most.
const MAX_KEPT: usize = 32;

struct Kept {
    upstream: Box<Upstream>,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<String, Vec<Kept>>> = RefCell::new(HashMap::new());
    /// Backends whose kept connections a sweeper task watches on this worker.
    static SWEEPING: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// Connections kept, over every worker, by backend address (for the status page).
static KEPT: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn count(address: &str, added: usize, removed: usize) {
    if added == removed {
        return;
    }
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let n = kept.get_or_insert_with(HashMap::new).entry(address.to_string()).or_default();
    *n = (*n + added).saturating_sub(removed);
}

/// Connections to `address` kept now, over every worker.
pub(crate) fn kept(address: &str) -> usize {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|k| k.get(address).copied()).unwrap_or(0)
}

/// A kept connection to `backend` that can serve a new session, if there is one.
pub(crate) fn take(backend: &Backend) -> Option<Box<Upstream>> {
    let reuse = backend.reuse?;
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let kept = pool.get_mut(&backend.address)?;
        let before = kept.len();
        let mut found = None;
        // The most recently used first: the likeliest to be alive and warm.
        while let Some(mut k) = kept.pop() {
            if k.since.elapsed() <= reuse.idle && k.upstream.reusable_for(backend) {
                found = Some(k.upstream);
                break;
            }
        }
        count(&backend.address, 0, before - kept.len());
        found
    })
}

/// Keeps `upstream` for another session when `backend` allows it and the connection
/// is clean; otherwise closes it politely. A worker keeps at most its share
/// (`max_connections` over `workers`) of the backend's connections, so that kept ones
/// never starve another worker's sessions.
pub(crate) async fn give_back(mut upstream: Box<Upstream>, backend: Option<&Backend>, workers: usize) {
    let Some(reuse) = backend.and_then(|b| b.reuse) else { return (*upstream).quit().await };
    let backend = backend.expect("reuse comes from it");
    if upstream.messages >= reuse.max_messages || !upstream.reset_for_reuse().await || !upstream.reusable_for(backend) {
        return (*upstream).quit().await;
    }
    let address = backend.address.clone();
    let mut evicted = expired(&address, reuse.idle);
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let kept = pool.entry(address.clone()).or_default();
        let share = (backend.max_connections / workers.max(1)).clamp(1, MAX_KEPT);
        let before = evicted.len();
        while kept.len() >= share {
            evicted.push(kept.remove(0).upstream);
        }
        kept.push(Kept { upstream, since: Instant::now() });
        count(&address, 1, evicted.len() - before);
    });
    for old in evicted {
        (*old).quit().await;
    }
    if SWEEPING.with(|s| s.borrow_mut().insert(address.clone())) {
        // Without traffic nobody would look: a task on this worker closes connections
        // that waited too long, and ends when none is left.
        tokio::spawn(sweep(address, reuse.idle));
    }
}

async fn sweep(address: String, idle: Duration) {
    loop {
        tokio::time::sleep(idle / 2).await;
        for old in expired(&address, idle) {
            (*old).quit().await;
        }
        let empty = POOL.with(|pool| pool.borrow().get(&address).is_none_or(Vec::is_empty));
        if empty {
            SWEEPING.with(|s| s.borrow_mut().remove(&address));
            return;
        }
    }
}

/// Takes out the connections to `address` that waited longer than `idle`.
// Boxed: a session holds its connection boxed, and so it moves between the two.
#[allow(clippy::vec_box)]
fn expired(address: &str, idle: Duration) -> Vec<Box<Upstream>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let Some(kept) = pool.get_mut(address) else { return Vec::new() };
        let now = Instant::now();
        let (old, fresh): (Vec<Kept>, Vec<Kept>) = kept.drain(..).partition(|k| now.duration_since(k.since) > idle);
        *kept = fresh;
        count(address, 0, old.len());
        old.into_iter().map(|k| k.upstream).collect()
    })
}
