//! Unit tests of the broker core, over an in-memory disk that models what a
//! crash keeps (synced bytes and synced directory entries) without turmoil.

use super::*;
use crate::broker::{MAX_MEMBER_ID_BYTES, TopicConfig};
use crate::protocol::{ProduceBatch, WireRecord};
use soilstream::disk::DiskFile;
use std::cell::RefCell;
use std::io;
use std::path::Path;

#[derive(Debug, Default)]
struct Inode {
    content: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemFs {
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
    fail_writes: bool,
    fail_syncs: bool,
}

/// An in-memory POSIX-like disk: handles follow inodes, data is durable after
/// `sync_data`, entries after `sync_dir`; `crash` keeps only what is durable
/// (plus, optionally, a prefix of each file's unsynced appended tail).
#[derive(Debug, Clone, Default)]
struct MemDisk {
    fs: Rc<RefCell<MemFs>>,
}

struct MemFile {
    fs: Rc<RefCell<MemFs>>,
    inode: u64,
}

fn injected() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl DiskFile for MemFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        if fs.fail_writes {
            return Err(injected());
        }
        let inode = fs
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("stale"))?;
        inode.content.extend_from_slice(data);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let fs = self.fs.borrow();
        let inode = fs
            .inodes
            .get(&self.inode)
            .ok_or_else(|| io::Error::other("stale"))?;
        let start = (offset as usize).min(inode.content.len());
        let n = buf.len().min(inode.content.len() - start);
        buf[..n].copy_from_slice(&inode.content[start..start + n]);
        Ok(n)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        if fs.fail_syncs {
            return Err(injected());
        }
        let inode = fs
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("stale"))?;
        inode.durable = inode.content.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let fs = self.fs.borrow();
        let inode = fs
            .inodes
            .get(&self.inode)
            .ok_or_else(|| io::Error::other("stale"))?;
        Ok(inode.content.len() as u64)
    }
}

impl MemDisk {
    fn handle(&self, inode: u64) -> Box<dyn DiskFile> {
        Box::new(MemFile {
            fs: self.fs.clone(),
            inode,
        })
    }

    fn create(&self, path: &Path, truncate_existing: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut fs = self.fs.borrow_mut();
        if fs.fail_writes {
            return Err(injected());
        }
        if let Some(parent) = path.parent()
            && !fs.dirs.contains(parent)
        {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no parent"));
        }
        if let Some(inode) = fs.names.get(path).copied() {
            if !truncate_existing {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
            }
            fs.inodes.get_mut(&inode).expect("inode").content.clear();
            drop(fs);
            return Ok(self.handle(inode));
        }
        let inode = fs.next_inode;
        fs.next_inode += 1;
        fs.inodes.insert(inode, Inode::default());
        fs.names.insert(path.to_path_buf(), inode);
        drop(fs);
        Ok(self.handle(inode))
    }

    /// Power loss: unsynced entries and bytes vanish, except the first
    /// `torn_tail_bytes` of each file's unsynced appended tail.
    fn crash(&self, torn_tail_bytes: usize) {
        let mut fs = self.fs.borrow_mut();
        fs.names = fs.durable_names.clone();
        for inode in fs.inodes.values_mut() {
            let mut kept = inode.durable.clone();
            if inode.content.starts_with(&inode.durable) {
                let tail = &inode.content[inode.durable.len()..];
                kept.extend_from_slice(&tail[..tail.len().min(torn_tail_bytes)]);
            }
            inode.content = kept.clone();
            inode.durable = kept;
        }
        let live: BTreeSet<u64> = fs.names.values().copied().collect();
        fs.inodes.retain(|id, _| live.contains(id));
        fs.fail_writes = false;
        fs.fail_syncs = false;
    }

    fn set_failures(&self, writes: bool, syncs: bool) {
        let mut fs = self.fs.borrow_mut();
        fs.fail_writes = writes;
        fs.fail_syncs = syncs;
    }

    fn file_names(&self, dir: &Path) -> Vec<String> {
        self.list(dir).expect("list")
    }
}

impl Disk for MemDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        for ancestor in dir.ancestors() {
            fs.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let inode = self
            .fs
            .borrow()
            .names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "missing"))?;
        Ok(self.handle(inode))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.create(path, false)
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.create(path, true)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.borrow();
        Ok(fs
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        if fs.fail_writes {
            return Err(injected());
        }
        let inode = fs
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "missing"))?;
        fs.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "missing"))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        if fs.fail_syncs {
            return Err(injected());
        }
        let current: Vec<(PathBuf, u64)> = fs
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        fs.durable_names.retain(|p, _| p.parent() != Some(dir));
        fs.durable_names.extend(current);
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let fs = self.fs.borrow();
        Ok(fs.names.contains_key(path) || fs.dirs.contains(path))
    }
}

const TOPIC: &str = "raw";

fn config(flush: FlushPolicy) -> BrokerConfig {
    let mut config = BrokerConfig::new(vec![TopicConfig {
        name: TOPIC.into(),
        partitions: 2,
    }]);
    config.flush = flush;
    config
}

fn open(disk: &MemDisk, config: &BrokerConfig, now_ms: u64) -> BrokerCore {
    BrokerCore::open(config.clone(), Rc::new(disk.clone()), now_ms)
}

fn record(n: u64) -> WireRecord {
    WireRecord {
        key: Some(format!("sensor-{}", n % 3).into_bytes()),
        value: Some(n.to_le_bytes().to_vec()),
        timestamp_ms: 1_700_000_000_000 + n as i64,
        headers: vec![("seq".into(), n.to_be_bytes().to_vec())],
    }
}

