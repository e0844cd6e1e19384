//! `soilstream archive verify`: what an archive holds, and every way it
//! breaks the protocol's promises.
//!
//! Checked, per topic: the commit markers of each partition chain (each
//! batch starts right after the previous one); every committed file exists
//! with its listed size and rows, every row's (partition, offset) is inside
//! its batch and archived once, every row's event date is its directory's,
//! every reading identity is archived once; the data files listed under the
//! topic are exactly the committed ones (no orphans, no leftovers); no
//! intent is left over; and, given the topic's offsets, no offset is
//! missing.

use super::columns::{ArchiveRow, ArchiveSchema, decode_file};
use super::layout::{
    Manifest, ManifestName, data_prefix, event_date, manifest_prefix, marker_path, parse_data_path,
    parse_manifest_name,
};
use super::protocol::read_manifest;
use super::store::{ArchiveStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many problems are listed (the count is always exact).
pub const PROBLEMS_LISTED_MAX: usize = 200;

/// What to check against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The field holding the event time.
    pub event_time_field: String,
    /// The fields identifying a reading.
    pub identity_fields: Vec<String>,
    /// The topic's `(low, high)` watermarks per partition, when a broker
    /// was given: every offset in `[low, high)` must be archived.
    pub topic_offsets: Option<BTreeMap<i32, (i64, i64)>>,
}

/// One partition's archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSummary {
    /// First offset of the first committed batch.
    pub first: i64,
    /// Next offset to archive (last + 1 of the last batch).
    pub next: i64,
    /// Committed batches.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
    /// Records listed as skipped.
    pub skipped: u64,
}

/// The result of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Per partition.
    pub partitions: BTreeMap<i32, PartitionSummary>,
    /// Rows per event date.
    pub rows_per_date: BTreeMap<String, u64>,
    /// Committed data files.
    pub files: u64,
    /// Rows of each committed file (small files are those under
    /// `rotation.small_file_rows`).
    pub file_rows: Vec<(String, u64)>,
    /// Problems found (at most [`PROBLEMS_LISTED_MAX`] listed).
    pub problems: Vec<String>,
    /// Problems found in all.
    pub problem_count: u64,
}

impl VerifyReport {
    /// Whether the archive keeps every promise.
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(text);
        }
    }

    /// Rows in all.
    pub fn rows(&self) -> u64 {
        self.partitions.values().map(|p| p.rows).sum()
    }

    /// A human-readable report.
    pub fn render(&self, topic: &str) -> String {
        let mut out = format!(
            "archive of `{topic}`: {} rows in {} files, {} partitions, {} dates\n",
            self.rows(),
            self.files,
            self.partitions.len(),
            self.rows_per_date.len()
        );
        for (p, s) in &self.partitions {
            out.push_str(&format!(
                "  partition {p}: offsets {}..{} in {} batches, {} rows, {} skipped\n",
                s.first, s.next, s.batches, s.rows, s.skipped
            ));
        }
        for (date, rows) in &self.rows_per_date {
            out.push_str(&format!("  event_date={date}: {rows} rows\n"));
        }
        if self.is_clean() {
            out.push_str("verdict: CLEAN\n");
        } else {
            out.push_str(&format!("verdict: {} PROBLEMS\n", self.problem_count));
            for p in &self.problems {
                out.push_str(&format!("  - {p}\n"));
            }
            if self.problem_count as usize > self.problems.len() {
                out.push_str(&format!(
                    "  ... and {} more\n",
                    self.problem_count as usize - self.problems.len()
                ));
            }
        }
        out
    }
}

