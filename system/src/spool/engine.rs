//! The [`Spool`]: state, opening (recovery), and statistics. The write
//! path lives in `write.rs`, the delivery path in `read.rs`.

use super::config::SpoolConfig;
use super::cursor::CursorStore;
use super::error::SpoolError;
use super::frame::SyncedPoint;
use super::recovery;
use super::report::{CursorReport, IndexRange, RecoveryReport};
use super::scan::ReadWindow;
use super::segment::{SegmentMeta, SegmentName};
use super::seqs::SeqAllocator;
use crate::codec::ReadingCodec;
use crate::disk::{Disk, DiskFile};
use crate::model::Reading;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// Largest number of segments the spool creates; past it new records are
/// treated as "full" under the configured policy.
pub const SEGMENTS_MAX: usize = 65_536;
/// Largest number of records one `read_next` call returns.
pub const READ_BATCH_MAX: usize = 10_000;
/// Write-and-sync attempts of one `commit` before it gives up.
pub const COMMIT_ATTEMPTS_MAX: u32 = 3;
/// Drop events kept until [`Spool::take_drop_events`] collects them.
pub const DROP_EVENTS_MAX: usize = 1024;

/// A durable, undelivered record handed to the forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledRecord {
    /// Spool index (report it back with [`Spool::mark_delivered`]).
    pub index: u64,
    /// The reading.
    pub reading: Reading,
    /// The Avro v1 body of the reading, exactly as stored (no re-encode).
    pub body: Vec<u8>,
}

/// A record made durable by a commit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommittedRecord {
    /// Spool index.
    pub index: u64,
    /// The reading.
    pub reading: Reading,
}

/// What one [`Spool::commit`] made durable (acknowledged), in spool order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Committed {
    /// The records, oldest first.
    pub records: Vec<CommittedRecord>,
}

impl Committed {
    /// Whether nothing was committed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of records committed.
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Records of one sensor removed by the `DropOldest` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedSeqs {
    /// Smallest `seq` dropped.
    pub first_seq: u64,
    /// Largest `seq` dropped.
    pub last_seq: u64,
    /// Records dropped.
    pub records: u64,
}

/// Undelivered records deleted because the spool was full (`DropOldest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropEvent {
    /// The segment deleted.
    pub segment: String,
    /// Spool indexes the cursor moved past: every record among them not
    /// yet delivered was dropped.
    pub indexes: Option<IndexRange>,
    /// Undelivered records dropped.
    pub records: u64,
    /// Per sensor, which `seq`s were dropped (from a scan of the segment;
    /// damaged records are not listed).
    pub sensors: BTreeMap<String, DroppedSeqs>,
}

/// Counters and gauges of a spool (metrics; never silent).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpoolStats {
    /// Durable records not yet covered by the cursor.
    pub depth_records: u64,
    /// Frame bytes of those records.
    pub depth_bytes: u64,
    /// Event time of the first undelivered record, in ms since the epoch.
    pub oldest_undelivered_event_time_ms: Option<i64>,
    /// Segment files.
    pub segments: u64,
    /// Bytes of all segment files (counted against `max_bytes`).
    pub disk_bytes: u64,
    /// The configured budget.
    pub max_bytes: u64,
    /// Records appended and not yet committed.
    pub uncommitted_records: u64,
    /// Records read and not yet covered by the cursor.
    pub in_flight_records: u64,
    /// Delivered through this index (in memory).
    pub cursor_index: u64,
    /// Delivered through this index (durable).
    pub persisted_cursor_index: u64,
    /// Index the next appended record gets.
    pub next_index: u64,
    /// Records accepted by `append`.
    pub appended_total: u64,
    /// Records made durable by `commit`.
    pub committed_total: u64,
    /// Successful commits.
    pub commits_total: u64,
    /// Failed write-and-sync attempts (each retried or reported).
    pub commit_failures_total: u64,
    /// Records handed back by failed commits, not acknowledged.
    pub unacknowledged_total: u64,
    /// Delivery reports received (`mark_delivered` of a read record).
    pub delivered_total: u64,
    /// Readings refused because the spool or the disk was full.
    pub rejected_full_total: u64,
    /// Undelivered records deleted by the `DropOldest` policy.
    pub dropped_full_total: u64,
    /// Segments deleted by the `DropOldest` policy.
    pub drop_events_total: u64,
    /// Records known lost to damage (at recovery and while reading).
    pub damaged_records_total: u64,
    /// Damaged bytes found.
    pub damaged_bytes_total: u64,
    /// Damaged ranges found.
    pub damaged_ranges_total: u64,
    /// Frames that read bad once and intact on a re-read.
    pub transient_read_retries_total: u64,
    /// Durable sequence reservations written.
    pub seq_reservations_total: u64,
    /// Segments deleted after full delivery.
    pub segments_deleted_total: u64,
}

