//! Per-sensor sequence numbers that are never reused, even across power
//! cuts and even for readings lost before they became durable.
//!
//! Before handing out a `seq`, the spool makes a *ceiling* durable for that
//! sensor (a reservation block of `seq_reservation_block` numbers); after a
//! restart every sensor continues above its ceiling and above the largest
//! `seq` found in the spool. Gaps are allowed, reuse is not.
//!
//! The state (ceilings, plus a floor for sensors not listed) is written to
//! two slot files *with the same generation, one after the other*: a power
//! cut tears at most the one being written while the other holds either the
//! previous state (the new reservation was never used: the write had not
//! returned) or the new one. A bit flip in one copy is covered by the other.
//!
//! A third record of the largest reserved `seq` (the high-water mark) rides
//! in the cursor slots, written before a new reservation is used. Only if
//! both copies of the state are unusable does the spool fall back: every
//! sensor continues above the largest of that high-water mark and the
//! largest `seq` in the spool, plus a gap ([`SEQ_FALLBACK_GAP`], or two
//! reservation blocks if larger, covering a high-water copy one reservation
//! old); this is reported and the fallback state is persisted at once.

use super::config::SENSORS_LIMIT;
use super::cursor::{CursorStore, StateSource};
use super::error::SpoolError;
use super::slots::{self, SlotRead};
use crate::disk::Disk;
use crate::model::ID_MAX_BYTES;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File names of the two copies of the reservation state.
pub const SEQ_SLOT_NAMES: [&str; 2] = ["seqs-a.slot", "seqs-b.slot"];
const SEQ_MAGIC: [u8; 4] = *b"SSEQ";
/// Jump above the largest `seq` in the spool when the reservation state is
/// lost entirely: larger than any plausible number of readings lost before
/// becoming durable between two reservations.
pub const SEQ_FALLBACK_GAP: u64 = 1_000_000;
/// Largest `seq` (Avro `long`).
pub const SEQ_MAX: u64 = i64::MAX as u64;
/// Largest payload of the reservation state, in bytes.
pub const SEQ_STATE_PAYLOAD_MAX_BYTES: usize = 12 + SENSORS_LIMIT as usize * (2 + ID_MAX_BYTES + 8);

/// The reservation state as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqLoad {
    /// Durable ceilings per sensor.
    pub ceilings: BTreeMap<String, u64>,
    /// Smallest `seq` for a sensor that is not listed.
    pub floor: u64,
    /// Generation of the copy used.
    pub generation: u64,
    /// Which copy was used.
    pub source: StateSource,
    /// Copies that exist but are invalid, with the reason.
    pub invalid_slots: Vec<(String, &'static str)>,
}

/// What happened to the reservation state when the spool opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeqStateReport {
    /// Which copy was used, or whether a fallback was needed.
    pub source: StateSource,
    /// Generation of the state used.
    pub generation: u64,
    /// Sensors with a durable ceiling.
    pub sensors: u64,
    /// Smallest `seq` for a sensor never seen.
    pub floor: u64,
    /// Copies found invalid (file name and reason).
    pub invalid_copies: Vec<String>,
}

fn slot_paths(dir: &Path) -> [PathBuf; 2] {
    [dir.join(SEQ_SLOT_NAMES[0]), dir.join(SEQ_SLOT_NAMES[1])]
}

fn encode_state(floor: u64, ceilings: &BTreeMap<String, u64>) -> Vec<u8> {
    let count = u32::try_from(ceilings.len()).expect("bounded by SENSORS_LIMIT");
    let mut out = Vec::with_capacity(12 + ceilings.len() * 32);
    out.extend_from_slice(&floor.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (sensor, ceiling) in ceilings {
        let len = u16::try_from(sensor.len()).expect("ids are at most ID_MAX_BYTES");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(sensor.as_bytes());
        out.extend_from_slice(&ceiling.to_le_bytes());
    }
    assert!(out.len() <= SEQ_STATE_PAYLOAD_MAX_BYTES);
    out
}

fn decode_state(payload: &[u8]) -> Option<(u64, BTreeMap<String, u64>)> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = payload.get(at..at.checked_add(n)?)?;
        at += n;
        Some(bytes)
    };
    let floor = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    if count > SENSORS_LIMIT || floor > SEQ_MAX {
        return None;
    }
    let mut ceilings = BTreeMap::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        if len == 0 || len > ID_MAX_BYTES {
            return None;
        }
        let sensor = std::str::from_utf8(take(len)?).ok()?.to_string();
        let ceiling = u64::from_le_bytes(take(8)?.try_into().ok()?);
        if ceiling > SEQ_MAX || previous.as_ref().is_some_and(|p| *p >= sensor) {
            return None;
        }
        previous = Some(sensor.clone());
        ceilings.insert(sensor, ceiling);
    }
    if at != payload.len() {
        return None;
    }
    Some((floor, ceilings))
}

