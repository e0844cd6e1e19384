//! soilstream: moves readings from remote soil-sensor field gateways into
//! Kafka without losing, duplicating or reordering them, through network
//! outages, power cuts, reboots and backfills.
//!
//! The crate is written against seams so that the same code runs on real
//! hosts and inside the deterministic simulator:
//!
//! | seam | module |
//! |---|---|
//! | `Disk` | [`disk`] |
//! | `Clock` | [`clock`] |
//! | `LogProducer` / `LogConsumer` | [`transport`] |
//! | `SchemaRegistry` | [`registry`] |
//! | `SensorSource` | [`source`] |
//!
//! The gateway's durable queue of readings is the [`spool`].

pub mod archive;
pub mod backfill;
pub mod clock;
pub mod codec;
pub mod component;
pub mod decode;
pub mod disk;
pub mod gateway;
pub mod metrics;
pub mod model;
pub mod qaqc;
pub mod redact;
pub mod registry;
pub mod source;
pub mod spool;
pub mod transport;