/// The segment receiving commits.
pub(super) struct ActiveSegment {
    pub(super) name: SegmentName,
    pub(super) file: Box<dyn DiskFile>,
    /// Bytes written into the file by this spool (committed or attempted).
    pub(super) written_bytes: u64,
    /// The directory entry still needs `sync_dir`.
    pub(super) needs_dir_sync: bool,
}

/// An appended, not yet committed record.
pub(super) struct PendingRecord {
    pub(super) index: u64,
    pub(super) reading: Reading,
}

/// A record read and not yet covered by the cursor.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    pub(super) index: u64,
    pub(super) segment: SegmentName,
    pub(super) offset: u64,
    pub(super) frame_bytes: u64,
    pub(super) event_time_ms: i64,
    pub(super) delivered: bool,
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadPosition {
    pub(super) segment: SegmentName,
    pub(super) offset: u64,
}

/// A crash-safe, bounded, append-only spool of readings over a [`Disk`].
/// See the module documentation of [`crate::spool`].
pub struct Spool {
    pub(super) disk: Rc<dyn Disk>,
    pub(super) config: SpoolConfig,
    pub(super) codec: ReadingCodec,
    pub(super) segments: BTreeMap<SegmentName, SegmentMeta>,
    pub(super) active: Option<ActiveSegment>,
    /// The last point known synced, recorded in every new frame.
    pub(super) synced_point: Option<SyncedPoint>,
    pub(super) next_index: u64,
    pub(super) pending: Vec<PendingRecord>,
    /// Encoded frames of `pending`, written as one append at commit.
    pub(super) pending_frames: Vec<u8>,
    pub(super) pending_last_seq: BTreeMap<String, u64>,
    /// Last committed (or found) `seq` per sensor.
    pub(super) last_seq: BTreeMap<String, u64>,
    pub(super) seqs: SeqAllocator,
    /// Contiguous delivered prefix, in memory.
    pub(super) cursor: u64,
    pub(super) cursor_store: CursorStore,
    pub(super) in_flight: VecDeque<InFlight>,
    pub(super) read_position: ReadPosition,
    /// Largest index the reader has passed since the last rewind.
    pub(super) read_last_index: u64,
    pub(super) read_file: Option<(SegmentName, Box<dyn DiskFile>)>,
    pub(super) read_window: ReadWindow,
    /// Damage met since the last record read: its segment, and whether it
    /// was newly counted.
    pub(super) runtime_damage: Option<(SegmentName, bool)>,
    pub(super) head_cache: RefCell<Option<Option<i64>>>,
    pub(super) drop_events: VecDeque<DropEvent>,
    pub(super) stats: SpoolStats,
    /// Whether the last append was refused as full (to log transitions).
    pub(super) full: bool,
}