/// Reads the reservation state. Never fails.
pub fn load_seqs(disk: &dyn Disk, dir: &Path, spool_is_new: bool) -> SeqLoad {
    let paths = slot_paths(dir);
    let mut best: Option<(u64, u64, BTreeMap<String, u64>, usize)> = None;
    let mut missing = 0;
    let mut invalid_slots = Vec::new();
    for (slot, path) in paths.iter().enumerate() {
        match slots::read_slot(disk, path, SEQ_MAGIC, SEQ_STATE_PAYLOAD_MAX_BYTES) {
            SlotRead::Missing => missing += 1,
            SlotRead::Invalid(reason) => invalid_slots.push((SEQ_SLOT_NAMES[slot].to_string(), reason)),
            SlotRead::Valid { generation, payload } => match decode_state(&payload) {
                Some((floor, ceilings)) => {
                    if best.as_ref().is_none_or(|(g, ..)| generation > *g) {
                        best = Some((generation, floor, ceilings, slot));
                    }
                }
                None => invalid_slots.push((SEQ_SLOT_NAMES[slot].to_string(), "bad payload")),
            },
        }
    }
    match best {
        Some((generation, floor, ceilings, slot)) => SeqLoad {
            ceilings,
            floor,
            generation,
            source: if slot == 0 {
                StateSource::SlotA
            } else {
                StateSource::SlotB
            },
            invalid_slots,
        },
        None => SeqLoad {
            ceilings: BTreeMap::new(),
            floor: 1,
            generation: 0,
            source: if missing == 2 && spool_is_new {
                StateSource::Fresh
            } else {
                StateSource::Fallback
            },
            invalid_slots,
        },
    }
}

/// Hands out sequence numbers, reserving them durably first.
#[derive(Debug, Clone)]
pub struct SeqAllocator {
    /// Durable ceilings.
    ceilings: BTreeMap<String, u64>,
    /// Next `seq` to hand out per sensor (at least `floor`).
    next: BTreeMap<String, u64>,
    floor: u64,
    generation: u64,
    block: u64,
    max_sensors: u32,
    reservations_total: u64,
}

