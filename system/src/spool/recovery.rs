//! Reading a spool directory as it is, without changing it: every segment
//! scanned, every frame's CRC checked, damage located and classified.
//! [`super::Spool::open`] acts on the result; `inspect` and `verify` only
//! report it.
//!
//! Classification of a damaged range of segment `S`, with `W` the largest
//! synced point of `S` recorded by any intact frame (in `S` or a later
//! segment):
//! - starts below `W`: **before the synced point** — synced bytes changed;
//! - starts at or after `W` and reaches the end of `S`: **torn tail** — what
//!   a power cut during a write leaves;
//! - starts at or after `W` with intact frames after it: **unsynced write**
//!   — a torn batch that was never acknowledged.
//!
//! `W` is a lower bound of what was really synced (the last batch of a
//! segment is synced but no later frame says so), so damage to the very last
//! synced batch of a segment is reported as a torn tail: still reported, with
//! its byte range, never delivered.
//!
//! Memory stays bounded: records are streamed, and per segment at most
//! [`KNOWN_DAMAGE_PER_SEGMENT_MAX`] damaged ranges are kept; a segment with
//! more is scanned a second time to classify the rest.

use super::cursor::{self, CursorLoad};
use super::error::SpoolError;
use super::frame::SyncedPoint;
use super::report::{DamageKind, DamageRange, DamageSummary, IndexRange};
use super::scan::{ReadErrors, ReadWindow, ScanDefect, ScanItem, Scanner};
use super::segment::{ByteRange, KNOWN_DAMAGE_PER_SEGMENT_MAX, SegmentMeta, SegmentName};
use super::seqs::{self, SeqLoad};
use super::{config::SENSORS_LIMIT, cursor::CURSOR_SLOT_NAMES, seqs::SEQ_SLOT_NAMES};
use crate::codec::ReadingCodec;
use crate::disk::Disk;
use std::collections::BTreeMap;
use std::path::Path;

/// Per-sensor counts found in a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorTally {
    /// Intact records.
    pub records: u64,
    /// Of those, above the cursor.
    pub undelivered: u64,
    /// Smallest `seq`.
    pub min_seq: u64,
    /// Largest `seq`.
    pub max_seq: u64,
}

/// One segment as found.
#[derive(Debug, Clone)]
pub struct AnalyzedSegment {
    /// What the spool keeps in memory about it.
    pub meta: SegmentMeta,
    /// Smallest and largest event time of its intact records.
    pub event_time_range_ms: Option<(i64, i64)>,
    /// First and last spool index of its intact records.
    pub index_range: Option<(u64, u64)>,
    /// Damaged ranges and bytes in it.
    pub damage: (u64, u64),
}

/// A damaged range waiting for classification.
#[derive(Debug, Clone)]
struct FoundDamage {
    segment: usize,
    range: ByteRange,
    defect: &'static str,
    /// Known without looking at synced points (unreadable, undecodable).
    fixed_kind: Option<DamageKind>,
    group: u64,
}

/// Everything learnt from a spool directory.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Segments in spool order.
    pub segments: Vec<AnalyzedSegment>,
    /// The delivery cursor.
    pub cursor: CursorLoad,
    /// The sequence reservation state.
    pub seqs: SeqLoad,
    /// No segment and no state file: a new spool.
    pub spool_is_new: bool,
    /// Files that are not the spool's.
    pub unknown_files: Vec<String>,
    /// Per-sensor counts (at most [`SENSORS_LIMIT`] sensors).
    pub sensors: BTreeMap<String, SensorTally>,
    /// Largest `seq` of records whose sensor did not fit the tally.
    pub untracked_max_seq: Option<u64>,
    /// All damage, classified.
    pub damage: DamageSummary,
    /// Intact records (each index once).
    pub records: u64,
    /// Of those, above the cursor.
    pub undelivered_records: u64,
    /// Frame bytes of the undelivered records.
    pub undelivered_bytes: u64,
    /// Intact frames whose index was already seen.
    pub duplicate_frames: u64,
    /// Largest index of any intact frame or segment name.
    pub max_index: u64,
    /// Where the first undelivered record starts.
    pub first_undelivered: Option<(SegmentName, u64)>,
    /// Event time of the first undelivered record.
    pub head_event_time_ms: Option<i64>,
    /// Smallest and largest event time of all intact records.
    pub event_time_range_ms: Option<(i64, i64)>,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Frames intact on a re-read.
    pub transient_read_retries: u64,
}

