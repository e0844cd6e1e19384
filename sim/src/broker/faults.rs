//! [`BrokerFaults`]: faults the broker server injects around its core.
//!
//! A shared handle (the scenario runner keeps one; the broker host gets
//! clones), so settings, counters and the random stream survive broker
//! restarts. Decisions draw from a ChaCha8 stream seeded by the caller, only
//! when the corresponding fault is on.
//!
//! - **Lost acks**: a produce that appended is answered with nothing; the
//!   producer times out, reconnects and resends, and idempotence must dedupe.
//! - **Request errors**: a request is answered with the retriable
//!   `NotLeaderOrFollower` without being processed, with a probability or
//!   during a window of simulated time.
//! - **Slowness**: every request is answered after an extra delay (a stall,
//!   if the delay exceeds the clients' request timeout).

use crate::protocol::{ErrorCode, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;

/// Fault settings; every field can be changed at any time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BrokerFaultConfig {
    /// Probability that the response to a produce that appended (or
    /// deduplicated) at least one batch is dropped.
    pub drop_ack_probability: f64,
    /// Probability that a request fails with a retriable error unprocessed.
    pub error_probability: f64,
    /// Every request failing within `[start_ms, end_ms)` of simulated time
    /// since the start of the simulation fails with a retriable error.
    pub error_window_ms: Option<(u64, u64)>,
    /// Extra delay before each request is processed.
    pub response_delay_ms: u64,
}

impl BrokerFaultConfig {
    /// Checks probabilities and the window.
    pub fn validate(&self) -> Result<(), BrokerFaultError> {
        for (name, value) in [
            ("drop_ack_probability", self.drop_ack_probability),
            ("error_probability", self.error_probability),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(BrokerFaultError::InvalidProbability { name, value });
            }
        }
        if let Some((start_ms, end_ms)) = self.error_window_ms
            && start_ms > end_ms
        {
            return Err(BrokerFaultError::InvalidWindow { start_ms, end_ms });
        }
        Ok(())
    }
}

/// Why a fault setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerFaultError {
    /// A probability outside `0.0..=1.0`.
    #[error("{name} must be within 0.0..=1.0, got {value}")]
    InvalidProbability {
        /// Setting name.
        name: &'static str,
        /// Refused value.
        value: f64,
    },
    /// A window that ends before it starts.
    #[error("error window {start_ms}..{end_ms} ends before it starts")]
    InvalidWindow {
        /// Start.
        start_ms: u64,
        /// End.
        end_ms: u64,
    },
}

/// Counts of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerFaultStats {
    /// Produce responses dropped after a successful write.
    pub acks_dropped: u64,
    /// Requests answered with an injected error.
    pub errors_injected: u64,
    /// Requests delayed.
    pub requests_delayed: u64,
}

/// What to do with a request before processing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestPlan {
    /// Wait this long first.
    pub delay_ms: u64,
    /// Answer with this error instead of processing.
    pub error: Option<ErrorCode>,
}

#[derive(Debug)]
struct State {
    config: BrokerFaultConfig,
    rng: ChaCha8Rng,
    stats: BrokerFaultStats,
}

/// Shared handle to a broker's injected faults.
#[derive(Debug, Clone)]
pub struct BrokerFaults {
    state: Rc<RefCell<State>>,
}

