//! The open batch of one partition, and when it is cut.
//!
//! A batch is a contiguous offset range of one partition, written as one
//! file per event date. It is cut (closed and committed) when it reaches
//! `max_rows` or `max_bytes`, when it is `max_age_ms` old, before a record
//! with a new writer schema (a file holds one schema), and before a record
//! whose event date would be date number `max_open_dates + 1`. So memory is
//! bounded by `max_bytes` per owned partition, whatever the spread of event
//! times, and a batch writes at most `max_open_dates` files.
//!
//! Small files come from cuts by age (a quiet partition), by dates (a
//! backfill interleaving many old days with live data) and by schema
//! changes; each is counted (`soilstream_archive_small_files_total`, a file
//! under `small_file_rows` rows) and bounded by those limits: at most
//! `max_open_dates` files per batch, at most one batch per `max_age_ms` per
//! partition when the flow is slow.

use super::columns::{ArchiveRow, ArchiveSchema, ColumnsError};
use super::layout::{ManifestFile, SkippedRecord, data_path, event_date};
use super::protocol::{BatchPlan, EncodedFile};
use std::collections::BTreeMap;
use std::rc::Rc;

/// When batches are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationLimits {
    /// Rows per batch.
    pub max_rows: u64,
    /// Approximate in-memory bytes per batch.
    pub max_bytes: u64,
    /// Age of a batch (from its first record) when it is cut, ms.
    pub max_age_ms: u64,
    /// Distinct event dates in one batch.
    pub max_open_dates: usize,
    /// A file with fewer rows counts as small.
    pub small_file_rows: u64,
}

impl RotationLimits {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rows == 0 || self.max_bytes == 0 || self.max_age_ms == 0 || self.max_open_dates == 0 {
            return Err(
                "rotation limits (max_rows, max_bytes, max_age_ms, max_open_dates) must be positive".into(),
            );
        }
        if self.max_open_dates > 1_000 {
            return Err("max_open_dates must be at most 1000".into());
        }
        Ok(())
    }
}

/// Why a batch was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CutReason {
    /// `max_rows` reached.
    Rows,
    /// `max_bytes` reached.
    Bytes,
    /// `max_age_ms` reached.
    Age,
    /// The next record has another event date and `max_open_dates` are open.
    Dates,
    /// The next record has another writer schema.
    Schema,
    /// The component stops cleanly.
    Shutdown,
}

impl CutReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CutReason::Rows => "rows",
            CutReason::Bytes => "bytes",
            CutReason::Age => "age",
            CutReason::Dates => "dates",
            CutReason::Schema => "schema",
            CutReason::Shutdown => "shutdown",
        }
    }
}

/// An open batch: rows by event date, in offset order within each date.
#[derive(Debug)]
pub struct OpenBatch {
    /// Position: the batch's first offset.
    pub first: i64,
    /// Last offset taken (a row or a skipped record).
    pub last: i64,
    schema: Option<Rc<ArchiveSchema>>,
    by_date: BTreeMap<String, Vec<ArchiveRow>>,
    skipped: Vec<SkippedRecord>,
    rows: u64,
    bytes: u64,
    opened_at_ms: i64,
}

impl OpenBatch {
    /// An empty batch at `position`, opened at `now_ms`.
    pub fn new(position: i64, now_ms: i64) -> Self {
        Self {
            first: position,
            last: position - 1,
            schema: None,
            by_date: BTreeMap::new(),
            skipped: Vec::new(),
            rows: 0,
            bytes: 0,
            opened_at_ms: now_ms,
        }
    }

    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Rows taken.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Distinct event dates open.
    pub fn open_dates(&self) -> usize {
        self.by_date.len()
    }

