//! Every file the backfill touches: the log (read), the checkpoint (read,
//! replaced atomically) and the rejects file (written).
//!
//! This is the only place the backfill does file I/O, and it does it through
//! the [`Disk`] seam: [`crate::disk::StdDisk`] when an operator backfills a
//! file copied off an SD card, the simulated disk when the simulator runs the
//! same backfill inside its world. The log is opened read-only
//! ([`Disk::open_read`]), so a log on a write-protected card can be read.

use super::BackfillError;
use super::checkpoint::{Checkpoint, Fingerprint, MAX_CHECKPOINT_BYTES};
use super::lines::{HashingReader, LineReader, MAX_LINE_BYTES, quote_field};
use crate::disk::{Disk, DiskFile, read_exact_at};
use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Read buffer size for the log, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Rejected lines buffered before they are appended to the rejects file, in bytes.
const REJECTS_BUFFER_BYTES: usize = 64 * 1024;

/// The header row of a rejects file.
pub const REJECTS_HEADER: &str = "line,column,reason,original_line";

/// The log being backfilled, read line by line while hashing its content.
pub type LogReader = LineReader<BufReader<HashingReader<DiskReader>>>;

/// A file of a [`Disk`] read from start to end through [`Read`].
pub struct DiskReader {
    file: Box<dyn DiskFile>,
    offset: u64,
}

impl DiskReader {
    /// Reads `file` from its first byte.
    pub fn new(file: Box<dyn DiskFile>) -> Self {
        Self { file, offset: 0 }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl fmt::Debug for DiskReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskReader")
            .field("offset", &self.offset)
            .finish()
    }
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The disk and the paths of one backfill.
#[derive(Clone)]
pub struct BackfillFiles {
    disk: Rc<dyn Disk>,
    csv_path: PathBuf,
    checkpoint_path: PathBuf,
    rejects_path: PathBuf,
}

impl fmt::Debug for BackfillFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackfillFiles")
            .field("csv_path", &self.csv_path)
            .field("checkpoint_path", &self.checkpoint_path)
            .field("rejects_path", &self.rejects_path)
            .finish_non_exhaustive()
    }
}

/// The directory holding `path`, for syncing its entries.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackfillError {
    let path = path.display().to_string();
    move |source| BackfillError::Io { op, path, source }
}

impl BackfillFiles {
    /// The files of a backfill of `csv_path`, all on `disk`.
    pub fn new(
        disk: Rc<dyn Disk>,
        csv_path: PathBuf,
        checkpoint_path: PathBuf,
        rejects_path: PathBuf,
    ) -> Self {
        Self {
            disk,
            csv_path,
            checkpoint_path,
            rejects_path,
        }
    }

    /// The log file.
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }

    /// The checkpoint file.
    pub fn checkpoint_path(&self) -> &Path {
        &self.checkpoint_path
    }

    /// The rejects file.
    pub fn rejects_path(&self) -> &Path {
        &self.rejects_path
    }

    /// Size and SHA-256 of the log, read once from start to end in fixed-size
    /// chunks.
    pub fn fingerprint(&self) -> Result<Fingerprint, BackfillError> {
        let file = self
            .disk
            .open_read(&self.csv_path)
            .map_err(io_error("open", &self.csv_path))?;
        let mut reader = HashingReader::new(DiskReader::new(file));
        let mut chunk = vec![0u8; READ_BUFFER_BYTES];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("read", &self.csv_path)(e)),
            }
        }
        Ok(Fingerprint {
            size_bytes: reader.bytes_read(),
            sha256: reader.sha256_hex(),
        })
    }

    /// Opens the log for reading line by line.
    pub fn open_log(&self) -> Result<LogReader, BackfillError> {
        let file = self
            .disk
            .open_read(&self.csv_path)
            .map_err(io_error("open", &self.csv_path))?;
        Ok(LineReader::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            HashingReader::new(DiskReader::new(file)),
        )))
    }

    /// The checkpoint, if the file exists.
    pub fn read_checkpoint(&self) -> Result<Option<Checkpoint>, BackfillError> {
        let path = &self.checkpoint_path;
        if !self.disk.exists(path).map_err(io_error("open", path))? {
            return Ok(None);
        }
        let file = match self.disk.open_read(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", path)(e)),
        };
        let size_bytes = file.len().map_err(io_error("read", path))?;
        if size_bytes > MAX_CHECKPOINT_BYTES {
            return Err(BackfillError::CheckpointUnreadable {
                path: path.display().to_string(),
                reason: format!("larger than {MAX_CHECKPOINT_BYTES} bytes"),
            });
        }
        let mut bytes = vec![0; size_bytes as usize];
        let read = read_exact_at(file.as_ref(), 0, &mut bytes).map_err(io_error("read", path))?;
        bytes.truncate(read);
        Checkpoint::decode(&bytes)
            .map(Some)
            .map_err(|reason| BackfillError::CheckpointUnreadable {
                path: path.display().to_string(),
                reason,
            })
    }

    /// Replaces the checkpoint atomically: writes a temporary file beside it,
    /// syncs it, renames it over the checkpoint and syncs the directory. A
    /// crash leaves either the old or the new checkpoint, never a torn one.
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), BackfillError> {
        let path = &self.checkpoint_path;
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(".tmp");
        let temp = PathBuf::from(temp_name);
        {
            let mut file = self
                .disk
                .create_truncate(&temp)
                .map_err(io_error("create", &temp))?;
            file.append(&checkpoint.encode())
                .map_err(io_error("write", &temp))?;
            file.sync_data().map_err(io_error("sync", &temp))?;
        }
        self.disk.rename(&temp, path).map_err(io_error("rename", path))?;
        let dir = parent_dir(path);
        self.disk.sync_dir(dir).map_err(io_error("sync directory", dir))?;
        Ok(())
    }

    /// A writer of the rejects file, which creates (or truncates) the file at
    /// the first reject only.
    pub fn rejects(&self) -> RejectsWriter {
        RejectsWriter {
            disk: self.disk.clone(),
            path: self.rejects_path.clone(),
            file: None,
            buffer: Vec::new(),
            rows: 0,
        }
    }
}

