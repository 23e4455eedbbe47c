//! One timer per connection, armed again for every wait. `tokio::time::timeout` puts an
//! entry into the runtime's timer wheel for every wait that does not finish at once, and
//! takes it out again after; a session waits on its client and its backend about fifteen
//! times per message. A [`Deadline`] keeps one entry for the life of the connection:
//! moving it later only records the new time (tokio moves the entry when the old time
//! comes), and a wait that finishes at once arms nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The limit passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

pub(crate) struct Deadline(Pin<Box<Sleep>>);

impl Deadline {
    /// Needs a runtime with time enabled, as `tokio::time::sleep` does.
    pub(crate) fn new() -> Self {
        // Not in the wheel until a wait arms it.
        Self(Box::pin(tokio::time::sleep(Duration::from_secs(86_400))))
    }

    /// `future`'s output, unless `limit` passes first (then `future` is dropped
    /// unfinished, as with `tokio::time::timeout`).
    pub(crate) async fn within<F: Future>(&mut self, limit: Duration, future: F) -> Result<F::Output, Elapsed> {
        let mut future = std::pin::pin!(future);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            if !armed {
                self.0.as_mut().reset(Instant::now() + limit);
                armed = true;
            }
            self.0.as_mut().poll(cx).map(|()| Err(Elapsed))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_output_or_elapses() {
        let mut deadline = Deadline::new();
        assert_eq!(deadline.within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(deadline.within(Duration::from_secs(1), slow).await, Err(Elapsed));
        // Armed again after it fired, and later than before: the new limit holds.
        let started = Instant::now();
        let ok = tokio::time::sleep(Duration::from_secs(3));
        assert_eq!(deadline.within(Duration::from_secs(4), ok).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Moved earlier than the time it holds: the earlier limit holds.
        let started = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(deadline.within(Duration::from_millis(500), slow).await, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_limit_is_not_cut_short_by_an_earlier_one() {
        let mut deadline = Deadline::new();
        // Armed at 1 s, then moved later without touching the wheel.
        let pending = tokio::time::sleep(Duration::from_millis(100));
        assert_eq!(deadline.within(Duration::from_secs(1), pending).await, Ok(()));
        let started = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(2));
        assert_eq!(deadline.within(Duration::from_secs(10), slow).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
