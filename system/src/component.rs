//! What every component (the gateway, qaqc, the archive, backfill) shares:
//! the shutdown signal its `run` function takes.
//!
//! Components have one shape, as sources, transforms and sinks do in Vector:
//! a TOML config section with embedded defaults, a library `run` function
//! taking world-independent settings, the world-specific seam parts and a
//! [`Shutdown`], metrics on the same endpoint, and an observer hook for
//! checkers. The CLI wraps `run` for a real host; the simulator wraps the
//! same function in a turmoil host.

use tokio::sync::watch;
use tokio::time::{Duration, sleep};

/// A shutdown signal shared by a component's tasks.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// Resolves once shutdown was triggered (immediately if it already was,
    /// or if the trigger was dropped).
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }
}

impl ShutdownTrigger {
    /// Asks every holder of the signal to stop.
    pub fn trigger(&self) {
        let _ = self.sender.send(true);
    }
}

/// Capped exponential backoff.
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    /// A backoff starting at `initial_ms`, doubling up to `max_ms`.
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        assert!(initial_ms > 0 && initial_ms <= max_ms);
        Self {
            initial_ms,
            max_ms,
            next_ms: initial_ms,
        }
    }

    /// The next delay (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        Duration::from_millis(delay)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

/// Runs `attempt` until it succeeds, with `backoff` between failures
/// (each logged with `what`); `None` if `shutdown` fires first.
pub async fn retry_until_shutdown<T, E, F>(
    what: &str,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
    mut attempt: impl FnMut() -> F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let result = tokio::select! {
            biased;
            _ = shutdown.wait() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => {
                backoff.reset();
                return Some(value);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::select! { biased; _ = shutdown.wait() => return None, _ = sleep(delay) => {} }
            }
        }
    }
}