/// Writes bad rows to the rejects file: a CSV with the header
/// [`REJECTS_HEADER`], one row per bad line with its physical line number,
/// the column at fault, the reason and the original line (lossily decoded
/// as UTF-8, at most [`MAX_LINE_BYTES`] bytes of it).
///
/// Lines are buffered (up to 64 KiB) and appended in chunks; [`finish`]
/// appends the rest and makes the file durable. Dropping the writer without
/// `finish` still appends what is buffered (best effort, as `BufWriter` does).
///
/// [`finish`]: RejectsWriter::finish
pub struct RejectsWriter {
    disk: Rc<dyn Disk>,
    path: PathBuf,
    file: Option<Box<dyn DiskFile>>,
    buffer: Vec<u8>,
    rows: u64,
}

impl fmt::Debug for RejectsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectsWriter")
            .field("path", &self.path)
            .field("open", &self.file.is_some())
            .field("buffered_bytes", &self.buffer.len())
            .field("rows", &self.rows)
            .finish()
    }
}

impl RejectsWriter {
    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The rejects file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one bad line.
    pub fn write(
        &mut self,
        line: u64,
        column: &str,
        reason: &str,
        original: &[u8],
    ) -> Result<(), BackfillError> {
        debug_assert!(original.len() <= MAX_LINE_BYTES);
        if self.file.is_none() {
            let file = self
                .disk
                .create_truncate(&self.path)
                .map_err(io_error("create", &self.path))?;
            self.file = Some(file);
            self.buffer.extend_from_slice(REJECTS_HEADER.as_bytes());
            self.buffer.push(b'\n');
        }
        let row = format!(
            "{line},{},{},{}\n",
            quote_field(column),
            quote_field(reason),
            quote_field(&String::from_utf8_lossy(original))
        );
        self.buffer.extend_from_slice(row.as_bytes());
        self.rows += 1;
        if self.buffer.len() >= REJECTS_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends the buffered lines to the file.
    fn flush(&mut self) -> Result<(), BackfillError> {
        if let Some(file) = self.file.as_mut()
            && !self.buffer.is_empty()
        {
            file.append(&self.buffer).map_err(io_error("write", &self.path))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Appends what is buffered and makes the file and its directory entry
    /// durable, if a file was written.
    pub fn finish(&mut self) -> Result<(), BackfillError> {
        self.flush()?;
        if let Some(file) = self.file.as_mut() {
            file.sync_data().map_err(io_error("sync", &self.path))?;
            let dir = parent_dir(&self.path);
            self.disk.sync_dir(dir).map_err(io_error("sync directory", dir))?;
        }
        Ok(())
    }
}

impl Drop for RejectsWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("rejects not written: {e}");
        }
    }
}
