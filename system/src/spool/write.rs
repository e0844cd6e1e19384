//! The write path: sequence numbers, append, group commit, and the full
//! policy.
//!
//! `append` only encodes the record into an in-memory batch (bounded by
//! `max_uncommitted_bytes`); `commit` writes the batch with one append,
//! `sync_data`, and `sync_dir` when the segment is new, and only then
//! acknowledges it. A failed write or sync acknowledges nothing: the segment
//! is abandoned (sealed at its last synced byte: after a failed fsync the
//! kernel may have dropped the pages, so syncing again proves nothing) and
//! the same frames, same indexes, are written into a fresh segment.

use super::config::FullPolicy;
use super::engine::{
    ActiveSegment, COMMIT_ATTEMPTS_MAX, Committed, CommittedRecord, DROP_EVENTS_MAX, DropEvent, DroppedSeqs,
    PendingRecord, SEGMENTS_MAX, Spool,
};
use super::error::{SpoolError, UnacknowledgedRecord, is_no_space};
use super::frame::{self, FRAME_HEADER_BYTES, PAYLOAD_HEADER_BYTES, PayloadHeader, SyncedPoint};
use super::report::IndexRange;
use super::scan::{ReadErrors, ReadWindow, ScanItem, Scanner};
use super::segment::{SEGMENT_ATTEMPT_MAX, SegmentMeta, SegmentName};
use super::seqs;
use crate::model::Reading;
use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

impl Spool {
    /// The next sequence number for `sensor_id`: above every `seq` ever
    /// handed out or appended for it, across crashes. May write a durable
    /// reservation first.
    pub fn next_seq(&mut self, sensor_id: &str) -> Result<u64, SpoolError> {
        let seq = self.seqs.next_seq(
            self.disk.as_ref(),
            &self.config.dir,
            &mut self.cursor_store,
            sensor_id,
        )?;
        assert!(
            self.last_appended_seq(sensor_id).is_none_or(|last| seq > last),
            "a handed-out seq lies above every appended one"
        );
        Ok(seq)
    }

    fn last_appended_seq(&self, sensor_id: &str) -> Option<u64> {
        let pending = self.pending_last_seq.get(sensor_id).copied();
        let committed = self.last_seq.get(sensor_id).copied();
        pending.max(committed)
    }

    /// Adds a reading to the current batch and returns its spool index. Not
    /// durable until [`Spool::commit`] succeeds. `seq` must increase per
    /// sensor. Under the `DropOldest` policy this may delete old segments to
    /// make room; under `RejectNew` a full spool refuses the reading.
    pub fn append(&mut self, reading: &Reading) -> Result<u64, SpoolError> {
        self.head_cache.replace(None);
        seqs::check_sensor_id(&reading.sensor_id)?;
        if let Some(last_seq) = self.last_appended_seq(&reading.sensor_id)
            && reading.seq <= last_seq
        {
            return Err(SpoolError::SeqNotIncreasing {
                sensor_id: reading.sensor_id.clone(),
                seq: reading.seq,
                last_seq,
            });
        }
        let body = self
            .codec
            .encode_body(reading)
            .map_err(|e| SpoolError::InvalidReading {
                sensor_id: reading.sensor_id.clone(),
                seq: reading.seq,
                reason: e.to_string(),
            })?;
        let payload_bytes = (PAYLOAD_HEADER_BYTES + body.len()) as u64;
        if payload_bytes > u64::from(self.config.max_record_bytes) {
            return Err(SpoolError::RecordTooLarge {
                payload_bytes,
                max_record_bytes: self.config.max_record_bytes,
            });
        }
        let frame_bytes = FRAME_HEADER_BYTES as u64 + payload_bytes;
        if self.pending_frames.len() as u64 + frame_bytes > self.config.max_uncommitted_bytes {
            return Err(SpoolError::BatchFull {
                max_uncommitted_bytes: self.config.max_uncommitted_bytes,
            });
        }
        if self.next_index == u64::MAX {
            // Only reachable with a crafted spool holding index u64::MAX - 1.
            return Err(SpoolError::Config("spool index space exhausted".into()));
        }
        self.make_room(frame_bytes)?;
        self.seqs.cover(
            self.disk.as_ref(),
            &self.config.dir,
            &mut self.cursor_store,
            &reading.sensor_id,
            reading.seq,
        )?;

        let index = self.next_index;
        self.next_index += 1;
        let header = PayloadHeader {
            index,
            synced: self.synced_point,
        };
        let written = frame::encode_frame(&mut self.pending_frames, &header, &body);
        assert_eq!(written as u64, frame_bytes);
        self.pending.push(PendingRecord {
            index,
            reading: reading.clone(),
        });
        self.pending_last_seq
            .insert(reading.sensor_id.clone(), reading.seq);
        self.stats.appended_total += 1;
        if self.full {
            self.full = false;
            tracing::info!("spool: accepting readings again");
        }
        Ok(index)
    }

