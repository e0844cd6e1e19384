//! Unit tests of the broker core, over an in-memory disk that models what a
//! crash keeps (synced bytes and synced directory entries) without turmoil.

use super::*;
use crate::broker::TopicConfig;
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
