//! The exactly-once protocol of one partition, over the object store only.
//!
//! A batch covers the offsets `[first, last]` of one partition and is tried
//! at its *position* `first` under an *attempt* number:
//!
//! 1. **intent**: `put_if_absent(<first>.<attempt>.pending)` listing the
//!    files it will write. The pending object is the attempt's lock: two
//!    writers never hold the same attempt.
//! 2. **data**: `put_if_absent` of each date file. A file that exists with
//!    the same bytes is this batch's (a retry); one with other bytes is the
//!    leftover of a fenced attempt at the same position (no committed batch
//!    can name it) and is replaced.
//! 3. **commit**: `put_if_absent(<first>.<attempt>.commit)` with the
//!    manifest. Whoever creates the marker decides the attempt: a writer
//!    that finds an *abort* marker there was fenced, removes what it wrote
//!    and recovers again.
//! 4. the intent is removed; then (in the component) the group offset is
//!    committed, for lag metrics only.
//!
//! [`recover`] runs on every assignment: it finds the last committed batch
//! (the highest position with a commit marker), fences every attempt at a
//! later position that has an intent and no marker (abort marker, created
//! if absent: a commit that got there first wins and recovery starts over),
//! removes the files of aborted attempts, and says where to resume:
//! `last + 1`, whatever the group offset says. Every step is idempotent, so
//! a crash anywhere is followed by the same recovery. Each crash point is
//! named by [`CrashPoint`]; docs/archive.md lists what each leaves behind.

use super::layout::{
    ATTEMPT_LIMIT, MANIFEST_VERSION, Manifest, ManifestFile, ManifestName, SkippedRecord, manifest_prefix,
    marker_path, parse_manifest_name, pending_path,
};
use super::store::{ArchiveStore, StoreError};
use futures::future::LocalBoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Recovery starts over at most this often before giving up (a commit
/// racing with it each time means another live writer owns the partition).
pub const RECOVERY_ROUNDS_MAX: u32 = 8;

/// A point of the protocol where a test can crash the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashPoint {
    /// C1: the batch is built in memory, nothing written.
    BeforeIntent,
    /// C2: the intent is written, no data file.
    AfterIntent,
    /// C3: the first data file is written (of several, when the batch has
    /// more than one date).
    AfterFirstDataFile,
    /// C4: every data file is written, no marker.
    AfterDataFiles,
    /// C5: the commit marker is written; the intent is still there.
    AfterMarker,
    /// C6: the intent is removed; the group offset is not committed.
    AfterIntentRemoved,
    /// C7: the group offset is committed.
    AfterGroupCommit,
    /// C8: recovery wrote an abort marker and removed nothing yet.
    AfterAbortMarker,
    /// C9: recovery removed the first file of an aborted attempt.
    AfterAbortedFileRemoved,
}

impl CrashPoint {
    /// Every crash point, in protocol order.
    pub const ALL: [CrashPoint; 9] = [
        CrashPoint::BeforeIntent,
        CrashPoint::AfterIntent,
        CrashPoint::AfterFirstDataFile,
        CrashPoint::AfterDataFiles,
        CrashPoint::AfterMarker,
        CrashPoint::AfterIntentRemoved,
        CrashPoint::AfterGroupCommit,
        CrashPoint::AfterAbortMarker,
        CrashPoint::AfterAbortedFileRemoved,
    ];

