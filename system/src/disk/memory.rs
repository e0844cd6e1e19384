//! [`CrashDisk`]: an in-memory [`Disk`] that simulates power loss, for
//! property tests and the simulator.
//!
//! The disk keeps two images of everything: what a running process sees
//! (the page cache) and what would survive a power cut (the platter). The
//! crash model, applied by [`CrashDisk::crash`]:
//!
//! - bytes appended to a file survive only if a later [`DiskFile::sync_data`]
//!   succeeded; otherwise each pending write independently keeps a random
//!   prefix of whole blocks (`block_size_bytes`, aligned to file offsets), so
//!   a later write may survive while an earlier one is lost, and the gaps
//!   read back as zeros;
//! - a directory entry created, renamed or removed since the last
//!   [`Disk::sync_dir`] of its parent reverts: a new file vanishes, a removed
//!   file comes back with its durable contents;
//! - a truncation ([`Disk::create_truncate`]) not followed by a sync either
//!   never happened (the old durable contents survive whole) or happened and
//!   the pending writes after it are torn as above;
//! - a failed `sync_data` (injected EIO) behaves like Linux after fsyncgate:
//!   the writes it covered are never made durable by a later successful sync;
//!   they are torn at the next sync or crash.
//!
//! Directories are created durably and never lost. Faults besides the crash:
//! a capacity past which appends fail with `StorageFull` (ENOSPC) after
//! writing what fits, injectable EIO per operation (the next N calls, or a
//! rate in parts per million), transient read corruption (a bit flipped in
//! the returned buffer, not in storage) and persistent bit flips in stored
//! bytes. Every random choice comes from one `ChaCha8Rng` seeded by the
//! caller, so a seed replays the same run byte for byte.
//!
//! `CrashDisk` is a cheap handle (`Clone`): give one clone to the code under
//! test (as `Rc<dyn Disk>`) and keep another to inject faults and crash.
//! Files opened before a crash are dead afterwards: every operation on them
//! fails, as a process that lost power can do nothing more.

use super::{Disk, DiskFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Default torn-write granularity, in bytes (a disk sector).
pub const DEFAULT_BLOCK_SIZE_BYTES: u64 = 512;

/// Largest accepted torn-write granularity, in bytes.
pub const BLOCK_SIZE_MAX_BYTES: u64 = 1 << 20;

/// Rates are expressed in parts per million.
pub const PPM: u32 = 1_000_000;

/// A disk operation that can be made to fail with an injected EIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultOp {
    /// [`DiskFile::append`] (nothing is written).
    Append,
    /// [`DiskFile::sync_data`] (the covered writes are doomed, see the module docs).
    SyncData,
    /// [`Disk::sync_dir`] (no entry becomes durable).
    SyncDir,
    /// [`DiskFile::read_at`].
    Read,
    /// [`Disk::open`].
    Open,
    /// [`Disk::create_new`] and [`Disk::create_truncate`].
    Create,
    /// [`Disk::rename`].
    Rename,
    /// [`Disk::remove`].
    Remove,
    /// [`Disk::list`].
    List,
}

const FAULT_OPS: usize = 9;

impl FaultOp {
    fn slot(self) -> usize {
        match self {
            FaultOp::Append => 0,
            FaultOp::SyncData => 1,
            FaultOp::SyncDir => 2,
            FaultOp::Read => 3,
            FaultOp::Open => 4,
            FaultOp::Create => 5,
            FaultOp::Rename => 6,
            FaultOp::Remove => 7,
            FaultOp::List => 8,
        }
    }
}

/// One bit flipped in stored bytes by [`CrashDisk::flip_random_bits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitFlip {
    /// File whose bytes changed.
    pub path: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bit number within the byte (0 = least significant).
    pub bit: u8,
}

/// What one [`CrashDisk::crash`] destroyed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashOutcome {
    /// Files whose directory entry was not durable and vanished.
    pub entries_lost: Vec<PathBuf>,
    /// Files removed or renamed away without `sync_dir` that came back.
    pub entries_restored: Vec<PathBuf>,
    /// Unsynced writes that lost at least one byte.
    pub writes_torn: u64,
    /// Unsynced bytes that did not survive.
    pub bytes_lost: u64,
}

