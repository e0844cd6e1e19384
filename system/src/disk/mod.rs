//! The `Disk` seam: the file operations the spool needs, and nothing more.
//!
//! Everything durable in soilstream goes through this trait so that the same
//! spool code runs on a real filesystem ([`StdDisk`]), on turmoil's simulated
//! filesystem (in `soilstream-sim`) and on a crash-simulating in-memory disk
//! used by the property tests ([`memory::CrashDisk`]).
//!
//! Durability contract, as on POSIX:
//! - bytes written by [`DiskFile::append`] are durable only after
//!   [`DiskFile::sync_data`] returns;
//! - a newly created, renamed or removed directory entry is durable only after
//!   [`Disk::sync_dir`] on its parent returns.

pub mod memory;
mod std_disk;

pub use std_disk::StdDisk;

use std::io;
use std::path::Path;

/// An open file: append at the end, read anywhere, make durable.
pub trait DiskFile {
    /// Appends `data` at the end of the file. Not durable until `sync_data`.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at or past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Makes every byte appended so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Current length in bytes, including bytes not yet durable.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A filesystem, as the spool sees it.
pub trait Disk {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and appending.
    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens an existing file for reading only (appending to it fails). Use
    /// it for files the caller must not or cannot change, such as a log an
    /// operator copied off a read-only card. Disks without a notion of
    /// permissions may open it as [`Disk::open`] does.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        self.open(path)
    }
    /// Creates a new empty file (error if it exists), open for appending.
    /// The directory entry is not durable until [`Disk::sync_dir`].
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Creates or truncates a file, open for appending.
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Names (not paths) of the regular files in `dir`, sorted bytewise.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
}

/// Reads exactly `buf.len()` bytes at `offset`, or reports how many were
/// available before the end of the file.
pub fn read_exact_at(file: &dyn DiskFile, mut offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(offset, &mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
        offset += n as u64;
    }
    Ok(filled)
}
