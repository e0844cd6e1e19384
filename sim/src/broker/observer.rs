//! [`BrokerObserver`]: a read-only window onto the running broker's core, for
//! the scenario runner and tests (between simulation steps).

use super::core::BrokerCore;
use super::groups::{GroupStats, GroupView};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

/// Shared handle observing the broker core of the current host incarnation.
///
/// The core lives inside the broker host's software; when the host crashes
/// it is dropped and the observer sees nothing until the next start.
#[derive(Debug, Clone, Default)]
pub struct BrokerObserver {
    core: Rc<RefCell<Weak<RefCell<BrokerCore>>>>,
    starts: Rc<Cell<u64>>,
}

impl std::fmt::Debug for BrokerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCore")
            .field("high_watermarks", &self.high_watermarks())
            .finish_non_exhaustive()
    }
}

impl BrokerObserver {
    /// An observer not attached to any core yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches to a freshly opened core (called by the broker server).
    pub fn attach(&self, core: &Rc<RefCell<BrokerCore>>) {
        *self.core.borrow_mut() = Rc::downgrade(core);
        self.starts.set(self.starts.get() + 1);
    }

    /// How many times a broker core was attached (broker starts).
    pub fn starts(&self) -> u64 {
        self.starts.get()
    }

    /// Whether a core is running.
    pub fn is_up(&self) -> bool {
        self.core.borrow().strong_count() > 0
    }

    /// Runs `inspect` on the running core; `None` if the broker is down (or
    /// the core is busy, which cannot happen between simulation steps).
    pub fn with_core<R>(&self, inspect: impl FnOnce(&BrokerCore) -> R) -> Option<R> {
        let core = self.core.borrow().upgrade()?;
        let core = core.try_borrow().ok()?;
        Some(inspect(&core))
    }

    /// [`BrokerCore::state_digest`] of the running core.
    pub fn state_digest(&self) -> Option<u64> {
        self.with_core(BrokerCore::state_digest)
    }

    /// [`BrokerCore::group_stats`] of the running core (counters restart
    /// with the broker).
    pub fn group_stats(&self) -> Option<GroupStats> {
        self.with_core(BrokerCore::group_stats)
    }

    /// [`BrokerCore::groups`] of the running core.
    pub fn groups(&self) -> Option<Vec<GroupView>> {
        self.with_core(BrokerCore::groups)
    }
}
