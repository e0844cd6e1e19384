//! The archive checker: judges an archive store against the clean topic it
//! was written from, in either world (the simulator reads its store host
//! through [`soilstream_sim::SimStoreClient`], the end-to-end tests a real
//! directory or bucket through `object_store`).
//!
//! | anomaly | meaning |
//! |---|---|
//! | `lost_archive` | a clean record is in no committed file (or was skipped) |
//! | `duplicate_archive` | a clean record, or a reading identity, in committed files more than once |
//! | `unexpected_archive` | a committed row whose position the clean topic does not have |
//! | `corrupt_archive` | a row's bytes, key or event time differ from its clean record, or a committed file does not decode |
//! | `misfiled_archive` | a row in a date directory other than its event date's (UTC) |
//! | `orphan_file` | a data file in no committed batch: outside readers see its rows |
//! | `archive_verify` | `soilstream archive verify` (the same code) reports a problem: chain, leftovers, counts |
//!
//! Every one fails the run.

use crate::downstream::Examples;
use serde::Serialize;
use soilstream::archive::layout::{
    MANIFEST_DIR, Manifest, ManifestName, data_prefix, event_date, parse_data_path, parse_manifest_name,
};
use soilstream::archive::store::{ArchiveStore, StoreError};
use soilstream::archive::verify::{
    VerifyOptions, VerifyReport, committed_batches, for_each_committed_file, verify,
};
use soilstream::transport::ConsumedRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The kinds of archive anomaly (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveAnomaly {
    /// A clean record archived nowhere.
    LostArchive,
    /// Archived twice.
    DuplicateArchive,
    /// Archived, not in the clean topic.
    UnexpectedArchive,
    /// Altered on the way.
    CorruptArchive,
    /// In the wrong date directory.
    MisfiledArchive,
    /// A data file no marker commits.
    OrphanFile,
    /// `archive verify` is not clean.
    ArchiveVerify,
}

impl ArchiveAnomaly {
    /// The name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::LostArchive => "lost_archive",
            Self::DuplicateArchive => "duplicate_archive",
            Self::UnexpectedArchive => "unexpected_archive",
            Self::CorruptArchive => "corrupt_archive",
            Self::MisfiledArchive => "misfiled_archive",
            Self::OrphanFile => "orphan_file",
            Self::ArchiveVerify => "archive_verify",
        }
    }
}

/// What the archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveTally {
    /// Clean records judged.
    pub clean_records: u64,
    /// Committed batches.
    pub batches: u64,
    /// Committed data files.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Rows per event-date directory.
    pub rows_per_date: BTreeMap<String, u64>,
    /// Data files in no committed batch.
    pub orphan_files: u64,
    /// Attempts fenced by an abort marker (recoveries that found an
    /// uncommitted batch, or a zombie's batch).
    pub aborted_attempts: u64,
}

/// The archive verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveCheckReport {
    /// Whether no anomaly was found.
    pub valid: bool,
    /// What the store holds.
    pub tally: ArchiveTally,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<ArchiveAnomaly, Examples>,
}

impl ArchiveCheckReport {
    fn add(&mut self, kind: ArchiveAnomaly, example: impl FnOnce() -> String) {
        self.anomalies.entry(kind).or_default().record(example);
    }

    /// Occurrences of `kind`.
    pub fn count(&self, kind: ArchiveAnomaly) -> u64 {
        self.anomalies.get(&kind).map_or(0, |e| e.count)
    }
}

impl fmt::Display for ArchiveCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        writeln!(f, "archive: {}", if self.valid { "VALID" } else { "INVALID" })?;
        let dates: Vec<String> = t.rows_per_date.iter().map(|(d, n)| format!("{d}={n}")).collect();
        writeln!(
            f,
            "archive: clean={} batches={} aborted={} files={} rows={} orphans={} dates=[{}]",
            t.clean_records,
            t.batches,
            t.aborted_attempts,
            t.files,
            t.rows,
            t.orphan_files,
            dates.join(" ")
        )?;
        for (kind, e) in &self.anomalies {
            e.write(f, kind.name())?;
        }
        Ok(())
    }
}

/// What the checker needs to know of the archive's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCheckOptions {
    /// The archived topic.
    pub topic: String,
    /// Its event-time field.
    pub event_time_field: String,
    /// The fields of a reading's identity.
    pub identity_fields: Vec<String>,
}

impl ArchiveCheckOptions {
    /// The archive's defaults (`[archive]` of the embedded configuration).
    pub fn defaults() -> Self {
        let a = soilstream::archive::ArchiveSettings::defaults().archive;
        Self {
            topic: a.topic,
            event_time_field: a.event_time_field,
            identity_fields: a.identity_fields,
        }
    }
}

/// One committed row, as the checker compares it.
struct Archived {
    path: String,
    date: String,
    value: Result<Vec<u8>, String>,
    key: Option<Vec<u8>>,
    event_time_ms: i64,
}

