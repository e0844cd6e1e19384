//! Damage and recovery reports: serde-serialisable (JSON) and readable.

use super::config::PlantedBugs;
use super::cursor::StateSource;
use super::seqs::SeqStateReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Damaged ranges listed one by one in a report; beyond this only totals.
pub const DAMAGE_REPORT_RANGES_MAX: usize = 1000;

/// What kind of damage a byte range is, judged by where it lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Damage in bytes that had been synced (below the synced point some
    /// later intact frame recorded): the storage corrupted durable data.
    /// Acknowledged records may be lost; never expected from a power cut.
    BeforeSyncedPoint,
    /// An intact frame (CRC matches) whose Avro body does not decode: a
    /// writer bug or an incompatible writer.
    Undecodable,
    /// The disk returned errors for these bytes.
    Unreadable,
    /// Damage past the synced point with intact frames after it: a torn or
    /// lost write of a batch that was never acknowledged, or that was
    /// re-appended elsewhere after a failed sync.
    UnsyncedWrite,
    /// Damage past the synced point at the end of a segment, with nothing
    /// intact after it: the expected trace of a power cut during a write.
    TornTail,
}

impl DamageKind {
    /// Whether this kind is the expected trace of a crash (not corruption).
    pub fn is_crash_debris(&self) -> bool {
        matches!(self, DamageKind::TornTail | DamageKind::UnsyncedWrite)
    }

    /// A short human label.
    pub fn label(&self) -> &'static str {
        match self {
            DamageKind::BeforeSyncedPoint => "corruption before the synced point",
            DamageKind::Undecodable => "undecodable record body",
            DamageKind::Unreadable => "unreadable bytes",
            DamageKind::UnsyncedWrite => "unsynced (never acknowledged) write",
            DamageKind::TornTail => "torn tail",
        }
    }
}

/// An inclusive range of spool indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IndexRange {
    /// First index.
    pub first: u64,
    /// Last index (inclusive).
    pub last: u64,
}

impl IndexRange {
    /// Number of indexes in the range.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

impl fmt::Display for IndexRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}..={}", self.first, self.last)
        }
    }
}

/// One damaged byte range of a segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamageRange {
    /// Segment file name.
    pub segment: String,
    /// First damaged byte.
    pub start_offset: u64,
    /// One past the last damaged byte.
    pub end_offset: u64,
    /// Kind of damage.
    pub kind: DamageKind,
    /// What was wrong with the first bytes (e.g. "CRC mismatch").
    pub defect: String,
    /// Spool indexes missing between the intact records around this damage
    /// (shared by consecutive damaged ranges); `None` when no intact record
    /// follows.
    pub missing_indexes: Option<IndexRange>,
}

impl DamageRange {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.end_offset - self.start_offset
    }
}

/// Count and size of damage of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DamageTotals {
    /// Damaged ranges.
    pub ranges: u64,
    /// Damaged bytes.
    pub bytes: u64,
}

/// All damage found in a spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DamageSummary {
    /// Damaged ranges found.
    pub ranges_total: u64,
    /// Damaged bytes found.
    pub bytes_total: u64,
    /// Totals per kind.
    pub by_kind: BTreeMap<DamageKind, DamageTotals>,
    /// Spool indexes known missing at damaged ranges (the records lost to
    /// damage, acknowledged or not), when intact records follow them.
    pub records_missing_total: u64,
    /// The first ranges, in spool order (at most [`DAMAGE_REPORT_RANGES_MAX`]).
    pub ranges: Vec<DamageRange>,
    /// Ranges counted but not listed.
    pub ranges_omitted: u64,
}

/// The overall state of a spool's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No damage.
    Clean,
    /// Only the traces a power cut leaves (torn tails, unsynced writes).
    CrashDebrisOnly,
    /// Corruption of synced data, unreadable bytes or undecodable records.
    Damaged,
}

impl DamageSummary {
    /// Counts a range in the totals of its kind.
    pub fn count(&mut self, kind: DamageKind, bytes: u64) {
        self.ranges_total += 1;
        self.bytes_total += bytes;
        let totals = self.by_kind.entry(kind).or_default();
        totals.ranges += 1;
        totals.bytes += bytes;
    }

    /// Lists a range (already counted) if there is room.
    pub fn list(&mut self, range: DamageRange) {
        if self.ranges.len() < DAMAGE_REPORT_RANGES_MAX {
            self.ranges.push(range);
        } else {
            self.ranges_omitted += 1;
        }
    }

    /// Totals of one kind.
    pub fn totals(&self, kind: DamageKind) -> DamageTotals {
        self.by_kind.get(&kind).copied().unwrap_or_default()
    }

    /// The overall verdict.
    pub fn verdict(&self) -> Verdict {
        if self.ranges_total == 0 {
            Verdict::Clean
        } else if self.by_kind.keys().all(DamageKind::is_crash_debris) {
            Verdict::CrashDebrisOnly
        } else {
            Verdict::Damaged
        }
    }
}

impl fmt::Display for DamageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges_total == 0 {
            return writeln!(f, "damage: none");
        }
        writeln!(
            f,
            "damage: {} range(s), {} byte(s), {} record index(es) missing",
            self.ranges_total, self.bytes_total, self.records_missing_total
        )?;
        for (kind, totals) in &self.by_kind {
            writeln!(
                f,
                "  {:<36} {} range(s), {} byte(s)",
                kind.label(),
                totals.ranges,
                totals.bytes
            )?;
        }
        for range in &self.ranges {
            write!(
                f,
                "  {} bytes {}..{} ({} bytes): {} ({})",
                range.segment,
                range.start_offset,
                range.end_offset,
                range.bytes(),
                range.kind.label(),
                range.defect
            )?;
            match range.missing_indexes {
                Some(missing) => writeln!(f, ", missing index(es) {missing}")?,
                None => writeln!(f)?,
            }
        }
        if self.ranges_omitted > 0 {
            writeln!(f, "  ... {} more range(s) not listed", self.ranges_omitted)?;
        }
        Ok(())
    }
}