/// Counters of what the disk has done, for tests and traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashDiskCounters {
    /// Successful `append` calls.
    pub appends: u64,
    /// Successful `sync_data` calls.
    pub syncs: u64,
    /// Successful `sync_dir` calls.
    pub dir_syncs: u64,
    /// Errors injected (EIO), all operations together.
    pub injected_errors: u64,
    /// Appends refused for lack of space.
    pub no_space_errors: u64,
    /// Reads whose returned buffer was corrupted.
    pub read_corruptions: u64,
    /// Crashes applied.
    pub crashes: u64,
}

/// One write not yet made durable.
#[derive(Debug, Clone)]
struct PendingWrite {
    offset: u64,
    len: u64,
    /// A sync covering this write failed: no later sync can make it durable.
    doomed: bool,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What a running process reads.
    data: Vec<u8>,
    /// What the last successful sync made durable.
    durable: Vec<u8>,
    /// Writes since the last successful sync, oldest first.
    pending: Vec<PendingWrite>,
    /// The file was truncated since the last successful sync.
    truncated_unsynced: bool,
}

#[derive(Debug)]
struct State {
    rng: ChaCha8Rng,
    /// Incremented at every crash; handles from an older boot are dead.
    boot: u64,
    block_size_bytes: u64,
    capacity_bytes: Option<u64>,
    dirs: BTreeSet<PathBuf>,
    /// Directory entries a running process sees.
    entries: BTreeMap<PathBuf, u64>,
    /// Directory entries that survive a crash.
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
    /// Open handles per inode (an unlinked open file stays readable).
    handles: BTreeMap<u64, u32>,
    next_inode: u64,
    fail_next: [u32; FAULT_OPS],
    fail_rate_ppm: [u32; FAULT_OPS],
    read_corruption_ppm: u32,
    counters: CrashDiskCounters,
}

/// An in-memory disk that loses what a power cut would lose. See the module
/// documentation for the crash model.
#[derive(Debug, Clone)]
pub struct CrashDisk {
    state: Rc<RefCell<State>>,
}

fn injected_eio(op: FaultOp) -> io::Error {
    io::Error::other(format!("injected I/O error (EIO) on {op:?}"))
}

fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (simulated ENOSPC)",
    )
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn stale_handle() -> io::Error {
    io::Error::other("stale file handle: the disk crashed since this file was opened")
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("in-memory offsets fit usize")
}

/// Copies `source[start..end]` into `target` at `start`, zero-filling any
/// gap between the end of `target` and `start`.
fn copy_range(target: &mut Vec<u8>, source: &[u8], start: u64, end: u64) {
    assert!(start <= end, "copy range is ordered");
    assert!(to_usize(end) <= source.len(), "copy range lies within the source");
    let (start, end) = (to_usize(start), to_usize(end));
    if target.len() < end {
        target.resize(end, 0);
    }
    target[start..end].copy_from_slice(&source[start..end]);
}

