//! Framing of the registry's append-only log, and the scan that replays it.
//!
//! File layout: the header [`LOG_HEADER`], then frames back to back:
//!
//! ```text
//! magic "SRG1" (4 bytes) | payload length, u32 LE (4) | CRC-32C of (length bytes ++ payload), u32 LE (4) | payload
//! ```
//!
//! The service writes exactly one frame per change and syncs it before it
//! answers, so at most the last frame can be incomplete after a crash. The
//! scan therefore tells two kinds of bad frame apart:
//!
//! - a bad frame with no intact frame after it is a **torn tail** (a write the
//!   crash interrupted, never acknowledged): it is dropped;
//! - a bad frame followed by an intact one is **damage** to data that was
//!   already synced and acknowledged: it is reported, never skipped.
//!
//! The magic lets the scan find intact frames after a bad one without trusting
//! the bad frame's length.

/// Name of the log file in the data directory.
pub const LOG_FILE_NAME: &str = "registry.log";
/// Name of the temporary file a torn tail is cut off through.
pub const LOG_REWRITE_FILE_NAME: &str = "registry.log.rewrite";
/// The first bytes of every log file.
pub const LOG_HEADER: &[u8] = b"soilstream-registry-log v1\n";
/// The first bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SRG1";
/// Bytes before a frame's payload: magic, length, CRC.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Largest payload of one frame, bytes. One frame holds one change; the
/// largest change is one schema ([`super::schema::SCHEMA_TEXT_MAX_BYTES`]) with
/// JSON escaping, well below this.
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Wraps a payload in a frame.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    assert!(
        !payload.is_empty() && payload.len() <= FRAME_PAYLOAD_MAX_BYTES,
        "frame payload of {} bytes is outside 1..={FRAME_PAYLOAD_MAX_BYTES}",
        payload.len()
    );
    let length = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&length);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An intact frame found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Byte offset of the frame in the file.
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// How the log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to an intact frame.
    Clean,
    /// The bytes from `offset` on form no intact frame: an interrupted write.
    Torn {
        /// Where the torn bytes start.
        offset: u64,
        /// How many bytes are torn.
        bytes: u64,
    },
    /// A bad frame at `offset` with intact frames after it.
    Damaged {
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// Intact frames found after it.
        intact_frames_after: usize,
    },
}

/// The result of scanning a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Intact frames before the first bad one, in file order.
    pub frames: Vec<Frame<'a>>,
    /// Length of the valid prefix (header and intact frames), bytes.
    pub valid_len: u64,
    /// How the log ends.
    pub tail: Tail,
}

/// The file does not start like a registry log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a soilstream registry log (unexpected header)")]
pub struct NotARegistryLog;

/// Whether the file is too short to hold a header but what it holds is the
/// start of one: a log whose creation a crash interrupted.
pub fn is_partial_header(bytes: &[u8]) -> bool {
    bytes.len() < LOG_HEADER.len() && LOG_HEADER.starts_with(bytes)
}

/// Scans a whole log file.
pub fn scan(bytes: &[u8]) -> Result<Scan<'_>, NotARegistryLog> {
    if !bytes.starts_with(LOG_HEADER) {
        return Err(NotARegistryLog);
    }
    let mut frames = Vec::new();
    let mut offset = LOG_HEADER.len();
    while offset < bytes.len() {
        match frame_at(bytes, offset) {
            Ok((payload, next)) => {
                frames.push(Frame {
                    offset: offset as u64,
                    payload,
                });
                offset = next;
            }
            Err(reason) => {
                let intact_after = count_intact_frames_after(bytes, offset + 1);
                let tail = if intact_after == 0 {
                    Tail::Torn {
                        offset: offset as u64,
                        bytes: (bytes.len() - offset) as u64,
                    }
                } else {
                    Tail::Damaged {
                        offset: offset as u64,
                        reason,
                        intact_frames_after: intact_after,
                    }
                };
                return Ok(Scan {
                    frames,
                    valid_len: offset as u64,
                    tail,
                });
            }
        }
    }
    Ok(Scan {
        frames,
        valid_len: offset as u64,
        tail: Tail::Clean,
    })
}

/// Parses the frame at `offset`; returns its payload and the offset after it.
fn frame_at(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), String> {
    let rest = &bytes[offset..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Err(format!("incomplete frame header ({} bytes)", rest.len()));
    }
    if rest[..4] != FRAME_MAGIC {
        return Err("bad frame magic".to_owned());
    }
    let length_bytes = [rest[4], rest[5], rest[6], rest[7]];
    let length = u32::from_le_bytes(length_bytes) as usize;
    if length == 0 || length > FRAME_PAYLOAD_MAX_BYTES {
        return Err(format!(
            "frame length {length} outside 1..={FRAME_PAYLOAD_MAX_BYTES}"
        ));
    }
    let end = FRAME_HEADER_BYTES + length;
    if rest.len() < end {
        return Err(format!(
            "incomplete frame: {} of {length} payload bytes",
            rest.len() - FRAME_HEADER_BYTES
        ));
    }
    let stored_crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    let payload = &rest[FRAME_HEADER_BYTES..end];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length_bytes), payload);
    if crc != stored_crc {
        return Err(format!(
            "CRC mismatch (stored {stored_crc:08x}, computed {crc:08x})"
        ));
    }
    Ok((payload, offset + end))
}