/// Where the delivery cursor came from when the spool opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CursorReport {
    /// Every record at or below this index had been delivered.
    pub delivered_through_index: u64,
    /// Which copy was used.
    pub source: StateSource,
    /// Generation of that copy.
    pub generation: u64,
    /// Copies found invalid (file name and reason).
    pub invalid_copies: Vec<String>,
}

/// What [`super::Spool::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// The spool directory.
    pub dir: String,
    /// Segment files scanned.
    pub segments_scanned: u64,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Intact records found (each spool index once).
    pub records: u64,
    /// Of those, records above the cursor (to be delivered).
    pub undelivered_records: u64,
    /// Intact frames skipped because their index was already seen (copies
    /// re-appended after a failed sync).
    pub duplicate_frames: u64,
    /// The delivery cursor.
    pub cursor: CursorReport,
    /// The sequence reservation state.
    pub seq_state: SeqStateReport,
    /// Damage found (never delivered, never silently dropped).
    pub damage: DamageSummary,
    /// Segments deleted on open: empty, or fully at or below the cursor.
    pub segments_deleted: Vec<String>,
    /// Files in the directory that are not the spool's (left untouched).
    pub unknown_files: Vec<String>,
    /// Spool index the next appended record gets.
    pub next_index: u64,
    /// Frames that read bad once and intact on a re-read.
    pub transient_read_retries: u64,
    /// Planted bugs in effect (test-only; all false in production).
    pub planted: PlantedBugs,
}

impl RecoveryReport {
    /// Whether the state files (cursor, sequence reservations) needed a
    /// fallback or had an invalid copy.
    pub fn state_degraded(&self) -> bool {
        self.cursor.source == StateSource::Fallback
            || self.seq_state.source == StateSource::Fallback
            || !self.cursor.invalid_copies.is_empty()
            || !self.seq_state.invalid_copies.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spool {} opened", self.dir)?;
        writeln!(
            f,
            "  {} segment(s), {} byte(s) scanned; {} intact record(s), {} to deliver; next index {}",
            self.segments_scanned,
            self.bytes_scanned,
            self.records,
            self.undelivered_records,
            self.next_index
        )?;
        writeln!(
            f,
            "  cursor: delivered through index {} (from {:?}, generation {})",
            self.cursor.delivered_through_index, self.cursor.source, self.cursor.generation
        )?;
        writeln!(
            f,
            "  sequence reservations: {:?}, {} sensor(s), floor {}",
            self.seq_state.source, self.seq_state.sensors, self.seq_state.floor
        )?;
        for invalid in self
            .cursor
            .invalid_copies
            .iter()
            .chain(&self.seq_state.invalid_copies)
        {
            writeln!(f, "  invalid state copy: {invalid}")?;
        }
        if self.duplicate_frames > 0 {
            writeln!(f, "  {} duplicate frame(s) skipped", self.duplicate_frames)?;
        }
        if !self.segments_deleted.is_empty() {
            writeln!(f, "  deleted: {}", self.segments_deleted.join(", "))?;
        }
        if !self.unknown_files.is_empty() {
            writeln!(f, "  foreign files left alone: {}", self.unknown_files.join(", "))?;
        }
        if self.planted.any() {
            writeln!(f, "  PLANTED BUGS ACTIVE (test only): {:?}", self.planted)?;
        }
        write!(f, "  {}", self.damage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(kind: DamageKind) -> DamageRange {
        DamageRange {
            segment: "seg-00000000000000000001-00.log".into(),
            start_offset: 10,
            end_offset: 50,
            kind,
            defect: "CRC mismatch".into(),
            missing_indexes: Some(IndexRange { first: 4, last: 4 }),
        }
    }

    #[test]
    fn verdicts() {
        let mut summary = DamageSummary::default();
        assert_eq!(summary.verdict(), Verdict::Clean);
        summary.count(DamageKind::TornTail, 40);
        assert_eq!(summary.verdict(), Verdict::CrashDebrisOnly);
        summary.count(DamageKind::BeforeSyncedPoint, 40);
        assert_eq!(summary.verdict(), Verdict::Damaged);
        assert_eq!(summary.totals(DamageKind::TornTail).bytes, 40);
        assert_eq!(summary.bytes_total, 80);
    }

    #[test]
    fn listing_is_bounded_and_display_mentions_everything() {
        let mut summary = DamageSummary::default();
        for _ in 0..DAMAGE_REPORT_RANGES_MAX + 3 {
            summary.count(DamageKind::BeforeSyncedPoint, 40);
            summary.list(range(DamageKind::BeforeSyncedPoint));
        }
        assert_eq!(summary.ranges.len(), DAMAGE_REPORT_RANGES_MAX);
        assert_eq!(summary.ranges_omitted, 3);
        let text = summary.to_string();
        assert!(text.contains("corruption before the synced point"));
        assert!(text.contains("3 more range(s)"));
        assert!(text.contains("missing index(es) 4"));
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["by_kind"]["before_synced_point"]["ranges"], 1003);
    }
}