impl State {
    fn inject(&mut self, op: FaultOp) -> io::Result<()> {
        let slot = op.slot();
        if self.fail_next[slot] > 0 {
            self.fail_next[slot] -= 1;
            self.counters.injected_errors += 1;
            return Err(injected_eio(op));
        }
        let rate = self.fail_rate_ppm[slot];
        if rate > 0 && self.rng.random_range(0..PPM) < rate {
            self.counters.injected_errors += 1;
            return Err(injected_eio(op));
        }
        Ok(())
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            Ok(())
        } else {
            Err(not_found(parent))
        }
    }

    fn used_bytes(&self) -> u64 {
        let live: BTreeSet<u64> = self
            .entries
            .values()
            .copied()
            .chain(self.handles.keys().copied())
            .collect();
        live.iter()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|inode| inode.data.len() as u64)
            .sum()
    }

    fn new_inode(&mut self) -> u64 {
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    /// Drops inodes no name (current or durable) and no handle refers to.
    fn collect_garbage(&mut self) {
        let referenced: BTreeSet<u64> = self
            .entries
            .values()
            .chain(self.durable_entries.values())
            .copied()
            .chain(self.handles.keys().copied())
            .collect();
        self.inodes.retain(|ino, _| referenced.contains(ino));
    }

    /// How far a torn write of `[offset, offset + len)` got: the end of a
    /// random prefix of whole blocks (possibly empty, possibly all of it).
    fn torn_end(&mut self, offset: u64, len: u64) -> u64 {
        let end = offset + len;
        let block = self.block_size_bytes;
        let first_boundary = (offset / block + 1) * block;
        let inner_boundaries = if first_boundary >= end {
            0
        } else {
            (end - 1 - first_boundary) / block + 1
        };
        // 0: nothing; 1..=inner_boundaries: up to a block boundary; last: all.
        let choice = self.rng.random_range(0..=inner_boundaries + 1);
        let cut = if choice == 0 {
            offset
        } else if choice > inner_boundaries {
            end
        } else {
            first_boundary + (choice - 1) * block
        };
        assert!(offset <= cut && cut <= end, "a torn write keeps a prefix");
        cut
    }

    /// What survives of `inode` if power is cut now.
    fn surviving_image(&mut self, ino: u64, outcome: &mut CrashOutcome) -> Vec<u8> {
        let inode = self
            .inodes
            .get(&ino)
            .expect("durable entries name live inodes")
            .clone();
        if inode.truncated_unsynced && self.rng.random_bool(0.5) {
            // The truncation never reached the disk: the old contents stay.
            for write in &inode.pending {
                outcome.bytes_lost += write.len;
                outcome.writes_torn += 1;
            }
            return inode.durable;
        }
        let mut image = if inode.truncated_unsynced {
            Vec::new()
        } else {
            inode.durable.clone()
        };
        for write in &inode.pending {
            let cut = self.torn_end(write.offset, write.len);
            if cut > write.offset {
                copy_range(&mut image, &inode.data, write.offset, cut);
            }
            let lost = write.offset + write.len - cut;
            if lost > 0 {
                outcome.bytes_lost += lost;
                outcome.writes_torn += 1;
            }
        }
        image
    }

    fn sync_inode(&mut self, ino: u64) {
        let inode = self.inodes.get(&ino).expect("handles name live inodes").clone();
        let mut image = if inode.truncated_unsynced {
            Vec::new()
        } else {
            inode.durable.clone()
        };
        for write in &inode.pending {
            let cut = if write.doomed {
                self.torn_end(write.offset, write.len)
            } else {
                write.offset + write.len
            };
            if cut > write.offset {
                copy_range(&mut image, &inode.data, write.offset, cut);
            }
        }
        let inode = self.inodes.get_mut(&ino).expect("handles name live inodes");
        inode.durable = image;
        inode.pending.clear();
        inode.truncated_unsynced = false;
    }

    fn crash(&mut self) -> CrashOutcome {
        let mut outcome = CrashOutcome::default();
        for (path, ino) in &self.entries {
            if self.durable_entries.get(path) != Some(ino) {
                outcome.entries_lost.push(path.clone());
            }
        }
        for path in self.durable_entries.keys() {
            if !self.entries.contains_key(path) {
                outcome.entries_restored.push(path.clone());
            }
        }
        let durable_inodes: BTreeSet<u64> = self.durable_entries.values().copied().collect();
        let mut survivors = BTreeMap::new();
        for ino in durable_inodes {
            let image = self.surviving_image(ino, &mut outcome);
            survivors.insert(
                ino,
                Inode {
                    data: image.clone(),
                    durable: image,
                    pending: Vec::new(),
                    truncated_unsynced: false,
                },
            );
        }
        self.inodes = survivors;
        self.entries = self.durable_entries.clone();
        self.handles.clear();
        self.boot += 1;
        self.counters.crashes += 1;
        outcome
    }
}

