//! [`SimDisk`]: the [`Disk`] seam over turmoil's simulated filesystem, plus a
//! fault layer a scenario can change at any simulated time.
//!
//! Durability comes from turmoil (`unstable-fs`), per host:
//! - appended bytes are pending until [`DiskFile::sync_data`]; `Sim::crash`
//!   discards pending writes (with the builder's `fs().block_size(n)`, a
//!   pending write may survive in part, whole blocks from its start, and a
//!   later write may survive while an earlier one is lost: gaps read as zeros);
//! - a new file, a rename or a removal is pending until [`Disk::sync_dir`] on
//!   its parent; a file whose entry was never synced vanishes on crash.
//!
//! On top of that, [`DiskFaults`] (a shared handle, so the scenario runner
//! keeps it across host restarts) injects: a capacity limit (ENOSPC), EIO on
//! reads, writes and syncs with given probabilities, silent corruption of read
//! buffers, and bit flips written into stored files. Its randomness is a
//! ChaCha8 stream seeded by the caller, so a seed replays the same faults.
//!
//! Every method must be called from inside a turmoil host: the filesystem is
//! per host and turmoil finds it through the running host.
//!
//! Inject EIO and corruption through [`DiskFaults`], not through the builder's
//! `fs().io_error_probability` / `corruption_probability`: those draw from
//! turmoil's own RNG, which is not stable across turmoil versions. Torn
//! writes (`block_size`) and `sync_probability` necessarily use it.
//!
//! Two deliberate differences from POSIX, both documented on the methods:
//! [`Disk::create_dir_all`] makes the directories it creates durable at once
//! (gateways are provisioned with their data directory; directory creation is
//! not what the scenarios test), and a file handle follows its path, not an
//! inode (turmoil's model): do not write through a handle after renaming or
//! removing its file.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use soilstream::disk::{Disk, DiskFile};
use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use turmoil::fs::shim::std::fs as simfs;

/// Linux `EIO`.
const EIO: i32 = 5;
/// Linux `ENOSPC`.
const ENOSPC: i32 = 28;
/// At most this many bit flips wait to be applied.
pub const MAX_PENDING_BIT_FLIPS: usize = 1024;
/// At most this many applied bit flips are remembered (oldest dropped first).
pub const MAX_APPLIED_BIT_FLIPS_LOGGED: usize = 4096;
/// Directory depth limit when measuring disk usage (guards against cycles).
const MAX_DIR_DEPTH: usize = 64;

/// The fault settings in force; every field can be changed at any time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskFaultConfig {
    /// Total bytes the host's files may hold; an append or file creation that
    /// would exceed it fails with ENOSPC. `None`: unlimited.
    pub capacity_bytes: Option<u64>,
    /// "Disk full from now on": the first write after this is set measures the
    /// bytes in use and allows only this many more (ENOSPC beyond). Lets a
    /// scenario fill the disk at a moment without knowing its usage. `None`:
    /// off (clearing it forgets the measured usage).
    pub full_headroom_bytes: Option<u64>,
    /// Probability that a read or a directory listing fails with EIO.
    pub read_error_probability: f64,
    /// Probability that an append, file creation, rename or removal fails
    /// with EIO (before anything is written).
    pub write_error_probability: f64,
    /// Probability that `sync_data` or `sync_dir` fails with EIO (nothing is
    /// made durable).
    pub sync_error_probability: f64,
    /// Probability that a successful read returns a buffer with one bit
    /// flipped (silent corruption; the stored bytes are intact).
    pub read_corruption_probability: f64,
}

impl DiskFaultConfig {
    /// Checks that every probability is within `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), DiskFaultError> {
        let probabilities = [
            ("read_error_probability", self.read_error_probability),
            ("write_error_probability", self.write_error_probability),
            ("sync_error_probability", self.sync_error_probability),
            ("read_corruption_probability", self.read_corruption_probability),
        ];
        for (name, value) in probabilities {
            if !(0.0..=1.0).contains(&value) {
                return Err(DiskFaultError::InvalidProbability { name, value });
            }
        }
        Ok(())
    }
}

