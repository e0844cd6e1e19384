//! Clients of the simulated broker over turmoil TCP: [`SimProducer`]
//! (`LogProducer`), [`SimConsumer`] (`LogConsumer`) and [`SimGroupConsumer`]
//! (`GroupConsumer`).
//!
//! turmoil's TCP has no retransmission: a stream that lost a segment (a
//! partition, a held link, a crashed peer) may never deliver again. So every
//! request has a timeout, and any I/O error or timeout drops the connection;
//! the next request opens a new one.
//!
//! Timeouts are in simulated ms, and turmoil moves a message at most once per
//! tick in each direction: a request takes at least two ticks. With a tick of
//! `T` ms, keep `request_timeout_ms` and `connect_timeout_ms` at `5·T` or
//! more (the defaults, 1 s, suit ticks up to 200 ms). Measured: 5 gateways x
//! 20 sensors sampling every minute for 48 simulated hours through one
//! broker take about 2.5 s of wall time with a 1 s tick and timeouts of 10 s.

mod connection;
mod consumer;
mod group;
mod producer;

pub use consumer::{ConsumerConfig, OffsetReset, SimConsumer};
pub use group::{GroupConsumerConfig, SimGroupConsumer};
pub use producer::{ProducerConfig, SimProducer};

/// Why a client configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    /// A limit or timeout is zero or inconsistent.
    #[error("invalid client setting: {0}")]
    Invalid(String),
}

fn require_positive(settings: &[(&str, u64)]) -> Result<(), ClientConfigError> {
    for (name, value) in settings {
        if *value == 0 {
            return Err(ClientConfigError::Invalid(format!("{name} must be positive")));
        }
    }
    Ok(())
}