impl CrashDisk {
    /// An empty disk whose random choices all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                boot: 0,
                block_size_bytes: DEFAULT_BLOCK_SIZE_BYTES,
                capacity_bytes: None,
                dirs: BTreeSet::new(),
                entries: BTreeMap::new(),
                durable_entries: BTreeMap::new(),
                inodes: BTreeMap::new(),
                handles: BTreeMap::new(),
                next_inode: 1,
                fail_next: [0; FAULT_OPS],
                fail_rate_ppm: [0; FAULT_OPS],
                read_corruption_ppm: 0,
                counters: CrashDiskCounters::default(),
            })),
        }
    }

    /// Sets the torn-write granularity (1 ..= [`BLOCK_SIZE_MAX_BYTES`]).
    pub fn set_block_size_bytes(&self, block_size_bytes: u64) {
        assert!(
            (1..=BLOCK_SIZE_MAX_BYTES).contains(&block_size_bytes),
            "block size {block_size_bytes} out of range"
        );
        self.state.borrow_mut().block_size_bytes = block_size_bytes;
    }

    /// Limits the bytes all files may hold together (`None`: unlimited).
    /// Appends past it write what fits and fail with `StorageFull`.
    pub fn set_capacity_bytes(&self, capacity_bytes: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = capacity_bytes;
    }

    /// Makes the next `count` calls of `op` fail with EIO.
    pub fn fail_next(&self, op: FaultOp, count: u32) {
        self.state.borrow_mut().fail_next[op.slot()] = count;
    }

    /// Makes each call of `op` fail with EIO with probability
    /// `rate_ppm / 1_000_000`.
    pub fn set_failure_rate_ppm(&self, op: FaultOp, rate_ppm: u32) {
        assert!(rate_ppm <= PPM, "a rate is at most one million ppm");
        self.state.borrow_mut().fail_rate_ppm[op.slot()] = rate_ppm;
    }

    /// Makes each read flip one bit of the returned buffer (not of the
    /// stored file) with probability `rate_ppm / 1_000_000`.
    pub fn set_read_corruption_ppm(&self, rate_ppm: u32) {
        assert!(rate_ppm <= PPM, "a rate is at most one million ppm");
        self.state.borrow_mut().read_corruption_ppm = rate_ppm;
    }

    /// Clears every injected fault (EIO, rates, read corruption, capacity).
    pub fn heal(&self) {
        let mut state = self.state.borrow_mut();
        state.fail_next = [0; FAULT_OPS];
        state.fail_rate_ppm = [0; FAULT_OPS];
        state.read_corruption_ppm = 0;
        state.capacity_bytes = None;
    }

    /// Power loss: applies the crash model (module docs) and kills every
    /// open handle. Files reopen with only what survived.
    pub fn crash(&self) -> CrashOutcome {
        let outcome = self.state.borrow_mut().crash();
        tracing::debug!(?outcome, "crash disk: power lost");
        outcome
    }

    /// A process crash with the machine still up: nothing written is lost
    /// (the page cache survives), but every open handle dies.
    pub fn crash_process(&self) {
        let mut state = self.state.borrow_mut();
        state.handles.clear();
        state.boot += 1;
        state.collect_garbage();
    }

    /// Flips `count` random bits in stored bytes of files whose path starts
    /// with `under`, uniformly over their bytes. Both what the process reads
    /// and what survives a crash change. Returns the flips made (fewer when
    /// the files are empty).
    pub fn flip_random_bits(&self, under: &Path, count: u32) -> Vec<BitFlip> {
        let mut state = self.state.borrow_mut();
        let files: Vec<(PathBuf, u64, u64)> = state
            .entries
            .iter()
            .filter(|(path, _)| path.starts_with(under))
            .map(|(path, ino)| (path.clone(), *ino, state.inodes[ino].data.len() as u64))
            .filter(|(_, _, len)| *len > 0)
            .collect();
        let total: u64 = files.iter().map(|(_, _, len)| len).sum();
        let mut flips = Vec::new();
        if total == 0 {
            return flips;
        }
        for _ in 0..count {
            let mut pick = state.rng.random_range(0..total);
            let bit: u8 = state.rng.random_range(0..8);
            for (path, ino, len) in &files {
                if pick < *len {
                    flip_inode_bit(state.inodes.get_mut(ino).expect("live"), pick, bit);
                    flips.push(BitFlip {
                        path: path.clone(),
                        offset: pick,
                        bit,
                    });
                    break;
                }
                pick -= len;
            }
        }
        flips
    }

    /// Flips bit `bit` of the byte at `offset` of `path` (stored bytes).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        assert!(bit < 8, "a byte has 8 bits");
        let mut state = self.state.borrow_mut();
        let ino = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inodes.get_mut(&ino).expect("entries name live inodes");
        if offset >= inode.data.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past the end of the file",
            ));
        }
        flip_inode_bit(inode, offset, bit);
        Ok(())
    }

    /// The bytes a process would read from `path` now, if it exists.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let ino = state.entries.get(path)?;
        Some(state.inodes[ino].data.clone())
    }

    /// Paths of the files a process sees now, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.borrow().entries.keys().cloned().collect()
    }

    /// Bytes held by live files (what the capacity limits).
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    /// What the disk has done so far.
    pub fn counters(&self) -> CrashDiskCounters {
        self.state.borrow().counters.clone()
    }

    fn open_handle(&self, path: &Path, ino: u64) -> Box<dyn DiskFile> {
        let mut state = self.state.borrow_mut();
        *state.handles.entry(ino).or_insert(0) += 1;
        Box::new(CrashFile {
            state: Rc::clone(&self.state),
            ino,
            boot: state.boot,
            path: path.to_path_buf(),
        })
    }
}