/// Where in a file a bit flip lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageAt {
    /// At this byte offset (skipped if the file is shorter).
    Offset(u64),
    /// At a byte chosen uniformly from the file's current length.
    Random,
}

/// Damage to write into a stored file: `byte ^= xor_mask` at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitFlip {
    /// A file, or a directory: then one of its regular files is chosen at
    /// random (by sorted name, from the fault stream).
    pub path: PathBuf,
    /// When `path` is a directory: choose only among files whose name starts
    /// with this (e.g. `seg-` for spool segments). `None`: any file.
    pub name_prefix: Option<String>,
    /// Where in the file.
    pub at: DamageAt,
    /// Bits to flip; must not be zero.
    pub xor_mask: u8,
}

/// A bit flip that was written into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedBitFlip {
    /// The damaged file.
    pub path: PathBuf,
    /// Byte offset of the damaged byte.
    pub offset: u64,
    /// Bits flipped.
    pub xor_mask: u8,
}

/// Counts of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaultStats {
    /// Reads and listings failed with EIO.
    pub read_errors: u64,
    /// Writes failed with EIO.
    pub write_errors: u64,
    /// Syncs failed with EIO.
    pub sync_errors: u64,
    /// Writes refused with ENOSPC (injected capacity or turmoil's own).
    pub no_space_errors: u64,
    /// Read buffers silently corrupted.
    pub corrupted_reads: u64,
    /// Bit flips written into files.
    pub bit_flips_applied: u64,
    /// Bit flips skipped (no such file, offset past the end, empty file).
    pub bit_flips_skipped: u64,
}

/// Why a fault setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiskFaultError {
    /// A probability outside `0.0..=1.0`.
    #[error("{name} must be within 0.0..=1.0, got {value}")]
    InvalidProbability {
        /// Setting name.
        name: &'static str,
        /// Refused value.
        value: f64,
    },
    /// Too many bit flips are already waiting to be applied.
    #[error("at most {MAX_PENDING_BIT_FLIPS} bit flips may wait to be applied")]
    TooManyPendingBitFlips,
    /// A bit flip with an empty mask would not damage anything.
    #[error("a bit flip needs a non-zero xor mask")]
    EmptyMask,
}

#[derive(Debug)]
struct DiskFaultState {
    config: DiskFaultConfig,
    /// Bytes in use when `full_headroom_bytes` was first enforced.
    full_anchor_used_bytes: Option<u64>,
    rng: ChaCha8Rng,
    pending_bit_flips: VecDeque<BitFlip>,
    applied_bit_flips: VecDeque<AppliedBitFlip>,
    stats: DiskFaultStats,
}

impl DiskFaultState {
    /// Draws from the fault stream only when the probability is non-zero, so
    /// that faults that are off do not shift the stream.
    fn roll(&mut self, probability: f64) -> bool {
        debug_assert!((0.0..=1.0).contains(&probability));
        probability > 0.0 && self.rng.random_bool(probability)
    }
}

/// Shared handle to the fault settings of one host's disk.
///
/// Cloning gives another handle to the same state. Keep one in the scenario
/// runner and give clones to the [`SimDisk`]s of the host: the settings, the
/// random stream and the counters survive host crashes and restarts.
///
/// The state sits behind an `Arc<Mutex<_>>` rather than an `Rc<RefCell<_>>`
/// so that a [`SimDisk`] is `Send + Sync`: servers whose state must be
/// `Send` (the schema registry's axum router) can run on it. The simulator
/// is single-threaded, so the lock is never contended; a poisoned lock (a
/// panic while holding it) is taken over as is, since every update leaves
/// the state consistent.
#[derive(Debug, Clone)]
pub struct DiskFaults {
    state: Arc<Mutex<DiskFaultState>>,
}

