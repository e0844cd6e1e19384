//! Log tails printed when a test fails, whatever made it fail.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of each log printed when a test fails.
pub const FAILURE_LOG_TAIL_BYTES: u64 = 12_000;

/// Prints the tails of the registered log files when dropped during a
/// panic (a failed assertion, a timeout), so every failure comes with the
/// gateway's and the broker's view of it.
///
/// Declare it after the fixtures whose logs it prints: locals drop in reverse
/// order, so it then prints before a broker removes its data directory.
#[derive(Debug, Default)]
pub struct LogsOnFailure {
    logs: Vec<(String, PathBuf)>,
}

impl LogsOnFailure {
    /// A guard with no logs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a log file, printed under `name`.
    pub fn watch(&mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> &mut Self {
        self.logs.push((name.into(), path.into()));
        self
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, path) in &self.logs {
            eprintln!(
                "\n===== {name}: last {FAILURE_LOG_TAIL_BYTES} bytes of {} =====\n{}\n===== end of {name} =====",
                path.display(),
                tail(path, FAILURE_LOG_TAIL_BYTES)
            );
        }
    }
}

/// The last `max_bytes` of a file (lossy UTF-8), or why it cannot be read.
pub fn tail(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.take(max_bytes).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}