    /// Whether records were appended and not yet committed.
    pub fn has_uncommitted(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Makes the current batch durable (group commit) and acknowledges it:
    /// returns the records made durable by this call. On failure nothing of
    /// the batch is acknowledged and the records are handed back in
    /// [`SpoolError::CommitFailed`].
    pub fn commit(&mut self) -> Result<Committed, SpoolError> {
        self.head_cache.replace(None);
        if self.pending.is_empty() {
            return Ok(Committed::default());
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.write_pending() {
                Ok(()) => {
                    let committed = self.finish_commit();
                    self.check_invariants();
                    return Ok(committed);
                }
                Err(error) => error,
            };
            self.stats.commit_failures_total += 1;
            let no_space = is_no_space(&error);
            tracing::warn!(%error, attempts, no_space, "spool: commit attempt failed, nothing acknowledged");
            let retry = attempts < COMMIT_ATTEMPTS_MAX
                && (!no_space
                    || (self.config.when_full == FullPolicy::DropOldest && self.drop_oldest_for_retry()));
            if !retry {
                return Err(self.fail_pending(attempts, no_space, error));
            }
        }
    }

    fn drop_oldest_for_retry(&mut self) -> bool {
        match self.drop_oldest_segment() {
            Ok(dropped) => dropped,
            Err(error) => {
                tracing::warn!(%error, "spool: cannot drop the oldest segment");
                false
            }
        }
    }

    /// One attempt: pick or create the segment, append, sync.
    fn write_pending(&mut self) -> io::Result<()> {
        let batch_bytes = self.pending_frames.len() as u64;
        let first_index = self.pending.first().expect("a batch to write").index;
        let roll = match &self.active {
            None => true,
            Some(active) => {
                active.written_bytes > 0 && active.written_bytes + batch_bytes > self.config.segment_max_bytes
            }
        };
        if roll {
            // The active segment is fully committed: seal it as it is.
            self.active = None;
            self.create_segment(first_index)?;
        }
        let active = self.active.as_mut().expect("a segment to write to");
        if let Err(error) = active.file.append(&self.pending_frames) {
            self.abandon_active();
            return Err(error);
        }
        active.written_bytes += batch_bytes;
        let meta = self
            .segments
            .get_mut(&active.name)
            .expect("the active segment is known");
        meta.file_bytes = active.written_bytes;
        if !self.config.planted.ack_before_sync
            && let Err(error) = active.file.sync_data()
        {
            self.abandon_active();
            return Err(error);
        }
        if active.needs_dir_sync {
            if !self.config.planted.skip_segment_sync_dir
                && let Err(error) = self.disk.sync_dir(&self.config.dir)
            {
                self.abandon_active();
                return Err(error);
            }
            active.needs_dir_sync = false;
        }
        Ok(())
    }

    fn create_segment(&mut self, first_index: u64) -> io::Result<()> {
        assert!(self.active.is_none());
        if self.segments.len() >= SEGMENTS_MAX {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("spool holds {SEGMENTS_MAX} segments already"),
            ));
        }
        let lowest = SegmentName::new(first_index, 0);
        let highest = SegmentName::new(first_index, SEGMENT_ATTEMPT_MAX);
        let mut attempt = match self.segments.range(lowest..=highest).next_back() {
            Some((name, _)) => name.attempt + 1,
            None => 0,
        };
        loop {
            if attempt > SEGMENT_ATTEMPT_MAX {
                return Err(io::Error::other(format!(
                    "no free segment name for first index {first_index}"
                )));
            }
            let name = SegmentName::new(first_index, attempt);
            let path = self.config.dir.join(name.file_name());
            match self.disk.create_new(&path) {
                Ok(file) => {
                    tracing::debug!(segment = %name, "spool: new segment");
                    self.segments.insert(name, SegmentMeta::empty(name));
                    self.active = Some(ActiveSegment {
                        name,
                        file,
                        written_bytes: 0,
                        needs_dir_sync: true,
                    });
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// Seals the active segment after a failed write or sync: readable up
    /// to its last acknowledged byte; whatever lies beyond is never read.
    fn abandon_active(&mut self) {
        let active = self.active.take().expect("an active segment to abandon");
        let meta = self
            .segments
            .get_mut(&active.name)
            .expect("the active segment is known");
        let file_bytes = active.file.len().unwrap_or(active.written_bytes);
        meta.file_bytes = file_bytes.max(meta.readable_end);
        if meta.file_bytes > meta.readable_end {
            meta.has_damage = true;
        }
        tracing::warn!(
            segment = %active.name,
            readable_end = meta.readable_end,
            file_bytes = meta.file_bytes,
            "spool: segment abandoned after a failed write or sync"
        );
    }

    fn finish_commit(&mut self) -> Committed {
        let active = self.active.as_ref().expect("committed into the active segment");
        let meta = self
            .segments
            .get_mut(&active.name)
            .expect("the active segment is known");
        let batch_bytes = self.pending_frames.len() as u64;
        assert_eq!(
            meta.readable_end + batch_bytes,
            active.written_bytes,
            "the batch follows the last commit"
        );
        meta.readable_end = active.written_bytes;
        meta.file_bytes = active.written_bytes;
        meta.records += self.pending.len() as u64;
        meta.record_bytes += batch_bytes;
        meta.max_index = meta.max_index.max(self.pending.last().expect("a batch").index);
        self.synced_point = Some(SyncedPoint {
            segment: active.name,
            bytes: active.written_bytes,
        });
        self.last_seq.append(&mut self.pending_last_seq);
        self.pending_frames.clear();
        let records: Vec<CommittedRecord> = self
            .pending
            .drain(..)
            .map(|record| CommittedRecord {
                index: record.index,
                reading: record.reading,
            })
            .collect();
        self.stats.committed_total += records.len() as u64;
        self.stats.commits_total += 1;
        Committed { records }
    }

    fn fail_pending(&mut self, attempts: u32, no_space: bool, source: io::Error) -> SpoolError {
        let unacknowledged: Vec<UnacknowledgedRecord> = self
            .pending
            .drain(..)
            .map(|record| UnacknowledgedRecord {
                index: record.index,
                reading: record.reading,
            })
            .collect();
        self.pending_frames.clear();
        self.pending_last_seq.clear();
        self.stats.unacknowledged_total += unacknowledged.len() as u64;
        if no_space {
            self.stats.rejected_full_total += unacknowledged.len() as u64;
        }
        tracing::warn!(
            records = unacknowledged.len(),
            attempts,
            no_space,
            "spool: commit failed, records not acknowledged"
        );
        SpoolError::CommitFailed {
            attempts,
            no_space,
            source,
            unacknowledged,
        }
    }

    /// Applies the full policy until a frame of `frame_bytes` fits the budget.
    fn make_room(&mut self, frame_bytes: u64) -> Result<(), SpoolError> {
        loop {
            let needed_bytes = self.disk_bytes() + self.pending_frames.len() as u64 + frame_bytes;
            let segments_full = self.segments.len() >= SEGMENTS_MAX;
            if needed_bytes <= self.config.max_bytes && !segments_full {
                return Ok(());
            }
            let dropped = match self.config.when_full {
                FullPolicy::RejectNew => false,
                FullPolicy::DropOldest => self.drop_oldest_segment()?,
            };
            if !dropped {
                self.stats.rejected_full_total += 1;
                if !self.full {
                    self.full = true;
                    tracing::warn!(
                        needed_bytes,
                        max_bytes = self.config.max_bytes,
                        policy = ?self.config.when_full,
                        "spool full: rejecting new readings"
                    );
                }
                return Err(SpoolError::Full {
                    needed_bytes,
                    max_bytes: self.config.max_bytes,
                });
            }
        }
    }

    /// Deletes the oldest segment, whatever it holds, after moving the
    /// durable cursor past it. Returns false when there is none.
    pub(super) fn drop_oldest_segment(&mut self) -> Result<bool, SpoolError> {
        let Some((&name, meta)) = self.segments.iter().next() else {
            return Ok(false);
        };
        let meta = meta.clone();
        if self.active.as_ref().is_some_and(|active| active.name == name) {
            self.active = None;
        }
        let next_first = self
            .segments
            .range((Bound::Excluded(name), Bound::Unbounded))
            .next()
            .map(|(next, _)| next.first_index);
        // Every index below the next segment (or below what is pending) can
        // only live in this segment or in already deleted ones.
        let upper = match next_first {
            Some(next) => next.saturating_sub(1),
            None => self
                .pending
                .first()
                .map_or(self.next_index, |p| p.index)
                .saturating_sub(1),
        }
        .max(meta.max_index);
        let new_cursor = self.cursor.max(upper);
        let undelivered = meta.undelivered_records();
        let sensors = if undelivered > 0 {
            self.describe_drop(&meta, self.cursor, new_cursor)
        } else {
            BTreeMap::new()
        };
        let event = DropEvent {
            segment: meta.name.file_name(),
            indexes: (new_cursor > self.cursor).then(|| IndexRange {
                first: self.cursor + 1,
                last: new_cursor,
            }),
            records: undelivered,
            sensors,
        };
        // Dropped from now on, and reported before anything can fail: a
        // cursor write that fails may still be what a restart reads.
        self.cursor = new_cursor;
        let dropped = self.segments.get_mut(&name).expect("the oldest segment");
        dropped.delivered_records = dropped.records;
        dropped.delivered_bytes = dropped.record_bytes;
        while self
            .in_flight
            .front()
            .is_some_and(|entry| entry.index <= new_cursor)
        {
            self.in_flight.pop_front();
        }
        // Records delivered out of order right after the dropped ones.
        self.advance_cursor();
        self.read_last_index = self.read_last_index.max(new_cursor);
        if self.runtime_damage.is_some_and(|(damaged, _)| damaged == name) {
            self.runtime_damage = None;
        }
        if undelivered == 0 {
            // Fully delivered already: an early deletion, not a loss.
            tracing::debug!(segment = %name, "spool full: deleting a delivered segment early");
        } else {
            self.stats.dropped_full_total += undelivered;
            self.stats.drop_events_total += 1;
            tracing::warn!(
                segment = %name,
                records = undelivered,
                indexes = ?event.indexes,
                sensors = ?event.sensors,
                "spool full: dropped the oldest segment with its undelivered records"
            );
            if self.drop_events.len() >= DROP_EVENTS_MAX {
                self.drop_events.pop_front();
            }
            self.drop_events.push_back(event);
        }
        // The durable cursor passes the records before their file goes.
        self.cursor_store
            .persist(self.disk.as_ref(), &self.config.dir, new_cursor)
            .map_err(|e| SpoolError::io("persist cursor in", &self.config.dir, e))?;
        let path = self.config.dir.join(name.file_name());
        if self.read_file.as_ref().is_some_and(|(open, _)| *open == name) {
            self.read_file = None;
        }
        self.disk
            .remove(&path)
            .map_err(|e| SpoolError::io("delete segment", &path, e))?;
        self.segments.remove(&name);
        self.stats.segments_deleted_total += 1;
        if let Err(error) = self.disk.sync_dir(&self.config.dir) {
            // Not needed for correctness: a segment that comes back after a
            // crash lies at or below the durable cursor and is deleted again.
            tracing::warn!(%error, "spool: sync after deleting a segment failed");
        }
        self.check_invariants();
        Ok(true)
    }

    /// Which `seq`s a drop removes, per sensor: a read-only scan of the
    /// segment (bounded: one segment, one entry per sensor).
    fn describe_drop(&self, meta: &SegmentMeta, cursor: u64, upper: u64) -> BTreeMap<String, DroppedSeqs> {
        let mut sensors: BTreeMap<String, DroppedSeqs> = BTreeMap::new();
        let path = self.config.dir.join(meta.name.file_name());
        let Ok(file) = self.disk.open(&path) else {
            return sensors;
        };
        let mut window = ReadWindow::default();
        let mut scanner = Scanner::new(
            file.as_ref(),
            &mut window,
            0,
            meta.readable_end,
            ReadErrors::AsDamage,
        );
        while let Ok(Some(item)) = scanner.next_item() {
            let ScanItem::Frame(frame) = item else { continue };
            let index = frame.header.index;
            if index <= cursor || index > upper {
                continue;
            }
            let Ok(reading) = self.codec.decode_body(&frame.body) else {
                continue;
            };
            let entry = sensors.entry(reading.sensor_id).or_insert(DroppedSeqs {
                first_seq: reading.seq,
                last_seq: reading.seq,
                records: 0,
            });
            entry.first_seq = entry.first_seq.min(reading.seq);
            entry.last_seq = entry.last_seq.max(reading.seq);
            entry.records += 1;
        }
        sensors
    }
}
