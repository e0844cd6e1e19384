//! soilstream-sim: the deterministic world the ingestion system is tested in.
//!
//! Building blocks, one concept per module, all deterministic for a given
//! seed (randomness comes from `rand_chacha`, time from turmoil, no threads,
//! no `HashMap` iteration, no `std::time`):
//!
//! | module | what |
//! |---|---|
//! | [`disk`] | [`SimDisk`]: the `Disk` seam over turmoil's simulated filesystem, with a runtime fault layer ([`DiskFaults`]) |
//! | [`clock`] | [`SimClock`]: the `Clock` seam from simulated time, with offset, drift and jumps ([`ClockControl`]) |
//! | [`protocol`] | the broker's wire protocol: request/response types and CRC'd, length-prefixed frames |
//! | [`broker`] | a simulated Kafka-like broker: a plain state machine ([`broker::BrokerCore`]) and its turmoil server |
//! | [`client`] | [`SimProducer`] / [`SimConsumer`] / [`SimGroupConsumer`]: the `LogProducer` / `LogConsumer` / `GroupConsumer` seams over turmoil TCP |
//! | [`net`] | [`SimListener`] / [`SimConnector`]: turmoil TCP for axum services and the registry client |
//! | [`registry`] | [`RegistryHost`]: the schema registry service as a turmoil host on a [`SimDisk`] |
//! | [`store`] | [`StoreHost`] / [`SimStoreClient`]: the archive's object store as a turmoil host on a [`SimDisk`], and the `ArchiveStore` seam over simulated TCP |
//! | [`digest`] | a stable 64-bit digest for determinism checks |
//!
//! Everything that touches turmoil (files, sockets, time) must run inside a
//! turmoil host or client; the broker core and the protocol codec do not and
//! are unit-tested without it.

pub mod broker;
pub mod client;
pub mod clock;
pub mod digest;
pub mod disk;
pub mod net;
pub mod protocol;
pub mod registry;
pub mod store;

pub use client::{
    ConsumerConfig, GroupConsumerConfig, ProducerConfig, SimConsumer, SimGroupConsumer, SimProducer,
};
pub use clock::{ClockControl, SimClock};
pub use disk::{DiskFaults, SimDisk};
pub use net::{SimConnector, SimListener};
pub use registry::{RegistryHost, RegistryHostConfig};
pub use store::{SimStoreClient, StoreClientConfig, StoreHost, StoreHostConfig};
