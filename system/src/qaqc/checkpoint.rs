//! Local checkpoints of a partition's state: an optimisation, never the
//! source of truth. A checkpoint is taken only when every output of the
//! partition is acknowledged, so the state equals the fold of the outputs up
//! to the offsets it records; a rebuild then folds only the outputs written
//! after those offsets. A checkpoint that is torn (power loss), damaged,
//! written with other settings, for another partition, or ahead of what an
//! output partition holds (the broker lost data) is ignored, and the state
//! is rebuilt from the outputs alone.
//!
//! File `{state_dir}/partition-{p}.ckpt`, replaced atomically (write a
//! temporary file, `fdatasync`, rename, sync the directory):
//!
//! ```text
//! magic "SQC2" | crc32c: u32 BE of the payload | length: u64 BE | payload (postcard)
//! ```

use super::config::QaqcSettings;
use super::state::PartitionState;
use crate::disk::{Disk, read_exact_at};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// `SQC2` since readings' temperatures became optional (an `SQC1`
/// checkpoint is ignored and the state rebuilt from the outputs).
const MAGIC: &[u8; 4] = b"SQC2";
const HEADER_BYTES: usize = 16;
/// Largest checkpoint read back, bytes.
pub const CHECKPOINT_MAX_BYTES: u64 = 1 << 30;

/// What a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Input partition.
    pub partition: i32,
    /// Digest of the settings that shape state (a change invalidates it).
    pub settings_digest: u64,
    /// For each output topic, the offset after the last record the state
    /// reflects.
    pub output_offsets: BTreeMap<String, i64>,
    /// The state.
    pub state: PartitionState,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint i/o: {0}")]
    Io(#[from] io::Error),
    /// The file is not an intact checkpoint.
    #[error("checkpoint damaged: {0}")]
    Damaged(String),
}

/// The digest of the settings a partition's state depends on.
pub fn settings_digest(settings: &QaqcSettings) -> u64 {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        settings.topics, settings.windows, settings.limits, settings.checks, settings.flags, settings.alerts
    );
    let digest = crc32c::crc32c(text.as_bytes());
    (u64::from(digest) << 32) | text.len() as u64
}

/// The checkpoint file of `partition`.
pub fn path(state_dir: &Path, partition: i32) -> PathBuf {
    state_dir.join(format!("partition-{partition}.ckpt"))
}

/// A checkpoint to write, borrowing the state (no copy of it is made).
#[derive(Debug, Serialize)]
pub struct CheckpointRef<'a> {
    /// Input partition.
    pub partition: i32,
    /// Digest of the settings that shape state.
    pub settings_digest: u64,
    /// For each output topic, the offset after the last record the state
    /// reflects.
    pub output_offsets: &'a BTreeMap<String, i64>,
    /// The state.
    pub state: &'a PartitionState,
}

/// Writes a checkpoint atomically.
pub fn save(
    disk: &dyn Disk,
    state_dir: &Path,
    checkpoint: &CheckpointRef<'_>,
) -> Result<u64, CheckpointError> {
    disk.create_dir_all(state_dir)?;
    let payload = postcard::to_allocvec(checkpoint).map_err(|e| CheckpointError::Damaged(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&payload);
    let target = path(state_dir, checkpoint.partition);
    let tmp = target.with_extension("ckpt.tmp");
    {
        let mut file = disk.create_truncate(&tmp)?;
        file.append(&bytes)?;
        file.sync_data()?;
    }
    disk.rename(&tmp, &target)?;
    disk.sync_dir(state_dir)?;
    Ok(bytes.len() as u64)
}

/// Reads the checkpoint of `partition`; `Ok(None)` if there is none.
pub fn load(
    disk: &dyn Disk,
    state_dir: &Path,
    partition: i32,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let target = path(state_dir, partition);
    if !disk.exists(&target)? {
        return Ok(None);
    }
    let file = disk.open_read(&target)?;
    let length = file.len()?;
    if length < HEADER_BYTES as u64 || length > CHECKPOINT_MAX_BYTES {
        return Err(CheckpointError::Damaged(format!("{length} bytes")));
    }
    let mut bytes = vec![0u8; length as usize];
    let read = read_exact_at(file.as_ref(), 0, &mut bytes)?;
    if read != bytes.len() {
        return Err(CheckpointError::Damaged("short read".into()));
    }
    if &bytes[..4] != MAGIC {
        return Err(CheckpointError::Damaged("bad magic".into()));
    }
    let crc = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload_len = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload_len != payload.len() as u64 {
        return Err(CheckpointError::Damaged(format!(
            "payload of {} bytes, header says {payload_len}",
            payload.len()
        )));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(CheckpointError::Damaged("crc mismatch".into()));
    }
    let checkpoint: Checkpoint =
        postcard::from_bytes(payload).map_err(|e| CheckpointError::Damaged(e.to_string()))?;
    if checkpoint.partition != partition {
        return Err(CheckpointError::Damaged(format!(
            "checkpoint of partition {} in the file of {partition}",
            checkpoint.partition
        )));
    }
    Ok(Some(checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashDisk;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let disk = CrashDisk::new(7);
        let dir = Path::new("/state");
        let checkpoint = Checkpoint {
            partition: 2,
            settings_digest: settings_digest(&QaqcSettings::defaults()),
            output_offsets: [("clean".to_string(), 17)].into_iter().collect(),
            state: PartitionState::new(2),
        };
        save(
            &disk,
            dir,
            &CheckpointRef {
                partition: checkpoint.partition,
                settings_digest: checkpoint.settings_digest,
                output_offsets: &checkpoint.output_offsets,
                state: &checkpoint.state,
            },
        )
        .unwrap();
        assert_eq!(load(&disk, dir, 2).unwrap(), Some(checkpoint));
        assert!(load(&disk, dir, 3).unwrap().is_none());
        let file = path(dir, 2);
        disk.flip_bit(&file, 20, 1).unwrap();
        assert!(matches!(load(&disk, dir, 2), Err(CheckpointError::Damaged(_))));
    }
}
