//! Awaiting a condition on shared state without sleeping: every change
//! notifies, and each waiter re-checks its condition when woken.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A condition did not hold within its timeout.
#[derive(Debug, Clone)]
pub struct WaitTimeout {
    pub what: String,
    pub after: Duration,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.after, self.what
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// State behind a mutex plus a notifier that wakes waiters on every change.
pub(crate) struct Watched<T> {
    state: Mutex<T>,
    changed: Notify,
}

impl<T> Watched<T> {
    pub(crate) fn new(state: T) -> Self {
        Watched {
            state: Mutex::new(state),
            changed: Notify::new(),
        }
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the state and wakes every waiter.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let result = f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
        result
    }

    /// Changes the state without waking the waiters: a change no
    /// condition reads.
    pub(crate) fn quietly<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `condition` holds or `timeout` passes.
    pub(crate) async fn until(
        &self,
        what: impl Into<String>,
        timeout: Duration,
        mut condition: impl FnMut(&T) -> bool,
    ) -> Result<(), WaitTimeout> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.read(&mut condition) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Err(WaitTimeout {
                    what: what.into(),
                    after: timeout,
                });
            }
        }
    }
}