fn init_producer(core: &mut BrokerCore) -> u64 {
    match core.handle(Request::InitProducerId, 0) {
        Response::InitProducerId { producer_id, .. } => producer_id,
        other => panic!("unexpected {other:?}"),
    }
}

fn produce(
    core: &mut BrokerCore,
    producer_id: u64,
    partition: i32,
    base_sequence: u64,
    values: std::ops::Range<u64>,
) -> Result<i64, ErrorCode> {
    let request = Request::Produce(ProduceRequest {
        producer_id,
        producer_epoch: 0,
        batches: vec![ProduceBatch {
            topic: TOPIC.into(),
            partition,
            base_sequence,
            records: values.map(record).collect(),
        }],
    });
    match core.handle(request, 0) {
        Response::Produce { results } => {
            assert_eq!(results.len(), 1);
            results[0].result
        }
        Response::Error(code) => Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

fn fetch(
    core: &mut BrokerCore,
    partition: i32,
    offset: i64,
    max_records: u32,
    max_bytes: u32,
) -> Result<FetchedRecords, ErrorCode> {
    let request = Request::Fetch(FetchRequest {
        partitions: vec![(TOPIC.into(), partition, offset)],
        max_wait_ms: 0,
        max_records,
        max_bytes,
    });
    match core.handle(request, 0) {
        Response::Fetch { mut results } => results.remove(0).result,
        other => panic!("unexpected {other:?}"),
    }
}

fn all_values(core: &mut BrokerCore, partition: i32) -> Vec<u64> {
    let fetched = fetch(core, partition, 0, 100_000, 1 << 20).expect("fetch");
    fetched
        .records
        .iter()
        .map(|r| u64::from_le_bytes(r.value.clone().expect("value").try_into().expect("8 bytes")))
        .collect()
}

fn watermarks(core: &mut BrokerCore, partition: i32) -> Result<(i64, i64), ErrorCode> {
    match core.handle(
        Request::ListOffsets {
            topic: TOPIC.into(),
            partition,
        },
        0,
    ) {
        Response::ListOffsets { result } => result,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn appends_fetches_and_reports_offsets() {
    let disk = MemDisk::default();
    let mut core = open(&disk, &config(FlushPolicy::EveryBatch), 0);
    let pid = init_producer(&mut core);
    assert_eq!(produce(&mut core, pid, 0, 0, 0..3), Ok(0));
    assert_eq!(produce(&mut core, pid, 0, 3, 3..5), Ok(3));
    assert_eq!(produce(&mut core, pid, 1, 0, 10..11), Ok(0));
    assert_eq!(watermarks(&mut core, 0), Ok((0, 5)));
    assert_eq!(watermarks(&mut core, 1), Ok((0, 1)));
    assert_eq!(all_values(&mut core, 0), vec![0, 1, 2, 3, 4]);

    let fetched = fetch(&mut core, 0, 2, 100, 1 << 20).expect("fetch");
    assert_eq!(fetched.base_offset, 2);
    assert_eq!(fetched.high_watermark, 5);
    assert_eq!(
        fetched.records[0],
        record(2),
        "key, value, timestamp and headers are kept"
    );
    assert_eq!(
        fetch(&mut core, 0, 0, 2, 1 << 20).expect("fetch").records.len(),
        2
    );
    let one_byte = fetch(&mut core, 0, 0, 100, 1).expect("fetch");
    assert_eq!(one_byte.records.len(), 1, "at least one record whatever its size");
    assert!(
        fetch(&mut core, 0, 5, 100, 1 << 20)
            .expect("fetch")
            .records
            .is_empty()
    );
    assert_eq!(
        fetch(&mut core, 0, 6, 100, 1 << 20),
        Err(ErrorCode::OffsetOutOfRange)
    );
    assert_eq!(
        fetch(&mut core, 7, 0, 100, 1 << 20),
        Err(ErrorCode::UnknownTopicOrPartition)
    );

    let metadata = core.handle(
        Request::Metadata {
            topics: vec![TOPIC.into(), "nope".into()],
        },
        0,
    );
    assert_eq!(
        metadata,
        Response::Metadata {
            topics: vec![(TOPIC.into(), Some(2)), ("nope".into(), None)]
        }
    );
}

#[test]
fn a_resent_batch_is_acknowledged_with_its_original_offset_and_not_appended() {
    let disk = MemDisk::default();
    let mut core = open(&disk, &config(FlushPolicy::EveryBatch), 0);
    let pid = init_producer(&mut core);
    assert_eq!(produce(&mut core, pid, 0, 0, 0..2), Ok(0));
    assert_eq!(produce(&mut core, pid, 0, 2, 2..4), Ok(2));
    // The ack of the second batch was lost: the producer resends it.
    assert_eq!(produce(&mut core, pid, 0, 2, 2..4), Ok(2));
    assert_eq!(produce(&mut core, pid, 0, 0, 0..2), Ok(0));
    assert_eq!(all_values(&mut core, 0), vec![0, 1, 2, 3]);
    assert_eq!(core.stats().batches_deduplicated, 2);
    assert_eq!(core.stats().records_appended, 4);
    // And the dedup state survives a crash (it is rebuilt from the log).
    disk.crash(0);
    let mut core = open(&disk, &config(FlushPolicy::EveryBatch), 0);
    assert_eq!(produce(&mut core, pid, 0, 2, 2..4), Ok(2));
    assert_eq!(produce(&mut core, pid, 0, 4, 4..5), Ok(4));
    assert_eq!(all_values(&mut core, 0), vec![0, 1, 2, 3, 4]);
}

#[test]
fn gaps_old_sequences_and_unknown_producers_are_rejected() {
    let disk = MemDisk::default();
    let mut core = open(&disk, &config(FlushPolicy::EveryBatch), 0);
    let pid = init_producer(&mut core);
    assert_eq!(
        produce(&mut core, pid, 0, 1, 0..1),
        Err(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(produce(&mut core, pid, 0, 0, 0..2), Ok(0));
    assert_eq!(
        produce(&mut core, pid, 0, 5, 5..6),
        Err(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(
        produce(&mut core, pid, 0, 1, 1..2),
        Err(ErrorCode::DuplicateSequence)
    );
    assert_eq!(
        produce(&mut core, pid + 100, 0, 0, 0..1),
        Err(ErrorCode::UnknownProducerId)
    );
    assert_eq!(watermarks(&mut core, 0), Ok((0, 2)));
    assert_eq!(core.stats().batches_rejected, 4);
}

#[test]
fn every_session_gets_a_new_producer_id_even_after_a_crash() {
    let disk = MemDisk::default();
    let cfg = config(FlushPolicy::EveryBatch);
    let mut core = open(&disk, &cfg, 0);
    let first = init_producer(&mut core);
    let second = init_producer(&mut core);
    assert_ne!(first, second);
    disk.crash(0);
    let mut core = open(&disk, &cfg, 0);
    let third = init_producer(&mut core);
    assert!(third > second, "ids are never reissued: {first} {second} {third}");
    // Two sessions write the same partition independently.
    assert_eq!(produce(&mut core, second, 0, 0, 0..1), Ok(0));
    assert_eq!(produce(&mut core, third, 0, 0, 1..2), Ok(1));
    assert_eq!(core.producer_count(TOPIC, 0), Some(2));
}

#[test]
fn group_offsets_are_committed_durably() {
    let disk = MemDisk::default();
    let cfg = config(FlushPolicy::Never);
    let mut core = open(&disk, &cfg, 0);
    let commit = |core: &mut BrokerCore, offsets: Vec<(i32, i64)>| {
        core.handle(
            Request::OffsetCommit {
                group: "checker".into(),
                topic: TOPIC.into(),
                offsets,
            },
            0,
        )
    };
    let committed = |core: &mut BrokerCore| {
        core.handle(
            Request::OffsetFetch {
                group: "checker".into(),
                topic: TOPIC.into(),
                partitions: vec![0, 1],
            },
            0,
        )
    };
    assert_eq!(
        committed(&mut core),
        Response::OffsetFetch {
            result: Ok(vec![(0, None), (1, None)])
        }
    );
    assert_eq!(
        commit(&mut core, vec![(0, 7)]),
        Response::OffsetCommit { result: Ok(()) }
    );
    assert_eq!(
        commit(&mut core, vec![(0, 9), (1, 3)]),
        Response::OffsetCommit { result: Ok(()) }
    );
    assert_eq!(
        commit(&mut core, vec![(5, 1)]),
        Response::OffsetCommit {
            result: Err(ErrorCode::UnknownTopicOrPartition)
        }
    );
    disk.crash(0);
    let mut core = open(&disk, &cfg, 0);
    assert_eq!(
        committed(&mut core),
        Response::OffsetFetch {
            result: Ok(vec![(0, Some(9)), (1, Some(3))])
        }
    );
}

#[test]
fn the_state_file_is_compacted_and_stays_correct() {
    let disk = MemDisk::default();
    let mut cfg = config(FlushPolicy::EveryBatch);
    cfg.state_log_max_bytes = 512;
    let mut core = open(&disk, &cfg, 0);
    for offset in 0..500 {
        let response = core.handle(
            Request::OffsetCommit {
                group: "g".into(),
                topic: TOPIC.into(),
                offsets: vec![(offset % 2, i64::from(offset))],
            },
            0,
        );
        assert_eq!(response, Response::OffsetCommit { result: Ok(()) });
    }
    let ids: Vec<u64> = (0..50).map(|_| init_producer(&mut core)).collect();
    let state_len = disk
        .open(&cfg.data_dir.join("broker.state"))
        .expect("state")
        .len()
        .expect("len");
    assert!(state_len < 2_048, "compaction keeps the file small: {state_len}");
    disk.crash(0);
    let mut core = open(&disk, &cfg, 0);
    assert!(init_producer(&mut core) > *ids.last().expect("ids"));
    let response = core.handle(
        Request::OffsetFetch {
            group: "g".into(),
            topic: TOPIC.into(),
            partitions: vec![0, 1],
        },
        0,
    );
    assert_eq!(
        response,
        Response::OffsetFetch {
            result: Ok(vec![(0, Some(498)), (1, Some(499))])
        }
    );
}

#[test]
fn everything_acknowledged_survives_a_crash_under_every_batch() {
    let disk = MemDisk::default();
    let mut cfg = config(FlushPolicy::EveryBatch);
    cfg.segment_max_bytes = 256; // many segments
    let mut core = open(&disk, &cfg, 0);
    let pid = init_producer(&mut core);
    for batch in 0..40_u64 {
        assert_eq!(
            produce(&mut core, pid, 0, batch * 2, batch * 2..batch * 2 + 2),
            Ok(batch as i64 * 2)
        );
    }
    let digest_before = core.state_digest();
    assert!(
        disk.file_names(&cfg.data_dir.join("raw-0")).len() > 5,
        "segments were rolled"
    );
    disk.crash(0);
    let mut core = open(&disk, &cfg, 0);
    assert_eq!(all_values(&mut core, 0), (0..80).collect::<Vec<_>>());
    assert_eq!(
        core.state_digest(),
        digest_before,
        "recovery rebuilds the same state"
    );
    assert_eq!(core.stats().records_recovered, 80);
}

#[test]
fn an_unsynced_tail_is_lost_and_a_torn_one_dropped_under_never() {
    for torn_tail_bytes in [0, 5, 30, 1_000_000] {
        let disk = MemDisk::default();
        let cfg = config(FlushPolicy::Never);
        let mut core = open(&disk, &cfg, 0);
        let pid = init_producer(&mut core);
        assert_eq!(produce(&mut core, pid, 0, 0, 0..2), Ok(0));
        assert_eq!(produce(&mut core, pid, 0, 2, 2..4), Ok(2));
        disk.crash(torn_tail_bytes);
        let mut core = open(&disk, &cfg, 0);
        let survived = all_values(&mut core, 0);
        let expected: &[u64] = if torn_tail_bytes >= 1_000_000 {
            &[0, 1, 2, 3]
        } else {
            &[]
        };
        assert_eq!(survived, expected, "tail kept: {torn_tail_bytes}");
        // The log continues consistently after the recovery, and again after
        // another crash.
        let fresh = init_producer(&mut core);
        let base = survived.len() as i64;
        assert_eq!(produce(&mut core, fresh, 0, 0, 10..12), Ok(base));
        core.on_tick(0);
        disk.crash(0);
        let mut core = open(&disk, &cfg, 0);
        let after = all_values(&mut core, 0);
        assert!(
            after.len() as i64 == base || after.len() as i64 == base + 2,
            "{after:?}"
        );
        assert_eq!(&after[..survived.len()], survived.as_slice());
        if torn_tail_bytes >= 1_000_000 {
            // The old session continues where the log ends...
            assert_eq!(produce(&mut core, pid, 0, 4, 4..5), Ok(after.len() as i64));
        } else {
            // ...or, its acknowledged batches lost, hits a gap.
            assert_eq!(
                produce(&mut core, pid, 0, 4, 4..5),
                Err(ErrorCode::OutOfOrderSequence)
            );
        }
    }
}

#[test]
fn interval_flush_syncs_after_the_interval() {
    let disk = MemDisk::default();
    let cfg = config(FlushPolicy::IntervalMs(100));
    let mut core = open(&disk, &cfg, 0);
    let pid = init_producer(&mut core);
    assert_eq!(produce(&mut core, pid, 0, 0, 0..2), Ok(0));
    core.on_tick(50);
    assert_eq!(produce(&mut core, pid, 0, 2, 2..3), Ok(2));
    core.on_tick(120);
    assert_eq!(produce(&mut core, pid, 0, 3, 3..4), Ok(3));
    core.on_tick(150);
    disk.crash(0);
    let mut core = open(&disk, &cfg, 200);
    assert_eq!(
        all_values(&mut core, 0),
        vec![0, 1, 2],
        "synced at 120, the record at 3 was not"
    );
}

#[test]
fn storage_errors_take_a_partition_offline_until_it_recovers() {
    let disk = MemDisk::default();
    let cfg = config(FlushPolicy::EveryBatch);
    let mut core = open(&disk, &cfg, 0);
    let pid = init_producer(&mut core);
    assert_eq!(produce(&mut core, pid, 0, 0, 0..1), Ok(0));
    // The write lands but its sync fails: no acknowledgement.
    disk.set_failures(false, true);
    assert_eq!(produce(&mut core, pid, 0, 1, 1..2), Err(ErrorCode::StorageError));
    assert_eq!(core.offline_partitions(), vec![(TOPIC.to_string(), 0)]);
    assert_eq!(
        watermarks(&mut core, 0),
        Err(ErrorCode::StorageError),
        "retried only after storage_retry_ms"
    );
    disk.set_failures(false, false);
    let retry_ms = cfg.storage_retry_ms;
    let resend = core.handle(
        Request::Produce(ProduceRequest {
            producer_id: pid,
            producer_epoch: 0,
            batches: vec![ProduceBatch {
                topic: TOPIC.into(),
                partition: 0,
                base_sequence: 1,
                records: vec![record(1)],
            }],
        }),
        retry_ms,
    );
    // Reopened from disk: the unacknowledged batch was written, so the resend
    // is a duplicate and keeps its offset.
    let Response::Produce { results } = resend else {
        panic!("unexpected {resend:?}")
    };
    assert_eq!(results[0].result, Ok(1));
    assert_eq!(core.stats().batches_deduplicated, 1);
    assert!(core.offline_partitions().is_empty());
    // What the reopen read was synced: a crash now keeps it.
    disk.crash(0);
    let mut core = open(&disk, &cfg, 0);
    assert_eq!(all_values(&mut core, 0), vec![0, 1]);
}

#[test]
fn a_failed_producer_id_write_is_not_acknowledged() {
    let disk = MemDisk::default();
    let cfg = config(FlushPolicy::EveryBatch);
    let mut core = open(&disk, &cfg, 0);
    let first = init_producer(&mut core);
    disk.set_failures(true, false);
    assert_eq!(
        core.handle(Request::InitProducerId, 0),
        Response::Error(ErrorCode::StorageError)
    );
    assert!(core.state_offline());
    disk.set_failures(false, false);
    let Response::InitProducerId { producer_id, .. } =
        core.handle(Request::InitProducerId, cfg.storage_retry_ms)
    else {
        panic!("expected a producer id")
    };
    assert!(producer_id > first);
}

#[test]
fn invalid_batches_are_refused() {
    let disk = MemDisk::default();
    let mut cfg = config(FlushPolicy::EveryBatch);
    cfg.max_batch_records = 3;
    let mut core = open(&disk, &cfg, 0);
    let pid = init_producer(&mut core);
    assert_eq!(
        produce(&mut core, pid, 0, 0, 0..0),
        Err(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        produce(&mut core, pid, 0, 0, 0..4),
        Err(ErrorCode::InvalidRequest)
    );
    let twice = core.handle(
        Request::Produce(ProduceRequest {
            producer_id: pid,
            producer_epoch: 0,
            batches: vec![
                ProduceBatch {
                    topic: TOPIC.into(),
                    partition: 1,
                    base_sequence: 0,
                    records: vec![record(0)],
                },
                ProduceBatch {
                    topic: TOPIC.into(),
                    partition: 1,
                    base_sequence: 1,
                    records: vec![record(1)],
                },
            ],
        }),
        0,
    );
    let Response::Produce { results } = twice else {
        panic!("unexpected {twice:?}")
    };
    assert_eq!(results[0].result, Ok(0));
    assert_eq!(
        results[1].result,
        Err(ErrorCode::InvalidRequest),
        "one batch per partition per request"
    );
}

#[test]
fn a_fetch_budget_is_shared_across_partitions() {
    let disk = MemDisk::default();
    let mut core = open(&disk, &config(FlushPolicy::EveryBatch), 0);
    let pid = init_producer(&mut core);
    produce(&mut core, pid, 0, 0, 0..5).expect("produce");
    produce(&mut core, pid, 1, 0, 5..10).expect("produce");
    let response = core.handle(
        Request::Fetch(FetchRequest {
            partitions: vec![(TOPIC.into(), 1, 0), (TOPIC.into(), 0, 0)],
            max_wait_ms: 0,
            max_records: 7,
            max_bytes: 1 << 20,
        }),
        0,
    );
    let Response::Fetch { results } = response else {
        panic!("unexpected {response:?}")
    };
    let counts: Vec<usize> = results
        .iter()
        .map(|r| r.result.as_ref().expect("ok").records.len())
        .collect();
    assert_eq!(counts, vec![5, 2]);
}

// Consumer groups.

const GROUP: &str = "processors";
const GROUP_PARTITIONS: u32 = 5;
const SESSION_MS: u64 = 1_000;
const REBALANCE_MS: u64 = 5_000;

fn group_config() -> BrokerConfig {
    let mut config = BrokerConfig::new(vec![TopicConfig {
        name: TOPIC.into(),
        partitions: GROUP_PARTITIONS,
    }]);
    config.flush = FlushPolicy::EveryBatch;
    config
}

fn join_with(
    core: &mut BrokerCore,
    member: Option<&str>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    now_ms: u64,
) -> Result<JoinOutcome, ErrorCode> {
    let request = Request::JoinGroup {
        group: GROUP.into(),
        topic: TOPIC.into(),
        member_id: member.map(str::to_string),
        session_timeout_ms,
        rebalance_timeout_ms,
    };
    match core.handle(request, now_ms) {
        Response::JoinGroup { result } => result,
        other => panic!("unexpected {other:?}"),
    }
}

fn join(core: &mut BrokerCore, member: Option<&str>, now_ms: u64) -> Result<JoinOutcome, ErrorCode> {
    join_with(core, member, SESSION_MS, REBALANCE_MS, now_ms)
}

/// A new member's id (its first JoinGroup is always pending).
fn new_member(core: &mut BrokerCore, now_ms: u64) -> String {
    match join(core, None, now_ms) {
        Ok(JoinOutcome::Pending { member_id }) => member_id,
        other => panic!("unexpected {other:?}"),
    }
}

fn expect_pending(outcome: Result<JoinOutcome, ErrorCode>, member: &str) {
    assert_eq!(
        outcome,
        Ok(JoinOutcome::Pending {
            member_id: member.to_string()
        })
    );
}

/// (generation, partitions) of a Joined outcome.
fn expect_joined(outcome: Result<JoinOutcome, ErrorCode>, member: &str) -> (u64, Vec<i32>) {
    match outcome {
        Ok(JoinOutcome::Joined {
            member_id,
            generation,
            partitions,
        }) => {
            assert_eq!(member_id, member);
            (generation, partitions)
        }
        other => panic!("expected {member} to be joined, got {other:?}"),
    }
}

fn heartbeat(core: &mut BrokerCore, member: &str, generation: u64, now_ms: u64) -> Result<(), ErrorCode> {
    let request = Request::Heartbeat {
        group: GROUP.into(),
        member_id: member.into(),
        generation,
    };
    match core.handle(request, now_ms) {
        Response::Heartbeat { result } => result,
        other => panic!("unexpected {other:?}"),
    }
}

fn leave(core: &mut BrokerCore, member: &str, now_ms: u64) -> Result<(), ErrorCode> {
    let request = Request::LeaveGroup {
        group: GROUP.into(),
        member_id: member.into(),
    };
    match core.handle(request, now_ms) {
        Response::LeaveGroup { result } => result,
        other => panic!("unexpected {other:?}"),
    }
}

fn group_commit(
    core: &mut BrokerCore,
    member: &str,
    generation: u64,
    offsets: Vec<(i32, i64)>,
    now_ms: u64,
) -> Result<(), ErrorCode> {
    let request = Request::GroupOffsetCommit {
        group: GROUP.into(),
        member_id: member.into(),
        generation,
        topic: TOPIC.into(),
        offsets,
    };
    match core.handle(request, now_ms) {
        Response::OffsetCommit { result } => result,
        other => panic!("unexpected {other:?}"),
    }
}

fn group_committed(core: &mut BrokerCore, now_ms: u64) -> Vec<(i32, Option<i64>)> {
    let request = Request::OffsetFetch {
        group: GROUP.into(),
        topic: TOPIC.into(),
        partitions: (0..GROUP_PARTITIONS as i32).collect(),
    };
    match core.handle(request, now_ms) {
        Response::OffsetFetch { result } => result.expect("offsets"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Asserts the blocks are disjoint and cover every partition.
fn assert_partitions_covered(blocks: &[&[i32]]) {
    let mut all: Vec<i32> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..GROUP_PARTITIONS as i32).collect::<Vec<_>>(),
        "disjoint and complete: {blocks:?}"
    );
}

/// Two members in generation 1: (core, a, b, a's partitions, b's).
fn stable_pair(disk: &MemDisk) -> (BrokerCore, String, String, Vec<i32>, Vec<i32>) {
    let mut core = open(disk, &group_config(), 0);
    let a = new_member(&mut core, 0);
    let b = new_member(&mut core, 0);
    expect_pending(join(&mut core, Some(&a), 10), &a);
    let (generation, b_partitions) = expect_joined(join(&mut core, Some(&b), 20), &b);
    assert_eq!(generation, 1);
    let (generation, a_partitions) = expect_joined(join(&mut core, Some(&a), 30), &a);
    assert_eq!(generation, 1);
    (core, a, b, a_partitions, b_partitions)
}

#[test]
fn two_members_join_in_one_rebalance_and_share_every_partition() {
    let disk = MemDisk::default();
    let (mut core, a, b, a_partitions, b_partitions) = stable_pair(&disk);
    assert_ne!(a, b);
    assert!(a < b, "ids ascend: {a} {b}");
    assert_eq!(
        a_partitions,
        vec![0, 1, 2],
        "the earlier member gets the extra one"
    );
    assert_eq!(b_partitions, vec![3, 4]);
    assert_partitions_covered(&[&a_partitions, &b_partitions]);
    let stats = core.group_stats();
    assert_eq!(stats.members_joined, 2);
    assert_eq!(stats.rebalances_started, 1);
    assert_eq!(stats.rebalances_completed, 1);
    assert_eq!(heartbeat(&mut core, &a, 1, 40), Ok(()));
    assert_eq!(heartbeat(&mut core, &b, 1, 40), Ok(()));
    let view = core.group(GROUP).expect("group");
    assert_eq!(view.generation, 1);
    assert!(!view.rebalancing);
    assert_eq!(view.members, vec![a.clone(), b.clone()]);
    assert_eq!(view.assignment, vec![(a, a_partitions), (b, b_partitions)]);
}

#[test]
fn a_third_member_revokes_the_old_generation_which_may_commit_until_the_new_one() {
    let disk = MemDisk::default();
    let (mut core, a, b, a_partitions, _) = stable_pair(&disk);
    let c = new_member(&mut core, 100);
    assert_eq!(
        heartbeat(&mut core, &a, 1, 110),
        Err(ErrorCode::RebalanceInProgress)
    );
    // Revoked, still owned: the old generation commits during the rebalance.
    assert_eq!(
        group_commit(&mut core, &a, 1, vec![(a_partitions[0], 7)], 120),
        Ok(())
    );
    assert_eq!(
        heartbeat(&mut core, &b, 1, 125),
        Err(ErrorCode::RebalanceInProgress)
    );
    expect_pending(join(&mut core, Some(&a), 130), &a);
    expect_pending(join(&mut core, Some(&b), 140), &b);
    assert_eq!(
        core.group(GROUP).expect("group").generation,
        1,
        "the generation moves only at completion"
    );
    let (generation, c_partitions) = expect_joined(join(&mut core, Some(&c), 150), &c);
    assert_eq!(generation, 2);
    let (_, a_partitions_2) = expect_joined(join(&mut core, Some(&a), 160), &a);
    let (_, b_partitions_2) = expect_joined(join(&mut core, Some(&b), 160), &b);
    assert_eq!(a_partitions_2, vec![0, 1]);
    assert_eq!(b_partitions_2, vec![2, 3]);
    assert_eq!(c_partitions, vec![4]);
    assert_partitions_covered(&[&a_partitions_2, &b_partitions_2, &c_partitions]);
    // The old generation is over.
    assert_eq!(
        group_commit(&mut core, &a, 1, vec![(0, 9)], 170),
        Err(ErrorCode::IllegalGeneration)
    );
    assert_eq!(
        heartbeat(&mut core, &a, 1, 170),
        Err(ErrorCode::IllegalGeneration)
    );
    assert_eq!(core.group_stats().commits_fenced, 1);
    assert_eq!(group_commit(&mut core, &a, 2, vec![(1, 3)], 180), Ok(()));
    let committed = group_committed(&mut core, 190);
    assert_eq!(committed[0], (0, Some(7)), "the fenced commit stored nothing");
    assert_eq!(committed[1], (1, Some(3)));
    let stats = core.group_stats();
    assert_eq!(stats.rebalances_completed, 2);
    assert_eq!(stats.rebalances_started, 2);
}

#[test]
fn a_member_that_stops_heartbeating_expires_and_the_others_rebalance() {
    let disk = MemDisk::default();
    let (mut core, a, b, _, b_partitions) = stable_pair(&disk);
    // b was last seen at 20; a keeps heartbeating.
    assert_eq!(heartbeat(&mut core, &a, 1, 500), Ok(()));
    core.on_tick(1_000);
    assert_eq!(core.group(GROUP).expect("group").members.len(), 2, "not yet");
    assert_eq!(heartbeat(&mut core, &a, 1, 1_000), Ok(()));
    core.on_tick(1_021);
    let view = core.group(GROUP).expect("group");
    assert_eq!(view.members, vec![a.clone()], "b expired");
    assert!(view.rebalancing);
    assert_eq!(core.group_stats().members_expired, 1);
    assert_eq!(
        heartbeat(&mut core, &a, 1, 1_100),
        Err(ErrorCode::RebalanceInProgress)
    );
    let (generation, partitions) = expect_joined(join(&mut core, Some(&a), 1_110), &a);
    assert_eq!(generation, 2);
    assert_eq!(partitions, (0..GROUP_PARTITIONS as i32).collect::<Vec<_>>());
    // The expired member is fenced and must join afresh.
    assert_eq!(
        group_commit(&mut core, &b, 1, vec![(b_partitions[0], 1)], 1_120),
        Err(ErrorCode::UnknownMemberId)
    );
    assert_eq!(
        heartbeat(&mut core, &b, 1, 1_120),
        Err(ErrorCode::UnknownMemberId)
    );
    assert_eq!(join(&mut core, Some(&b), 1_120), Err(ErrorCode::UnknownMemberId));
}

#[test]
fn a_session_expiry_is_also_noticed_by_a_request_without_a_tick() {
    let disk = MemDisk::default();
    let (mut core, a, _b, _, _) = stable_pair(&disk);
    assert_eq!(heartbeat(&mut core, &a, 1, 900), Ok(()));
    assert_eq!(
        heartbeat(&mut core, &a, 1, 1_100),
        Err(ErrorCode::RebalanceInProgress)
    );
    assert_eq!(core.group_stats().members_expired, 1);
    // Everyone gone: the group is dropped.
    core.on_tick(5_000);
    assert!(core.groups().is_empty());
}

#[test]
fn a_leave_starts_a_rebalance_at_once() {
    let disk = MemDisk::default();
    let (mut core, a, b, _, _) = stable_pair(&disk);
    assert_eq!(leave(&mut core, &b, 100), Ok(()));
    let view = core.group(GROUP).expect("group");
    assert!(view.rebalancing);
    assert_eq!(view.members, vec![a.clone()]);
    assert_eq!(
        heartbeat(&mut core, &a, 1, 110),
        Err(ErrorCode::RebalanceInProgress)
    );
    let (generation, partitions) = expect_joined(join(&mut core, Some(&a), 120), &a);
    assert_eq!(generation, 2);
    assert_eq!(partitions.len(), GROUP_PARTITIONS as usize);
    assert_eq!(leave(&mut core, &b, 130), Err(ErrorCode::UnknownMemberId));
    assert_eq!(core.group_stats().members_left, 1);
    assert_eq!(leave(&mut core, &a, 140), Ok(()));
    assert!(core.group(GROUP).is_none(), "the last member left");
}

#[test]
fn a_member_that_never_rejoins_is_dropped_at_the_rebalance_deadline() {
    let disk = MemDisk::default();
    let mut core = open(&disk, &group_config(), 0);
    let long_session_ms = 10_000;
    let rebalance_ms = 2_000;
    let joined = |core: &mut BrokerCore, member: &str, now_ms| {
        join_with(core, Some(member), long_session_ms, rebalance_ms, now_ms)
    };
    let a = match join_with(&mut core, None, long_session_ms, rebalance_ms, 0) {
        Ok(JoinOutcome::Pending { member_id }) => member_id,
        other => panic!("unexpected {other:?}"),
    };
    let b = match join_with(&mut core, None, long_session_ms, rebalance_ms, 0) {
        Ok(JoinOutcome::Pending { member_id }) => member_id,
        other => panic!("unexpected {other:?}"),
    };
    expect_pending(joined(&mut core, &a, 10), &a);
    expect_joined(joined(&mut core, &b, 10), &b);
    expect_joined(joined(&mut core, &a, 10), &a);
    let c = match join_with(&mut core, None, long_session_ms, rebalance_ms, 100) {
        Ok(JoinOutcome::Pending { member_id }) => member_id,
        other => panic!("unexpected {other:?}"),
    };
    expect_pending(joined(&mut core, &a, 200), &a);
    expect_pending(joined(&mut core, &c, 300), &c);
    // b keeps its session alive with heartbeats but never re-joins.
    assert_eq!(
        heartbeat(&mut core, &b, 1, 1_000),
        Err(ErrorCode::RebalanceInProgress)
    );
    expect_pending(joined(&mut core, &a, 1_500), &a);
    core.on_tick(2_099);
    assert!(core.group(GROUP).expect("group").rebalancing, "deadline at 2100");
    core.on_tick(2_100);
    let view = core.group(GROUP).expect("group");
    assert!(!view.rebalancing);
    assert_eq!(view.generation, 2);
    assert_eq!(view.members, vec![a.clone(), c.clone()]);
    assert_eq!(core.group_stats().members_dropped_at_deadline, 1);
    assert_eq!(core.group_stats().members_expired, 0);
    assert_eq!(
        heartbeat(&mut core, &b, 1, 2_200),
        Err(ErrorCode::UnknownMemberId)
    );
    let (generation, a_partitions) = expect_joined(joined(&mut core, &a, 2_200), &a);
    let (_, c_partitions) = expect_joined(joined(&mut core, &c, 2_200), &c);
    assert_eq!(generation, 2);
    assert_partitions_covered(&[&a_partitions, &c_partitions]);
}

#[test]
fn member_ids_are_unique_across_a_broker_restart_and_offsets_stay() {
    let disk = MemDisk::default();
    let (mut core, a, b, a_partitions, _) = stable_pair(&disk);
    assert_eq!(
        group_commit(&mut core, &a, 1, vec![(a_partitions[0], 11)], 40),
        Ok(())
    );
    let producer_id = init_producer(&mut core);
    disk.crash(0);
    let mut core = open(&disk, &group_config(), 100);
    assert!(core.groups().is_empty(), "membership is in memory only");
    assert_eq!(heartbeat(&mut core, &a, 1, 110), Err(ErrorCode::UnknownMemberId));
    assert_eq!(join(&mut core, Some(&b), 110), Err(ErrorCode::UnknownMemberId));
    assert_eq!(
        group_commit(&mut core, &a, 1, vec![(0, 12)], 110),
        Err(ErrorCode::UnknownMemberId)
    );
    let c = new_member(&mut core, 120);
    let number = |id: &str| -> u64 { id.trim_start_matches("member-").parse().expect("number") };
    assert!(number(&c) > producer_id, "{c} after producer {producer_id}");
    assert!(number(&c) > number(&a) && number(&c) > number(&b));
    assert!(init_producer(&mut core) > number(&c), "the counter is shared");
    assert_eq!(
        group_committed(&mut core, 130)[0],
        (0, Some(11)),
        "offsets are durable"
    );
}

#[test]
fn a_known_member_rejoining_while_stable_gets_its_generation_unless_its_view_changed() {
    let disk = MemDisk::default();
    let (mut core, a, b, a_partitions, _) = stable_pair(&disk);
    // The same view (a lost answer): the same generation, no rebalance.
    assert_eq!(
        expect_joined(join(&mut core, Some(&a), 40), &a),
        (1, a_partitions)
    );
    assert_eq!(core.group_stats().rebalances_started, 1);
    // Other timeouts: a rebalance.
    expect_pending(
        join_with(&mut core, Some(&a), SESSION_MS * 2, REBALANCE_MS, 50),
        &a,
    );
    assert_eq!(
        heartbeat(&mut core, &b, 1, 60),
        Err(ErrorCode::RebalanceInProgress)
    );
    let (generation, _) = expect_joined(join(&mut core, Some(&b), 70), &b);
    assert_eq!(generation, 2);
    // Plain commits without membership keep working.
    let plain = core.handle(
        Request::OffsetCommit {
            group: GROUP.into(),
            topic: TOPIC.into(),
            offsets: vec![(4, 2)],
        },
        80,
    );
    assert_eq!(plain, Response::OffsetCommit { result: Ok(()) });
    assert_eq!(group_committed(&mut core, 80)[4], (4, Some(2)));
}

#[test]
fn group_requests_are_validated_and_bounded() {
    let disk = MemDisk::default();
    let mut cfg = group_config();
    cfg.max_members_per_group = 2;
    cfg.max_groups = 1;
    let mut core = open(&disk, &cfg, 0);
    let a = new_member(&mut core, 0);
    new_member(&mut core, 0);
    assert_eq!(
        join(&mut core, None, 0),
        Err(ErrorCode::InvalidRequest),
        "group full"
    );
    let other_group = core.handle(
        Request::JoinGroup {
            group: "other".into(),
            topic: TOPIC.into(),
            member_id: None,
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
        },
        0,
    );
    assert_eq!(
        other_group,
        Response::JoinGroup {
            result: Err(ErrorCode::InvalidRequest)
        },
        "too many groups"
    );
    let unknown_topic = core.handle(
        Request::JoinGroup {
            group: GROUP.into(),
            topic: "nope".into(),
            member_id: Some(a.clone()),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
        },
        0,
    );
    assert_eq!(
        unknown_topic,
        Response::JoinGroup {
            result: Err(ErrorCode::UnknownTopicOrPartition)
        }
    );
    assert_eq!(
        join_with(&mut core, Some(&a), 1, REBALANCE_MS, 0),
        Err(ErrorCode::InvalidRequest),
        "session timeout below the minimum"
    );
    assert_eq!(
        join_with(&mut core, Some(&a), SESSION_MS, 0, 0),
        Err(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        join(&mut core, Some(&"x".repeat(MAX_MEMBER_ID_BYTES + 1)), 0),
        Err(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        join(&mut core, Some("member-999"), 0),
        Err(ErrorCode::UnknownMemberId)
    );
    let long_group = core.handle(
        Request::Heartbeat {
            group: "g".repeat(crate::broker::MAX_GROUP_ID_BYTES + 1),
            member_id: a.clone(),
            generation: 0,
        },
        0,
    );
    assert_eq!(
        long_group,
        Response::Heartbeat {
            result: Err(ErrorCode::InvalidRequest)
        }
    );
    // A new member whose id cannot be made durable is not admitted.
    let mut core = open(&disk, &group_config(), 0);
    disk.set_failures(true, false);
    assert_eq!(join(&mut core, None, 0), Err(ErrorCode::StorageError));
    assert!(core.groups().is_empty());
    disk.set_failures(false, false);
    let retry_ms = group_config().storage_retry_ms;
    assert!(matches!(
        join(&mut core, None, retry_ms),
        Ok(JoinOutcome::Pending { .. })
    ));
}

#[test]
fn the_group_state_is_part_of_the_digest_deterministically() {
    let run = || {
        let disk = MemDisk::default();
        let (mut core, a, _, _, _) = stable_pair(&disk);
        let empty_digest = open(&MemDisk::default(), &group_config(), 0).state_digest();
        let before = core.state_digest();
        assert_eq!(heartbeat(&mut core, &a, 1, 40), Ok(()));
        assert_ne!(core.state_digest(), before, "last seen times count");
        (before, core.state_digest(), empty_digest)
    };
    let first = run();
    assert_eq!(first, run());
    assert_ne!(first.0, first.2);
}