    /// Whether the batch must be cut before taking `row`.
    pub fn cut_before(&self, row: &ArchiveRow, limits: &RotationLimits) -> Option<CutReason> {
        if self.rows == 0 {
            return None;
        }
        if self
            .schema
            .as_ref()
            .is_some_and(|s| s.schema_id() != row.schema_id)
        {
            return Some(CutReason::Schema);
        }
        if self.by_date.len() >= limits.max_open_dates
            && !self.by_date.contains_key(&event_date(row.event_time_ms))
        {
            return Some(CutReason::Dates);
        }
        None
    }

    /// Takes a row (after [`OpenBatch::cut_before`] said no cut).
    pub fn push(&mut self, schema: &Rc<ArchiveSchema>, row: ArchiveRow) {
        assert!(row.offset > self.last, "offsets are taken in order");
        assert!(row.offset >= self.first, "a batch starts at its position");
        assert_eq!(row.schema_id, schema.schema_id(), "rows carry their schema");
        if let Some(current) = &self.schema {
            assert_eq!(
                current.schema_id(),
                schema.schema_id(),
                "a batch holds one schema"
            );
        }
        self.schema = Some(schema.clone());
        self.last = row.offset;
        self.rows += 1;
        self.bytes += row.approx_bytes();
        self.by_date
            .entry(event_date(row.event_time_ms))
            .or_default()
            .push(row);
    }

    /// Takes a record that cannot be archived.
    pub fn skip(&mut self, offset: i64, reason: String) {
        assert!(
            offset > self.last && offset >= self.first,
            "offsets are taken in order"
        );
        self.last = offset;
        self.bytes += 64 + reason.len() as u64;
        self.skipped.push(SkippedRecord { offset, reason });
    }

    /// Whether the batch is full after its last record.
    pub fn full(&self, limits: &RotationLimits) -> Option<CutReason> {
        if self.rows >= limits.max_rows {
            Some(CutReason::Rows)
        } else if self.bytes >= limits.max_bytes {
            Some(CutReason::Bytes)
        } else {
            None
        }
    }

    /// Whether the batch is old enough to be cut at `now_ms`.
    pub fn expired(&self, now_ms: i64, limits: &RotationLimits) -> bool {
        !self.is_empty() && now_ms.saturating_sub(self.opened_at_ms) >= limits.max_age_ms as i64
    }

    /// When the batch expires, ms.
    pub fn expires_at_ms(&self, limits: &RotationLimits) -> i64 {
        self.opened_at_ms.saturating_add(limits.max_age_ms as i64)
    }

    /// Encodes the batch into its files. `wall_clock_date` is a planted
    /// bug (every row filed under the archive clock's date, as a
    /// wall-clock partitioner does), never set outside tests.
    pub fn plan(
        self,
        topic: &str,
        partition: i32,
        attempt: u32,
        writer_id: &str,
        wall_clock_date: Option<&str>,
    ) -> Result<BatchPlan, ColumnsError> {
        assert!(!self.is_empty(), "an empty batch is never committed");
        let mut files = Vec::with_capacity(self.by_date.len());
        let mut schema_ids = Vec::new();
        let mut by_date = self.by_date;
        if let Some(date) = wall_clock_date {
            let mut rows: Vec<ArchiveRow> = std::mem::take(&mut by_date).into_values().flatten().collect();
            rows.sort_by_key(|r| r.offset);
            by_date.insert(date.to_string(), rows);
        }
        if let Some(schema) = &self.schema {
            schema_ids.push(schema.schema_id());
            for (date, rows) in &by_date {
                let bytes = schema.encode(topic, rows)?;
                let path = data_path(topic, date, partition, self.first, self.last);
                files.push(EncodedFile {
                    entry: ManifestFile {
                        path,
                        event_date: date.clone(),
                        rows: rows.len() as u64,
                        bytes: bytes.len() as u64,
                    },
                    bytes,
                });
            }
        }
        Ok(BatchPlan {
            topic: topic.to_string(),
            partition,
            first: self.first,
            last: self.last,
            attempt,
            files,
            skipped: self.skipped,
            schema_ids,
            writer_id: writer_id.to_string(),
        })
    }
}
