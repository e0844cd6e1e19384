//! The archive: clean readings into Parquet files partitioned by event
//! date, on a local directory or S3, exactly once without transactions
//! (a sink component, shaped like the gateway and qaqc).
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | object paths and the batch manifests |
//! | [`store`] | the object-store seam (create-if-absent puts), memory and disk stores |
//! | [`columns`] | Avro records as Parquet columns and back, byte-exact |
//! | [`protocol`] | exactly once over the store: intents, markers, fencing, recovery |
//! | [`batch`] | the open batch of a partition and when it is cut |
//! | [`config`] | the TOML configuration and the world-independent settings |
//! | [`metrics`] | the Prometheus metrics |
//! | [`objstore`] | the real world's store: `object_store` on a directory or S3 |
//! | [`kafka`] | the real world's parts (rdkafka, system clock, crash hook) |
//! | [`run`] | the component: group membership, recovery, batching, commit |
//! | [`replay`] | committed files of a date range back onto a topic (`archive replay`) |
//! | [`verify`] | what an archive holds and every broken promise (`archive verify`) |

pub mod batch;
pub mod columns;
pub mod config;
pub mod kafka;
pub mod layout;
pub mod metrics;
pub mod objstore;
pub mod protocol;
pub mod replay;
pub mod run;
pub mod store;
pub mod verify;

#[cfg(test)]
mod tests;

pub use config::{ArchiveFileConfig, ArchiveSettings, PlantedArchiveBugs};
pub use metrics::ArchiveMetrics;
pub use run::{ArchiveError, ArchiveObserver, ArchiveParts, ArchiveReport, run_archive};
