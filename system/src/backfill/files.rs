//! Every file the backfill touches, through `std::fs`: the log (read), the
//! checkpoint (read, replaced atomically) and the rejects file (written).
//!
//! This is the only place the backfill does file I/O. It is real-world I/O
//! on purpose: a backfill reads a file an operator copied off an SD card.

use super::BackfillError;
use super::checkpoint::{Checkpoint, Fingerprint, MAX_CHECKPOINT_BYTES};
use super::lines::{HashingReader, LineReader, MAX_LINE_BYTES, quote_field};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Read buffer size for the log, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The header row of a rejects file.
pub const REJECTS_HEADER: &str = "line,column,reason,original_line";

/// The log being backfilled, read line by line while hashing its content.
pub type LogReader = LineReader<BufReader<HashingReader<File>>>;

/// The paths of one backfill.
#[derive(Debug, Clone)]
pub struct BackfillFiles {
    csv_path: PathBuf,
    checkpoint_path: PathBuf,
    rejects_path: PathBuf,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackfillError {
    let path = path.display().to_string();
    move |source| BackfillError::Io { op, path, source }
}

impl BackfillFiles {
    /// The files of a backfill of `csv_path`.
    pub fn new(csv_path: PathBuf, checkpoint_path: PathBuf, rejects_path: PathBuf) -> Self {
        Self {
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
        let file = File::open(&self.csv_path).map_err(io_error("open", &self.csv_path))?;
        let mut reader = HashingReader::new(file);
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
        let file = File::open(&self.csv_path).map_err(io_error("open", &self.csv_path))?;
        Ok(LineReader::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            HashingReader::new(file),
        )))
    }

    /// The checkpoint, if the file exists.
    pub fn read_checkpoint(&self) -> Result<Option<Checkpoint>, BackfillError> {
        let path = &self.checkpoint_path;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_CHECKPOINT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error("read", path))?;
        if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(BackfillError::CheckpointUnreadable {
                path: path.display().to_string(),
                reason: format!("larger than {MAX_CHECKPOINT_BYTES} bytes"),
            });
        }
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
            let mut file = File::create(&temp).map_err(io_error("create", &temp))?;
            file.write_all(&checkpoint.encode())
                .map_err(io_error("write", &temp))?;
            file.sync_all().map_err(io_error("sync", &temp))?;
        }
        fs::rename(&temp, path).map_err(io_error("rename", path))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync directory", dir))?;
        Ok(())
    }

    /// A writer of the rejects file, which creates (or truncates) the file at
    /// the first reject only.
    pub fn rejects(&self) -> RejectsWriter {
        RejectsWriter {
            path: self.rejects_path.clone(),
            writer: None,
            rows: 0,
        }
    }
}

/// Writes bad rows to the rejects file: a CSV with the header
/// [`REJECTS_HEADER`], one row per bad line with its physical line number,
/// the column at fault, the reason and the original line (lossily decoded
/// as UTF-8, at most [`MAX_LINE_BYTES`] bytes of it).
#[derive(Debug)]
pub struct RejectsWriter {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    rows: u64,
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
        if self.writer.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)
                .map_err(io_error("create", &self.path))?;
            let mut writer = BufWriter::new(file);
            writeln!(writer, "{REJECTS_HEADER}").map_err(io_error("write", &self.path))?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("opened above");
        writeln!(
            writer,
            "{line},{},{},{}",
            quote_field(column),
            quote_field(reason),
            quote_field(&String::from_utf8_lossy(original))
        )
        .map_err(io_error("write", &self.path))?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes and syncs the file, if one was written.
    pub fn finish(&mut self) -> Result<(), BackfillError> {
        if let Some(writer) = self.writer.as_mut() {
            writer.flush().map_err(io_error("write", &self.path))?;
            writer
                .get_ref()
                .sync_all()
                .map_err(io_error("sync", &self.path))?;
        }
        Ok(())
    }
}