    /// The name used by `SOILSTREAM_ARCHIVE_CRASH_AT` and the docs.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeIntent => "before-intent",
            CrashPoint::AfterIntent => "after-intent",
            CrashPoint::AfterFirstDataFile => "after-first-data-file",
            CrashPoint::AfterDataFiles => "after-data-files",
            CrashPoint::AfterMarker => "after-marker",
            CrashPoint::AfterIntentRemoved => "after-intent-removed",
            CrashPoint::AfterGroupCommit => "after-group-commit",
            CrashPoint::AfterAbortMarker => "after-abort-marker",
            CrashPoint::AfterAbortedFileRemoved => "after-aborted-file-removed",
        }
    }

    /// The crash point called `name`.
    pub fn from_name(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Where a test crashes the archive. The real world aborts the process;
/// the simulator stops the host.
pub trait CrashHook {
    /// The protocol reached `point` (for the batch or attempt at `position`
    /// of `partition`). Never resolves if the hook crashes there.
    fn reached(&self, partition: i32, point: CrashPoint) -> LocalBoxFuture<'_, ()>;
}

/// A hook that never crashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCrash;

impl CrashHook for NoCrash {
    fn reached(&self, _partition: i32, _point: CrashPoint) -> LocalBoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Why a protocol step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The store failed; retry (transient) or report (permanent).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another writer decided this batch (an abort marker, or an intent of
    /// the same attempt that is not ours): recover and start again.
    #[error("partition {partition}: batch at offset {position} attempt {attempt} was fenced by `{by}`")]
    Fenced {
        /// Kafka partition.
        partition: i32,
        /// Batch position.
        position: i64,
        /// Attempt.
        attempt: u32,
        /// Who fenced it.
        by: String,
    },
    /// The manifests contradict the protocol (damage, or a foreign writer).
    #[error("partition {partition}: {detail}")]
    Corrupt {
        /// Kafka partition.
        partition: i32,
        /// What is wrong, naming the object.
        detail: String,
    },
}

impl ProtocolError {
    /// Whether retrying the same step may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProtocolError::Store(StoreError::Unavailable(_)))
    }
}

/// What recovery found and did for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Next offset to archive (`last + 1` of the last committed batch);
    /// `None` when nothing was ever committed.
    pub next_offset: Option<i64>,
    /// Attempt number a batch at `next_offset` must use.
    pub next_attempt: u32,
    /// The last committed batch's manifest.
    pub last_commit: Option<Manifest>,
    /// Attempts fenced by this recovery (abort markers written).
    pub attempts_aborted: u64,
    /// Data files of uncommitted attempts removed.
    pub files_removed: u64,
    /// Intents removed (of committed or aborted attempts).
    pub intents_removed: u64,
}

/// The manifests of one position.
#[derive(Debug, Default)]
struct Position {
    pending: BTreeSet<u32>,
    markers: BTreeSet<u32>,
}

/// Reads the manifest at `path`; a torn or damaged one is an error naming
/// the object.
pub async fn read_manifest(
    store: &dyn ArchiveStore,
    partition: i32,
    path: &str,
) -> Result<Manifest, ProtocolError> {
    let bytes = store.get(path).await?;
    Manifest::from_bytes(&bytes).map_err(|e| ProtocolError::Corrupt {
        partition,
        detail: format!("`{path}`: {e}; move it aside and run `soilstream archive verify`"),
    })
}

/// Recovers `partition` of `topic` (see the module docs). `writer_id` signs
/// the abort markers it writes. `keep_uncommitted` is a planted bug (the
/// files of fenced attempts stay), never set outside tests.
pub async fn recover(
    store: &dyn ArchiveStore,
    crash: &dyn CrashHook,
    topic: &str,
    partition: i32,
    writer_id: &str,
    keep_uncommitted: bool,
) -> Result<Recovery, ProtocolError> {
    for _round in 0..RECOVERY_ROUNDS_MAX {
        if let Some(recovery) =
            recover_once(store, crash, topic, partition, writer_id, keep_uncommitted).await?
        {
            return Ok(recovery);
        }
    }
    Err(ProtocolError::Corrupt {
        partition,
        detail: format!(
            "recovery raced with {RECOVERY_ROUNDS_MAX} commits in a row: another live archive instance writes this \
             partition (two groups, or two topics configured alike?)"
        ),
    })
}