impl DiskFaults {
    /// No faults; randomness from a ChaCha8 stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskFaultState {
                config: DiskFaultConfig::default(),
                full_anchor_used_bytes: None,
                rng: ChaCha8Rng::seed_from_u64(seed),
                pending_bit_flips: VecDeque::new(),
                applied_bit_flips: VecDeque::new(),
                stats: DiskFaultStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskFaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The settings in force.
    pub fn config(&self) -> DiskFaultConfig {
        self.lock().config
    }

    /// Replaces every setting.
    pub fn set_config(&self, config: DiskFaultConfig) -> Result<(), DiskFaultError> {
        config.validate()?;
        let mut state = self.lock();
        if config.full_headroom_bytes != state.config.full_headroom_bytes {
            state.full_anchor_used_bytes = None;
        }
        state.config = config;
        Ok(())
    }

    /// Changes some settings with `edit`, then validates the result; nothing
    /// changes if it is invalid.
    pub fn update(&self, edit: impl FnOnce(&mut DiskFaultConfig)) -> Result<(), DiskFaultError> {
        let mut config = self.config();
        edit(&mut config);
        self.set_config(config)
    }

    /// Turns every fault off (pending bit flips stay queued).
    pub fn heal(&self) {
        let mut state = self.lock();
        state.config = DiskFaultConfig::default();
        state.full_anchor_used_bytes = None;
    }

    /// The byte limit from `full_headroom_bytes`, measuring usage with
    /// `used_bytes` the first time it is needed.
    fn headroom_limit(&self, used_bytes: impl FnOnce() -> io::Result<u64>) -> io::Result<Option<u64>> {
        let Some(headroom) = self.config().full_headroom_bytes else {
            return Ok(None);
        };
        let anchor = self.lock().full_anchor_used_bytes;
        let anchor = match anchor {
            Some(anchor) => anchor,
            None => {
                let used = used_bytes()?;
                self.lock().full_anchor_used_bytes = Some(used);
                used
            }
        };
        Ok(Some(anchor.saturating_add(headroom)))
    }

    /// Queues damage to be written into a stored file by the host's
    /// [`SimDisk`] at its next operation (a runner outside the host cannot
    /// reach the host's filesystem). The damage is made durable, and with it
    /// whatever else of that file was pending: an OS may write back dirty
    /// pages at any time, so this only narrows what a crash could lose.
    pub fn schedule_bit_flip(&self, flip: BitFlip) -> Result<(), DiskFaultError> {
        if flip.xor_mask == 0 {
            return Err(DiskFaultError::EmptyMask);
        }
        let mut state = self.lock();
        if state.pending_bit_flips.len() >= MAX_PENDING_BIT_FLIPS {
            return Err(DiskFaultError::TooManyPendingBitFlips);
        }
        state.pending_bit_flips.push_back(flip);
        Ok(())
    }

    /// Bit flips not applied yet.
    pub fn pending_bit_flips(&self) -> usize {
        self.lock().pending_bit_flips.len()
    }

    /// The most recent applied bit flips, oldest first (at most
    /// [`MAX_APPLIED_BIT_FLIPS_LOGGED`]).
    pub fn applied_bit_flips(&self) -> Vec<AppliedBitFlip> {
        self.lock().applied_bit_flips.iter().cloned().collect()
    }

    /// Counts of injected faults so far.
    pub fn stats(&self) -> DiskFaultStats {
        self.lock().stats
    }

    fn roll(&self, pick: impl FnOnce(&DiskFaultConfig) -> f64) -> bool {
        let mut state = self.lock();
        let probability = pick(&state.config);
        state.roll(probability)
    }

    fn count(&self, bump: impl FnOnce(&mut DiskFaultStats)) {
        bump(&mut self.lock().stats);
    }
}