impl Spool {
    /// Opens (recovers) the spool in `config.dir`, creating it if missing.
    ///
    /// Recovery always reopens whatever it finds: every segment is scanned,
    /// CRCs checked, damage skipped and reported, intact records after it
    /// salvaged. Recovered segments are sealed and synced once, so what is
    /// recovered is durable; the next commit starts a fresh segment. Errors
    /// come only from an invalid configuration or a disk that fails to list,
    /// create or sync the directory.
    pub fn open(disk: Rc<dyn Disk>, config: SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        config.validate()?;
        if config.planted.any() {
            tracing::warn!(planted = ?config.planted, "spool: PLANTED BUGS ACTIVE (test only)");
        }
        let dir = config.dir.clone();
        disk.create_dir_all(&dir)
            .map_err(|e| SpoolError::io("create spool directory", &dir, e))?;
        let analysis = recovery::analyze(disk.as_ref(), &dir, config.planted.truncate_at_first_bad_crc)?;

        let mut cursor_store = CursorStore::from_load(&analysis.cursor);
        cursor_store
            .ensure_files(disk.as_ref(), &dir)
            .map_err(|e| SpoolError::io("create cursor files in", &dir, e))?;
        let cursor = cursor_store.persisted();
        let spool_max_seqs: BTreeMap<String, u64> = analysis
            .sensors
            .iter()
            .map(|(sensor, tally)| (sensor.clone(), tally.max_seq))
            .collect();
        let (seqs, seq_state) = SeqAllocator::open(
            disk.as_ref(),
            &dir,
            &analysis.seqs,
            &spool_max_seqs,
            analysis.untracked_max_seq,
            // Opening rewrites the reservation state and, with the sequence
            // high-water mark, the cursor: what was read may not be durable
            // (a failed sync, then a process crash) and is acted upon only
            // once it is.
            &mut cursor_store,
            config.seq_reservation_block,
            config.max_sensors,
        )?;

        // Keep what holds undelivered records (or damage that may); delete
        // empty and fully delivered segments.
        let mut segments = BTreeMap::new();
        let mut segments_deleted = Vec::new();
        let analyzed = &analysis.segments;
        for (position, segment) in analyzed.iter().enumerate() {
            let next_first = analyzed.get(position + 1).map(|next| next.meta.name.first_index);
            let meta = &segment.meta;
            let empty = meta.file_bytes == 0 && !meta.has_damage;
            if empty || segment_is_delivered(meta, next_first, cursor) {
                let path = dir.join(meta.name.file_name());
                match disk.remove(&path) {
                    Ok(()) => {
                        segments_deleted.push(meta.name.file_name());
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "spool: cannot delete a delivered segment")
                    }
                }
            }
            let mut meta = meta.clone();
            if config.planted.truncate_at_first_bad_crc
                && let Some(first_damage) = meta.known_damage.first()
            {
                // Planted bug: everything after the first bad frame is ignored.
                meta.readable_end = first_damage.start;
            }
            segments.insert(meta.name, meta);
        }
        // Make everything recovered durable, once.
        let mut synced_point = None;
        for meta in segments.values() {
            let path = dir.join(meta.name.file_name());
            let synced = disk.open(&path).and_then(|mut file| file.sync_data());
            match synced {
                Ok(()) => {
                    synced_point = Some(SyncedPoint {
                        segment: meta.name,
                        bytes: meta.file_bytes,
                    })
                }
                Err(error) => {
                    synced_point = None;
                    tracing::warn!(%error, path = %path.display(), "spool: cannot sync a recovered segment");
                }
            }
        }
        disk.sync_dir(&dir)
            .map_err(|e| SpoolError::io("sync spool directory", &dir, e))?;

