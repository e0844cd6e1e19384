//! One partition's log: CRC-framed batches in segment files, the records in
//! memory for fetches, and the producer state for dedup.
//!
//! Files: `DIR/{base_offset:020}.log`, one entry per batch (see
//! [`storage`](super::storage)). Opening a partition recovers it:
//!
//! 1. segments are read in order, each up to its first entry that is not
//!    intact (a torn or damaged tail is ignored, never appended after);
//! 2. each batch must start at the next expected offset; a segment that does
//!    not continue the log (it followed a tail lost in a crash) and every
//!    later one are discarded, as are segments with no intact batch;
//! 3. the recovered segments are synced (so what was read stays readable
//!    after a crash even if it had not been synced before), and a new active
//!    segment named after the next offset is created and its entry synced.
//!
//! So appends always go to a fresh file after a restart, and the recovered
//! prefix is exactly what later recoveries will read again.

use super::FlushPolicy;
use super::producer_state::{ProducerStateTable, SequenceCheck};
use super::storage::{self, Stop};
use crate::digest::Digest;
use crate::protocol::{ErrorCode, WireRecord};
use serde::{Deserialize, Serialize};
use soilstream::disk::{Disk, DiskFile};
use std::io;
use std::path::{Path, PathBuf};

/// A batch as stored in a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredBatch {
    base_offset: i64,
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u64,
    records: Vec<WireRecord>,
}

/// Limits and policy of a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionLimits {
    pub segment_max_bytes: u64,
    pub max_entry_bytes: usize,
    pub max_producers: usize,
    pub flush: FlushPolicy,
}

/// What a recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecoveryReport {
    /// Records recovered.
    pub records: i64,
    /// Segment files whose intact prefix was used.
    pub segments_used: usize,
    /// Bytes ignored after the intact prefix of a used segment.
    pub tail_bytes_dropped: u64,
    /// Segment files removed (empty or not continuing the log).
    pub segments_discarded: usize,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// The batch had been appended before: nothing was written.
    pub duplicate: bool,
}

/// Why an append failed.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The batch is refused; the log is unchanged.
    Rejected(ErrorCode),
    /// Storage failed; the partition must be reopened before further use.
    Storage(io::Error),
}

struct ActiveSegment {
    file: Box<dyn DiskFile>,
    size_bytes: u64,
}

/// An open partition log.
pub(crate) struct PartitionLog {
    dir: PathBuf,
    limits: PartitionLimits,
    records: Vec<WireRecord>,
    producers: ProducerStateTable,
    active: ActiveSegment,
    /// Bytes appended to the active segment and not yet synced.
    dirty: bool,
    last_flush_ms: u64,
}

fn segment_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