impl BrokerFaults {
    /// No faults; randomness from a ChaCha8 stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                config: BrokerFaultConfig::default(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                stats: BrokerFaultStats::default(),
            })),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> BrokerFaultConfig {
        self.state.borrow().config
    }

    /// Replaces every setting.
    pub fn set_config(&self, config: BrokerFaultConfig) -> Result<(), BrokerFaultError> {
        config.validate()?;
        self.state.borrow_mut().config = config;
        Ok(())
    }

    /// Changes some settings with `edit`; nothing changes if the result is
    /// invalid.
    pub fn update(&self, edit: impl FnOnce(&mut BrokerFaultConfig)) -> Result<(), BrokerFaultError> {
        let mut config = self.config();
        edit(&mut config);
        self.set_config(config)
    }

    /// Turns every fault off.
    pub fn heal(&self) {
        self.state.borrow_mut().config = BrokerFaultConfig::default();
    }

    /// Counts so far.
    pub fn stats(&self) -> BrokerFaultStats {
        self.state.borrow().stats
    }

    /// Decides the fate of a request arriving at simulated time `now_ms`.
    pub fn plan_request(&self, now_ms: u64) -> RequestPlan {
        let mut state = self.state.borrow_mut();
        let config = state.config;
        let in_window = config
            .error_window_ms
            .is_some_and(|(start_ms, end_ms)| (start_ms..end_ms).contains(&now_ms));
        let rolled = config.error_probability > 0.0 && state.rng.random_bool(config.error_probability);
        let error = (in_window || rolled).then_some(ErrorCode::NotLeaderOrFollower);
        if error.is_some() {
            state.stats.errors_injected += 1;
        }
        if config.response_delay_ms > 0 {
            state.stats.requests_delayed += 1;
        }
        RequestPlan {
            delay_ms: config.response_delay_ms,
            error,
        }
    }

    /// Whether to drop `response` (a lost ack): only produce responses with
    /// at least one batch written or deduplicated are dropped.
    pub fn drop_ack(&self, response: &Response) -> bool {
        let Response::Produce { results } = response else {
            return false;
        };
        if !results.iter().any(|r| r.result.is_ok()) {
            return false;
        }
        let mut state = self.state.borrow_mut();
        let probability = state.config.drop_ack_probability;
        let drop = probability > 0.0 && state.rng.random_bool(probability);
        if drop {
            state.stats.acks_dropped += 1;
        }
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProduceResult;

    fn produce_ok() -> Response {
        Response::Produce {
            results: vec![ProduceResult {
                topic: "t".into(),
                partition: 0,
                result: Ok(0),
            }],
        }
    }

    #[test]
    fn windows_fail_every_request_and_nothing_else() {
        let faults = BrokerFaults::new(1);
        faults
            .update(|c| c.error_window_ms = Some((100, 200)))
            .expect("valid");
        assert_eq!(faults.plan_request(99).error, None);
        assert_eq!(
            faults.plan_request(100).error,
            Some(ErrorCode::NotLeaderOrFollower)
        );
        assert_eq!(
            faults.plan_request(199).error,
            Some(ErrorCode::NotLeaderOrFollower)
        );
        assert_eq!(faults.plan_request(200).error, None);
        assert_eq!(faults.stats().errors_injected, 2);
        assert!(faults.update(|c| c.error_window_ms = Some((5, 1))).is_err());
    }

    #[test]
    fn lost_acks_follow_the_probability_and_the_seed() {
        let response = produce_ok();
        let decisions = |seed| {
            let faults = BrokerFaults::new(seed);
            faults.update(|c| c.drop_ack_probability = 0.5).expect("valid");
            (0..200).map(|_| faults.drop_ack(&response)).collect::<Vec<_>>()
        };
        let first = decisions(3);
        assert_eq!(first, decisions(3), "same seed, same decisions");
        assert_ne!(first, decisions(4));
        let dropped = first.iter().filter(|d| **d).count();
        assert!((60..140).contains(&dropped), "{dropped}");
        // Failed produces and other responses are never dropped.
        let faults = BrokerFaults::new(3);
        faults.update(|c| c.drop_ack_probability = 1.0).expect("valid");
        let failed = Response::Produce {
            results: vec![ProduceResult {
                topic: "t".into(),
                partition: 0,
                result: Err(ErrorCode::StorageError),
            }],
        };
        assert!(!faults.drop_ack(&failed));
        assert!(!faults.drop_ack(&Response::Error(ErrorCode::StorageError)));
        assert!(faults.drop_ack(&response));
    }

    #[test]
    fn probabilities_are_validated() {
        let faults = BrokerFaults::new(0);
        assert!(faults.update(|c| c.error_probability = -0.1).is_err());
        assert!(faults.update(|c| c.drop_ack_probability = 2.0).is_err());
        assert_eq!(faults.config(), BrokerFaultConfig::default());
        faults.update(|c| c.response_delay_ms = 30).expect("valid");
        assert_eq!(faults.plan_request(0).delay_ms, 30);
    }
}
