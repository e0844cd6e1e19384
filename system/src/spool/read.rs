//! The delivery path: reading durable records in bounded batches, delivery
//! reports, the cursor, and deletion of delivered segments.
//!
//! Records are streamed from the segment files through one bounded read
//! window; in memory the spool keeps only per-segment metadata and one small
//! entry per record read and not yet covered by the cursor (at most
//! `max_in_flight_records`).

use super::engine::{InFlight, READ_BATCH_MAX, ReadPosition, Spool, SpooledRecord, segment_is_delivered};
use super::error::SpoolError;
use super::scan::{ReadErrors, ReadWindow, ScanItem, Scanner};
use super::segment::{ByteRange, SegmentName};
use std::ops::Bound;

/// Items the statistics peek may look at to find the first undelivered
/// record's event time.
const PEEK_ITEMS_MAX: u32 = 1024;

enum Step {
    Record(Box<SpooledRecord>),
    Skipped,
    InFlightFull,
}

impl Spool {
    /// Up to `max_records` (at most [`READ_BATCH_MAX`]) durable, undelivered
    /// records not yet read, in spool order from the read position. Damaged
    /// records are skipped (and counted), never returned. Returns fewer (or
    /// none) when caught up or when `max_in_flight_records` are awaiting
    /// their delivery reports.
    pub fn read_next(&mut self, max_records: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        self.head_cache.replace(None);
        let limit = max_records.min(READ_BATCH_MAX);
        let mut records = Vec::new();
        while records.len() < limit {
            let Some((&name, meta)) = self.segments.range(self.read_position.segment..).next() else {
                break;
            };
            let readable_end = meta.readable_end;
            if name != self.read_position.segment {
                self.read_position = ReadPosition {
                    segment: name,
                    offset: 0,
                };
            }
            if self.read_position.offset >= readable_end {
                match self
                    .segments
                    .range((Bound::Excluded(name), Bound::Unbounded))
                    .next()
                {
                    Some((&next, _)) => {
                        self.read_position = ReadPosition {
                            segment: next,
                            offset: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            }
            match self.read_one(name, readable_end) {
                Ok(Step::Record(record)) => records.push(*record),
                Ok(Step::Skipped) => {}
                Ok(Step::InFlightFull) => break,
                Err(error) if records.is_empty() => return Err(error),
                Err(error) => {
                    // Hand out what was read; the next call retries here.
                    tracing::warn!(%error, "spool: read stopped early");
                    break;
                }
            }
        }
        Ok(records)
    }

    fn read_one(&mut self, name: SegmentName, readable_end: u64) -> Result<Step, SpoolError> {
        let path = self.config.dir.join(name.file_name());
        if self.read_file.as_ref().is_none_or(|(open, _)| *open != name) {
            self.read_file = None;
            self.read_window.clear();
            let file = self
                .disk
                .open(&path)
                .map_err(|e| SpoolError::io("open segment", &path, e))?;
            self.read_file = Some((name, file));
        }
        let offset = self.read_position.offset;
        let (item, retries) = {
            let file = self.read_file.as_ref().expect("opened above").1.as_ref();
            let mut scanner = Scanner::new(
                file,
                &mut self.read_window,
                offset,
                readable_end,
                ReadErrors::Propagate,
            );
            let item = scanner.next_item();
            (item, scanner.transient_read_retries)
        };
        self.stats.transient_read_retries_total += retries;
        let item = item.map_err(|e| SpoolError::io("read segment", &path, e))?;
        let Some(item) = item else {
            self.read_position.offset = readable_end;
            return Ok(Step::Skipped);
        };
        let frame = match item {
            ScanItem::Damage(range, defect) => {
                self.read_position.offset = range.end;
                self.note_damage(name, range, defect.describe());
                return Ok(Step::Skipped);
            }
            ScanItem::Frame(frame) => frame,
        };
        let frame_end = frame.offset + frame.frame_bytes;
        let index = frame.header.index;
        if index <= self.read_last_index {
            // A copy re-appended after a failed sync, or already passed.
            self.read_position.offset = frame_end;
            return Ok(Step::Skipped);
        }
        let reading = match self.codec.decode_body(&frame.body) {
            Ok(reading) => reading,
            Err(_) => {
                self.read_position.offset = frame_end;
                self.note_damage(name, ByteRange::new(frame.offset, frame_end), "undecodable body");
                return Ok(Step::Skipped);
            }
        };
        let already_in_flight = self.in_flight.back().is_some_and(|last| index <= last.index);
        if !already_in_flight && self.in_flight.len() >= self.config.max_in_flight_records as usize {
            return Ok(Step::InFlightFull);
        }
        self.skip_lost_records(index);
        self.read_position.offset = frame_end;
        if index <= self.read_last_index {
            // The cursor moved past it meanwhile (it was delivered already).
            return Ok(Step::Skipped);
        }
        self.read_last_index = index;
        let already_in_flight = self.in_flight.back().is_some_and(|last| index <= last.index);
        if already_in_flight {
            match self.in_flight.binary_search_by_key(&index, |entry| entry.index) {
                Ok(position) if !self.in_flight[position].delivered => {}
                // Delivered out of order before a rewind: do not send again.
                _ => return Ok(Step::Skipped),
            }
        } else {
            self.in_flight.push_back(InFlight {
                index,
                segment: name,
                offset: frame.offset,
                frame_bytes: frame.frame_bytes,
                event_time_ms: reading.event_time_ms,
                delivered: false,
            });
        }
        Ok(Step::Record(Box::new(SpooledRecord {
            index,
            reading,
            body: frame.body,
        })))
    }

    /// Counts damage met while reading, unless recovery (or an earlier read)
    /// already counted it.
    fn note_damage(&mut self, name: SegmentName, range: ByteRange, defect: &'static str) {
        let meta = self.segments.get_mut(&name).expect("reading a known segment");
        if meta.damage_is_known(&range) {
            return;
        }
        // With an incomplete list (more damage than kept), recovery may have
        // counted this range already: do not count it twice.
        let new = meta.known_damage_complete;
        meta.remember_damage(range);
        meta.has_damage = true;
        self.runtime_damage = Some((name, new));
        if !new {
            return;
        }
        self.stats.damaged_ranges_total += 1;
        self.stats.damaged_bytes_total += range.len();
        tracing::warn!(
            segment = %name,
            start = range.start,
            end = range.end,
            defect,
            "spool: damaged record met while reading; skipped, never delivered"
        );
    }

    /// Before handing out record `index`: records between the last one read
    /// and `index` that can no longer be read were lost to damage met since.
    fn skip_lost_records(&mut self, index: u64) {
        let Some((damaged, new)) = self.runtime_damage.take() else {
            return;
        };
        let missing = index - self.read_last_index - 1;
        let mut in_flight_between = 0;
        let mut lost_in_flight = 0;
        for entry in self.in_flight.iter_mut() {
            if entry.index > self.read_last_index && entry.index < index {
                in_flight_between += 1;
                if !entry.delivered {
                    // Read before, damaged since: it can never be sent again.
                    entry.delivered = true;
                    lost_in_flight += 1;
                }
            }
        }
        let never_read = if new {
            missing.saturating_sub(in_flight_between)
        } else {
            0
        };
        if let Some(meta) = self.segments.get_mut(&damaged) {
            let lost = never_read.min(meta.undelivered_records());
            meta.records -= lost;
        }
        self.stats.damaged_records_total += lost_in_flight + never_read;
        self.advance_cursor();
    }

    /// Re-reads from the first undelivered record (after a delivery failure),
    /// from the disk. Records delivered out of order are not returned again.
    pub fn rewind_to_cursor(&mut self) {
        self.head_cache.replace(None);
        if let Some(first) = self.in_flight.front() {
            self.read_position = ReadPosition {
                segment: first.segment,
                offset: first.offset,
            };
        }
        self.read_last_index = self.cursor;
        self.runtime_damage = None;
        // Read from the disk again, not from what was buffered.
        self.read_window.clear();
    }

    /// Records a delivery report for `index`. The cursor advances over the
    /// contiguous prefix of delivered records; reports may come out of order.
    /// Reports for records at or below the cursor are ignored, as are
    /// reports for records never read (logged).
    pub fn mark_delivered(&mut self, index: u64) {
        self.head_cache.replace(None);
        if index <= self.cursor {
            return;
        }
        match self.in_flight.binary_search_by_key(&index, |entry| entry.index) {
            Ok(position) => {
                let entry = &mut self.in_flight[position];
                if !entry.delivered {
                    entry.delivered = true;
                    self.stats.delivered_total += 1;
                }
            }
            Err(_) => {
                tracing::warn!(index, "spool: delivery report for a record never read; ignored");
                return;
            }
        }
        self.advance_cursor();
    }

    pub(super) fn advance_cursor(&mut self) {
        while let Some(first) = self.in_flight.front()
            && first.delivered
        {
            let entry = self.in_flight.pop_front().expect("front exists");
            assert!(entry.index > self.cursor, "the cursor only moves forward");
            self.cursor = entry.index;
            if let Some(meta) = self.segments.get_mut(&entry.segment) {
                meta.delivered_records = (meta.delivered_records + 1).min(meta.records);
                meta.delivered_bytes = (meta.delivered_bytes + entry.frame_bytes).min(meta.record_bytes);
            }
        }
        // After a rewind, late reports may move the cursor past the reader:
        // the reader must not hand those records out again.
        self.read_last_index = self.read_last_index.max(self.cursor);
    }

    /// Makes the cursor durable, then deletes the segments whose every
    /// record is at or below it.
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        self.head_cache.replace(None);
        if self.cursor > self.cursor_store.persisted() {
            self.cursor_store
                .persist(self.disk.as_ref(), &self.config.dir, self.cursor)
                .map_err(|e| SpoolError::io("persist cursor in", &self.config.dir, e))?;
        }
        self.delete_delivered_segments()?;
        self.check_invariants();
        Ok(())
    }

    fn delete_delivered_segments(&mut self) -> Result<(), SpoolError> {
        let persisted = self.cursor_store.persisted();
        let names: Vec<SegmentName> = self.segments.keys().copied().collect();
        let mut deleted = 0;
        for (position, name) in names.iter().enumerate() {
            if self.active.as_ref().is_some_and(|active| active.name == *name) {
                break;
            }
            let next_first = names.get(position + 1).map(|next| next.first_index);
            if !segment_is_delivered(&self.segments[name], next_first, persisted) {
                break;
            }
            if self.read_file.as_ref().is_some_and(|(open, _)| open == name) {
                self.read_file = None;
                self.read_window.clear();
            }
            let path = self.config.dir.join(name.file_name());
            self.disk
                .remove(&path)
                .map_err(|e| SpoolError::io("delete delivered segment", &path, e))?;
            self.segments.remove(name);
            deleted += 1;
            tracing::debug!(segment = %name, "spool: delivered segment deleted");
        }
        if deleted > 0 {
            self.stats.segments_deleted_total += deleted;
            if let Err(error) = self.disk.sync_dir(&self.config.dir) {
                // Not needed for correctness: a segment that comes back after
                // a crash lies at or below the durable cursor and goes again.
                tracing::warn!(%error, "spool: sync after deleting segments failed");
            }
        }
        Ok(())
    }

    /// Event time of the first undelivered record (for the statistics).
    pub(super) fn head_event_time_ms(&self, depth_records: u64) -> Option<i64> {
        if let Some(first) = self.in_flight.front() {
            return Some(first.event_time_ms);
        }
        if depth_records == 0 {
            return None;
        }
        if let Some(cached) = *self.head_cache.borrow() {
            return cached;
        }
        let value = self.peek_event_time_ms();
        self.head_cache.replace(Some(value));
        value
    }

    /// With nothing in flight, the first undelivered record is the next one
    /// the reader would return: look at it without moving the reader.
    fn peek_event_time_ms(&self) -> Option<i64> {
        let mut budget = PEEK_ITEMS_MAX;
        for (&name, meta) in self.segments.range(self.read_position.segment..) {
            let start = if name == self.read_position.segment {
                self.read_position.offset
            } else {
                0
            };
            if start >= meta.readable_end {
                continue;
            }
            let file = self.disk.open(&self.config.dir.join(name.file_name())).ok()?;
            let mut window = ReadWindow::default();
            let mut scanner = Scanner::new(
                file.as_ref(),
                &mut window,
                start,
                meta.readable_end,
                ReadErrors::Propagate,
            );
            while let Ok(Some(item)) = scanner.next_item() {
                budget = budget.checked_sub(1)?;
                if let ScanItem::Frame(frame) = item
                    && frame.header.index > self.read_last_index
                    && let Ok(reading) = self.codec.decode_body(&frame.body)
                {
                    return Some(reading.event_time_ms);
                }
            }
        }
        None
    }
}
