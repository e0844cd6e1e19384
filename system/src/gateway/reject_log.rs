//! The local reject log: readings that failed validation against the schema
//! (or could not be spooled for another reason that is the reading's fault),
//! one JSON object per line with the reason, so that nothing is dropped
//! silently. Written through the `Disk` seam and synced per entry (rejects
//! are rare); bounded: past `max_bytes` the log is rotated once to `.1`.

use crate::disk::{Disk, DiskFile};
use crate::model::Reading;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Default bound of the reject log before it rotates, bytes.
pub const REJECT_LOG_MAX_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;

#[derive(Serialize)]
struct Entry<'a> {
    rejected_at_ms: i64,
    reason: &'a str,
    reading: &'a Reading,
}

/// An append-only JSON-lines file of rejected readings.
pub struct RejectLog {
    disk: Rc<dyn Disk>,
    path: PathBuf,
    max_bytes: u64,
    file: Option<Box<dyn DiskFile>>,
}

impl RejectLog {
    /// A reject log at `path` (created at the first reject).
    pub fn new(disk: Rc<dyn Disk>, path: PathBuf, max_bytes: u64) -> Self {
        assert!(max_bytes > 0, "a reject log holds at least one byte");
        Self {
            disk,
            path,
            max_bytes,
            file: None,
        }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one rejected reading with its reason and syncs it.
    pub fn append(&mut self, reading: &Reading, reason: &str, rejected_at_ms: i64) -> io::Result<()> {
        let mut line = serde_json::to_vec(&Entry {
            rejected_at_ms,
            reason,
            reading,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        let file = self.open()?;
        if file.len()? + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = self.open()?;
        file.append(&line)?;
        file.sync_data()
    }

    fn open(&mut self) -> io::Result<&mut Box<dyn DiskFile>> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                self.disk.create_dir_all(dir)?;
            }
            let file = if self.disk.exists(&self.path)? {
                self.disk.open(&self.path)?
            } else {
                let file = self.disk.create_new(&self.path)?;
                self.sync_parent()?;
                file
            };
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        self.disk.rename(&self.path, Path::new(&rotated))?;
        self.sync_parent()
    }

    fn sync_parent(&self) -> io::Result<()> {
        match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => self.disk.sync_dir(dir),
            None => self.disk.sync_dir(Path::new(".")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::StdDisk;

    fn reading(seq: u64) -> Reading {
        Reading {
            gateway_id: "g".into(),
            sensor_id: "s".into(),
            seq,
            event_time_ms: 5,
            moisture_vwc: f64::NAN,
            soil_temp_c: Some(1.0),
            bulk_ec_ds_m: None,
            depth_cm: 1,
            battery_v: None,
            source_flag: None,
        }
    }

    #[test]
    fn entries_are_json_lines_and_the_log_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.jsonl");
        let mut log = RejectLog::new(Rc::new(StdDisk), path.clone(), 400);
        log.append(&reading(1), "field `moisture_vwc`: not a finite number", 10)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let entry: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(entry["reason"], "field `moisture_vwc`: not a finite number");
        assert_eq!(entry["reading"]["seq"], 1);
        assert_eq!(entry["rejected_at_ms"], 10);
        for seq in 2..10 {
            log.append(&reading(seq), "bad", 10).unwrap();
        }
        assert!(dir.path().join("rejects.jsonl.1").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 400);
    }
}