fn widen(range: Option<(i64, i64)>, value: i64) -> Option<(i64, i64)> {
    Some(match range {
        None => (value, value),
        Some((low, high)) => (low.min(value), high.max(value)),
    })
}

fn classify(range: ByteRange, synced_bytes: u64, file_bytes: u64) -> DamageKind {
    if range.start < synced_bytes {
        DamageKind::BeforeSyncedPoint
    } else if range.end >= file_bytes {
        DamageKind::TornTail
    } else {
        DamageKind::UnsyncedWrite
    }
}

/// Reads the spool in `dir` without modifying anything. Fails only when
/// the directory itself cannot be listed; damage is part of the answer.
pub fn analyze(disk: &dyn Disk, dir: &Path, stop_at_first_damage: bool) -> Result<Analysis, SpoolError> {
    let names = disk.list(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    let mut segment_names = Vec::new();
    let mut unknown_files = Vec::new();
    let mut state_files = 0;
    for name in names {
        if let Some(segment) = SegmentName::parse(&name) {
            segment_names.push(segment);
        } else if CURSOR_SLOT_NAMES.contains(&name.as_str()) || SEQ_SLOT_NAMES.contains(&name.as_str()) {
            state_files += 1;
        } else {
            unknown_files.push(name);
        }
    }
    segment_names.sort();
    let spool_is_new = segment_names.is_empty() && state_files == 0;
    let cursor = cursor::load_cursor(disk, dir, spool_is_new);
    let seqs = seqs::load_seqs(disk, dir, spool_is_new);
    let mut scan = Scan {
        codec: ReadingCodec::v1(),
        cursor: cursor.value,
        stop_at_first_damage,
        analysis: Analysis {
            segments: Vec::with_capacity(segment_names.len()),
            cursor,
            seqs,
            spool_is_new,
            unknown_files,
            sensors: BTreeMap::new(),
            untracked_max_seq: None,
            damage: DamageSummary::default(),
            records: 0,
            undelivered_records: 0,
            undelivered_bytes: 0,
            duplicate_frames: 0,
            max_index: 0,
            first_undelivered: None,
            head_event_time_ms: None,
            event_time_range_ms: None,
            bytes: 0,
            transient_read_retries: 0,
        },
        found: Vec::new(),
        synced: BTreeMap::new(),
        last_index: 0,
        group: 0,
        group_open: false,
        group_missing: BTreeMap::new(),
        window: ReadWindow::default(),
    };
    for name in segment_names {
        scan.segment(disk, dir, name);
    }
    Ok(scan.finish(disk, dir))
}

struct Scan {
    codec: ReadingCodec,
    cursor: u64,
    stop_at_first_damage: bool,
    analysis: Analysis,
    /// Damage kept for the report and the reader (bounded per segment).
    found: Vec<FoundDamage>,
    /// Largest synced point recorded per segment.
    synced: BTreeMap<SegmentName, u64>,
    /// Largest index accepted so far.
    last_index: u64,
    /// Current damage group (damage since the last accepted record).
    group: u64,
    group_open: bool,
    /// Missing indexes per group that has listed ranges.
    group_missing: BTreeMap<u64, Option<IndexRange>>,
    window: ReadWindow,
}

impl Scan {
    fn segment(&mut self, disk: &dyn Disk, dir: &Path, name: SegmentName) {
        let position = self.analysis.segments.len();
        let mut segment = AnalyzedSegment {
            meta: SegmentMeta::empty(name),
            event_time_range_ms: None,
            index_range: None,
            damage: (0, 0),
        };
        self.analysis.max_index = self.analysis.max_index.max(name.first_index);
        let path = dir.join(name.file_name());
        let opened = disk
            .open(&path)
            .and_then(|file| file.len().map(|len| (file, len)));
        let (file, len) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "spool: segment cannot be opened");
                segment.meta.has_damage = true;
                self.analysis.segments.push(segment);
                self.damage(
                    position,
                    ByteRange::new(0, 0),
                    "cannot open",
                    Some(DamageKind::Unreadable),
                );
                return;
            }
        };
        segment.meta.file_bytes = len;
        segment.meta.readable_end = len;
        self.analysis.bytes += len;
        self.analysis.segments.push(segment);
        let mut window = std::mem::take(&mut self.window);
        window.clear();
        let mut scanner = Scanner::new(file.as_ref(), &mut window, 0, len, ReadErrors::AsDamage)
            .stop_at_first_damage(self.stop_at_first_damage);
        loop {
            match scanner.next_item() {
                Ok(Some(item)) => self.item(position, item),
                Ok(None) => break,
                Err(error) => {
                    // Not expected: this mode turns read errors into damage.
                    tracing::warn!(%error, path = %path.display(), "spool: scan stopped");
                    break;
                }
            }
        }
        self.analysis.transient_read_retries += scanner.transient_read_retries;
        self.window = window;
    }

    fn item(&mut self, position: usize, item: ScanItem) {
        match item {
            ScanItem::Damage(range, defect) => {
                let fixed = (defect == ScanDefect::ReadError).then_some(DamageKind::Unreadable);
                self.damage(position, range, defect.describe(), fixed);
            }
            ScanItem::Frame(frame) => {
                if let Some(SyncedPoint { segment, bytes }) = frame.header.synced {
                    let entry = self.synced.entry(segment).or_insert(0);
                    *entry = (*entry).max(bytes);
                }
                let index = frame.header.index;
                let segment = &mut self.analysis.segments[position];
                segment.meta.max_index = segment.meta.max_index.max(index);
                self.analysis.max_index = self.analysis.max_index.max(index);
                if index <= self.last_index {
                    self.analysis.duplicate_frames += 1;
                    return;
                }
                let reading = match self.codec.decode_body(&frame.body) {
                    Ok(reading) => reading,
                    Err(_) => {
                        let range = ByteRange::new(frame.offset, frame.offset + frame.frame_bytes);
                        self.damage(position, range, "undecodable body", Some(DamageKind::Undecodable));
                        return;
                    }
                };
                if self.group_open {
                    let missing = (index > self.last_index + 1).then(|| IndexRange {
                        first: self.last_index + 1,
                        last: index - 1,
                    });
                    self.analysis.damage.records_missing_total += missing.map_or(0, |m| m.count());
                    if let Some(entry) = self.group_missing.get_mut(&self.group) {
                        *entry = missing;
                    }
                    self.group += 1;
                    self.group_open = false;
                }
                self.last_index = index;
                let analysis = &mut self.analysis;
                let segment = &mut analysis.segments[position];
                segment.meta.records += 1;
                segment.meta.record_bytes += frame.frame_bytes;
                segment.event_time_range_ms = widen(segment.event_time_range_ms, reading.event_time_ms);
                segment.index_range = Some(match segment.index_range {
                    None => (index, index),
                    Some((first, _)) => (first, index),
                });
                analysis.records += 1;
                analysis.event_time_range_ms = widen(analysis.event_time_range_ms, reading.event_time_ms);
                let delivered = index <= self.cursor;
                if delivered {
                    segment.meta.delivered_records += 1;
                    segment.meta.delivered_bytes += frame.frame_bytes;
                } else {
                    analysis.undelivered_records += 1;
                    analysis.undelivered_bytes += frame.frame_bytes;
                    if analysis.first_undelivered.is_none() {
                        analysis.first_undelivered = Some((segment.meta.name, frame.offset));
                        analysis.head_event_time_ms = Some(reading.event_time_ms);
                    }
                }
                let tracked = analysis.sensors.len() < SENSORS_LIMIT as usize;
                match analysis.sensors.get_mut(&reading.sensor_id) {
                    Some(tally) => {
                        tally.records += 1;
                        tally.undelivered += u64::from(!delivered);
                        tally.min_seq = tally.min_seq.min(reading.seq);
                        tally.max_seq = tally.max_seq.max(reading.seq);
                    }
                    None if tracked => {
                        analysis.sensors.insert(
                            reading.sensor_id,
                            SensorTally {
                                records: 1,
                                undelivered: u64::from(!delivered),
                                min_seq: reading.seq,
                                max_seq: reading.seq,
                            },
                        );
                    }
                    None => {
                        analysis.untracked_max_seq =
                            Some(analysis.untracked_max_seq.unwrap_or(0).max(reading.seq));
                    }
                }
            }
        }
    }

    fn damage(
        &mut self,
        position: usize,
        range: ByteRange,
        defect: &'static str,
        fixed_kind: Option<DamageKind>,
    ) {
        self.group_open = true;
        let segment = &mut self.analysis.segments[position];
        segment.meta.has_damage = true;
        segment.damage.0 += 1;
        segment.damage.1 += range.len();
        let kept = segment.meta.known_damage.len() < KNOWN_DAMAGE_PER_SEGMENT_MAX;
        if let Some(kind) = fixed_kind {
            self.analysis.damage.count(kind, range.len());
        }
        if kept {
            segment.meta.known_damage.push(range);
            self.group_missing.entry(self.group).or_insert(None);
            self.found.push(FoundDamage {
                segment: position,
                range,
                defect,
                fixed_kind,
                group: self.group,
            });
        } else {
            segment.meta.known_damage_complete = false;
        }
    }

    fn finish(mut self, disk: &dyn Disk, dir: &Path) -> Analysis {
        let watermark =
            |synced: &BTreeMap<SegmentName, u64>, name: SegmentName| synced.get(&name).copied().unwrap_or(0);
        for found in &self.found {
            let segment = &self.analysis.segments[found.segment];
            let kind = match found.fixed_kind {
                Some(kind) => kind,
                None => {
                    let synced_bytes = watermark(&self.synced, segment.meta.name);
                    let kind = classify(found.range, synced_bytes, segment.meta.file_bytes);
                    if segment.meta.known_damage_complete {
                        self.analysis.damage.count(kind, found.range.len());
                    }
                    kind
                }
            };
            let missing_indexes = self.group_missing.get(&found.group).copied().flatten();
            self.analysis.damage.list(DamageRange {
                segment: segment.meta.name.file_name(),
                start_offset: found.range.start,
                end_offset: found.range.end,
                kind,
                defect: found.defect.to_string(),
                missing_indexes,
            });
        }
        // Segments with more damage than kept: classify every range again
        // now that the synced points are known.
        for position in 0..self.analysis.segments.len() {
            let meta = &self.analysis.segments[position].meta;
            if meta.known_damage_complete {
                continue;
            }
            let (name, file_bytes) = (meta.name, meta.file_bytes);
            let synced_bytes = watermark(&self.synced, name);
            let Ok(file) = disk.open(&dir.join(name.file_name())) else {
                continue;
            };
            self.window.clear();
            let mut scanner = Scanner::new(
                file.as_ref(),
                &mut self.window,
                0,
                file_bytes,
                ReadErrors::AsDamage,
            )
            .stop_at_first_damage(self.stop_at_first_damage);
            while let Ok(Some(item)) = scanner.next_item() {
                if let ScanItem::Damage(range, defect) = item
                    && defect != ScanDefect::ReadError
                {
                    self.analysis
                        .damage
                        .count(classify(range, synced_bytes, file_bytes), range.len());
                }
            }
        }
        let analysis = &mut self.analysis;
        if analysis.damage.ranges_total > 0 {
            tracing::warn!(
                ranges = analysis.damage.ranges_total,
                bytes = analysis.damage.bytes_total,
                verdict = ?analysis.damage.verdict(),
                "spool: damage found"
            );
        }
        self.analysis
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashDisk;
    use crate::model::tests::sample;
    use crate::spool::frame::{PayloadHeader, encode_frame};
    use std::path::PathBuf;

    struct Builder {
        disk: CrashDisk,
        dir: PathBuf,
    }

    impl Builder {
        fn new() -> Self {
            let disk = CrashDisk::new(1);
            let dir = PathBuf::from("/spool");
            disk.create_dir_all(&dir).unwrap();
            Self { disk, dir }
        }

        /// Writes a segment of records `indexes`; returns frame offsets.
        fn segment(&self, name: SegmentName, indexes: &[u64], synced: Option<SyncedPoint>) -> Vec<u64> {
            let codec = ReadingCodec::v1();
            let mut bytes = Vec::new();
            let mut offsets = Vec::new();
            for &index in indexes {
                offsets.push(bytes.len() as u64);
                let body = codec.encode_body(&sample("s1", index)).unwrap();
                encode_frame(&mut bytes, &PayloadHeader { index, synced }, &body);
            }
            let mut file = self.disk.create_new(&self.dir.join(name.file_name())).unwrap();
            file.append(&bytes).unwrap();
            offsets.push(bytes.len() as u64);
            offsets
        }

        fn corrupt(&self, name: SegmentName, offset: u64) {
            self.disk
                .flip_bit(&self.dir.join(name.file_name()), offset, 2)
                .unwrap();
        }
    }

    #[test]
    fn new_spool() {
        let builder = Builder::new();
        let analysis = analyze(&builder.disk, &builder.dir, false).unwrap();
        assert!(analysis.spool_is_new);
        assert_eq!(analysis.records, 0);
        assert_eq!(analysis.damage.verdict(), super::super::report::Verdict::Clean);
    }

    #[test]
    fn damage_is_classified_by_synced_point() {
        let builder = Builder::new();
        let a = SegmentName::new(1, 0);
        let b = SegmentName::new(11, 0);
        let offsets_a = builder.segment(a, &(1..=10).collect::<Vec<_>>(), None);
        // Segment b's frames say: a was synced up to its record 6.
        let synced = SyncedPoint {
            segment: a,
            bytes: offsets_a[6],
        };
        let offsets_b = builder.segment(b, &(11..=15).collect::<Vec<_>>(), Some(synced));
        builder.corrupt(a, offsets_a[2] + 20); // record 3: synced
        builder.corrupt(a, offsets_a[7] + 20); // record 8: unsynced, intact after
        builder.corrupt(a, offsets_a[9] + 20); // record 10: tail
        builder.corrupt(b, offsets_b[4] + 20); // record 15: tail of b, nothing synced in b
        let analysis = analyze(&builder.disk, &builder.dir, false).unwrap();
        let kinds: Vec<(DamageKind, Option<IndexRange>)> = analysis
            .damage
            .ranges
            .iter()
            .map(|r| (r.kind, r.missing_indexes))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    DamageKind::BeforeSyncedPoint,
                    Some(IndexRange { first: 3, last: 3 })
                ),
                (DamageKind::UnsyncedWrite, Some(IndexRange { first: 8, last: 8 })),
                (DamageKind::TornTail, Some(IndexRange { first: 10, last: 10 })),
                (DamageKind::TornTail, None),
            ]
        );
        assert_eq!(analysis.records, 11);
        assert_eq!(analysis.damage.records_missing_total, 3);
        assert_eq!(analysis.damage.ranges_total, 4);
        assert_eq!(analysis.max_index, 14, "the damaged record 15 is not counted");
    }

    #[test]
    fn duplicates_are_skipped_and_cursor_splits_counts() {
        let builder = Builder::new();
        builder.segment(SegmentName::new(1, 0), &[1, 2, 3, 4], None);
        builder.segment(SegmentName::new(3, 1), &[3, 4, 5], None);
        let mut store =
            cursor::CursorStore::from_load(&cursor::load_cursor(&builder.disk, &builder.dir, true));
        store.persist(&builder.disk, &builder.dir, 2).unwrap();
        let analysis = analyze(&builder.disk, &builder.dir, false).unwrap();
        assert_eq!(analysis.records, 5);
        assert_eq!(analysis.duplicate_frames, 2);
        assert_eq!(analysis.undelivered_records, 3);
        assert_eq!(analysis.first_undelivered.unwrap().0, SegmentName::new(1, 0));
        assert_eq!(analysis.sensors["s1"].max_seq, 5);
        assert_eq!(analysis.sensors["s1"].undelivered, 3);
        assert_eq!(analysis.cursor.value, 2);
    }

    #[test]
    fn many_damaged_ranges_stay_bounded_but_counted() {
        let builder = Builder::new();
        let name = SegmentName::new(1, 0);
        let count = KNOWN_DAMAGE_PER_SEGMENT_MAX as u64 * 2 + 10;
        let offsets = builder.segment(name, &(1..=count).collect::<Vec<_>>(), None);
        for i in (0..count as usize).step_by(2) {
            builder.corrupt(name, offsets[i] + 20);
        }
        let analysis = analyze(&builder.disk, &builder.dir, false).unwrap();
        let damaged = count.div_ceil(2);
        assert_eq!(analysis.damage.ranges_total, damaged);
        assert_eq!(analysis.records, count - damaged);
        assert_eq!(
            analysis.segments[0].meta.known_damage.len(),
            KNOWN_DAMAGE_PER_SEGMENT_MAX
        );
        assert!(!analysis.segments[0].meta.known_damage_complete);
    }
}