/// Judges the archive in `store` against `clean`: the clean topic read to
/// its end in (partition, offset) order.
pub async fn check_archive(
    store: &dyn ArchiveStore,
    clean: &[ConsumedRecord],
    options: &ArchiveCheckOptions,
) -> Result<ArchiveCheckReport, StoreError> {
    use ArchiveAnomaly as A;
    let mut report = ArchiveCheckReport::default();
    report.tally.clean_records = clean.len() as u64;
    let mut topic_offsets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for record in clean {
        let range = topic_offsets
            .entry(record.partition)
            .or_insert((record.offset, record.offset));
        range.0 = range.0.min(record.offset);
        range.1 = range.1.max(record.offset + 1);
    }

    // What `archive verify` says, with the same code.
    let verified = verify(
        store,
        &options.topic,
        &VerifyOptions {
            event_time_field: options.event_time_field.clone(),
            identity_fields: options.identity_fields.clone(),
            topic_offsets: Some(topic_offsets),
        },
    )
    .await?;
    for problem in &verified.problems {
        report.add(A::ArchiveVerify, || problem.clone());
    }

    // Every committed row, by position.
    let mut scratch = VerifyReport::default();
    let batches = committed_batches(store, &options.topic, &mut scratch).await?;
    report.tally.batches = batches.values().map(|c| c.len() as u64).sum();
    let mut skipped: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut committed_paths: BTreeSet<String> = BTreeSet::new();
    for chain in batches.values() {
        for manifest in chain {
            for s in &manifest.skipped {
                skipped.insert((manifest.partition, s.offset), s.reason.clone());
            }
            committed_paths.extend(manifest.files.iter().map(|f| f.path.clone()));
        }
    }
    report.tally.files = committed_paths.len() as u64;
    let manifests = format!("{MANIFEST_DIR}/{}/", options.topic);
    for object in store.list(&manifests).await? {
        if let Some(ManifestName::Marker { .. }) = parse_manifest_name(&object.path)
            && let Ok(marker) = Manifest::from_bytes(&store.get(&object.path).await?)
            && marker.aborted_by.is_some()
        {
            report.tally.aborted_attempts += 1;
        }
    }
    let mut rows: BTreeMap<(i32, i64), Vec<Archived>> = BTreeMap::new();
    let mut identities: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut undecodable: Vec<String> = Vec::new();
    for_each_committed_file(
        store,
        &batches,
        &options.event_time_field,
        |_, path, date, schema, file_rows| {
            for row in file_rows {
                let place = format!("{path} row {}:{}", row.partition, row.offset);
                let identity: Vec<String> = options
                    .identity_fields
                    .iter()
                    .map(|f| schema.field_text(row, f).unwrap_or_default())
                    .collect();
                identities.entry(identity).or_default().push(place);
                rows.entry((row.partition, row.offset))
                    .or_default()
                    .push(Archived {
                        path: path.to_string(),
                        date: date.to_string(),
                        value: schema.wire_bytes(row).map_err(|e| e.to_string()),
                        key: row.key.clone(),
                        event_time_ms: row.event_time_ms,
                    });
            }
        },
        |e| undecodable.push(e),
    )
    .await?;
    for e in undecodable {
        report.add(A::CorruptArchive, || e);
    }
    report.tally.rows = rows.values().map(|r| r.len() as u64).sum();
    for archived in rows.values().flatten() {
        *report
            .tally
            .rows_per_date
            .entry(archived.date.clone())
            .or_default() += 1;
    }

    // Each clean record exactly once, intact, in its event date's directory.
    let mut clean_positions: BTreeSet<(i32, i64)> = BTreeSet::new();
    for record in clean {
        let position = (record.partition, record.offset);
        clean_positions.insert(position);
        let place = format!("clean {}:{}", record.partition, record.offset);
        let found = rows.get(&position).map_or(&[][..], Vec::as_slice);
        match found {
            [] => {
                let why = skipped
                    .get(&position)
                    .map_or("in no committed file".to_string(), |r| format!("skipped: {r}"));
                report.add(A::LostArchive, || format!("{place} is {why}"));
                continue;
            }
            [_] => {}
            more => {
                let paths: Vec<&str> = more.iter().map(|a| a.path.as_str()).collect();
                report.add(A::DuplicateArchive, || {
                    format!("{place} is archived {} times: {paths:?}", more.len())
                });
            }
        }
        for archived in found {
            let value = record.value.as_deref().unwrap_or_default();
            match &archived.value {
                Ok(bytes) if bytes.as_slice() == value => {}
                Ok(_) => report.add(A::CorruptArchive, || {
                    format!(
                        "{place}: the bytes in {} differ from the clean record",
                        archived.path
                    )
                }),
                Err(e) => report.add(A::CorruptArchive, || {
                    format!("{place}: {} does not re-encode: {e}", archived.path)
                }),
            }
            if archived.key.as_deref() != record.key.as_deref()
                || archived.event_time_ms != record.timestamp_ms
            {
                report.add(A::CorruptArchive, || {
                    format!(
                        "{place}: key or event time in {} ({} ms) differ from the record's ({} ms)",
                        archived.path, archived.event_time_ms, record.timestamp_ms
                    )
                });
            }
            let want = event_date(record.timestamp_ms);
            if archived.date != want {
                report.add(A::MisfiledArchive, || {
                    format!(
                        "{place} (event date {want}) is filed under event_date={} in {}",
                        archived.date, archived.path
                    )
                });
            }
        }
    }
    for (position, archived) in rows.iter().filter(|(p, _)| !clean_positions.contains(p)) {
        report.add(A::UnexpectedArchive, || {
            format!(
                "row {}:{} in {} is not in the clean topic",
                position.0, position.1, archived[0].path
            )
        });
    }
    for (identity, places) in identities.iter().filter(|(_, places)| places.len() > 1) {
        report.add(A::DuplicateArchive, || {
            format!(
                "reading {identity:?} is archived {} times: {places:?}",
                places.len()
            )
        });
    }

    // Nothing else in the data directories.
    for object in store.list(&data_prefix(&options.topic)).await? {
        if committed_paths.contains(&object.path) {
            continue;
        }
        report.tally.orphan_files += 1;
        let what = if parse_data_path(&object.path).is_some() {
            "a data file in no committed batch"
        } else {
            "not an archive file"
        };
        report.add(A::OrphanFile, || {
            format!("{} ({} bytes) is {what}", object.path, object.size_bytes)
        });
    }
    report.valid = report.anomalies.is_empty();
    Ok(report)
}
