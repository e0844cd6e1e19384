//! What the runner knows of any downstream stage host (a `qaqc-{i}` or an
//! `archive-{i}`): its name, when it first starts, and the handles that
//! survive its restarts, so one piece of runner code scripts crashes,
//! power cuts, outages and clean stops of every stage alike.

use crate::world::{BROKER_HOST, BROKER_PORT};
use soilstream::component::ShutdownTrigger;
use soilstream::transport::{ConsumeError, ConsumerFactory, LogConsumer};
use soilstream_sim::{ConsumerConfig, GroupConsumerConfig, SimConsumer, SimGroupConsumer};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The runner's handles on one stage host.
pub struct StageHost {
    /// Host name (`qaqc-{i}`, `archive-{i}`), also the instance id.
    pub name: String,
    /// The shutdown trigger of the running boot, if any.
    pub shutdown: Rc<RefCell<Option<ShutdownTrigger>>>,
    /// Set when the runner wants the host to stay stopped.
    pub stopping: Rc<Cell<bool>>,
    /// Boots so far.
    pub boots: Rc<Cell<u32>>,
    /// Runs that ended with an error, with the error.
    pub failures: Rc<RefCell<Vec<String>>>,
    /// Whether the host was added to the simulation (it starts at
    /// `start_at_ms`).
    pub started: Cell<bool>,
    /// When it first starts, ms.
    pub start_at_ms: u64,
}

impl StageHost {
    /// Handles of a host not yet added to the simulation.
    pub fn new(name: String, start_at_ms: u64) -> Self {
        Self {
            name,
            shutdown: Rc::new(RefCell::new(None)),
            stopping: Rc::new(Cell::new(false)),
            boots: Rc::new(Cell::new(0)),
            failures: Rc::new(RefCell::new(Vec::new())),
            started: Cell::new(false),
            start_at_ms,
        }
    }

    /// Asks the running boot to stop cleanly, and the host to stay down.
    pub fn stop(&self) {
        self.stopping.set(true);
        if let Some(trigger) = self.shutdown.borrow().as_ref() {
            trigger.trigger();
        }
    }

    /// The boot-side handles, moved into the host's software.
    pub fn boot_handles(&self) -> BootHandles {
        BootHandles {
            shutdown: self.shutdown.clone(),
            stopping: self.stopping.clone(),
            boots: self.boots.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// What one boot of a stage host's software touches.
#[derive(Clone)]
pub struct BootHandles {
    shutdown: Rc<RefCell<Option<ShutdownTrigger>>>,
    stopping: Rc<Cell<bool>>,
    boots: Rc<Cell<u32>>,
    failures: Rc<RefCell<Vec<String>>>,
}

impl BootHandles {
    /// Starts a boot: `None` when the runner wants the host to stay down,
    /// else the shutdown the boot must obey (its trigger is the runner's).
    pub fn begin(&self) -> Option<soilstream::component::Shutdown> {
        if self.stopping.get() {
            return None;
        }
        self.boots.set(self.boots.get() + 1);
        let (trigger, shutdown) = soilstream::component::Shutdown::new();
        *self.shutdown.borrow_mut() = Some(trigger);
        Some(shutdown)
    }

    /// Joins the boot's consumer group; a configuration the client refuses
    /// is recorded as the boot's failure.
    pub fn group(&self, config: GroupConsumerConfig) -> Option<SimGroupConsumer> {
        SimGroupConsumer::new(config).map_err(|e| self.failed(e)).ok()
    }

    /// Records a boot that ended with an error (or could not start).
    pub fn failed(&self, error: impl std::fmt::Display) {
        self.failures.borrow_mut().push(error.to_string());
    }
}

/// The group membership a stage host runs with: the scenario's session
/// timeout and poll size, heartbeats at a sixth of the session, every
/// timeout at least what the tick allows (a round trip takes two ticks).
pub fn group_config(
    group: &str,
    session_timeout_ms: u64,
    max_poll_records: u32,
    tick_ms: u64,
) -> GroupConsumerConfig {
    let mut config = GroupConsumerConfig::new(BROKER_HOST, BROKER_PORT, group);
    config.session_timeout_ms = session_timeout_ms;
    config.heartbeat_interval_ms = (session_timeout_ms / 6).max(tick_ms);
    config.rebalance_timeout_ms = 2 * session_timeout_ms;
    config.request_timeout_ms = config.request_timeout_ms.max(10 * tick_ms);
    config.connect_timeout_ms = config.connect_timeout_ms.max(10 * tick_ms);
    config.join_retry_ms = config.join_retry_ms.max(tick_ms);
    config.max_poll_records = max_poll_records;
    config
}

/// Plain consumers of the simulated broker, built on demand.
pub fn consumer_factory(config: ConsumerConfig) -> ConsumerFactory {
    Box::new(move || {
        SimConsumer::new(config.clone())
            .map(|c| Box::new(c) as Box<dyn LogConsumer>)
            .map_err(|e| ConsumeError::Other(e.to_string()))
    })
}