fn flip_inode_bit(inode: &mut Inode, offset: u64, bit: u8) {
    let at = to_usize(offset);
    inode.data[at] ^= 1 << bit;
    if at < inode.durable.len() {
        inode.durable[at] ^= 1 << bit;
    }
}

/// A file open on a [`CrashDisk`].
struct CrashFile {
    state: Rc<RefCell<State>>,
    ino: u64,
    boot: u64,
    path: PathBuf,
}

impl CrashFile {
    fn check_alive(&self, state: &State) -> io::Result<()> {
        if state.boot != self.boot {
            return Err(stale_handle());
        }
        assert!(
            state.inodes.contains_key(&self.ino),
            "an open handle keeps its inode alive"
        );
        Ok(())
    }
}

impl Drop for CrashFile {
    fn drop(&mut self) {
        let mut state = self.state.borrow_mut();
        if state.boot != self.boot {
            return;
        }
        if let Some(count) = state.handles.get_mut(&self.ino) {
            *count -= 1;
            if *count == 0 {
                state.handles.remove(&self.ino);
            }
        }
        state.collect_garbage();
    }
}

impl DiskFile for CrashFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        self.check_alive(&state)?;
        state.inject(FaultOp::Append)?;
        let mut writable = data.len() as u64;
        let mut full = false;
        if let Some(capacity) = state.capacity_bytes {
            let free = capacity.saturating_sub(state.used_bytes());
            if free < writable {
                writable = free;
                full = true;
            }
        }
        let inode = state.inodes.get_mut(&self.ino).expect("checked alive");
        let offset = inode.data.len() as u64;
        if writable > 0 {
            inode.data.extend_from_slice(&data[..to_usize(writable)]);
            inode.pending.push(PendingWrite {
                offset,
                len: writable,
                doomed: false,
            });
        }
        if full {
            state.counters.no_space_errors += 1;
            return Err(no_space());
        }
        state.counters.appends += 1;
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state.borrow_mut();
        self.check_alive(&state)?;
        state.inject(FaultOp::Read)?;
        let inode = &state.inodes[&self.ino];
        let len = inode.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = to_usize((len - offset).min(buf.len() as u64));
        let start = to_usize(offset);
        buf[..n].copy_from_slice(&inode.data[start..start + n]);
        let rate = state.read_corruption_ppm;
        if n > 0 && rate > 0 && state.rng.random_range(0..PPM) < rate {
            let at = state.rng.random_range(0..n);
            let bit: u8 = state.rng.random_range(0..8);
            buf[at] ^= 1 << bit;
            state.counters.read_corruptions += 1;
        }
        Ok(n)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        self.check_alive(&state)?;
        if let Err(error) = state.inject(FaultOp::SyncData) {
            // fsyncgate: the pages are marked clean without reaching the disk.
            let inode = state.inodes.get_mut(&self.ino).expect("checked alive");
            for write in &mut inode.pending {
                write.doomed = true;
            }
            tracing::debug!(path = %self.path.display(), "crash disk: sync_data failed");
            return Err(error);
        }
        state.sync_inode(self.ino);
        state.counters.syncs += 1;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.state.borrow();
        self.check_alive(&state)?;
        Ok(state.inodes[&self.ino].data.len() as u64)
    }
}

