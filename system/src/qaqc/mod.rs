//! qaqc: the QA/QC stream processor (a transform component).
//!
//! It consumes `soil-moisture-raw` as a member of a consumer group and
//! writes, co-partitioned with its input:
//!
//! | topic | what |
//! |---|---|
//! | `soil-moisture-clean` | readings that pass the hard checks, moisture in vol%, soft flags attached ([`records::CleanReading`]) |
//! | `soil-moisture-quarantine` | the original bytes of everything else, with the reason ([`checks`]) |
//! | `soil-moisture-flags` | flag revisions: look-ahead arrived or late data changed a reading's flags ([`records::FlagRevision`]) |
//! | `soil-moisture-aggregates` | 5-minute event-time windows per sensor, revised by late data ([`window`]) |
//! | `soil-alerts` | alert raise and clear events ([`alerts`]) |
//!
//! Lateness is judged per sensor, never per partition: a days-old backfill
//! behind live data re-opens its windows instead of being dropped. Exactly
//! once without broker transactions: the state of a partition is a fold of
//! its outputs ([`state`]), rebuilt on every assignment, and input offsets
//! are committed only after every output they produced was acknowledged
//! (docs/qaqc.md states the protocol and the crash points it survives).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML configuration and the world-independent settings |
//! | [`checks`] | hard checks and quarantine reasons |
//! | [`flags`] | the soft-flag rules (ISMN codes) |
//! | [`series`] | a sensor's readings in event-time order |
//! | [`window`] | tumbling event-time windows with revisions |
//! | [`alerts`] | the alert machines |
//! | [`records`] | output records, schemas, codecs, headers |
//! | [`state`] | one partition's state and every decision |
//! | [`checkpoint`] | local checkpoints (an optimisation; the outputs are the truth) |
//! | [`kafka`] | the real world's parts (rdkafka, system clock, local disk) |
//! | [`run`] | the component: group membership, rebuild, produce, commit |
//! | [`metrics`] | the Prometheus metrics |
//! | [`oracle`] | what the derived outputs must end up as, computed offline |

pub mod alerts;
pub mod checkpoint;
pub mod checks;
pub mod config;
pub mod flags;
pub mod kafka;
pub mod metrics;
pub mod oracle;
pub mod records;
pub mod run;
pub mod series;
pub mod state;
pub mod window;

#[cfg(test)]
mod tests;

pub use config::{PlantedQaqcBugs, QaqcFileConfig, QaqcSettings};
pub use metrics::QaqcMetrics;
pub use run::{QaqcError, QaqcObserver, QaqcParts, QaqcReport, run_qaqc};
