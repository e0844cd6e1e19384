//! The spool: the gateway's durable, crash-safe, bounded queue of readings
//! between sampling and delivery to Kafka.
//!
//! # Layout
//!
//! A spool directory holds:
//! - segment files `seg-{first_index:020}-{attempt:02}.log`: append-only
//!   sequences of frames (see [`frame`]), one record each, every frame
//!   carrying its spool index, the last synced point its writer knew, and the
//!   Avro v1 body of the reading, protected by a CRC32C;
//! - `cursor-a.slot` / `cursor-b.slot`: the delivery cursor, written
//!   alternately with increasing generations ([`cursor`]);
//! - `seqs-a.slot` / `seqs-b.slot`: two copies of the per-sensor `seq`
//!   reservations ([`seqs`]).
//!
//! # Guarantees
//!
//! - **Durable before acknowledged** (group commit): [`Spool::append`]
//!   buffers; [`Spool::commit`] writes, `sync_data`s, `sync_dir`s a new
//!   segment, and only then returns the records as [`Committed`]. A failed
//!   write or sync acknowledges nothing; the batch is re-appended into a fresh
//!   segment (bounded attempts) or handed back.
//! - **Delete only after delivery**: a segment is deleted once every record it
//!   holds (or may hold) is at or below the *persisted* cursor.
//! - **Always reopens**: [`Spool::open`] scans every segment, skips and
//!   reports damage with byte ranges and counts, salvages intact records after
//!   it, tells torn tails from corruption of synced data ([`recovery`]), and
//!   never returns a damaged record.
//! - **Bounded memory** whatever the backlog: records are streamed from disk;
//!   only per-segment metadata and one small entry per in-flight record stay
//!   in memory.
//! - **Explicit when full**: `max_bytes` with [`FullPolicy::RejectNew`] or
//!   [`FullPolicy::DropOldest`], counted in [`SpoolStats`] and logged.
//! - **No `seq` reuse** across crashes, even for readings lost before they
//!   became durable ([`seqs`]).
//!
//! Everything is deterministic (no clocks, no threads, ordered maps) so the
//! spool runs inside the simulator unchanged.

pub mod config;
pub mod cursor;
mod engine;
pub mod error;
pub mod frame;
mod inspect;
mod read;
pub mod recovery;
pub mod report;
pub mod scan;
pub mod segment;
pub mod seqs;
pub mod slots;
mod write;

pub use config::{FullPolicy, PlantedBugs, SpoolConfig};
pub use cursor::StateSource;
pub use engine::{
    COMMIT_ATTEMPTS_MAX, Committed, CommittedRecord, DROP_EVENTS_MAX, DropEvent, DroppedSeqs, READ_BATCH_MAX,
    SEGMENTS_MAX, Spool, SpoolStats, SpooledRecord,
};
pub use error::{SpoolError, UnacknowledgedRecord};
pub use inspect::{
    InspectReport, SegmentSummary, SensorSummary, StateCheck, VerifyReport, format_utc_ms, inspect, verify,
};
pub use report::{
    CursorReport, DamageKind, DamageRange, DamageSummary, DamageTotals, IndexRange, RecoveryReport, Verdict,
};
pub use seqs::SeqStateReport;

#[cfg(test)]
mod tests;