/// Every committed batch of `topic`, per partition in chain order, with
/// problems of the chain added to `report`.
pub async fn committed_batches(
    store: &dyn ArchiveStore,
    topic: &str,
    report: &mut VerifyReport,
) -> Result<BTreeMap<i32, Vec<Manifest>>, StoreError> {
    let root = format!("{}/{topic}/", super::layout::MANIFEST_DIR);
    let mut names: BTreeMap<i32, Vec<ManifestName>> = BTreeMap::new();
    for object in store.list(&root).await? {
        let rest = &object.path[root.len()..];
        let partition = rest
            .strip_prefix("p=")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse::<i32>().ok());
        match (partition, parse_manifest_name(&object.path)) {
            (Some(p), Some(name)) if object.path.starts_with(&manifest_prefix(topic, p)) => {
                names.entry(p).or_default().push(name)
            }
            _ => report.problem(format!("`{}` is not an archive manifest", object.path)),
        }
    }
    let mut out = BTreeMap::new();
    for (partition, mut list) in names {
        list.sort();
        let mut commits: BTreeMap<i64, Manifest> = BTreeMap::new();
        for name in &list {
            match *name {
                ManifestName::Pending { first, attempt } => report.problem(format!(
                    "partition {partition}: intent of the batch at offset {first} attempt {attempt} is left over \
                     (a writer is running, or crashed: recovery removes it)"
                )),
                ManifestName::Marker { first, attempt } => {
                    let path = marker_path(topic, partition, first, attempt);
                    match read_manifest(store, partition, &path).await {
                        Ok(m) if m.aborted_by.is_some() => {}
                        Ok(m) => {
                            if let Some(other) = commits.get(&first) {
                                report.problem(format!(
                                    "partition {partition}: two commits at offset {first} (by `{}` and `{}`)",
                                    other.writer_id, m.writer_id
                                ));
                            } else {
                                commits.insert(first, m);
                            }
                        }
                        Err(e) => report.problem(e.to_string()),
                    }
                }
            }
        }
        let mut chain: Vec<Manifest> = Vec::new();
        for (first, m) in commits {
            if let Some(previous) = chain.last()
                && first != previous.last + 1
            {
                report.problem(format!(
                    "partition {partition}: markers do not chain: batch {}..={} is followed by one at {first}",
                    previous.first, previous.last
                ));
            }
            chain.push(m);
        }
        out.insert(partition, chain);
    }
    Ok(out)
}

