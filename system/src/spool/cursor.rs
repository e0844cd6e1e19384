//! The delivery cursor: "every record with a spool index at or below this
//! value has a delivery report", persisted crash-safely in two slot files
//! written alternately (A/B) with increasing generations.
//!
//! A write goes to the slot *not* holding the newest valid state, so a
//! power cut mid-write tears at most that slot and the other still holds the
//! previous cursor. A cursor that falls back to an older value only causes
//! redelivery (duplicates, removed downstream), never loss: segments are
//! deleted only after the newer cursor is durable.
//!
//! Each slot also carries a copy of the sequence reservations' *high-water
//! mark* (the largest reserved `seq` of any sensor), written before any seq
//! of a new reservation is handed out: if both copies of the reservation
//! state are lost, the spool still knows a bound to continue above.

use super::slots::{self, SlotRead};
use crate::disk::Disk;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};

/// File names of the two cursor slots.
pub const CURSOR_SLOT_NAMES: [&str; 2] = ["cursor-a.slot", "cursor-b.slot"];
const CURSOR_MAGIC: [u8; 4] = *b"SCUR";
const CURSOR_PAYLOAD_BYTES: usize = 16;

/// Where a piece of persisted state came from when the spool was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSource {
    /// No state files and no segments: a new spool.
    Fresh,
    /// The first copy (slot A).
    SlotA,
    /// The second copy (slot B).
    SlotB,
    /// No valid copy: a safe fallback was used (reported).
    Fallback,
}

impl StateSource {
    fn of_slot(slot: usize) -> Self {
        if slot == 0 {
            StateSource::SlotA
        } else {
            StateSource::SlotB
        }
    }
}

/// The cursor as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorLoad {
    /// Delivered through this spool index (0: nothing delivered).
    pub value: u64,
    /// Generation of the slot used (0 when none).
    pub generation: u64,
    /// Which slot was used.
    pub source: StateSource,
    /// The slot that holds `value`, if any.
    pub slot: Option<usize>,
    /// Largest sequence high-water mark in any valid slot (0: none).
    pub seq_high_water: u64,
    /// Slots that exist but are invalid, with the reason.
    pub invalid_slots: Vec<(String, &'static str)>,
}

fn slot_paths(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CURSOR_SLOT_NAMES[0]), dir.join(CURSOR_SLOT_NAMES[1])]
}

fn encode(value: u64, seq_high_water: u64) -> [u8; CURSOR_PAYLOAD_BYTES] {
    let mut out = [0; CURSOR_PAYLOAD_BYTES];
    out[0..8].copy_from_slice(&value.to_le_bytes());
    out[8..16].copy_from_slice(&seq_high_water.to_le_bytes());
    out
}

fn decode(payload: &[u8]) -> Option<(u64, u64)> {
    let bytes: [u8; CURSOR_PAYLOAD_BYTES] = payload.try_into().ok()?;
    let value = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
    let seq_high_water = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some((value, seq_high_water))
}

/// Reads the cursor. Never fails; `spool_is_new` tells a new spool (no
/// state is expected) from one whose cursor files were lost.
pub fn load_cursor(disk: &dyn Disk, dir: &Path, spool_is_new: bool) -> CursorLoad {
    let paths = slot_paths(dir);
    let mut best: Option<(u64, u64, usize)> = None;
    let mut seq_high_water = 0;
    let mut missing = 0;
    let mut invalid_slots = Vec::new();
    for (slot, path) in paths.iter().enumerate() {
        match slots::read_slot(disk, path, CURSOR_MAGIC, CURSOR_PAYLOAD_BYTES) {
            SlotRead::Missing => missing += 1,
            SlotRead::Invalid(reason) => invalid_slots.push((CURSOR_SLOT_NAMES[slot].to_string(), reason)),
            SlotRead::Valid { generation, payload } => match decode(&payload) {
                Some((value, high_water)) => {
                    seq_high_water = seq_high_water.max(high_water);
                    if best.is_none_or(|(best_generation, _, _)| generation > best_generation) {
                        best = Some((generation, value, slot));
                    }
                }
                None => invalid_slots.push((CURSOR_SLOT_NAMES[slot].to_string(), "bad payload")),
            },
        }
    }
    match best {
        Some((generation, value, slot)) => CursorLoad {
            value,
            generation,
            source: StateSource::of_slot(slot),
            slot: Some(slot),
            seq_high_water,
            invalid_slots,
        },
        None => {
            let source = if missing == 2 && spool_is_new {
                StateSource::Fresh
            } else {
                StateSource::Fallback
            };
            CursorLoad {
                value: 0,
                generation: 0,
                source,
                slot: None,
                seq_high_water,
                invalid_slots,
            }
        }
    }
}

/// The persisted cursor, as the running spool tracks it.
#[derive(Debug, Clone)]
pub struct CursorStore {
    generation: u64,
    slot: Option<usize>,
    persisted: u64,
    seq_high_water: u64,
}

impl CursorStore {
    /// Starts from what [`load_cursor`] found.
    pub fn from_load(load: &CursorLoad) -> Self {
        Self {
            generation: load.generation,
            slot: load.slot,
            persisted: load.value,
            seq_high_water: load.seq_high_water,
        }
    }

    /// The durable sequence high-water mark.
    pub fn seq_high_water(&self) -> u64 {
        self.seq_high_water
    }

