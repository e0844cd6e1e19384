//! Segment files: naming, and the per-segment metadata the spool keeps in
//! memory (never the records themselves).
//!
//! A segment is an append-only file of frames named by the spool index of
//! its first record: `seg-{first_index:020}-{attempt:02}.log`. `attempt` is 0
//! unless a commit had to abandon a segment after a failed sync and re-append
//! the same records (same indexes) into a fresh file; the names sort
//! bytewise in spool order.

use serde::Serialize;
use std::fmt;

/// Prefix of every segment file name.
pub const SEGMENT_PREFIX: &str = "seg-";
/// Suffix of every segment file name.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Largest attempt number a segment name can carry.
pub const SEGMENT_ATTEMPT_MAX: u8 = 99;

const INDEX_DIGITS: usize = 20;
const ATTEMPT_DIGITS: usize = 2;

/// The identity of a segment: its first spool index and attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SegmentName {
    /// Spool index of the first record written into the segment.
    pub first_index: u64,
    /// 0, or how many earlier segments for the same first index were abandoned.
    pub attempt: u8,
}

impl SegmentName {
    /// A segment name.
    pub fn new(first_index: u64, attempt: u8) -> Self {
        assert!(attempt <= SEGMENT_ATTEMPT_MAX, "attempt {attempt} too large");
        Self { first_index, attempt }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        format!(
            "{SEGMENT_PREFIX}{:0width$}-{:0attempt_width$}{SEGMENT_SUFFIX}",
            self.first_index,
            self.attempt,
            width = INDEX_DIGITS,
            attempt_width = ATTEMPT_DIGITS
        )
    }

    /// Parses a file name written by [`SegmentName::file_name`]; anything
    /// else (temporary files, other tools' files) is `None`.
    pub fn parse(file_name: &str) -> Option<Self> {
        let inner = file_name
            .strip_prefix(SEGMENT_PREFIX)?
            .strip_suffix(SEGMENT_SUFFIX)?;
        let (index, attempt) = inner.split_once('-')?;
        if index.len() != INDEX_DIGITS || attempt.len() != ATTEMPT_DIGITS {
            return None;
        }
        if !index.bytes().all(|b| b.is_ascii_digit()) || !attempt.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let first_index: u64 = index.parse().ok()?;
        let attempt: u8 = attempt.parse().ok()?;
        if attempt > SEGMENT_ATTEMPT_MAX {
            return None;
        }
        Some(Self { first_index, attempt })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// A byte range `[start, end)` of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// A range; `start <= end`.
    pub fn new(start: u64, end: u64) -> Self {
        assert!(start <= end, "byte range {start}..{end} is reversed");
        Self { start, end }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether `other` lies within this range.
    pub fn contains_range(&self, other: &ByteRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// Known damaged ranges of one segment kept in memory so that the reader
/// skips them without counting them twice. At most this many are kept.
pub const KNOWN_DAMAGE_PER_SEGMENT_MAX: usize = 256;

/// What the spool keeps in memory about one segment.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    /// The segment's identity.
    pub name: SegmentName,
    /// Size of the file, in bytes (counted against `max_bytes`).
    pub file_bytes: u64,
    /// Bytes the reader may read: durable, acknowledged data. For the
    /// active segment, the end of the last successful commit.
    pub readable_end: u64,
    /// Records in `[0, readable_end)` that the spool delivers.
    pub records: u64,
    /// Bytes of those records' frames.
    pub record_bytes: u64,
    /// Largest spool index of any intact frame in the file (0: none).
    pub max_index: u64,
    /// Records of this segment at or below the in-memory cursor.
    pub delivered_records: u64,
    /// Bytes of those records' frames.
    pub delivered_bytes: u64,
    /// The file holds damage or abandoned bytes (a torn or failed write).
    pub has_damage: bool,
    /// Known damaged ranges within `[0, readable_end)`.
    pub known_damage: Vec<ByteRange>,
    /// `known_damage` holds every damaged range found so far.
    pub known_damage_complete: bool,
}

impl SegmentMeta {
    /// Metadata of a freshly created, empty segment.
    pub fn empty(name: SegmentName) -> Self {
        Self {
            name,
            file_bytes: 0,
            readable_end: 0,
            records: 0,
            record_bytes: 0,
            max_index: 0,
            delivered_records: 0,
            delivered_bytes: 0,
            has_damage: false,
            known_damage: Vec::new(),
            known_damage_complete: true,
        }
    }

    /// Records not yet at or below the cursor.
    pub fn undelivered_records(&self) -> u64 {
        assert!(self.delivered_records <= self.records, "delivered within records");
        self.records - self.delivered_records
    }

    /// Whether `range` is a damaged range already known (counted).
    pub fn damage_is_known(&self, range: &ByteRange) -> bool {
        self.known_damage.iter().any(|known| known.contains_range(range))
    }

    /// Remembers a damaged range; returns false when the list is full.
    pub fn remember_damage(&mut self, range: ByteRange) -> bool {
        if self.damage_is_known(&range) {
            return true;
        }
        if self.known_damage.len() >= KNOWN_DAMAGE_PER_SEGMENT_MAX {
            self.known_damage_complete = false;
            return false;
        }
        self.known_damage.push(range);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_spool_order() {
        let a = SegmentName::new(9, 0);
        let b = SegmentName::new(9, 1);
        let c = SegmentName::new(10, 0);
        let d = SegmentName::new(u64::MAX, SEGMENT_ATTEMPT_MAX);
        for name in [a, b, c, d] {
            assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        }
        let mut files = vec![d.file_name(), c.file_name(), b.file_name(), a.file_name()];
        files.sort();
        assert_eq!(
            files,
            vec![a.file_name(), b.file_name(), c.file_name(), d.file_name()]
        );
        assert_eq!(a.file_name(), "seg-00000000000000000009-00.log");
    }

    #[test]
    fn foreign_names_are_not_segments() {
        for name in [
            "seg-1-00.log",
            "seg-00000000000000000009-00.log.tmp",
            "seg-0000000000000000000x-00.log",
            "seg-00000000000000000009-100.log",
            "cursor-a",
            "seg-99999999999999999999-00.log",
            "seg-+0000000000000000009-00.log",
        ] {
            assert_eq!(SegmentName::parse(name), None, "{name}");
        }
    }

    #[test]
    fn damage_memory_is_bounded() {
        let mut meta = SegmentMeta::empty(SegmentName::new(1, 0));
        for i in 0..KNOWN_DAMAGE_PER_SEGMENT_MAX as u64 {
            assert!(meta.remember_damage(ByteRange::new(i * 10, i * 10 + 5)));
        }
        assert!(meta.remember_damage(ByteRange::new(0, 5)), "already known");
        assert!(!meta.remember_damage(ByteRange::new(1_000_000, 1_000_001)));
        assert!(!meta.known_damage_complete);
        assert!(meta.damage_is_known(&ByteRange::new(11, 14)));
        assert!(!meta.damage_is_known(&ByteRange::new(14, 16)));
    }
}