        let next_index = analysis.max_index.max(cursor).saturating_add(1);
        let read_position = match analysis.first_undelivered {
            Some((segment, offset)) => ReadPosition { segment, offset },
            None => ReadPosition {
                segment: SegmentName::new(next_index, 0),
                offset: 0,
            },
        };
        let last_seq = spool_max_seqs;
        let damage = &analysis.damage;
        let stats = SpoolStats {
            max_bytes: config.max_bytes,
            damaged_records_total: damage.records_missing_total,
            damaged_bytes_total: damage.bytes_total,
            damaged_ranges_total: damage.ranges_total,
            transient_read_retries_total: analysis.transient_read_retries,
            segments_deleted_total: segments_deleted.len() as u64,
            ..SpoolStats::default()
        };
        let report = RecoveryReport {
            dir: dir.display().to_string(),
            segments_scanned: analysis.segments.len() as u64,
            bytes_scanned: analysis.bytes,
            records: analysis.records,
            undelivered_records: analysis.undelivered_records,
            duplicate_frames: analysis.duplicate_frames,
            cursor: CursorReport {
                delivered_through_index: analysis.cursor.value,
                source: analysis.cursor.source,
                generation: analysis.cursor.generation,
                invalid_copies: analysis
                    .cursor
                    .invalid_slots
                    .iter()
                    .map(|(name, reason)| format!("{name}: {reason}"))
                    .collect(),
            },
            seq_state,
            damage: analysis.damage.clone(),
            segments_deleted,
            unknown_files: analysis.unknown_files.clone(),
            next_index,
            transient_read_retries: analysis.transient_read_retries,
            planted: config.planted,
        };
        tracing::info!(
            dir = %report.dir,
            records = report.records,
            undelivered = report.undelivered_records,
            damaged_ranges = report.damage.ranges_total,
            cursor = cursor,
            next_index,
            "spool opened"
        );
        let spool = Spool {
            disk,
            config,
            codec: ReadingCodec::v1(),
            segments,
            active: None,
            synced_point,
            next_index,
            pending: Vec::new(),
            pending_frames: Vec::new(),
            pending_last_seq: BTreeMap::new(),
            last_seq,
            seqs,
            cursor,
            cursor_store,
            in_flight: VecDeque::new(),
            read_position,
            read_last_index: cursor,
            read_file: None,
            read_window: ReadWindow::default(),
            runtime_damage: None,
            head_cache: RefCell::new(None),
            drop_events: VecDeque::new(),
            stats,
            full: false,
        };
        spool.check_invariants();
        Ok((spool, report))
    }

    /// The configuration the spool runs with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Delivered-through index in memory (advanced by `mark_delivered`).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Delivered-through index as persisted.
    pub fn persisted_cursor(&self) -> u64 {
        self.cursor_store.persisted()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> SpoolStats {
        let mut stats = self.stats.clone();
        stats.depth_records = self.segments.values().map(SegmentMeta::undelivered_records).sum();
        stats.depth_bytes = self
            .segments
            .values()
            .map(|meta| meta.record_bytes.saturating_sub(meta.delivered_bytes))
            .sum();
        stats.oldest_undelivered_event_time_ms = self.head_event_time_ms(stats.depth_records);
        stats.segments = self.segments.len() as u64;
        stats.disk_bytes = self.disk_bytes();
        stats.uncommitted_records = self.pending.len() as u64;
        stats.in_flight_records = self.in_flight.len() as u64;
        stats.cursor_index = self.cursor;
        stats.persisted_cursor_index = self.cursor_store.persisted();
        stats.next_index = self.next_index;
        stats.seq_reservations_total = self.seqs.reservations_total();
        stats
    }

    /// Collects the drop events recorded since the last call (at most
    /// [`DROP_EVENTS_MAX`] are kept; `stats().drop_events_total` counts all).
    pub fn take_drop_events(&mut self) -> Vec<DropEvent> {
        self.drop_events.drain(..).collect()
    }

    /// Bytes of all segment files.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|meta| meta.file_bytes).sum()
    }

    /// Asserts the invariants the spool relies on (cheap: per segment).
    pub(super) fn check_invariants(&self) {
        assert!(
            self.cursor >= self.cursor_store.persisted(),
            "the persisted cursor never leads"
        );
        assert!(
            self.next_index > self.cursor,
            "indexes above the cursor are fresh"
        );
        assert!(
            self.in_flight
                .front()
                .is_none_or(|first| first.index > self.cursor && !first.delivered),
            "the first in-flight record is undelivered and above the cursor {}: {:?}",
            self.cursor,
            self.in_flight.front()
        );
        assert!(self.in_flight.len() <= self.config.max_in_flight_records as usize);
        assert!(self.pending_frames.len() as u64 <= self.config.max_uncommitted_bytes);
        if let Some(active) = &self.active {
            let meta = self
                .segments
                .get(&active.name)
                .expect("the active segment is known");
            assert!(
                meta.readable_end <= active.written_bytes,
                "readable bytes were written"
            );
        }
        if let Some(first) = self.pending.first() {
            assert!(first.index < self.next_index);
            assert!(
                self.segments.values().all(|meta| meta.max_index < first.index),
                "pending records follow everything on disk"
            );
        }
        for meta in self.segments.values() {
            assert!(
                meta.readable_end <= meta.file_bytes,
                "{}: readable within the file",
                meta.name
            );
        }
    }
}

/// Whether every record the segment holds or may hold is at or below
/// `cursor`: its intact frames by their index, and damaged bytes (whose
/// index is unknown) by the first index of the next segment.
pub(super) fn segment_is_delivered(meta: &SegmentMeta, next_first_index: Option<u64>, cursor: u64) -> bool {
    if meta.max_index > cursor {
        return false;
    }
    if meta.has_damage {
        return next_first_index.is_some_and(|next| next.saturating_sub(1) <= cursor);
    }
    true
}
