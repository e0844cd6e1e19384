//! Read-only tools: [`inspect`] (what is in a spool) and [`verify`] (full
//! CRC scan with a damage report). Both work on a damaged spool and never
//! modify it: no file is created, written, synced or deleted.

use super::cursor::StateSource;
use super::error::SpoolError;
use super::recovery::{self, Analysis};
use super::report::{CursorReport, DamageSummary, Verdict};
use super::seqs::SeqStateReport;
use crate::disk::Disk;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;

/// One segment as [`inspect`] saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentSummary {
    /// File name.
    pub name: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Intact records.
    pub records: u64,
    /// Of those, above the cursor.
    pub undelivered_records: u64,
    /// First spool index of its intact records.
    pub first_index: Option<u64>,
    /// Last spool index of its intact records.
    pub last_index: Option<u64>,
    /// Smallest event time of its records, ms since the epoch.
    pub oldest_event_time_ms: Option<i64>,
    /// Largest event time of its records, ms since the epoch.
    pub newest_event_time_ms: Option<i64>,
    /// Damaged ranges in it.
    pub damaged_ranges: u64,
    /// Damaged bytes in it.
    pub damaged_bytes: u64,
}

/// One sensor as [`inspect`] saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SensorSummary {
    /// Intact records.
    pub records: u64,
    /// Of those, above the cursor.
    pub undelivered_records: u64,
    /// Smallest `seq` in the spool.
    pub min_seq: u64,
    /// Largest `seq` in the spool.
    pub max_seq: u64,
    /// Durable reservation ceiling, if any.
    pub seq_ceiling: Option<u64>,
}

/// What a spool directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The directory.
    pub dir: String,
    /// Segments in spool order.
    pub segments: Vec<SegmentSummary>,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Intact records (each spool index once).
    pub records: u64,
    /// Of those, above the cursor (still to deliver).
    pub undelivered_records: u64,
    /// Intact frames skipped as copies of an index already seen.
    pub duplicate_frames: u64,
    /// The delivery cursor.
    pub cursor: CursorReport,
    /// The sequence reservation state.
    pub seq_state: SeqStateReport,
    /// Smallest event time in the spool, ms since the epoch.
    pub oldest_event_time_ms: Option<i64>,
    /// Largest event time in the spool, ms since the epoch.
    pub newest_event_time_ms: Option<i64>,
    /// Event time of the first undelivered record.
    pub oldest_undelivered_event_time_ms: Option<i64>,
    /// Per sensor counts, by sensor id.
    pub sensors: BTreeMap<String, SensorSummary>,
    /// More sensors than could be tallied individually were present.
    pub sensors_truncated: bool,
    /// Damage found.
    pub damage: DamageSummary,
    /// Files that are not the spool's.
    pub unknown_files: Vec<String>,
}

/// State files (cursor, sequence reservations) as [`verify`] found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCheck {
    /// Which copy the cursor came from.
    pub cursor_source: StateSource,
    /// Which copy the sequence reservations came from.
    pub seq_source: StateSource,
    /// Copies found invalid (file name and reason).
    pub invalid_copies: Vec<String>,
}

/// The result of a full CRC scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The directory.
    pub dir: String,
    /// Segment files checked.
    pub segments_checked: u64,
    /// Bytes checked.
    pub bytes_checked: u64,
    /// Intact records.
    pub records_intact: u64,
    /// Intact frames skipped as copies of an index already seen.
    pub duplicate_frames: u64,
    /// Frames that read bad once and intact on a re-read (flaky storage).
    pub transient_read_retries: u64,
    /// The state files.
    pub state: StateCheck,
    /// Damage found.
    pub damage: DamageSummary,
    /// Overall verdict (damage and state files together).
    pub verdict: Verdict,
}

impl VerifyReport {
    /// Whether nothing at all is wrong.
    pub fn is_clean(&self) -> bool {
        self.verdict == Verdict::Clean
    }
}

fn existing_dir(disk: &dyn Disk, dir: &Path) -> Result<(), SpoolError> {
    match disk.exists(dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SpoolError::io(
            "open spool directory",
            dir,
            io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        )),
        Err(error) => Err(SpoolError::io("open spool directory", dir, error)),
    }
}

fn cursor_report(analysis: &Analysis) -> CursorReport {
    CursorReport {
        delivered_through_index: analysis.cursor.value,
        source: analysis.cursor.source,
        generation: analysis.cursor.generation,
        invalid_copies: analysis
            .cursor
            .invalid_slots
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect(),
    }
}

fn seq_report(analysis: &Analysis) -> SeqStateReport {
    SeqStateReport {
        source: analysis.seqs.source,
        generation: analysis.seqs.generation,
        sensors: analysis.seqs.ceilings.len() as u64,
        floor: analysis.seqs.floor,
        invalid_copies: analysis
            .seqs
            .invalid_slots
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect(),
    }
}