/// Counts intact frames from the first intact frame at or after `from` on,
/// following their chain.
fn count_intact_frames_after(bytes: &[u8], from: usize) -> usize {
    let mut search = from;
    while search + FRAME_HEADER_BYTES <= bytes.len() {
        let Some(found) = bytes[search..]
            .windows(FRAME_MAGIC.len())
            .position(|window| window == FRAME_MAGIC)
        else {
            return 0;
        };
        let candidate = search + found;
        if let Ok((_, mut next)) = frame_at(bytes, candidate) {
            let mut count = 1;
            while next < bytes.len() {
                match frame_at(bytes, next) {
                    Ok((_, after)) => {
                        count += 1;
                        next = after;
                    }
                    Err(_) => break,
                }
            }
            return count;
        }
        search = candidate + 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = LOG_HEADER.to_vec();
        let mut offsets = Vec::new();
        for payload in payloads {
            offsets.push(bytes.len());
            bytes.extend_from_slice(&encode_frame(payload));
        }
        (bytes, offsets)
    }

    #[test]
    fn clean_log_round_trips() {
        let (bytes, offsets) = log_with(&[b"one", b"two", b"three"]);
        let scanned = scan(&bytes).unwrap();
        assert_eq!(scanned.tail, Tail::Clean);
        assert_eq!(scanned.valid_len, bytes.len() as u64);
        let payloads: Vec<&[u8]> = scanned.frames.iter().map(|f| f.payload).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(scanned.frames[1].offset, offsets[1] as u64);
        assert_eq!(scan(LOG_HEADER).unwrap().frames.len(), 0);
    }

    #[test]
    fn every_truncation_of_the_last_frame_is_a_torn_tail() {
        let (bytes, offsets) = log_with(&[b"one", b"two"]);
        for cut in offsets[1] + 1..bytes.len() {
            let scanned = scan(&bytes[..cut]).unwrap();
            assert_eq!(scanned.frames.len(), 1, "cut {cut}");
            assert_eq!(scanned.valid_len, offsets[1] as u64);
            assert_eq!(
                scanned.tail,
                Tail::Torn {
                    offset: offsets[1] as u64,
                    bytes: (cut - offsets[1]) as u64
                }
            );
        }
    }

    #[test]
    fn zeroed_or_flipped_last_frame_is_a_torn_tail() {
        let (mut bytes, offsets) = log_with(&[b"one", b"two"]);
        let last = offsets[1];
        bytes[last + FRAME_HEADER_BYTES] ^= 0x40;
        assert!(matches!(scan(&bytes).unwrap().tail, Tail::Torn { .. }));
        for b in &mut bytes[last..] {
            *b = 0;
        }
        let scanned = scan(&bytes).unwrap();
        assert_eq!(scanned.frames.len(), 1);
        assert!(matches!(scanned.tail, Tail::Torn { offset, .. } if offset == last as u64));
    }

    #[test]
    fn damage_before_intact_frames_is_reported() {
        let (mut bytes, offsets) = log_with(&[b"one", b"two", b"three", b"four"]);
        // A bit flip in the second frame's payload.
        bytes[offsets[1] + FRAME_HEADER_BYTES + 1] ^= 0x01;
        let scanned = scan(&bytes).unwrap();
        assert_eq!(scanned.frames.len(), 1);
        match scanned.tail {
            Tail::Damaged {
                offset,
                intact_frames_after,
                ref reason,
            } => {
                assert_eq!(offset, offsets[1] as u64);
                assert_eq!(intact_frames_after, 2);
                assert!(reason.contains("CRC"), "{reason}");
            }
            other => panic!("expected damage, got {other:?}"),
        }
        // A corrupted length is damage too: the scan does not trust it.
        let (mut bytes, offsets) = log_with(&[b"one", b"two", b"three"]);
        bytes[offsets[0] + 4] = 0xff;
        assert!(matches!(
            scan(&bytes).unwrap().tail,
            Tail::Damaged {
                intact_frames_after: 2,
                ..
            }
        ));
    }

    #[test]
    fn headers() {
        assert_eq!(scan(b"something else entirely"), Err(NotARegistryLog));
        assert!(is_partial_header(b""));
        assert!(is_partial_header(&LOG_HEADER[..5]));
        assert!(!is_partial_header(b"soil-"));
        assert!(!is_partial_header(LOG_HEADER));
    }

    #[test]
    fn a_zero_filled_frame_header_is_not_a_frame() {
        // The CRC covers the length, so a zeroed region never checks out.
        let mut bytes = LOG_HEADER.to_vec();
        bytes.extend_from_slice(&[0; 64]);
        assert!(matches!(scan(&bytes).unwrap().tail, Tail::Torn { .. }));
    }
}
