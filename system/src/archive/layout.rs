//! Where the archive puts things, and the manifests of its batches.
//!
//! ```text
//! <topic>/event_date=YYYY-MM-DD/<topic>+<partition>+<first:020>+<last:020>.parquet
//! _archive/<topic>/p=<partition>/<first:020>.<attempt:04>.pending   intent: the files an attempt will write
//! _archive/<topic>/p=<partition>/<first:020>.<attempt:04>.commit    marker: committed, or aborted (fenced)
//! ```
//!
//! `first` and `last` are the batch's Kafka offset range (inclusive), shared
//! by every date file the batch wrote; offsets are zero-padded to 20 digits,
//! so name order is offset order. The date is the reading's own event time in
//! UTC. The leading underscore keeps the manifests out of readers' globs
//! (DuckDB `read_parquet('<topic>/*/*.parquet')`, pyarrow datasets).
//!
//! A batch is tried at a *position* (its first offset) under an *attempt*
//! number; the pending object is the attempt's lock (create-if-absent), the
//! marker its outcome (create-if-absent too, so of a commit and an abort of
//! the same attempt exactly one wins). docs/archive.md has the protocol.

use serde::{Deserialize, Serialize};

/// The directory manifests live under.
pub const MANIFEST_DIR: &str = "_archive";

/// The UTC date (`YYYY-MM-DD`) of an event time, ms since the Unix epoch.
pub fn event_date(event_time_ms: i64) -> String {
    let (year, month, day) = crate::clock::civil_date_utc(event_time_ms.div_euclid(86_400_000));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The path of a batch's data file for one event date.
pub fn data_path(topic: &str, date: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}/event_date={date}/{topic}+{partition}+{first:020}+{last:020}.parquet")
}

/// The prefix of every data file of `topic`.
pub fn data_prefix(topic: &str) -> String {
    format!("{topic}/event_date=")
}

/// The directory of a partition's manifests.
pub fn manifest_prefix(topic: &str, partition: i32) -> String {
    format!("{MANIFEST_DIR}/{topic}/p={partition}/")
}

/// The intent of attempt `attempt` of the batch at position `first`.
pub fn pending_path(topic: &str, partition: i32, first: i64, attempt: u32) -> String {
    format!(
        "{}{first:020}.{attempt:04}.pending",
        manifest_prefix(topic, partition)
    )
}

/// The marker (commit or abort) of attempt `attempt` at position `first`.
pub fn marker_path(topic: &str, partition: i32, first: i64, attempt: u32) -> String {
    format!(
        "{}{first:020}.{attempt:04}.commit",
        manifest_prefix(topic, partition)
    )
}

/// Attempt numbers are below this (four digits in the name).
pub const ATTEMPT_LIMIT: u32 = 10_000;

/// What a manifest object's name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ManifestName {
    /// `<first>.<attempt>.pending`.
    Pending {
        /// Position (first offset).
        first: i64,
        /// Attempt number.
        attempt: u32,
    },
    /// `<first>.<attempt>.commit`.
    Marker {
        /// Position (first offset).
        first: i64,
        /// Attempt number.
        attempt: u32,
    },
}

/// Parses the last segment of a manifest path.
pub fn parse_manifest_name(path: &str) -> Option<ManifestName> {
    let name = path.rsplit('/').next()?;
    let mut parts = name.split('.');
    let (digits, attempt_digits, kind) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || digits.len() != 20
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || attempt_digits.len() != 4
        || !attempt_digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let first: i64 = digits.parse().ok()?;
    let attempt: u32 = attempt_digits.parse().ok()?;
    match kind {
        "pending" => Some(ManifestName::Pending { first, attempt }),
        "commit" => Some(ManifestName::Marker { first, attempt }),
        _ => None,
    }
}

/// The (topic, date, partition, first, last) of a data file path.
pub fn parse_data_path(path: &str) -> Option<(String, String, i32, i64, i64)> {
    let mut parts = path.split('/');
    let topic = parts.next()?;
    let date = parts.next()?.strip_prefix("event_date=")?;
    let name = parts.next()?.strip_suffix(".parquet")?;
    if parts.next().is_some() {
        return None;
    }
    let mut fields = name.rsplitn(4, '+');
    let last = fields.next()?.parse().ok()?;
    let first = fields.next()?.parse().ok()?;
    let partition = fields.next()?.parse().ok()?;
    let file_topic = fields.next()?;
    (file_topic == topic).then(|| (topic.to_string(), date.to_string(), partition, first, last))
}