/// One round of recovery; `None` when a commit raced with it.
async fn recover_once(
    store: &dyn ArchiveStore,
    crash: &dyn CrashHook,
    topic: &str,
    partition: i32,
    writer_id: &str,
    keep_uncommitted: bool,
) -> Result<Option<Recovery>, ProtocolError> {
    let prefix = manifest_prefix(topic, partition);
    let mut positions: BTreeMap<i64, Position> = BTreeMap::new();
    for object in store.list(&prefix).await? {
        match parse_manifest_name(&object.path) {
            Some(ManifestName::Pending { first, attempt }) => {
                positions.entry(first).or_default().pending.insert(attempt);
            }
            Some(ManifestName::Marker { first, attempt }) => {
                positions.entry(first).or_default().markers.insert(attempt);
            }
            None => tracing::warn!(path = %object.path, "not an archive manifest; ignored"),
        }
    }
    let mut recovery = Recovery::default();
    // The last committed batch: the highest position with a commit marker
    // (at most one commit per position: attempts are locked by intents and
    // a later attempt starts only once every earlier one has a marker).
    let mut commits: BTreeMap<i64, Manifest> = BTreeMap::new();
    for (&first, position) in positions.iter().rev() {
        if let Some(manifest) = commit_at(store, topic, partition, first, position).await? {
            commits.insert(first, manifest);
            break;
        }
    }
    if let Some((&first, manifest)) = commits.iter().next() {
        assert_eq!(
            manifest.first, first,
            "a marker's manifest names its own position"
        );
        recovery.next_offset = Some(manifest.last + 1);
        recovery.last_commit = Some(manifest.clone());
    }
    let committed_end = recovery.next_offset.unwrap_or(i64::MIN);
    for (&first, position) in &positions {
        // A commit at an earlier position than the last one: its files are
        // what its marker lists (read only when an intent is left over).
        let valid_commit = if first < committed_end && !position.pending.is_empty() {
            match commits.get(&first) {
                Some(m) => Some(m.clone()),
                None => commit_at(store, topic, partition, first, position).await?,
            }
        } else {
            None
        };
        let keep: BTreeSet<String> = valid_commit
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.path.clone()))
            .collect();
        for &attempt in &position.pending {
            let pending_object = pending_path(topic, partition, first, attempt);
            let intent = match read_manifest(store, partition, &pending_object).await {
                Ok(m) => Some(m),
                // Removed since the listing: its writer decided the attempt
                // (committed or fenced) meanwhile, so the listing is stale:
                // start over, or a commit made just now would be missed.
                Err(ProtocolError::Store(StoreError::NotFound(_))) => return Ok(None),
                // A torn intent lists nothing reliable; its files are found
                // by `archive verify` (as orphans), never committed.
                Err(ProtocolError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            let marker_object = marker_path(topic, partition, first, attempt);
            let decided = if position.markers.contains(&attempt) {
                Some(read_manifest(store, partition, &marker_object).await?)
            } else {
                None
            };
            let committed = match decided {
                Some(m) => m.aborted_by.is_none(),
                None => {
                    // Undecided: fence it.
                    let mut abort = intent
                        .clone()
                        .unwrap_or_else(|| empty_manifest(topic, partition, first, writer_id));
                    abort.aborted_by = Some(writer_id.to_string());
                    match store.put_if_absent(&marker_object, abort.to_bytes()).await {
                        Ok(()) => {
                            recovery.attempts_aborted += 1;
                            tracing::info!(
                                partition,
                                position = first,
                                attempt,
                                "fenced an uncommitted batch"
                            );
                            crash.reached(partition, CrashPoint::AfterAbortMarker).await;
                            false
                        }
                        // Its writer committed just now: start over.
                        Err(StoreError::AlreadyExists(_)) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if committed && first >= committed_end {
                // A batch was committed after the listing: start over.
                return Ok(None);
            }
            if let Some(intent) = &intent {
                let own_commit = committed && valid_commit.as_ref() == Some(intent);
                for file in &intent.files {
                    if own_commit || keep.contains(&file.path) || keep_uncommitted {
                        continue;
                    }
                    store.delete(&file.path).await?;
                    recovery.files_removed += 1;
                    if recovery.files_removed == 1 {
                        crash
                            .reached(partition, CrashPoint::AfterAbortedFileRemoved)
                            .await;
                    }
                }
            }
            store.delete(&pending_object).await?;
            recovery.intents_removed += 1;
        }
    }
    // Attempts at the open position: the next one is after every one seen.
    if let Some(position) = recovery.next_offset.and_then(|next| positions.get(&next)) {
        let highest = position.pending.iter().chain(&position.markers).max().copied();
        recovery.next_attempt = highest.map_or(0, |a| a + 1);
    } else if recovery.next_offset.is_none() {
        // Nothing committed: attempts may exist at whatever position the
        // first batch starts; a new first batch starts after all of them.
        let highest = positions
            .values()
            .flat_map(|p| p.pending.iter().chain(&p.markers))
            .max()
            .copied();
        recovery.next_attempt = highest.map_or(0, |a| a + 1);
    }
    if recovery.next_attempt >= ATTEMPT_LIMIT {
        return Err(ProtocolError::Corrupt {
            partition,
            detail: format!("{ATTEMPT_LIMIT} attempts at one position: the archive keeps being fenced there"),
        });
    }
    Ok(Some(recovery))
}

fn empty_manifest(topic: &str, partition: i32, first: i64, writer_id: &str) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        topic: topic.to_string(),
        partition,
        first,
        last: first,
        files: vec![],
        skipped: vec![],
        schema_ids: vec![],
        writer_id: writer_id.to_string(),
        aborted_by: None,
    }
}

/// The commit at `first`, if one of its markers is a commit.
async fn commit_at(
    store: &dyn ArchiveStore,
    topic: &str,
    partition: i32,
    first: i64,
    position: &Position,
) -> Result<Option<Manifest>, ProtocolError> {
    for &attempt in &position.markers {
        let manifest =
            read_manifest(store, partition, &marker_path(topic, partition, first, attempt)).await?;
        if manifest.aborted_by.is_none() {
            if manifest.first != first || manifest.partition != partition || manifest.topic != topic {
                return Err(ProtocolError::Corrupt {
                    partition,
                    detail: format!(
                        "marker `{}` describes {}/{} at offset {}",
                        marker_path(topic, partition, first, attempt),
                        manifest.topic,
                        manifest.partition,
                        manifest.first
                    ),
                });
            }
            return Ok(Some(manifest));
        }
    }
    Ok(None)
}

/// One data file of a batch, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFile {
    /// Its entry in the manifest.
    pub entry: ManifestFile,
    /// The Parquet bytes.
    pub bytes: Vec<u8>,
}