fn eio(what: &str) -> io::Error {
    tracing::debug!(what, "injected EIO");
    io::Error::from_raw_os_error(EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

/// turmoil reports its own capacity limit as a plain "other" error; give it
/// the errno a real filesystem would, so callers can match on
/// [`io::ErrorKind::StorageFull`].
fn map_turmoil_error(error: io::Error) -> io::Error {
    if error.raw_os_error().is_none() && error.to_string().contains("No space left on device") {
        enospc()
    } else {
        error
    }
}

fn require_absolute(path: &Path) -> io::Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("simulated paths must be absolute: {}", path.display()),
        ))
    }
}

/// The [`Disk`] seam over the current turmoil host's filesystem.
#[derive(Debug, Clone)]
pub struct SimDisk {
    faults: DiskFaults,
}

impl SimDisk {
    /// A disk whose faults are driven by `faults`.
    pub fn new(faults: DiskFaults) -> Self {
        Self { faults }
    }

    /// The fault handle of this disk.
    pub fn faults(&self) -> &DiskFaults {
        &self.faults
    }

    /// Bytes held by every file of the host (pending writes included).
    pub fn used_bytes(&self) -> io::Result<u64> {
        used_bytes_under(Path::new("/"), 0)
    }

    /// Writes every queued bit flip into its file now.
    pub fn apply_pending_bit_flips(&self) {
        loop {
            let next = self.faults.lock().pending_bit_flips.pop_front();
            let Some(flip) = next else { break };
            match self.apply_bit_flip(&flip) {
                Ok(Some(applied)) => {
                    tracing::info!(path = %applied.path.display(), offset = applied.offset, mask = applied.xor_mask, "bit flip written");
                    let mut state = self.faults.lock();
                    state.stats.bit_flips_applied += 1;
                    if state.applied_bit_flips.len() >= MAX_APPLIED_BIT_FLIPS_LOGGED {
                        state.applied_bit_flips.pop_front();
                    }
                    state.applied_bit_flips.push_back(applied);
                }
                Ok(None) => {
                    tracing::info!(path = %flip.path.display(), "bit flip skipped: nothing to damage");
                    self.faults.count(|s| s.bit_flips_skipped += 1);
                }
                Err(error) => {
                    tracing::info!(path = %flip.path.display(), %error, "bit flip skipped");
                    self.faults.count(|s| s.bit_flips_skipped += 1);
                }
            }
        }
    }

    fn apply_bit_flip(&self, flip: &BitFlip) -> io::Result<Option<AppliedBitFlip>> {
        require_absolute(&flip.path)?;
        let path = if simfs::metadata(&flip.path)?.is_dir() {
            let mut names = list_files(&flip.path)?;
            if let Some(prefix) = &flip.name_prefix {
                names.retain(|name| name.starts_with(prefix.as_str()));
            }
            if names.is_empty() {
                return Ok(None);
            }
            let index = self.faults.lock().rng.random_range(0..names.len());
            flip.path.join(&names[index])
        } else {
            flip.path.clone()
        };
        let file = simfs::OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let offset = match flip.at {
            DamageAt::Offset(offset) if offset < len => offset,
            DamageAt::Offset(_) => return Ok(None),
            DamageAt::Random if len == 0 => return Ok(None),
            DamageAt::Random => self.faults.lock().rng.random_range(0..len),
        };
        let mut byte = [0_u8; 1];
        if file.read_at(&mut byte, offset)? != 1 {
            return Ok(None);
        }
        byte[0] ^= flip.xor_mask;
        file.write_at(&byte, offset)?;
        file.sync_data()?;
        Ok(Some(AppliedBitFlip {
            path,
            offset,
            xor_mask: flip.xor_mask,
        }))
    }

    /// Runs before every operation: applies queued damage.
    fn enter(&self) {
        if self.faults.pending_bit_flips() > 0 {
            self.apply_pending_bit_flips();
        }
    }