/// Reads every committed file's rows (in chain order), for checkers and
/// replay; `f` gets each file's schema and rows.
pub async fn for_each_committed_file(
    store: &dyn ArchiveStore,
    batches: &BTreeMap<i32, Vec<Manifest>>,
    event_time_field: &str,
    mut f: impl FnMut(&Manifest, &str, &str, &ArchiveSchema, &[ArchiveRow]),
    mut on_error: impl FnMut(String),
) -> Result<(), StoreError> {
    for chain in batches.values() {
        for manifest in chain {
            for file in &manifest.files {
                let bytes = match store.get(&file.path).await {
                    Ok(b) => b,
                    Err(StoreError::NotFound(_)) => {
                        on_error(format!("committed file `{}` is missing", file.path));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if bytes.len() as u64 != file.bytes {
                    on_error(format!(
                        "`{}` has {} bytes, its manifest says {}",
                        file.path,
                        bytes.len(),
                        file.bytes
                    ));
                }
                match decode_file(&file.path, bytes, event_time_field) {
                    Ok(decoded) => f(
                        manifest,
                        &file.path,
                        &file.event_date,
                        &decoded.schema,
                        &decoded.rows,
                    ),
                    Err(e) => on_error(e.to_string()),
                }
            }
        }
    }
    Ok(())
}

/// Verifies the archive of `topic` in `store`.
pub async fn verify(
    store: &dyn ArchiveStore,
    topic: &str,
    options: &VerifyOptions,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let batches = committed_batches(store, topic, &mut report).await?;
    let mut committed_paths: BTreeSet<String> = BTreeSet::new();
    for (partition, chain) in &batches {
        let summary = report.partitions.entry(*partition).or_default();
        summary.first = chain.first().map_or(0, |m| m.first);
        summary.next = chain.last().map_or(0, |m| m.last + 1);
        summary.batches = chain.len() as u64;
        summary.skipped = chain.iter().map(|m| m.skipped.len() as u64).sum();
        for m in chain {
            committed_paths.extend(m.files.iter().map(|f| f.path.clone()));
        }
    }
    let mut seen_offsets: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    let mut identities: BTreeSet<Vec<String>> = BTreeSet::new();
    let problems = std::cell::RefCell::new(Vec::new());
    let mut per_partition_rows: BTreeMap<i32, u64> = BTreeMap::new();
    let mut rows_per_date: BTreeMap<String, u64> = BTreeMap::new();
    let mut file_rows = Vec::new();
    for_each_committed_file(
        store,
        &batches,
        &options.event_time_field,
        |manifest, path, date, schema, rows| {
            let listed = manifest
                .files
                .iter()
                .find(|f| f.path == path)
                .map_or(0, |f| f.rows);
            if listed != rows.len() as u64 {
                problems.borrow_mut().push(format!(
                    "`{path}` has {} rows, its manifest says {listed}",
                    rows.len()
                ));
            }
            file_rows.push((path.to_string(), rows.len() as u64));
            for row in rows {
                if row.partition != manifest.partition
                    || row.offset < manifest.first
                    || row.offset > manifest.last
                {
                    problems.borrow_mut().push(format!(
                        "`{path}`: row at {}:{} is outside its batch {}:{}..={}",
                        row.partition, row.offset, manifest.partition, manifest.first, manifest.last
                    ));
                }
                if !seen_offsets.entry(row.partition).or_default().insert(row.offset) {
                    problems.borrow_mut().push(format!(
                        "offset {}:{} is archived twice (again in `{path}`)",
                        row.partition, row.offset
                    ));
                }
                let row_date = event_date(row.event_time_ms);
                if row_date != date {
                    problems.borrow_mut().push(format!(
                        "`{path}`: row at {}:{} has event date {row_date}, not its directory's {date}",
                        row.partition, row.offset
                    ));
                }
                if !options.identity_fields.is_empty() {
                    let identity: Vec<String> = options
                        .identity_fields
                        .iter()
                        .map(|f| schema.field_text(row, f).unwrap_or_default())
                        .collect();
                    if !identities.insert(identity.clone()) {
                        problems.borrow_mut().push(format!(
                            "reading {identity:?} is archived twice (again at {}:{})",
                            row.partition, row.offset
                        ));
                    }
                }
                *per_partition_rows.entry(row.partition).or_default() += 1;
                *rows_per_date.entry(date.to_string()).or_default() += 1;
            }
        },
        |e| problems.borrow_mut().push(e),
    )
    .await?;
    for p in problems.into_inner() {
        report.problem(p);
    }
    for (partition, rows) in per_partition_rows {
        report.partitions.entry(partition).or_default().rows = rows;
    }
    report.rows_per_date = rows_per_date;
    report.files = committed_paths.len() as u64;
    report.file_rows = file_rows;
    for object in store.list(&data_prefix(topic)).await? {
        if committed_paths.contains(&object.path) {
            continue;
        }
        match parse_data_path(&object.path) {
            Some(_) => report.problem(format!(
                "`{}` is in no committed batch (an orphan: readers see it)",
                object.path
            )),
            None => report.problem(format!("`{}` is not an archive file", object.path)),
        }
    }
    if let Some(offsets) = &options.topic_offsets {
        for (partition, &(low, high)) in offsets {
            let summary = report.partitions.get(partition).cloned().unwrap_or_default();
            if high > low && summary.batches == 0 {
                report.problem(format!(
                    "partition {partition}: offsets {low}..{high} are on the topic, none archived"
                ));
                continue;
            }
            if summary.first > low {
                report.problem(format!(
                    "partition {partition}: offsets {low}..{} are on the topic but not archived",
                    summary.first
                ));
            }
            if summary.next < high {
                report.problem(format!(
                    "partition {partition}: offsets {}..{high} are on the topic but not archived yet",
                    summary.next
                ));
            }
        }
    }
    Ok(report)
}