/// One data file of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Object path.
    pub path: String,
    /// Event date of its rows.
    pub event_date: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A clean record the archive could not write, and why (so no offset of
/// the partition goes unaccounted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// Kafka offset.
    pub offset: i64,
    /// What was wrong with it.
    pub reason: String,
}

/// The content of an intent (`.pending`) or a marker (`.commit`): a marker
/// is a commit unless [`Manifest::aborted_by`] is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Topic archived.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// First offset of the batch.
    pub first: i64,
    /// Last offset of the batch (inclusive).
    pub last: i64,
    /// The data files.
    pub files: Vec<ManifestFile>,
    /// Records of the range that are in no file, with the reason.
    pub skipped: Vec<SkippedRecord>,
    /// Writer schema ids of the rows.
    pub schema_ids: Vec<u32>,
    /// The archive instance that wrote it.
    pub writer_id: String,
    /// Set on an abort marker: the instance that fenced this attempt (the
    /// files listed are garbage and must not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<String>,
}

/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// Why manifest bytes are not a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// The manifest as bytes: JSON, then a newline and the CRC-32C of the
    /// JSON in hex, so a torn marker is never taken for a commit.
    pub fn to_bytes(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a manifest serialises");
        let crc = crc32c::crc32c(&json);
        let mut out = json;
        out.extend_from_slice(format!("\ncrc32c={crc:08x}\n").as_bytes());
        out
    }

    /// Parses manifest bytes, checking the CRC.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError("not UTF-8".into()))?;
        let (json, trailer) = text
            .rsplit_once("\ncrc32c=")
            .ok_or_else(|| ManifestError("no checksum (torn?)".into()))?;
        let crc =
            u32::from_str_radix(trailer.trim_end(), 16).map_err(|_| ManifestError("bad checksum".into()))?;
        if crc32c::crc32c(json.as_bytes()) != crc {
            return Err(ManifestError("checksum mismatch (torn or damaged)".into()));
        }
        let manifest: Manifest = serde_json::from_str(json).map_err(|e| ManifestError(e.to_string()))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ManifestError(format!("unknown version {}", manifest.version)));
        }
        if manifest.first > manifest.last {
            return Err(ManifestError(format!(
                "first offset {} after last {}",
                manifest.first, manifest.last
            )));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(event_date(0), "1970-01-01");
        assert_eq!(event_date(1_777_593_600_000), "2026-05-01");
        assert_eq!(event_date(1_777_593_600_000 - 1), "2026-04-30");
        assert_eq!(event_date(951_782_400_000), "2000-02-29");
        assert_eq!(event_date(-1), "1969-12-31");
    }

    #[test]
    fn paths_round_trip_and_sort_by_offset() {
        let p = data_path("soil-moisture-clean", "2026-05-01", 2, 7, 1_234);
        assert_eq!(
            p,
            "soil-moisture-clean/event_date=2026-05-01/soil-moisture-clean+2+00000000000000000007+00000000000000001234.parquet"
        );
        assert_eq!(
            parse_data_path(&p),
            Some(("soil-moisture-clean".into(), "2026-05-01".into(), 2, 7, 1_234))
        );
        assert!(data_path("t", "d", 0, 9, 9) < data_path("t", "d", 0, 10, 10));
        assert_eq!(
            parse_manifest_name(&marker_path("t", 1, 42, 3)),
            Some(ManifestName::Marker {
                first: 42,
                attempt: 3
            })
        );
        assert_eq!(
            parse_manifest_name(&pending_path("t", 1, 0, 0)),
            Some(ManifestName::Pending { first: 0, attempt: 0 })
        );
        assert!(marker_path("t", 1, 42, 9) < marker_path("t", 1, 42, 10));
        assert_eq!(parse_manifest_name("_archive/t/p=1/x.commit"), None);
        assert_eq!(
            parse_manifest_name("_archive/t/p=1/00000000000000000001.commit"),
            None
        );
    }

    #[test]
    fn torn_manifests_are_refused() {
        let m = Manifest {
            version: MANIFEST_VERSION,
            topic: "t".into(),
            partition: 0,
            first: 0,
            last: 9,
            files: vec![],
            skipped: vec![],
            schema_ids: vec![3],
            writer_id: "a".into(),
            aborted_by: None,
        };
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        for cut in 0..bytes.len() - 1 {
            assert!(Manifest::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        assert!(Manifest::from_bytes(&flipped).is_err());
    }
}