fn parse_segment_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl PartitionLog {
    /// Opens (and recovers) the partition in `dir`, creating it if missing.
    pub(crate) fn open(
        disk: &dyn Disk,
        dir: &Path,
        limits: PartitionLimits,
        now_ms: u64,
    ) -> io::Result<(Self, RecoveryReport)> {
        disk.create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            disk.sync_dir(parent)?;
        }
        let mut segments: Vec<(i64, String)> = disk
            .list(dir)?
            .into_iter()
            .filter_map(|name| parse_segment_name(&name).map(|base| (base, name)))
            .collect();
        segments.sort();

        let max_file_bytes = limits.segment_max_bytes + limits.max_entry_bytes as u64;
        let mut records: Vec<WireRecord> = Vec::new();
        let mut producers = ProducerStateTable::new(limits.max_producers);
        let mut report = RecoveryReport::default();
        let mut discard = Vec::new();
        let mut log_broken = false;
        for (_, name) in segments {
            if log_broken {
                discard.push(name);
                continue;
            }
            let path = dir.join(&name);
            let mut file = disk.open(&path)?;
            let read = match storage::read_entries::<StoredBatch>(
                file.as_ref(),
                limits.max_entry_bytes,
                max_file_bytes,
            ) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(segment = %path.display(), %error, "segment unreadable, discarded with the rest of the log");
                    log_broken = true;
                    discard.push(name);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut used = 0_usize;
            for batch in read.entries {
                let next_offset = records.len() as i64;
                if batch.base_offset != next_offset || batch.records.is_empty() {
                    tracing::warn!(
                        segment = %path.display(),
                        expected = next_offset,
                        found = batch.base_offset,
                        "segment does not continue the log: it and later segments are discarded"
                    );
                    log_broken = true;
                    break;
                }
                producers.record(
                    batch.producer_id,
                    batch.producer_epoch,
                    batch.base_sequence,
                    batch.records.len(),
                    batch.base_offset,
                );
                records.extend(batch.records);
                used += 1;
            }
            if used == 0 {
                discard.push(name);
                continue;
            }
            if read.stop != Stop::End {
                let dropped = file.len()?.saturating_sub(read.valid_bytes);
                tracing::info!(segment = %path.display(), dropped, stop = ?read.stop, "ignoring the tail of a segment");
                report.tail_bytes_dropped += dropped;
            }
            // What recovery read must stay readable: make it durable.
            file.sync_data()?;
            report.segments_used += 1;
        }
        for name in &discard {
            disk.remove(&dir.join(name))?;
        }
        report.segments_discarded = discard.len();

        let next_offset = records.len() as i64;
        let active_path = dir.join(segment_name(next_offset));
        let file = disk.create_new(&active_path)?;
        disk.sync_dir(dir)?;
        report.records = next_offset;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                limits,
                records,
                producers,
                active: ActiveSegment { file, size_bytes: 0 },
                dirty: false,
                last_flush_ms: now_ms,
            },
            report,
        ))
    }

    /// The offset the next record will get.
    pub(crate) fn high_watermark(&self) -> i64 {
        self.records.len() as i64
    }

    /// Appends a batch unless it is a duplicate or out of sequence. Durable
    /// before returning under [`FlushPolicy::EveryBatch`].
    pub(crate) fn append(
        &mut self,
        disk: &dyn Disk,
        producer_id: u64,
        producer_epoch: u16,
        base_sequence: u64,
        records: Vec<WireRecord>,
    ) -> Result<Appended, AppendError> {
        if records.is_empty() {
            return Err(AppendError::Rejected(ErrorCode::InvalidRequest));
        }
        let check = self
            .producers
            .check(producer_id, producer_epoch, base_sequence, records.len())
            .map_err(AppendError::Rejected)?;
        if let SequenceCheck::Duplicate { base_offset } = check {
            return Ok(Appended {
                base_offset,
                duplicate: true,
            });
        }
        let base_offset = self.high_watermark();
        let batch = StoredBatch {
            base_offset,
            producer_id,
            producer_epoch,
            base_sequence,
            records,
        };
        let entry = storage::encode_entry(&batch, self.limits.max_entry_bytes)
            .map_err(|_| AppendError::Rejected(ErrorCode::InvalidRequest))?;
        if self.active.size_bytes >= self.limits.segment_max_bytes {
            self.roll(disk).map_err(AppendError::Storage)?;
        }
        self.active.file.append(&entry).map_err(AppendError::Storage)?;
        self.active.size_bytes += entry.len() as u64;
        self.dirty = true;
        if self.limits.flush == FlushPolicy::EveryBatch {
            self.active.file.sync_data().map_err(AppendError::Storage)?;
            self.dirty = false;
        }
        let count = batch.records.len();
        self.producers
            .record(producer_id, producer_epoch, base_sequence, count, base_offset);
        self.records.extend(batch.records);
        debug_assert_eq!(self.high_watermark(), base_offset + count as i64);
        Ok(Appended {
            base_offset,
            duplicate: false,
        })
    }

    /// Starts a new segment at the high watermark.
    fn roll(&mut self, disk: &dyn Disk) -> io::Result<()> {
        if self.dirty && self.limits.flush != FlushPolicy::Never {
            self.active.file.sync_data()?;
            self.dirty = false;
        }
        let path = self.dir.join(segment_name(self.high_watermark()));
        let file = disk.create_new(&path)?;
        disk.sync_dir(&self.dir)?;
        self.active = ActiveSegment { file, size_bytes: 0 };
        // Under `Never` the old segment may still hold unsynced bytes: that
        // is the policy (recovery discards a segment that no longer follows).
        self.dirty = false;
        Ok(())
    }

    /// Syncs the active segment if the flush interval has passed.
    pub(crate) fn flush_if_due(&mut self, now_ms: u64) -> io::Result<()> {
        let FlushPolicy::IntervalMs(interval_ms) = self.limits.flush else {
            return Ok(());
        };
        if self.dirty && now_ms.saturating_sub(self.last_flush_ms) >= interval_ms {
            self.active.file.sync_data()?;
            self.dirty = false;
            self.last_flush_ms = now_ms;
        } else if !self.dirty {
            self.last_flush_ms = now_ms;
        }
        Ok(())
    }

    /// Records from `offset`: at most `max_records`, and at most `max_bytes`
    /// unless the first record alone is larger.
    pub(crate) fn fetch(
        &self,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WireRecord>, ErrorCode> {
        if offset < 0 || offset > self.high_watermark() {
            return Err(ErrorCode::OffsetOutOfRange);
        }
        let mut out = Vec::new();
        let mut bytes = 0_usize;
        for record in &self.records[offset as usize..] {
            let size = record.size_bytes();
            if out.len() >= max_records || (!out.is_empty() && bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            out.push(record.clone());
        }
        Ok(out)
    }

    /// Number of producers remembered for dedup.
    pub(crate) fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Feeds the partition's records and producer state into `digest`.
    pub(crate) fn digest_into(&self, digest: &mut Digest) {
        digest.i64(self.high_watermark());
        for record in &self.records {
            digest_record(digest, record);
        }
        for (id, epoch, last_sequence) in self.producers.summary() {
            digest.u64(id).u64(u64::from(epoch)).u64(last_sequence);
        }
    }
}

/// Feeds one record into `digest`.
pub(crate) fn digest_record(digest: &mut Digest, record: &WireRecord) {
    match &record.key {
        Some(key) => digest.u64(1).field(key),
        None => digest.u64(0),
    };
    match &record.value {
        Some(value) => digest.u64(1).field(value),
        None => digest.u64(0),
    };
    digest.i64(record.timestamp_ms).u64(record.headers.len() as u64);
    for (name, value) in &record.headers {
        digest.field(name.as_bytes()).field(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_numerically() {
        assert_eq!(segment_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
