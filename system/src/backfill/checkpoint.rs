//! The resume checkpoint: which file, backfilled how, and how far.
//!
//! A checkpoint is one JSON object (plus a newline):
//!
//! ```json
//! {"format_version":1,
//!  "file":{"size_bytes":7412,"sha256":"3f5c...e1"},
//!  "gateway_id":"gw-07-sd","topic":"soil-moisture-raw","default_depth_cm":null,
//!  "acked_through_line":57}
//! ```
//!
//! `acked_through_line` is the highest physical line `L` such that every row
//! on lines `1..=L` is settled: acknowledged by the broker, or rejected as a
//! bad row, or not a row at all (header, blank). Deliveries complete out of
//! order; only this contiguous prefix is recorded, so a resumed run may send
//! again some rows after `L` that had been acknowledged (same identity, same
//! values, removed downstream by identity dedup) but never skips an
//! unacknowledged one.
//!
//! The file is bound to the log's content (size and SHA-256) and to what
//! determines the records' identities and values (gateway id, topic, default
//! depth, and `decoding`: a digest of the format, profile and UTC offset given,
//! absent for the defaults): resuming with anything different would mix two
//! backfills under one prefix, so it is refused.

use serde::{Deserialize, Serialize};

/// The checkpoint format this code writes and reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Largest checkpoint file read, in bytes (a real one is a few hundred).
pub const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;

/// Identifies a log file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// File size in bytes.
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the whole content.
    pub sha256: String,
}

impl Fingerprint {
    /// Size and the first hex digits of the hash, for messages.
    pub fn short(&self) -> String {
        format!(
            "{} bytes, sha256 {}",
            self.size_bytes,
            self.sha256.get(..12).unwrap_or(&self.sha256)
        )
    }
}

/// Progress of one backfill of one log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_FORMAT_VERSION`] for checkpoints written by this code.
    pub format_version: u32,
    /// The log file's content.
    pub file: Fingerprint,
    /// Gateway id the records were produced under.
    pub gateway_id: String,
    /// Topic the records were produced to.
    pub topic: String,
    /// Depth used for rows without one, in cm.
    pub default_depth_cm: Option<i32>,
    /// Digest of how cells were decoded (format, profile, UTC offset);
    /// `None` for the defaults (and in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<String>,
    /// Every row on lines `1..=acked_through_line` is settled.
    pub acked_through_line: u64,
}

impl Checkpoint {
    /// The checkpoint as file content.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a checkpoint serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Reads a checkpoint from file content.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let checkpoint: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if checkpoint.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(format!(
                "format version {} is not {CHECKPOINT_FORMAT_VERSION}",
                checkpoint.format_version
            ));
        }
        Ok(checkpoint)
    }

    /// Checks that this checkpoint may be resumed by a backfill of a file
    /// with `file` content and the other parameters; the reason if not.
    pub fn check_resumable(
        &self,
        file: &Fingerprint,
        gateway_id: &str,
        topic: &str,
        default_depth_cm: Option<i32>,
        decoding: Option<&str>,
    ) -> Result<(), String> {
        if &self.file != file {
            return Err(format!(
                "it was written for different file content ({}; the file now has {})",
                self.file.short(),
                file.short()
            ));
        }
        if self.gateway_id != gateway_id {
            return Err(format!(
                "it was written for gateway id `{}`, not `{gateway_id}`",
                self.gateway_id
            ));
        }
        if self.topic != topic {
            return Err(format!(
                "it was written for topic `{}`, not `{topic}`",
                self.topic
            ));
        }
        if self.default_depth_cm != default_depth_cm {
            return Err(format!(
                "it was written with default depth {:?} cm, not {default_depth_cm:?} cm",
                self.default_depth_cm
            ));
        }
        if self.decoding.as_deref() != decoding {
            return Err(format!(
                "it was written with another --format, --profile or --utc-offset (decoding {}, now {}): \
                 the same rows could decode to other readings",
                self.decoding.as_deref().unwrap_or("default"),
                decoding.unwrap_or("default")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            format_version: CHECKPOINT_FORMAT_VERSION,
            file: Fingerprint {
                size_bytes: 10,
                sha256: "ab".repeat(32),
            },
            gateway_id: "gw".into(),
            topic: "t".into(),
            default_depth_cm: Some(30),
            decoding: None,
            acked_through_line: 57,
        }
    }

    #[test]
    fn round_trip_and_format() {
        let cp = checkpoint();
        let bytes = cp.encode();
        assert!(bytes.ends_with(b"}\n"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"format_version":1,"file":{"size_bytes":10,"sha256":"abab"#),
            "{text}"
        );
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        assert!(Checkpoint::decode(b"{").is_err());
        assert!(
            Checkpoint::decode(&bytes[..bytes.len() / 2]).is_err(),
            "torn write"
        );
        let future = text.replace("\"format_version\":1", "\"format_version\":2");
        assert_eq!(
            Checkpoint::decode(future.as_bytes()).unwrap_err(),
            "format version 2 is not 1"
        );
    }

    #[test]
    fn resumable_only_for_the_same_file_and_parameters() {
        let cp = checkpoint();
        let same = cp.file.clone();
        assert!(cp.check_resumable(&same, "gw", "t", Some(30), None).is_ok());
        let other = Fingerprint {
            size_bytes: 10,
            sha256: "cd".repeat(32),
        };
        assert_eq!(
            cp.check_resumable(&other, "gw", "t", Some(30), None).unwrap_err(),
            "it was written for different file content (10 bytes, sha256 abababababab; \
             the file now has 10 bytes, sha256 cdcdcdcdcdcd)"
        );
        assert!(cp.check_resumable(&same, "gw2", "t", Some(30), None).is_err());
        assert!(cp.check_resumable(&same, "gw", "t2", Some(30), None).is_err());
        assert!(cp.check_resumable(&same, "gw", "t", None, None).is_err());
        assert!(
            cp.check_resumable(&same, "gw", "t", Some(30), Some("0123abcd"))
                .is_err()
        );
    }
}