/// Describes the spool in `dir` without modifying it.
pub fn inspect(disk: &dyn Disk, dir: &Path) -> Result<InspectReport, SpoolError> {
    existing_dir(disk, dir)?;
    let analysis = recovery::analyze(disk, dir, false)?;
    let segments = analysis
        .segments
        .iter()
        .map(|segment| SegmentSummary {
            name: segment.meta.name.file_name(),
            bytes: segment.meta.file_bytes,
            records: segment.meta.records,
            undelivered_records: segment.meta.undelivered_records(),
            first_index: segment.index_range.map(|(first, _)| first),
            last_index: segment.index_range.map(|(_, last)| last),
            oldest_event_time_ms: segment.event_time_range_ms.map(|(low, _)| low),
            newest_event_time_ms: segment.event_time_range_ms.map(|(_, high)| high),
            damaged_ranges: segment.damage.0,
            damaged_bytes: segment.damage.1,
        })
        .collect();
    let sensors = analysis
        .sensors
        .iter()
        .map(|(sensor, tally)| {
            (
                sensor.clone(),
                SensorSummary {
                    records: tally.records,
                    undelivered_records: tally.undelivered,
                    min_seq: tally.min_seq,
                    max_seq: tally.max_seq,
                    seq_ceiling: analysis.seqs.ceilings.get(sensor).copied(),
                },
            )
        })
        .collect();
    Ok(InspectReport {
        dir: dir.display().to_string(),
        segments,
        bytes: analysis.bytes,
        records: analysis.records,
        undelivered_records: analysis.undelivered_records,
        duplicate_frames: analysis.duplicate_frames,
        cursor: cursor_report(&analysis),
        seq_state: seq_report(&analysis),
        oldest_event_time_ms: analysis.event_time_range_ms.map(|(low, _)| low),
        newest_event_time_ms: analysis.event_time_range_ms.map(|(_, high)| high),
        oldest_undelivered_event_time_ms: analysis.head_event_time_ms,
        sensors,
        sensors_truncated: analysis.untracked_max_seq.is_some(),
        damage: analysis.damage.clone(),
        unknown_files: analysis.unknown_files.clone(),
    })
}

/// Scans every segment of the spool in `dir`, checking every CRC, and
/// reports damage, without modifying anything.
pub fn verify(disk: &dyn Disk, dir: &Path) -> Result<VerifyReport, SpoolError> {
    existing_dir(disk, dir)?;
    let analysis = recovery::analyze(disk, dir, false)?;
    let cursor = cursor_report(&analysis);
    let seqs = seq_report(&analysis);
    let state = StateCheck {
        cursor_source: cursor.source,
        seq_source: seqs.source,
        invalid_copies: cursor
            .invalid_copies
            .iter()
            .chain(&seqs.invalid_copies)
            .cloned()
            .collect(),
    };
    let state_lost =
        state.cursor_source == StateSource::Fallback || state.seq_source == StateSource::Fallback;
    let verdict = match analysis.damage.verdict() {
        Verdict::Damaged => Verdict::Damaged,
        _ if state_lost => Verdict::Damaged,
        Verdict::Clean if state.invalid_copies.is_empty() => Verdict::Clean,
        _ => Verdict::CrashDebrisOnly,
    };
    Ok(VerifyReport {
        dir: dir.display().to_string(),
        segments_checked: analysis.segments.len() as u64,
        bytes_checked: analysis.bytes,
        records_intact: analysis.records,
        duplicate_frames: analysis.duplicate_frames,
        transient_read_retries: analysis.transient_read_retries,
        state,
        damage: analysis.damage,
        verdict,
    })
}

/// Formats ms since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

fn time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_string(), format_utc_ms)
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spool {}", self.dir)?;
        writeln!(
            f,
            "  {} segment(s), {} byte(s), {} record(s), {} undelivered",
            self.segments.len(),
            self.bytes,
            self.records,
            self.undelivered_records
        )?;
        writeln!(
            f,
            "  cursor: delivered through index {} ({:?}, generation {})",
            self.cursor.delivered_through_index, self.cursor.source, self.cursor.generation
        )?;
        writeln!(
            f,
            "  event time: oldest {}, newest {}, oldest undelivered {}",
            time(self.oldest_event_time_ms),
            time(self.newest_event_time_ms),
            time(self.oldest_undelivered_event_time_ms)
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
        writeln!(f, "  segments:")?;
        for segment in &self.segments {
            let indexes = match (segment.first_index, segment.last_index) {
                (Some(first), Some(last)) => format!("{first}..={last}"),
                _ => "-".to_string(),
            };
            writeln!(
                f,
                "    {}  {:>10} B  {:>7} rec  {:>7} undelivered  index {}  {} .. {}{}",
                segment.name,
                segment.bytes,
                segment.records,
                segment.undelivered_records,
                indexes,
                time(segment.oldest_event_time_ms),
                time(segment.newest_event_time_ms),
                if segment.damaged_ranges > 0 {
                    format!(
                        "  DAMAGED: {} range(s), {} B",
                        segment.damaged_ranges, segment.damaged_bytes
                    )
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(f, "  sensors:")?;
        for (sensor, summary) in &self.sensors {
            writeln!(
                f,
                "    {sensor}: {} record(s), {} undelivered, seq {}..={}{}",
                summary.records,
                summary.undelivered_records,
                summary.min_seq,
                summary.max_seq,
                summary
                    .seq_ceiling
                    .map_or_else(String::new, |ceiling| format!(", reserved through {ceiling}"))
            )?;
        }
        if self.sensors_truncated {
            writeln!(f, "    (more sensors than listed)")?;
        }
        if !self.unknown_files.is_empty() {
            writeln!(f, "  foreign files: {}", self.unknown_files.join(", "))?;
        }
        write!(f, "  {}", self.damage)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify {}: {} segment(s), {} byte(s), {} intact record(s)",
            self.dir, self.segments_checked, self.bytes_checked, self.records_intact
        )?;
        writeln!(
            f,
            "  state: cursor from {:?}, sequence reservations from {:?}",
            self.state.cursor_source, self.state.seq_source
        )?;
        for invalid in &self.state.invalid_copies {
            writeln!(f, "  invalid state copy: {invalid}")?;
        }
        if self.transient_read_retries > 0 {
            writeln!(
                f,
                "  {} frame(s) read bad once and intact on a re-read: the storage is flaky",
                self.transient_read_retries
            )?;
        }
        write!(f, "  {}", self.damage)?;
        writeln!(f, "  verdict: {:?}", self.verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