    fn check_write(&self, what: &str, additional_bytes: u64) -> io::Result<()> {
        if self.faults.roll(|c| c.write_error_probability) {
            self.faults.count(|s| s.write_errors += 1);
            return Err(eio(what));
        }
        let headroom_limit = self.faults.headroom_limit(|| self.used_bytes())?;
        let limit = match (self.faults.config().capacity_bytes, headroom_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(capacity_bytes) = limit {
            let used = self.used_bytes()?;
            if used.saturating_add(additional_bytes) > capacity_bytes {
                self.faults.count(|s| s.no_space_errors += 1);
                tracing::debug!(what, used, additional_bytes, capacity_bytes, "injected ENOSPC");
                return Err(enospc());
            }
        }
        Ok(())
    }

    fn check_read(&self, what: &str) -> io::Result<()> {
        if self.faults.roll(|c| c.read_error_probability) {
            self.faults.count(|s| s.read_errors += 1);
            return Err(eio(what));
        }
        Ok(())
    }

    fn check_sync(&self, what: &str) -> io::Result<()> {
        if self.faults.roll(|c| c.sync_error_probability) {
            self.faults.count(|s| s.sync_errors += 1);
            return Err(eio(what));
        }
        Ok(())
    }

    fn open_with(&self, path: &Path, options: &simfs::OpenOptions) -> io::Result<Box<dyn DiskFile>> {
        let file = options.open(path).map_err(map_turmoil_error)?;
        Ok(Box::new(SimFile {
            file,
            disk: self.clone(),
        }))
    }
}

fn used_bytes_under(dir: &Path, depth: usize) -> io::Result<u64> {
    if depth > MAX_DIR_DEPTH {
        return Err(io::Error::other("directory tree too deep"));
    }
    let mut total = 0_u64;
    for entry in simfs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            total = total.saturating_add(used_bytes_under(&entry.path(), depth + 1)?);
        } else if file_type.is_file() {
            total = total.saturating_add(entry.metadata()?.len());
        }
    }
    Ok(total)
}

fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in simfs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    // turmoil lists from a HashSet: sort for a deterministic order.
    names.sort();
    Ok(names)
}

struct SimFile {
    file: simfs::File,
    disk: SimDisk,
}

impl DiskFile for SimFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.disk.enter();
        if data.is_empty() {
            return Ok(());
        }
        self.disk.check_write("append", data.len() as u64)?;
        let offset = self.file.metadata()?.len();
        let written = self.file.write_at(data, offset).map_err(|error| {
            let error = map_turmoil_error(error);
            if error.raw_os_error() == Some(ENOSPC) {
                self.disk.faults.count(|s| s.no_space_errors += 1);
            }
            error
        })?;
        // turmoil writes whole buffers; anything else breaks append's contract.
        if written != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short simulated write"));
        }
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.disk.enter();
        self.disk.check_read("read")?;
        let read = self.file.read_at(buf, offset)?;
        debug_assert!(read <= buf.len());
        if read > 0 && self.disk.faults.roll(|c| c.read_corruption_probability) {
            let (index, bit) = {
                let mut state = self.disk.faults.lock();
                (state.rng.random_range(0..read), state.rng.random_range(0..8_u32))
            };
            buf[index] ^= 1 << bit;
            self.disk.faults.count(|s| s.corrupted_reads += 1);
            tracing::debug!(offset, index, bit, "injected read corruption");
        }
        Ok(read)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.disk.enter();
        self.disk.check_sync("sync_data")?;
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.disk.enter();
        Ok(self.file.metadata()?.len())
    }
}