/// A batch ready to be committed.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    /// Topic archived.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Position (first offset of the range).
    pub first: i64,
    /// Last offset of the range.
    pub last: i64,
    /// Attempt number (from recovery, or the previous batch's + 0).
    pub attempt: u32,
    /// The files, one per event date.
    pub files: Vec<EncodedFile>,
    /// Records of the range in no file.
    pub skipped: Vec<SkippedRecord>,
    /// Writer schema ids of the rows.
    pub schema_ids: Vec<u32>,
    /// This instance.
    pub writer_id: String,
}

impl BatchPlan {
    /// The manifest of the batch.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            topic: self.topic.clone(),
            partition: self.partition,
            first: self.first,
            last: self.last,
            files: self.files.iter().map(|f| f.entry.clone()).collect(),
            skipped: self.skipped.clone(),
            schema_ids: self.schema_ids.clone(),
            writer_id: self.writer_id.clone(),
            aborted_by: None,
        }
    }
}

/// What committing a batch wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Data files created by this call (not found from an earlier try).
    pub files_created: u64,
    /// Leftovers of fenced attempts replaced.
    pub leftovers_replaced: u64,
    /// Bytes of data written.
    pub bytes_written: u64,
}

/// Commits `plan` (steps 1 to 4 of the module docs). Idempotent: calling
/// it again with the same plan after any failure finishes the same batch.
pub async fn commit_batch(
    store: Rc<dyn ArchiveStore>,
    crash: Rc<dyn CrashHook>,
    plan: Rc<BatchPlan>,
) -> Result<Committed, ProtocolError> {
    let partition = plan.partition;
    assert!(plan.first <= plan.last, "a batch covers at least one offset");
    assert!(plan.attempt < ATTEMPT_LIMIT);
    let manifest = plan.manifest();
    let manifest_bytes = manifest.to_bytes();
    let fenced = |by: String| ProtocolError::Fenced {
        partition,
        position: plan.first,
        attempt: plan.attempt,
        by,
    };
    crash.reached(partition, CrashPoint::BeforeIntent).await;
    let pending_object = pending_path(&plan.topic, partition, plan.first, plan.attempt);
    match store.put_if_absent(&pending_object, manifest_bytes.clone()).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            let theirs = read_manifest(&*store, partition, &pending_object).await;
            if theirs.as_ref().ok() != Some(&manifest) {
                // Or our intent was removed after a commit: the marker says.
                let marker = read_manifest(
                    &*store,
                    partition,
                    &marker_path(&plan.topic, partition, plan.first, plan.attempt),
                )
                .await;
                if marker.as_ref().ok() != Some(&manifest) {
                    return Err(fenced(
                        theirs
                            .map(|m| m.writer_id)
                            .unwrap_or_else(|_| "a damaged intent".into()),
                    ));
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    crash.reached(partition, CrashPoint::AfterIntent).await;
    let mut committed = Committed::default();
    let mut created: Vec<&str> = Vec::new();
    for (index, file) in plan.files.iter().enumerate() {
        match put_data_file(&*store, &plan, &file.entry.path, &file.bytes).await? {
            DataPut::Created => {
                committed.files_created += 1;
                committed.bytes_written += file.bytes.len() as u64;
                created.push(&file.entry.path);
            }
            DataPut::Replaced => {
                committed.leftovers_replaced += 1;
                committed.bytes_written += file.bytes.len() as u64;
                created.push(&file.entry.path);
            }
            DataPut::Identical => {}
        }
        if index == 0 && plan.files.len() > 1 {
            crash.reached(partition, CrashPoint::AfterFirstDataFile).await;
        }
    }
    crash.reached(partition, CrashPoint::AfterDataFiles).await;
    let marker_object = marker_path(&plan.topic, partition, plan.first, plan.attempt);
    match store.put_if_absent(&marker_object, manifest_bytes).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            let theirs = read_manifest(&*store, partition, &marker_object).await?;
            if theirs != manifest {
                // Fenced: what this call created is garbage now. Files that
                // were there already belong to whoever wrote them.
                for path in created {
                    store.delete(path).await?;
                }
                // The marker decided the attempt, so the intent is ours to drop.
                store.delete(&pending_object).await?;
                return Err(fenced(theirs.aborted_by.unwrap_or(theirs.writer_id)));
            }
        }
        Err(e) => return Err(e.into()),
    }
    crash.reached(partition, CrashPoint::AfterMarker).await;
    store.delete(&pending_object).await?;
    crash.reached(partition, CrashPoint::AfterIntentRemoved).await;
    Ok(committed)
}

