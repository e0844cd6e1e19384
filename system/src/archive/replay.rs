//! `soilstream archive replay`: committed files of a date range back onto a
//! topic (old data stays reachable after the topic's retention dropped it).
//!
//! Records go to the same partition numbers, in offset order per
//! partition, with their original key, value bytes (byte-exact, see
//! [`super::columns`]) and event time as the timestamp, and headers naming
//! where they came from ([`HEADER_SRC_TOPIC`], [`HEADER_SRC_PARTITION`],
//! [`HEADER_SRC_OFFSET`]) so a consumer can drop repeats. Resumable: given
//! the highest source offset per partition already on the target (read
//! from its headers), a rerun continues after it.

use super::layout::Manifest;
use super::store::{ArchiveStore, StoreError};
use super::verify::{VerifyReport, committed_batches};
use crate::transport::{LogProducer, OutboundRecord, ProduceError};
use std::collections::BTreeMap;

/// Header: the archived topic.
pub const HEADER_SRC_TOPIC: &str = "archive.src.topic";
/// Header: the source partition (decimal).
pub const HEADER_SRC_PARTITION: &str = "archive.src.partition";
/// Header: the source offset (decimal).
pub const HEADER_SRC_OFFSET: &str = "archive.src.offset";

/// Records enqueued before the oldest delivery is awaited.
pub const REPLAY_IN_FLIGHT_MAX: usize = 1_000;

/// One record to replay: offset, value, key, event time.
type ReplayedRecord = (i64, Vec<u8>, Option<Vec<u8>>, i64);

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// First event date (`YYYY-MM-DD`, inclusive).
    pub from_date: String,
    /// Last event date (inclusive).
    pub to_date: String,
    /// Topic to produce to.
    pub target_topic: String,
    /// The event-time field of the files.
    pub event_time_field: String,
    /// Highest source offset already replayed, per partition (resume).
    pub already_replayed: BTreeMap<i32, i64>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records produced.
    pub produced: u64,
    /// Records skipped because a previous run replayed them.
    pub resumed_past: u64,
    /// Committed files read.
    pub files_read: u64,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A committed file could not be read.
    #[error("{0}")]
    File(String),
    /// The archive's manifests are inconsistent; run `archive verify`.
    #[error("the archive is inconsistent ({0}); run `soilstream archive verify`")]
    Inconsistent(String),
    /// The producer failed.
    #[error("producing to the target topic: {0}")]
    Produce(#[from] ProduceError),
}

/// Replays the committed files of `topic` whose event date is in range.
pub async fn replay(
    store: &dyn ArchiveStore,
    topic: &str,
    options: &ReplayOptions,
    producer: &dyn LogProducer,
) -> Result<ReplayReport, ReplayError> {
    let mut verify_report = VerifyReport::default();
    let batches = committed_batches(store, topic, &mut verify_report).await?;
    if let Some(problem) = verify_report
        .problems
        .iter()
        .find(|p| p.contains("two commits") || p.contains("do not chain"))
    {
        return Err(ReplayError::Inconsistent(problem.clone()));
    }
    let mut report = ReplayReport::default();
    let mut in_flight = std::collections::VecDeque::new();
    for (partition, chain) in &batches {
        let resume_after = options.already_replayed.get(partition).copied().unwrap_or(-1);
        for manifest in chain {
            if manifest.last <= resume_after {
                report.resumed_past += rows_in_range(manifest, options);
                continue;
            }
            // The batch's files of the date range, merged into offset order.
            let mut records: Vec<ReplayedRecord> = Vec::new();
            for file in &manifest.files {
                if file.event_date < options.from_date || file.event_date > options.to_date {
                    continue;
                }
                let bytes = store.get(&file.path).await?;
                let decoded = super::columns::decode_file(&file.path, bytes, &options.event_time_field)
                    .map_err(|e| ReplayError::File(e.to_string()))?;
                report.files_read += 1;
                for row in &decoded.rows {
                    let value = decoded
                        .schema
                        .wire_bytes(row)
                        .map_err(|e| ReplayError::File(format!("{}: {e}", file.path)))?;
                    records.push((row.offset, value, row.key.clone(), row.event_time_ms));
                }
            }
            records.sort_by_key(|r| r.0);
            for (offset, value, key, event_time_ms) in records {
                if offset <= resume_after {
                    report.resumed_past += 1;
                    continue;
                }
                let delivery = producer.enqueue(OutboundRecord {
                    topic: options.target_topic.clone(),
                    key: key.unwrap_or_default(),
                    partition: Some(*partition),
                    value,
                    timestamp_ms: event_time_ms,
                    headers: vec![
                        (HEADER_SRC_TOPIC.into(), topic.as_bytes().to_vec()),
                        (HEADER_SRC_PARTITION.into(), partition.to_string().into_bytes()),
                        (HEADER_SRC_OFFSET.into(), offset.to_string().into_bytes()),
                    ],
                })?;
                in_flight.push_back(delivery);
                report.produced += 1;
                if in_flight.len() >= REPLAY_IN_FLIGHT_MAX
                    && let Some(oldest) = in_flight.pop_front()
                {
                    oldest.await?;
                }
            }
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        delivery.await?;
    }
    Ok(report)
}

fn rows_in_range(manifest: &Manifest, options: &ReplayOptions) -> u64 {
    manifest
        .files
        .iter()
        .filter(|f| f.event_date >= options.from_date && f.event_date <= options.to_date)
        .map(|f| f.rows)
        .sum()
}