impl Disk for SimDisk {
    /// Creates the missing directories, each made durable at once (its parent
    /// is synced), unlike POSIX: see the module docs.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.enter();
        require_absolute(dir)?;
        let mut missing = Vec::new();
        let mut current = Some(dir);
        while let Some(path) = current {
            if simfs::exists(path) {
                break;
            }
            missing.push(path.to_path_buf());
            current = path.parent();
        }
        for path in missing.into_iter().rev() {
            self.check_write("create_dir", 0)?;
            simfs::create_dir(&path)?;
            if let Some(parent) = path.parent() {
                simfs::sync_dir(parent)?;
            }
        }
        if simfs::metadata(dir)?.is_dir() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("not a directory: {}", dir.display()),
            ))
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.enter();
        require_absolute(path)?;
        self.check_read("open")?;
        self.open_with(path, simfs::OpenOptions::new().read(true).write(true))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.enter();
        require_absolute(path)?;
        self.check_write("create_new", 0)?;
        self.open_with(
            path,
            simfs::OpenOptions::new().read(true).write(true).create_new(true),
        )
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.enter();
        require_absolute(path)?;
        self.check_write("create_truncate", 0)?;
        self.open_with(
            path,
            simfs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
        )
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.enter();
        require_absolute(dir)?;
        self.check_read("list")?;
        list_files(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.enter();
        require_absolute(from)?;
        require_absolute(to)?;
        self.check_write("rename", 0)?;
        simfs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.enter();
        require_absolute(path)?;
        self.check_write("remove", 0)?;
        simfs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.enter();
        require_absolute(dir)?;
        self.check_sync("sync_dir")?;
        simfs::sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.enter();
        require_absolute(path)?;
        Ok(simfs::exists(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soilstream::disk::read_exact_at;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    fn builder() -> turmoil::Builder {
        let mut builder = turmoil::Builder::new();
        builder
            .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .rng_seed(7)
            .simulation_duration(Duration::from_secs(60));
        builder
    }

    fn read_all(disk: &SimDisk, path: &Path) -> io::Result<Vec<u8>> {
        let file = disk.open(path)?;
        let len = file.len()? as usize;
        let mut buf = vec![0; len];
        let n = read_exact_at(file.as_ref(), 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Runs `before` on the first start of host `h`, crashes it, bounces it
    /// and runs `after` on the second start.
    fn crash_between(
        builder: &turmoil::Builder,
        faults: DiskFaults,
        before: impl Fn(&SimDisk) -> io::Result<()> + 'static,
        after: impl Fn(&SimDisk) -> io::Result<()> + 'static,
    ) {
        let mut sim = builder.build();
        let starts = Rc::new(RefCell::new(0_u32));
        let before = Rc::new(before);
        let after = Rc::new(after);
        let starts_in_host = starts.clone();
        sim.host("h", move || {
            let disk = SimDisk::new(faults.clone());
            let starts = starts_in_host.clone();
            let before = before.clone();
            let after = after.clone();
            async move {
                let start = {
                    let mut s = starts.borrow_mut();
                    *s += 1;
                    *s
                };
                if start == 1 {
                    before(&disk)?;
                } else {
                    after(&disk)?;
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        sim.step().expect("first start");
        sim.crash("h");
        sim.bounce("h");
        sim.step().expect("second start");
        assert_eq!(*starts.borrow(), 2);
    }

    #[test]
    fn synced_data_survives_a_crash_and_unsynced_data_does_not() {
        crash_between(
            &builder(),
            DiskFaults::new(1),
            |disk| {
                disk.create_dir_all(Path::new("/data"))?;
                let mut file = disk.create_new(Path::new("/data/a"))?;
                disk.sync_dir(Path::new("/data"))?;
                file.append(b"durable")?;
                file.sync_data()?;
                file.append(b"-volatile")?;
                assert_eq!(read_all(disk, Path::new("/data/a"))?, b"durable-volatile");
                // A new file without sync_dir vanishes on crash even if synced.
                let mut orphan = disk.create_new(Path::new("/data/b"))?;
                orphan.append(b"x")?;
                orphan.sync_data()?;
                Ok(())
            },
            |disk| {
                assert_eq!(read_all(disk, Path::new("/data/a"))?, b"durable");
                assert!(!disk.exists(Path::new("/data/b"))?);
                assert_eq!(disk.list(Path::new("/data"))?, vec!["a".to_string()]);
                Ok(())
            },
        );
    }

    #[test]
    fn torn_writes_keep_whole_blocks_from_the_start() {
        let mut builder = builder();
        builder.fs().block_size(4);
        // Over several seeds, a 12-byte unsynced append must survive as a
        // prefix of 0, 4, 8 or 12 bytes, and at least one seed must tear it.
        let outcomes = Rc::new(RefCell::new(Vec::new()));
        for seed in 0..8 {
            builder.rng_seed(seed);
            let seen = outcomes.clone();
            crash_between(
                &builder,
                DiskFaults::new(seed),
                |disk| {
                    disk.create_dir_all(Path::new("/d"))?;
                    let mut file = disk.create_new(Path::new("/d/f"))?;
                    disk.sync_dir(Path::new("/d"))?;
                    file.append(b"base")?;
                    file.sync_data()?;
                    file.append(b"0123456789ab")?;
                    Ok(())
                },
                move |disk| {
                    let content = read_all(disk, Path::new("/d/f"))?;
                    seen.borrow_mut().push(content.len());
                    assert!(content.starts_with(b"base"));
                    assert!(b"0123456789ab".starts_with(&content[4..]));
                    Ok(())
                },
            );
        }
        let outcomes = outcomes.borrow();
        assert!(
            outcomes.iter().all(|n| [4, 8, 12, 16].contains(n)),
            "{outcomes:?}"
        );
        assert!(outcomes.iter().any(|n| *n == 8 || *n == 12), "{outcomes:?}");
    }

    #[test]
    fn full_headroom_measures_usage_when_first_enforced() {
        let mut sim = builder().build();
        let faults = DiskFaults::new(4);
        let handle = faults.clone();
        sim.client("c", async move {
            let disk = SimDisk::new(handle.clone());
            disk.create_dir_all(Path::new("/d"))?;
            let mut file = disk.create_new(Path::new("/d/f"))?;
            file.append(&[1; 300])?;
            handle.update(|c| c.full_headroom_bytes = Some(20))?;
            file.append(&[2; 20])?;
            let full = file.append(&[3; 1]).expect_err("headroom used up");
            assert_eq!(full.kind(), io::ErrorKind::StorageFull);
            handle.update(|c| c.full_headroom_bytes = None)?;
            file.append(&[4; 100])?;
            // Re-arming measures usage again (420 bytes now).
            handle.update(|c| c.full_headroom_bytes = Some(0))?;
            assert!(file.append(&[5; 1]).is_err());
            handle.heal();
            file.append(&[6; 1])?;
            Ok(())
        });
        sim.run().expect("simulation");
        assert_eq!(faults.stats().no_space_errors, 2);
    }

    #[test]
    fn faults_are_injected_and_healed() {
        let mut sim = builder().build();
        let faults = DiskFaults::new(3);
        let handle = faults.clone();
        sim.client("c", async move {
            let disk = SimDisk::new(handle.clone());
            disk.create_dir_all(Path::new("/d"))?;
            let mut file = disk.create_new(Path::new("/d/f"))?;
            file.append(&[0xAA; 100])?;

            handle.update(|c| c.capacity_bytes = Some(150))?;
            let full = file.append(&[0; 51]).expect_err("over capacity");
            assert_eq!(full.kind(), io::ErrorKind::StorageFull);
            file.append(&[0; 50])?;

            handle.update(|c| {
                c.capacity_bytes = None;
                c.write_error_probability = 1.0;
                c.sync_error_probability = 1.0;
                c.read_error_probability = 1.0;
            })?;
            assert_eq!(file.append(b"x").expect_err("EIO").raw_os_error(), Some(EIO));
            assert_eq!(file.sync_data().expect_err("EIO").raw_os_error(), Some(EIO));
            let mut buf = [0; 4];
            assert_eq!(
                file.read_at(0, &mut buf).expect_err("EIO").raw_os_error(),
                Some(EIO)
            );

            handle.set_config(DiskFaultConfig {
                read_corruption_probability: 1.0,
                ..DiskFaultConfig::default()
            })?;
            let mut corrupted = [0; 100];
            assert_eq!(file.read_at(0, &mut corrupted)?, 100);
            let flipped_bits: u32 = corrupted.iter().map(|b| (b ^ 0xAA).count_ones()).sum();
            assert_eq!(flipped_bits, 1, "exactly one bit flipped in the buffer");

            handle.heal();
            let mut clean = [0; 100];
            file.read_at(0, &mut clean)?;
            assert_eq!(clean, [0xAA; 100], "stored bytes were never damaged");
            let stats = handle.stats();
            assert_eq!(stats.no_space_errors, 1);
            assert_eq!(
                (stats.write_errors, stats.sync_errors, stats.read_errors),
                (1, 1, 1)
            );
            assert_eq!(stats.corrupted_reads, 1);
            Ok(())
        });
        sim.run().expect("simulation");
        assert!(faults.config().validate().is_ok());
        assert!(faults.update(|c| c.read_error_probability = 1.5).is_err());
        assert_eq!(
            faults.config(),
            DiskFaultConfig::default(),
            "invalid update is refused whole"
        );
    }

    #[test]
    fn bit_flips_scheduled_before_the_restart_are_applied() {
        let faults = DiskFaults::new(11);
        let mut sim = builder().build();
        let host_faults = faults.clone();
        let starts = Rc::new(RefCell::new(0_u32));
        let starts_in_host = starts.clone();
        sim.host("h", move || {
            let disk = SimDisk::new(host_faults.clone());
            let starts = starts_in_host.clone();
            async move {
                *starts.borrow_mut() += 1;
                if *starts.borrow() == 1 {
                    disk.create_dir_all(Path::new("/spool"))?;
                    let mut file = disk.create_new(Path::new("/spool/seg"))?;
                    disk.sync_dir(Path::new("/spool"))?;
                    file.append(&[0_u8; 32])?;
                    file.sync_data()?;
                } else {
                    let content = read_all(&disk, Path::new("/spool/seg"))?;
                    assert_eq!(content[5], 0x81);
                    assert_eq!(content.iter().filter(|b| **b != 0).count(), 2);
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        sim.step().expect("first start");
        sim.crash("h");
        faults
            .schedule_bit_flip(BitFlip {
                name_prefix: None,
                path: "/spool/seg".into(),
                at: DamageAt::Offset(5),
                xor_mask: 0x81,
            })
            .expect("queued");
        faults
            .schedule_bit_flip(BitFlip {
                name_prefix: None,
                path: "/spool".into(),
                at: DamageAt::Random,
                xor_mask: 0x10,
            })
            .expect("queued");
        assert_eq!(
            faults.schedule_bit_flip(BitFlip {
                name_prefix: None,
                path: "/spool".into(),
                at: DamageAt::Random,
                xor_mask: 0,
            }),
            Err(DiskFaultError::EmptyMask)
        );
        sim.bounce("h");
        sim.step().expect("second start");
        assert_eq!(*starts.borrow(), 2);
        assert_eq!(faults.pending_bit_flips(), 0);
        let applied = faults.applied_bit_flips();
        assert_eq!(applied.len(), 2);
        assert_eq!(applied[0].offset, 5);
        assert_eq!(applied[1].path, PathBuf::from("/spool/seg"));
        assert_eq!(faults.stats().bit_flips_applied, 2);
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut sim = builder().build();
        sim.client("c", async move {
            let disk = SimDisk::new(DiskFaults::new(0));
            let error = disk.create_dir_all(Path::new("data")).expect_err("relative");
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            Ok(())
        });
        sim.run().expect("simulation");
    }
}