    /// The durable cursor value.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Creates missing slot files (holding the current state) durably.
    pub fn ensure_files(&self, disk: &dyn Disk, dir: &Path) -> io::Result<()> {
        let paths = slot_paths(dir);
        slots::ensure_slot_files(
            disk,
            dir,
            &[&paths[0], &paths[1]],
            CURSOR_MAGIC,
            self.generation,
            &encode(self.persisted, self.seq_high_water),
        )?;
        Ok(())
    }

    /// Makes `value` the durable cursor. On error the previous value stays
    /// durable in the other slot and this store is unchanged.
    pub fn persist(&mut self, disk: &dyn Disk, dir: &Path, value: u64) -> io::Result<()> {
        self.write(disk, dir, value, self.seq_high_water)
    }

    /// Makes `seq_high_water` durable (with the current cursor).
    pub fn persist_seq_high_water(
        &mut self,
        disk: &dyn Disk,
        dir: &Path,
        seq_high_water: u64,
    ) -> io::Result<()> {
        self.write(disk, dir, self.persisted, seq_high_water.max(self.seq_high_water))
    }

    fn write(&mut self, disk: &dyn Disk, dir: &Path, value: u64, seq_high_water: u64) -> io::Result<()> {
        assert!(
            value >= self.persisted,
            "the cursor never moves back ({value} < {})",
            self.persisted
        );
        assert!(
            seq_high_water >= self.seq_high_water,
            "the high-water mark never moves back"
        );
        let target = match self.slot {
            Some(0) => 1,
            _ => 0,
        };
        let generation = self.generation + 1;
        let path = &slot_paths(dir)[target];
        slots::write_slot(
            disk,
            path,
            CURSOR_MAGIC,
            generation,
            &encode(value, seq_high_water),
        )?;
        self.generation = generation;
        self.slot = Some(target);
        self.persisted = value;
        self.seq_high_water = seq_high_water;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashDisk;

    fn setup() -> (CrashDisk, PathBuf) {
        let disk = CrashDisk::new(5);
        let dir = PathBuf::from("/spool");
        disk.create_dir_all(&dir).unwrap();
        (disk, dir)
    }

    #[test]
    fn fresh_then_persisted_values_survive_crashes() {
        let (disk, dir) = setup();
        let load = load_cursor(&disk, &dir, true);
        assert_eq!((load.value, load.source), (0, StateSource::Fresh));
        let mut store = CursorStore::from_load(&load);
        store.ensure_files(&disk, &dir).unwrap();
        for value in [3, 9, 9, 40] {
            store.persist(&disk, &dir, value).unwrap();
            disk.crash();
            let load = load_cursor(&disk, &dir, false);
            assert_eq!(load.value, value);
        }
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_value() {
        let mut fell_back = false;
        for seed in 0..30 {
            let disk = CrashDisk::new(seed);
            let dir = PathBuf::from("/spool");
            disk.create_dir_all(&dir).unwrap();
            disk.set_block_size_bytes(4);
            let mut store = CursorStore::from_load(&load_cursor(&disk, &dir, true));
            store.ensure_files(&disk, &dir).unwrap();
            store.persist(&disk, &dir, 10).unwrap();
            // Write the next value without its sync completing.
            disk.fail_next(crate::disk::memory::FaultOp::SyncData, 1);
            assert!(store.persist(&disk, &dir, 20).is_err());
            assert_eq!(store.persisted(), 10);
            disk.crash();
            let load = load_cursor(&disk, &dir, false);
            assert!(load.value == 10 || load.value == 20, "seed {seed}: {load:?}");
            fell_back |= load.value == 10;
        }
        assert!(fell_back);
    }

    #[test]
    fn the_seq_high_water_mark_rides_along() {
        let (disk, dir) = setup();
        let mut store = CursorStore::from_load(&load_cursor(&disk, &dir, true));
        store.ensure_files(&disk, &dir).unwrap();
        store.persist(&disk, &dir, 4).unwrap();
        store.persist_seq_high_water(&disk, &dir, 900).unwrap();
        store.persist(&disk, &dir, 6).unwrap();
        let load = load_cursor(&disk, &dir, false);
        assert_eq!((load.value, load.seq_high_water), (6, 900));
        // Even when the newest slot is damaged, the other still has it.
        let newest = CURSOR_SLOT_NAMES[load.slot.unwrap()];
        disk.flip_bit(&dir.join(newest), 3, 0).unwrap();
        let load = load_cursor(&disk, &dir, false);
        assert_eq!((load.value, load.seq_high_water), (4, 900));
    }

    #[test]
    fn damaged_slots_are_reported_and_fallback_is_zero() {
        let (disk, dir) = setup();
        let mut store = CursorStore::from_load(&load_cursor(&disk, &dir, true));
        store.ensure_files(&disk, &dir).unwrap();
        store.persist(&disk, &dir, 5).unwrap(); // slot A, generation 1
        store.persist(&disk, &dir, 7).unwrap(); // slot B, generation 2
        disk.flip_bit(&dir.join(CURSOR_SLOT_NAMES[1]), 30, 0).unwrap();
        let load = load_cursor(&disk, &dir, false);
        assert_eq!((load.value, load.source), (5, StateSource::SlotA));
        assert_eq!(load.invalid_slots.len(), 1);
        disk.flip_bit(&dir.join(CURSOR_SLOT_NAMES[0]), 30, 0).unwrap();
        let load = load_cursor(&disk, &dir, false);
        assert_eq!((load.value, load.source), (0, StateSource::Fallback));
        // The next write overwrites a damaged slot with a newer generation.
        let mut store = CursorStore::from_load(&load);
        store.persist(&disk, &dir, 8).unwrap();
        assert_eq!(load_cursor(&disk, &dir, false).value, 8);
    }
}
