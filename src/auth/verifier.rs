//! Password checks, bounded. An argon2 verification costs about 19 MiB and tens of
//! milliseconds of CPU by design; unbounded, a crowd of wrong passwords costs the
//! process gigabytes. Checks run on a fixed set of threads (one per core), so at most
//! that many run at once and their memory is reused rather than spread over the
//! ever-changing threads of a blocking pool; a check waits briefly for a free thread
//! and is otherwise refused as busy (the client gets a temporary failure).
//!
//! glibc keeps freed blocks of that size in its per-thread heaps, fragmented, so
//! repeated checks grew the process by about 19 MiB each (measured: 420 MiB after 40
//! checks on two threads). Allocations of 1 MiB and more are therefore taken straight
//! from the kernel and given back when freed.

use super::Users;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Semaphore, oneshot};

/// How long a check may wait for a free verifier thread. The crate's own unit tests run
/// many sessions with AUTH at once on a loaded machine: there a wait is not the point.
const QUEUE_WAIT: Duration = if cfg!(test) { Duration::from_secs(10) } else { PRODUCTION_WAIT };
const PRODUCTION_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum VerifyError {
    #[error("every password verifier is busy")]
    Busy,
}

type Job = Box<dyn FnOnce() + Send>;

struct Verifier {
    /// One permit per thread: a job is only queued when a thread is free for it.
    permits: Semaphore,
    jobs: SyncSender<Job>,
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        large_allocations_from_the_kernel();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let (jobs, queue) = sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned =
                std::thread::Builder::new().name(format!("portcullis-verify-{i}")).spawn(move || work(&queue));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password verifier thread");
            }
        }
        Verifier { permits: Semaphore::new(threads), jobs }
    })
}

/// Fixes glibc's mmap threshold at 1 MiB (which also stops it from rising after each
/// free, the cause of the growth).
fn large_allocations_from_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called once, before the
    // verifier threads exist, and glibc serializes it against concurrent allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Checks `password` for `user` on a verifier thread.
pub(crate) async fn verify(users: Arc<Users>, user: String, password: String) -> Result<bool, VerifyError> {
    verify_within(QUEUE_WAIT, users, user, password).await
}

/// [`verify`], waiting at most `wait` for a free verifier thread.
async fn verify_within(wait: Duration, users: Arc<Users>, user: String, password: String) -> Result<bool, VerifyError> {
    let v = verifier();
    let _permit = match tokio::time::timeout(wait, v.permits.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => return Err(VerifyError::Busy),
    };
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(users.verify(&user, &password));
    });
    v.jobs.try_send(job).map_err(|_| VerifyError::Busy)?;
    rx.await.map_err(|_| VerifyError::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_run_and_a_crowd_is_turned_away() {
        let hash = super::super::users::hash_password("pw").unwrap();
        let users = Arc::new(Users::parse(&format!("alice:{hash}\n")).unwrap());
        assert_eq!(verify(users.clone(), "alice".into(), "pw".into()).await, Ok(true));
        assert_eq!(verify(users.clone(), "alice".into(), "nope".into()).await, Ok(false));
        // Far more than the verifier threads can check within the queue wait.
        let crowd: Vec<_> = (0..200)
            .map(|_| tokio::spawn(verify_within(PRODUCTION_WAIT, users.clone(), "alice".into(), "nope".into())))
            .collect();
        let mut busy = 0;
        for check in crowd {
            if check.await.unwrap() == Err(VerifyError::Busy) {
                busy += 1;
            }
        }
        assert!(busy > 0, "200 checks at once should not all get a verifier");
    }
}