impl SeqAllocator {
    /// Builds the allocator from the loaded state, the largest `seq` per
    /// sensor found in the spool and the high-water mark in the cursor
    /// slots, then persists the state afresh (and the high-water mark with
    /// the cursor) before returning.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        disk: &dyn Disk,
        dir: &Path,
        load: &SeqLoad,
        spool_max_seqs: &BTreeMap<String, u64>,
        untracked_max_seq: Option<u64>,
        cursor: &mut CursorStore,
        block: u64,
        max_sensors: u32,
    ) -> Result<(Self, SeqStateReport), SpoolError> {
        assert!(block >= 1, "validated configuration");
        // Records of sensors too many to track individually raise everyone.
        let mut floor = load
            .floor
            .max(1)
            .max(untracked_max_seq.map_or(0, |s| s.saturating_add(1)));
        if load.source == StateSource::Fallback {
            let largest = spool_max_seqs
                .values()
                .copied()
                .chain(untracked_max_seq)
                .chain([cursor.seq_high_water()])
                .max()
                .unwrap_or(0);
            let gap = SEQ_FALLBACK_GAP.max(block.saturating_mul(2));
            floor = largest.saturating_add(gap).min(SEQ_MAX);
            tracing::warn!(
                floor,
                invalid = ?load.invalid_slots,
                "spool: sequence reservation state lost; every sensor continues above {floor}"
            );
        }
        let mut next = BTreeMap::new();
        for (sensor, ceiling) in &load.ceilings {
            next.insert(sensor.clone(), ceiling.saturating_add(1).max(floor));
        }
        for (sensor, max_seq) in spool_max_seqs {
            let entry = next.entry(sensor.clone()).or_insert(floor);
            *entry = (*entry).max(max_seq.saturating_add(1));
        }
        let mut allocator = Self {
            ceilings: load.ceilings.clone(),
            next,
            floor,
            generation: load.generation,
            block,
            max_sensors,
            reservations_total: 0,
        };
        // Rewrite the state, both copies, with a new generation before any
        // of it is used: what was read may sit in the page cache without
        // being durable (a failed sync, then a process crash), and a failed
        // fsync cannot be made good by syncing again. On fallback, the floor
        // lies above every seq in the spool, so the floor alone suffices.
        let ceilings = if load.source == StateSource::Fallback {
            BTreeMap::new()
        } else {
            load.ceilings.clone()
        };
        allocator.persist(disk, dir, cursor, ceilings)?;
        disk.sync_dir(dir)
            .map_err(|e| SpoolError::io("sync sequence reservation files in", dir, e))?;
        let report = SeqStateReport {
            source: load.source,
            generation: load.generation,
            sensors: load.ceilings.len() as u64,
            floor: allocator.floor,
            invalid_copies: load
                .invalid_slots
                .iter()
                .map(|(name, reason)| format!("{name}: {reason}"))
                .collect(),
        };
        Ok((allocator, report))
    }

    /// Reservations persisted so far.
    pub fn reservations_total(&self) -> u64 {
        self.reservations_total
    }

    /// The largest reserved `seq` (or the floor): nothing above it was
    /// ever handed out.
    pub fn high_water(&self) -> u64 {
        let ceilings = self.ceilings.values().copied().max().unwrap_or(0);
        ceilings.max(self.floor.saturating_sub(1))
    }

    /// The next `seq` for `sensor`, reserving a block durably when needed.
    pub fn next_seq(
        &mut self,
        disk: &dyn Disk,
        dir: &Path,
        cursor: &mut CursorStore,
        sensor: &str,
    ) -> Result<u64, SpoolError> {
        check_sensor_id(sensor)?;
        let seq = self.next.get(sensor).copied().unwrap_or(self.floor);
        self.cover(disk, dir, cursor, sensor, seq)?;
        Ok(seq)
    }

    /// Makes sure `seq` of `sensor` is below a durable ceiling and will
    /// never be handed out again.
    pub fn cover(
        &mut self,
        disk: &dyn Disk,
        dir: &Path,
        cursor: &mut CursorStore,
        sensor: &str,
        seq: u64,
    ) -> Result<(), SpoolError> {
        if seq > SEQ_MAX {
            return Err(SpoolError::InvalidReading {
                sensor_id: sensor.to_string(),
                seq,
                reason: "seq does not fit an Avro long".into(),
            });
        }
        let ceiling = self.ceilings.get(sensor).copied();
        if ceiling.is_none_or(|ceiling| seq > ceiling) {
            if ceiling.is_none() && self.ceilings.len() >= self.max_sensors as usize {
                return Err(SpoolError::TooManySensors {
                    max_sensors: self.max_sensors,
                });
            }
            let mut ceilings = self.ceilings.clone();
            ceilings.insert(
                sensor.to_string(),
                seq.saturating_add(self.block - 1).min(SEQ_MAX),
            );
            // Top up sensors close to their ceiling in the same write.
            for (other, next) in &self.next {
                if let Some(other_ceiling) = ceilings.get_mut(other)
                    && other_ceiling.saturating_sub(*next) < self.block / 4
                {
                    *other_ceiling = (*other_ceiling).max(next.saturating_add(self.block - 1).min(SEQ_MAX));
                }
            }
            self.persist(disk, dir, cursor, ceilings)?;
        }
        let next = self.next.entry(sensor.to_string()).or_insert(self.floor);
        *next = (*next).max(seq + 1);
        assert!(seq <= self.ceilings[sensor], "handed out below a durable ceiling");
        Ok(())
    }

    fn persist(
        &mut self,
        disk: &dyn Disk,
        dir: &Path,
        cursor: &mut CursorStore,
        ceilings: BTreeMap<String, u64>,
    ) -> Result<(), SpoolError> {
        let generation = self.generation + 1;
        let payload = encode_state(self.floor, &ceilings);
        // Both copies, one after the other, with the same generation.
        for path in slot_paths(dir) {
            slots::write_slot(disk, &path, SEQ_MAGIC, generation, &payload)
                .map_err(|e| SpoolError::io("persist sequence reservations to", &path, e))?;
        }
        let high_water = ceilings
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.floor.saturating_sub(1));
        cursor
            .persist_seq_high_water(disk, dir, high_water)
            .map_err(|e| SpoolError::io("persist the sequence high-water mark in", dir, e))?;
        self.generation = generation;
        self.ceilings = ceilings;
        self.reservations_total += 1;
        Ok(())
    }
}