enum DataPut {
    Created,
    Identical,
    Replaced,
}

async fn put_data_file(
    store: &dyn ArchiveStore,
    plan: &BatchPlan,
    path: &str,
    bytes: &[u8],
) -> Result<DataPut, ProtocolError> {
    match store.put_if_absent(path, bytes.to_vec()).await {
        Ok(()) => return Ok(DataPut::Created),
        Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store.get(path).await {
        Ok(existing) if existing == bytes => return Ok(DataPut::Identical),
        Ok(_) | Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Other bytes under our name: names carry the position, so only an
    // attempt at our position can have written it. If one of those
    // committed, we are fenced (and its file is not ours to touch);
    // otherwise it is the leftover of a fenced attempt.
    let prefix = manifest_prefix(&plan.topic, plan.partition);
    for object in store.list(&prefix).await? {
        if let Some(ManifestName::Marker { first, attempt }) = parse_manifest_name(&object.path)
            && first == plan.first
            && attempt != plan.attempt
        {
            let marker = read_manifest(store, plan.partition, &object.path).await?;
            if marker.aborted_by.is_none() {
                return Err(ProtocolError::Fenced {
                    partition: plan.partition,
                    position: plan.first,
                    attempt: plan.attempt,
                    by: marker.writer_id,
                });
            }
        }
    }
    tracing::info!(path, "replacing the leftover of a fenced attempt");
    store.delete(path).await?;
    store.put_if_absent(path, bytes.to_vec()).await?;
    Ok(DataPut::Replaced)
}
