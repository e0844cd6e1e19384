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