/// Checks a sensor identifier against the model's rules.
pub fn check_sensor_id(sensor: &str) -> Result<(), SpoolError> {
    let reason = if sensor.is_empty() {
        "empty"
    } else if sensor.len() > ID_MAX_BYTES {
        "longer than 128 bytes"
    } else if sensor.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(SpoolError::InvalidSensorId {
        sensor_id: sensor.chars().take(ID_MAX_BYTES).collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::{CrashDisk, FaultOp};
    use crate::spool::cursor::load_cursor;

    struct Fixture {
        disk: CrashDisk,
        dir: PathBuf,
        cursor: CursorStore,
        seqs: SeqAllocator,
        report: SeqStateReport,
    }

    impl Fixture {
        fn open(disk: &CrashDisk, new: bool, spool: &BTreeMap<String, u64>) -> Self {
            Self::open_with(disk, new, spool, 8, 16)
        }

        fn open_with(
            disk: &CrashDisk,
            new: bool,
            spool: &BTreeMap<String, u64>,
            block: u64,
            sensors: u32,
        ) -> Self {
            let dir = PathBuf::from("/spool");
            disk.create_dir_all(&dir).unwrap();
            let mut cursor = CursorStore::from_load(&load_cursor(disk, &dir, new));
            cursor.ensure_files(disk, &dir).unwrap();
            let load = load_seqs(disk, &dir, new);
            let (seqs, report) =
                SeqAllocator::open(disk, &dir, &load, spool, None, &mut cursor, block, sensors).unwrap();
            Self {
                disk: disk.clone(),
                dir,
                cursor,
                seqs,
                report,
            }
        }

        fn next(&mut self, sensor: &str) -> Result<u64, SpoolError> {
            self.seqs
                .next_seq(&self.disk, &self.dir, &mut self.cursor, sensor)
        }

        fn cover(&mut self, sensor: &str, seq: u64) -> Result<(), SpoolError> {
            self.seqs
                .cover(&self.disk, &self.dir, &mut self.cursor, sensor, seq)
        }
    }

    #[test]
    fn state_round_trip_and_rejections() {
        let mut ceilings = BTreeMap::new();
        ceilings.insert("a".to_string(), 5);
        ceilings.insert("b".to_string(), 9);
        let payload = encode_state(3, &ceilings);
        assert_eq!(decode_state(&payload), Some((3, ceilings)));
        for cut in 0..payload.len() {
            assert_eq!(decode_state(&payload[..cut]), None, "cut {cut}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode_state(&longer), None);
        let mut unsorted = BTreeMap::new();
        unsorted.insert("b".to_string(), 1);
        let mut bytes = encode_state(1, &unsorted);
        bytes[8] = 2; // claim two entries
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(b"a");
        bytes.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(decode_state(&bytes), None, "entries must be sorted");
    }

    #[test]
    fn no_reuse_across_crashes_even_for_lost_readings() {
        let disk = CrashDisk::new(1);
        let mut fixture = Fixture::open(&disk, true, &BTreeMap::new());
        assert_eq!(fixture.report.source, StateSource::Fresh);
        let mut handed_out = Vec::new();
        for _ in 0..3 {
            for _ in 0..5 {
                handed_out.push(fixture.next("s1").unwrap());
            }
            disk.crash(); // nothing of these readings reached the spool
            fixture = Fixture::open(&disk, false, &BTreeMap::new());
            assert_ne!(fixture.report.source, StateSource::Fallback);
        }
        let next = fixture.next("s1").unwrap();
        assert!(handed_out.windows(2).all(|w| w[0] < w[1]), "{handed_out:?}");
        assert!(next > *handed_out.last().unwrap());
    }

    #[test]
    fn a_failed_reservation_hands_out_nothing() {
        let disk = CrashDisk::new(2);
        let mut fixture = Fixture::open(&disk, true, &BTreeMap::new());
        disk.fail_next(FaultOp::SyncData, 1);
        assert!(fixture.next("s").is_err());
        assert_eq!(fixture.next("s").unwrap(), 1);
    }

    #[test]
    fn spool_contents_raise_the_next_seq() {
        let disk = CrashDisk::new(3);
        let mut spool = BTreeMap::new();
        spool.insert("s".to_string(), 500);
        let mut fixture = Fixture::open(&disk, true, &spool);
        assert_eq!(fixture.next("s").unwrap(), 501);
        // Appending a seq beyond the ceiling reserves above it.
        fixture.cover("s", 10_000).unwrap();
        disk.crash();
        let mut fixture = Fixture::open(&disk, false, &BTreeMap::new());
        assert!(fixture.next("s").unwrap() > 10_000);
    }

    #[test]
    fn one_damaged_copy_is_covered_by_the_other_and_both_fall_back_safely() {
        let disk = CrashDisk::new(4);
        let mut fixture = Fixture::open(&disk, true, &BTreeMap::new());
        for _ in 0..20 {
            fixture.next("s").unwrap();
        }
        let last = fixture.next("s").unwrap();
        disk.flip_bit(&fixture.dir.join(SEQ_SLOT_NAMES[0]), 30, 1)
            .unwrap();
        let mut fixture = Fixture::open(&disk, false, &BTreeMap::new());
        assert_eq!(fixture.report.source, StateSource::SlotB);
        assert_eq!(fixture.report.invalid_copies.len(), 1);
        assert!(fixture.next("s").unwrap() > last);
        let last = fixture.next("s").unwrap();
        for name in SEQ_SLOT_NAMES {
            disk.flip_bit(&fixture.dir.join(name), 12, 0).unwrap();
        }
        let mut spool = BTreeMap::new();
        spool.insert("s".to_string(), 3);
        let mut fixture = Fixture::open(&disk, false, &spool);
        assert_eq!(fixture.report.source, StateSource::Fallback);
        let next = fixture.next("s").unwrap();
        assert!(next > last && next >= 3 + SEQ_FALLBACK_GAP, "{next}");
        assert!(fixture.next("new-sensor").unwrap() >= SEQ_FALLBACK_GAP);
        // The fallback was persisted: a crash does not lower it.
        disk.crash();
        let mut fixture = Fixture::open(&disk, false, &BTreeMap::new());
        assert_ne!(fixture.report.source, StateSource::Fallback);
        assert!(fixture.next("s").unwrap() > next);
    }

    #[test]
    fn the_high_water_mark_in_the_cursor_survives_losing_both_copies_again() {
        let disk = CrashDisk::new(6);
        let mut fixture = Fixture::open(&disk, true, &BTreeMap::new());
        let mut last = 0;
        for round in 0..3 {
            // Seqs handed out, their readings lost (nothing in the spool) ...
            for _ in 0..30 {
                last = fixture.next("s").unwrap();
            }
            // ... and both copies of the state destroyed.
            for name in SEQ_SLOT_NAMES {
                disk.flip_bit(&fixture.dir.join(name), 12, 0).unwrap();
            }
            disk.crash();
            fixture = Fixture::open(&disk, false, &BTreeMap::new());
            assert_eq!(fixture.report.source, StateSource::Fallback, "round {round}");
            let next = fixture.next("s").unwrap();
            assert!(next > last, "round {round}: {next} <= {last}");
            last = next;
        }
    }

    #[test]
    fn sensor_limit_and_ids() {
        let disk = CrashDisk::new(5);
        let mut fixture = Fixture::open_with(&disk, true, &BTreeMap::new(), 4, 2);
        fixture.next("a").unwrap();
        fixture.next("b").unwrap();
        assert!(matches!(
            fixture.next("c"),
            Err(SpoolError::TooManySensors { max_sensors: 2 })
        ));
        assert!(matches!(
            fixture.next(""),
            Err(SpoolError::InvalidSensorId { .. })
        ));
        assert!(fixture.next(&"x".repeat(129)).is_err());
    }
}
