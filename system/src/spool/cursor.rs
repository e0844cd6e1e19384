//! The delivery cursor: "every record with a spool index at or below this
//! value has a delivery report", persisted crash-safely in two slot files
//! written alternately (A/B) with increasing generations.
//!
//! A write goes to the slot *not* holding the newest valid state, so a
//! power cut mid-write tears at most that slot and the other still holds the
//! previous cursor. A cursor that falls back to an older value only causes
//! redelivery (duplicates, removed downstream), never loss: segments are
//! deleted only after the newer cursor is durable.

use super::slots::{self, SlotRead};
use crate::disk::Disk;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};

/// File names of the two cursor slots.
pub const CURSOR_SLOT_NAMES: [&str; 2] = ["cursor-a.slot", "cursor-b.slot"];
const CURSOR_MAGIC: [u8; 4] = *b"SCUR";
const CURSOR_PAYLOAD_BYTES: usize = 8;

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
    /// Slots that exist but are invalid, with the reason.
    pub invalid_slots: Vec<(String, &'static str)>,
}

fn slot_paths(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CURSOR_SLOT_NAMES[0]), dir.join(CURSOR_SLOT_NAMES[1])]
}

fn decode_value(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; CURSOR_PAYLOAD_BYTES] = payload.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Reads the cursor. Never fails; `spool_is_new` tells a new spool (no
/// state is expected) from one whose cursor files were lost.
pub fn load_cursor(disk: &dyn Disk, dir: &Path, spool_is_new: bool) -> CursorLoad {
    let paths = slot_paths(dir);
    let mut best: Option<(u64, u64, usize)> = None;
    let mut missing = 0;
    let mut invalid_slots = Vec::new();
    for (slot, path) in paths.iter().enumerate() {
        match slots::read_slot(disk, path, CURSOR_MAGIC, CURSOR_PAYLOAD_BYTES) {
            SlotRead::Missing => missing += 1,
            SlotRead::Invalid(reason) => invalid_slots.push((CURSOR_SLOT_NAMES[slot].to_string(), reason)),
            SlotRead::Valid { generation, payload } => match decode_value(&payload) {
                Some(value) => {
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
}

impl CursorStore {
    /// Starts from what [`load_cursor`] found.
    pub fn from_load(load: &CursorLoad) -> Self {
        Self {
            generation: load.generation,
            slot: load.slot,
            persisted: load.value,
        }
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
            &self.persisted.to_le_bytes(),
        )?;
        Ok(())
    }

    /// Makes `value` the durable cursor. On error the previous value stays
    /// durable in the other slot and this store is unchanged.
    pub fn persist(&mut self, disk: &dyn Disk, dir: &Path, value: u64) -> io::Result<()> {
        assert!(
            value >= self.persisted,
            "the cursor never moves back ({value} < {})",
            self.persisted
        );
        let target = match self.slot {
            Some(0) => 1,
            _ => 0,
        };
        let generation = self.generation + 1;
        let path = &slot_paths(dir)[target];
        slots::write_slot(disk, path, CURSOR_MAGIC, generation, &value.to_le_bytes())?;
        self.generation = generation;
        self.slot = Some(target);
        self.persisted = value;
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