impl Disk for CrashDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                if state.entries.contains_key(ancestor) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file", ancestor.display()),
                    ));
                }
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let ino = {
            let mut state = self.state.borrow_mut();
            state.inject(FaultOp::Open)?;
            *state.entries.get(path).ok_or_else(|| not_found(path))?
        };
        Ok(self.open_handle(path, ino))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let ino = {
            let mut state = self.state.borrow_mut();
            state.inject(FaultOp::Create)?;
            state.check_parent(path)?;
            if state.entries.contains_key(path) || state.dirs.contains(path) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            let ino = state.new_inode();
            state.entries.insert(path.to_path_buf(), ino);
            ino
        };
        Ok(self.open_handle(path, ino))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let ino = {
            let mut state = self.state.borrow_mut();
            state.inject(FaultOp::Create)?;
            state.check_parent(path)?;
            match state.entries.get(path).copied() {
                Some(ino) => {
                    let inode = state.inodes.get_mut(&ino).expect("entries name live inodes");
                    inode.data.clear();
                    inode.pending.clear();
                    inode.truncated_unsynced = true;
                    ino
                }
                None => {
                    let ino = state.new_inode();
                    state.entries.insert(path.to_path_buf(), ino);
                    ino
                }
            }
        };
        Ok(self.open_handle(path, ino))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.state.borrow_mut();
        state.inject(FaultOp::List)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = state
            .entries
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.inject(FaultOp::Rename)?;
        state.check_parent(to)?;
        let ino = state.entries.remove(from).ok_or_else(|| not_found(from))?;
        state.entries.insert(to.to_path_buf(), ino);
        state.collect_garbage();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.inject(FaultOp::Remove)?;
        state.entries.remove(path).ok_or_else(|| not_found(path))?;
        state.collect_garbage();
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.inject(FaultOp::SyncDir)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        state.durable_entries.retain(|path, _| path.parent() != Some(dir));
        let current: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        state.durable_entries.extend(current);
        state.collect_garbage();
        state.counters.dir_syncs += 1;
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.state.borrow();
        Ok(state.entries.contains_key(path) || state.dirs.contains(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/spool")
    }

    fn disk_with_dir(seed: u64) -> CrashDisk {
        let disk = CrashDisk::new(seed);
        disk.create_dir_all(&dir()).unwrap();
        disk
    }

    fn read_all(file: &dyn DiskFile) -> Vec<u8> {
        let mut buf = vec![0; file.len().unwrap() as usize];
        let n = super::super::read_exact_at(file, 0, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn synced_data_and_entries_survive_a_crash() {
        let disk = disk_with_dir(1);
        let path = dir().join("a");
        let mut file = disk.create_new(&path).unwrap();
        file.append(b"hello").unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(&dir()).unwrap();
        file.append(b" world").unwrap();
        assert_eq!(read_all(file.as_ref()), b"hello world");
        disk.crash();
        assert!(file.append(b"x").is_err(), "handles die at a crash");
        let reopened = disk.open(&path).unwrap();
        let bytes = read_all(reopened.as_ref());
        assert!(bytes.starts_with(b"hello"), "synced prefix survives: {bytes:?}");
        assert!(bytes.len() <= 11);
    }

    #[test]
    fn a_new_file_without_sync_dir_is_lost() {
        let disk = disk_with_dir(2);
        let path = dir().join("new");
        let mut file = disk.create_new(&path).unwrap();
        file.append(b"data").unwrap();
        file.sync_data().unwrap();
        let outcome = disk.crash();
        assert_eq!(outcome.entries_lost, vec![path.clone()]);
        assert!(!disk.exists(&path).unwrap());
        assert!(disk.list(&dir()).unwrap().is_empty());
    }

    #[test]
    fn removal_and_rename_revert_without_sync_dir() {
        let disk = disk_with_dir(3);
        let a = dir().join("a");
        let b = dir().join("b");
        let mut file = disk.create_new(&a).unwrap();
        file.append(b"A").unwrap();
        file.sync_data().unwrap();
        drop(file);
        disk.sync_dir(&dir()).unwrap();
        disk.rename(&a, &b).unwrap();
        assert_eq!(disk.list(&dir()).unwrap(), vec!["b".to_string()]);
        disk.crash();
        assert_eq!(disk.list(&dir()).unwrap(), vec!["a".to_string()]);
        disk.remove(&a).unwrap();
        disk.crash();
        assert_eq!(disk.file_bytes(&a).unwrap(), b"A");
        disk.remove(&a).unwrap();
        disk.sync_dir(&dir()).unwrap();
        disk.crash();
        assert!(disk.list(&dir()).unwrap().is_empty());
    }

    #[test]
    fn torn_writes_keep_block_prefixes_and_zero_fill_gaps() {
        // Over many seeds, every outcome must be explainable: each write kept
        // a block-aligned prefix; bytes never kept are zero or absent.
        let mut saw_later_without_earlier = false;
        for seed in 0..200 {
            let disk = disk_with_dir(seed);
            disk.set_block_size_bytes(4);
            let path = dir().join("f");
            let mut file = disk.create_new(&path).unwrap();
            file.sync_data().unwrap();
            disk.sync_dir(&dir()).unwrap();
            file.append(&[1; 6]).unwrap(); // bytes 0..6: blocks [0,4) [4,6)
            file.append(&[2; 6]).unwrap(); // bytes 6..12: blocks [6,8) [8,12)
            disk.crash();
            let bytes = disk.file_bytes(&path).unwrap();
            assert!(bytes.len() <= 12);
            let first: Vec<u8> = bytes.iter().take(6).copied().collect();
            let kept_first = first.iter().take_while(|b| **b == 1).count();
            assert!([0, 4, 6].contains(&kept_first), "seed {seed}: {bytes:?}");
            assert!(
                first[kept_first..].iter().all(|b| *b == 0),
                "seed {seed}: {bytes:?}"
            );
            if bytes.len() > 6 {
                let second = &bytes[6..];
                let kept_second = second.iter().take_while(|b| **b == 2).count();
                assert!([0, 2, 6].contains(&kept_second), "seed {seed}: {bytes:?}");
                assert_eq!(
                    kept_second,
                    second.len(),
                    "seed {seed}: nothing after a kept prefix"
                );
                if kept_first == 0 && kept_second > 0 {
                    saw_later_without_earlier = true;
                }
            }
        }
        assert!(saw_later_without_earlier, "later writes sometimes survive alone");
    }

    #[test]
    fn failed_sync_dooms_the_covered_writes() {
        let mut lost_at_least_once = false;
        for seed in 0..50 {
            let disk = disk_with_dir(seed);
            disk.set_block_size_bytes(1);
            let path = dir().join("f");
            let mut file = disk.create_new(&path).unwrap();
            file.sync_data().unwrap();
            disk.sync_dir(&dir()).unwrap();
            file.append(&[7; 64]).unwrap();
            disk.fail_next(FaultOp::SyncData, 1);
            assert!(file.sync_data().is_err());
            // A retry "succeeds" but cannot make the doomed pages durable.
            file.sync_data().unwrap();
            assert_eq!(
                read_all(file.as_ref()),
                vec![7; 64],
                "the page cache still has them"
            );
            disk.crash();
            let bytes = disk.file_bytes(&path).unwrap();
            if bytes != vec![7; 64] {
                lost_at_least_once = true;
            }
        }
        assert!(lost_at_least_once);
    }

    #[test]
    fn capacity_gives_partial_write_and_storage_full() {
        let disk = disk_with_dir(4);
        disk.set_capacity_bytes(Some(10));
        let mut file = disk.create_new(&dir().join("f")).unwrap();
        file.append(&[1; 8]).unwrap();
        let error = file.append(&[2; 8]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(file.len().unwrap(), 10);
        assert_eq!(disk.used_bytes(), 10);
        disk.remove(&dir().join("f")).unwrap();
        drop(file);
        assert_eq!(disk.used_bytes(), 0);
    }

    #[test]
    fn injected_errors_and_read_corruption() {
        let disk = disk_with_dir(5);
        let mut file = disk.create_new(&dir().join("f")).unwrap();
        disk.fail_next(FaultOp::Append, 2);
        assert!(file.append(b"x").is_err());
        assert!(file.append(b"x").is_err());
        file.append(&[0; 100]).unwrap();
        disk.set_read_corruption_ppm(PPM);
        let bytes = read_all(file.as_ref());
        assert_eq!(bytes.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        disk.heal();
        assert_eq!(read_all(file.as_ref()), vec![0; 100], "storage itself is intact");
        assert_eq!(disk.counters().injected_errors, 2);
    }

    #[test]
    fn bit_flips_change_stored_bytes_durably() {
        let disk = disk_with_dir(6);
        let path = dir().join("f");
        let mut file = disk.create_new(&path).unwrap();
        file.append(&[0; 32]).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(&dir()).unwrap();
        let flips = disk.flip_random_bits(&dir(), 3);
        assert_eq!(flips.len(), 3);
        disk.crash();
        let bytes = disk.file_bytes(&path).unwrap();
        let ones: u32 = bytes.iter().map(|b| b.count_ones()).sum();
        assert!((1..=3).contains(&ones), "{bytes:?}");
    }

    #[test]
    fn truncation_either_happens_or_not() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..40 {
            let disk = disk_with_dir(seed);
            let path = dir().join("slot");
            let mut file = disk.create_new(&path).unwrap();
            file.append(b"old!").unwrap();
            file.sync_data().unwrap();
            disk.sync_dir(&dir()).unwrap();
            drop(file);
            let mut file = disk.create_truncate(&path).unwrap();
            file.append(b"new").unwrap();
            disk.crash();
            let bytes = disk.file_bytes(&path).unwrap();
            assert!(
                [&b"old!"[..], b"", b"new"].contains(&bytes.as_slice()),
                "seed {seed}: {bytes:?}"
            );
            outcomes.insert(bytes);
        }
        assert_eq!(outcomes.len(), 3, "every outcome occurs: {outcomes:?}");
    }

    #[test]
    fn same_seed_same_story() {
        let run = |seed| {
            let disk = disk_with_dir(seed);
            let path = dir().join("f");
            let mut file = disk.create_new(&path).unwrap();
            disk.sync_dir(&dir()).unwrap();
            for i in 0..20u8 {
                file.append(&[i; 700]).unwrap();
            }
            disk.crash();
            disk.file_bytes(&path).unwrap()
        };
        assert_eq!(run(9), run(9));
    }

    #[test]
    fn unlinked_open_files_stay_readable_until_closed() {
        let disk = disk_with_dir(7);
        let path = dir().join("f");
        let mut file = disk.create_new(&path).unwrap();
        file.append(b"abc").unwrap();
        disk.remove(&path).unwrap();
        assert_eq!(read_all(file.as_ref()), b"abc");
        assert!(disk.open(&path).is_err());
    }
}
