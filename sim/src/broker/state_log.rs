//! The broker's own state: producer ids issued and consumer-group offsets.
//!
//! An append-only file of CRC-framed entries (`DIR/broker.state`), each
//! synced before the request that wrote it is answered. Opening reads the
//! intact prefix and rewrites it as a compact snapshot (`broker.state.tmp`,
//! synced, renamed over `broker.state`, directory synced), so a torn tail is
//! never appended after; the same compaction runs when the file grows past
//! its bound.

use super::storage;
use serde::{Deserialize, Serialize};
use soilstream::disk::{Disk, DiskFile};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "broker.state";
const STATE_TMP_FILE: &str = "broker.state.tmp";
/// Bound on one entry.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Bound on the state file when reading it back.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StateEntry {
    /// Ids below this have been issued.
    ProducerIdsIssued { next_producer_id: u64 },
    /// Committed next offsets of a group.
    GroupOffsets {
        group: String,
        topic: String,
        offsets: Vec<(i32, i64)>,
    },
}

/// The state, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BrokerState {
    /// The next producer id to issue.
    pub next_producer_id: u64,
    /// (group, topic, partition) -> next offset.
    pub group_offsets: BTreeMap<(String, String, i32), i64>,
}

impl BrokerState {
    fn apply(&mut self, entry: StateEntry) {
        match entry {
            StateEntry::ProducerIdsIssued { next_producer_id } => {
                self.next_producer_id = self.next_producer_id.max(next_producer_id);
            }
            StateEntry::GroupOffsets {
                group,
                topic,
                offsets,
            } => {
                for (partition, offset) in offsets {
                    self.group_offsets
                        .insert((group.clone(), topic.clone(), partition), offset);
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<StateEntry> {
        let mut entries = vec![StateEntry::ProducerIdsIssued {
            next_producer_id: self.next_producer_id,
        }];
        let mut by_group: BTreeMap<(&str, &str), Vec<(i32, i64)>> = BTreeMap::new();
        for ((group, topic, partition), offset) in &self.group_offsets {
            by_group
                .entry((group.as_str(), topic.as_str()))
                .or_default()
                .push((*partition, *offset));
        }
        for ((group, topic), offsets) in by_group {
            entries.push(StateEntry::GroupOffsets {
                group: group.to_string(),
                topic: topic.to_string(),
                offsets,
            });
        }
        entries
    }
}

/// The open state file.
pub(crate) struct StateLog {
    dir: PathBuf,
    file: Box<dyn DiskFile>,
    size_bytes: u64,
    snapshot_bytes: u64,
    max_bytes: u64,
    state: BrokerState,
}

impl StateLog {
    /// Opens (recovers and compacts) the state in `dir`.
    pub(crate) fn open(disk: &dyn Disk, dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let path = dir.join(STATE_FILE);
        let mut state = BrokerState::default();
        if disk.exists(&path)? {
            let file = disk.open(&path)?;
            let read = storage::read_entries::<StateEntry>(file.as_ref(), MAX_ENTRY_BYTES, MAX_FILE_BYTES)?;
            if read.stop != storage::Stop::End {
                tracing::info!(stop = ?read.stop, valid_bytes = read.valid_bytes, "broker state has a tail that is not intact; ignored");
            }
            for entry in read.entries {
                state.apply(entry);
            }
        }
        let (file, snapshot_bytes) = write_snapshot(disk, dir, &state)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size_bytes: snapshot_bytes,
            snapshot_bytes,
            max_bytes,
            state,
        })
    }

    /// The state.
    pub(crate) fn state(&self) -> &BrokerState {
        &self.state
    }

    /// Issues a new producer id, durably.
    pub(crate) fn issue_producer_id(&mut self, disk: &dyn Disk) -> io::Result<u64> {
        let id = self.state.next_producer_id;
        let next = id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("producer ids exhausted"))?;
        self.append(
            disk,
            StateEntry::ProducerIdsIssued {
                next_producer_id: next,
            },
        )?;
        debug_assert_eq!(self.state.next_producer_id, next);
        Ok(id)
    }

    /// Stores a group's next offsets, durably.
    pub(crate) fn commit_offsets(
        &mut self,
        disk: &dyn Disk,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> io::Result<()> {
        self.append(
            disk,
            StateEntry::GroupOffsets {
                group: group.to_string(),
                topic: topic.to_string(),
                offsets: offsets.to_vec(),
            },
        )
    }

    fn append(&mut self, disk: &dyn Disk, entry: StateEntry) -> io::Result<()> {
        let bytes = storage::encode_entry(&entry, MAX_ENTRY_BYTES)?;
        self.file.append(&bytes)?;
        self.file.sync_data()?;
        self.size_bytes += bytes.len() as u64;
        self.state.apply(entry);
        if self.size_bytes > self.max_bytes && self.size_bytes > 2 * self.snapshot_bytes {
            let (file, snapshot_bytes) = write_snapshot(disk, &self.dir, &self.state)?;
            self.file = file;
            self.size_bytes = snapshot_bytes;
            self.snapshot_bytes = snapshot_bytes;
        }
        Ok(())
    }
}

/// Writes `state` as the new state file and returns it open for appending.
fn write_snapshot(disk: &dyn Disk, dir: &Path, state: &BrokerState) -> io::Result<(Box<dyn DiskFile>, u64)> {
    let tmp = dir.join(STATE_TMP_FILE);
    let path = dir.join(STATE_FILE);
    let mut bytes = Vec::new();
    for entry in state.snapshot() {
        bytes.extend(storage::encode_entry(&entry, MAX_ENTRY_BYTES)?);
    }
    {
        let mut file = disk.create_truncate(&tmp)?;
        file.append(&bytes)?;
        file.sync_data()?;
    }
    disk.rename(&tmp, &path)?;
    disk.sync_dir(dir)?;
    // Reopen by path: a handle must not be used across a rename.
    let file = disk.open(&path)?;
    Ok((file, bytes.len() as u64))
}
