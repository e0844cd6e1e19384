//! Record framing: how one record is laid out in a segment file.
//!
//! ```text
//! frame   = magic "SoiL" (4) | payload_len u32 LE (4) | crc32c u32 LE (4) | payload
//! crc32c  = CRC32C over (payload_len LE bytes ++ payload)
//! payload = index u64 LE            spool index of the record
//!         | synced_first_index u64  segment holding the last synced point ...
//!         | synced_bytes u64        ... and how many of its bytes were synced
//!         | synced_attempt u8       (attempt number of that segment)
//!         | version u8 = 1
//!         | flags u8                bit 0: a synced point is recorded
//!         | reserved [u8; 5] = 0
//!         | Avro v1 body of the reading
//! ```
//!
//! The synced point is what the writer knew durable when it wrote the
//! frame. The largest one found among intact frames is a lower bound of how
//! far a segment was synced; recovery uses it to tell damage of synced data
//! (corruption) from a torn tail (an interrupted write).

use super::segment::SegmentName;

/// Magic bytes opening every frame; never all zeros, so zero-filled gaps
/// are never mistaken for a frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SoiL";
/// Size of the frame header (magic, length, CRC), in bytes.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Size of the fixed payload header, in bytes.
pub const PAYLOAD_HEADER_BYTES: usize = 32;
/// Version of the payload layout.
pub const PAYLOAD_VERSION: u8 = 1;
/// Hard upper bound of a payload, in bytes, whatever the configuration: no
/// length read from disk makes the spool allocate more.
pub const RECORD_BYTES_LIMIT: u32 = 1 << 20;

const FLAG_HAS_SYNCED: u8 = 1;

/// A point of a segment known durable when a frame was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncedPoint {
    /// The segment.
    pub segment: SegmentName,
    /// Bytes of it known synced.
    pub bytes: u64,
}

/// The fixed header at the start of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Spool index of the record.
    pub index: u64,
    /// The last synced point the writer knew of, if any.
    pub synced: Option<SyncedPoint>,
}

/// Why bytes at some offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// Fewer bytes than a frame header before the end.
    ShortHeader,
    /// The magic does not match.
    BadMagic,
    /// The length field is out of bounds.
    BadLength,
    /// The frame extends past the end of the readable bytes.
    Truncated,
    /// The CRC does not match.
    BadCrc,
    /// CRC matches but the payload header is malformed (version, reserved bytes).
    BadPayloadHeader,
}

/// Appends one frame for `header` and `body` to `out`; returns its size.
pub fn encode_frame(out: &mut Vec<u8>, header: &PayloadHeader, body: &[u8]) -> usize {
    let payload_len = PAYLOAD_HEADER_BYTES + body.len();
    let payload_len_u32 = u32::try_from(payload_len).expect("callers bound the body size");
    assert!(
        payload_len_u32 <= RECORD_BYTES_LIMIT,
        "payload within the hard limit"
    );
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&payload_len_u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    let payload_start = out.len();
    out.extend_from_slice(&header.index.to_le_bytes());
    let (synced_first_index, synced_bytes, synced_attempt, flags) = match header.synced {
        Some(point) => (
            point.segment.first_index,
            point.bytes,
            point.segment.attempt,
            FLAG_HAS_SYNCED,
        ),
        None => (0, 0, 0, 0),
    };
    out.extend_from_slice(&synced_first_index.to_le_bytes());
    out.extend_from_slice(&synced_bytes.to_le_bytes());
    out.push(synced_attempt);
    out.push(PAYLOAD_VERSION);
    out.push(flags);
    out.extend_from_slice(&[0; 5]);
    assert_eq!(out.len() - payload_start, PAYLOAD_HEADER_BYTES);
    out.extend_from_slice(body);
    let crc = frame_crc(payload_len_u32, &out[payload_start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn frame_crc(payload_len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&payload_len.to_le_bytes()), payload)
}

/// Reads the header at the start of `bytes`; returns the whole frame size
/// (header + payload) if magic and length are plausible. `bytes` may be
/// longer or shorter than the frame.
pub fn check_header(bytes: &[u8]) -> Result<usize, FrameDefect> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameDefect::ShortHeader);
    }
    if bytes[0..4] != FRAME_MAGIC {
        return Err(FrameDefect::BadMagic);
    }
    let payload_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if (payload_len as usize) <= PAYLOAD_HEADER_BYTES || payload_len > RECORD_BYTES_LIMIT {
        return Err(FrameDefect::BadLength);
    }
    Ok(FRAME_HEADER_BYTES + payload_len as usize)
}

/// Validates a complete frame (`frame.len()` must be the size
/// [`check_header`] returned) and splits it into payload header and body.
pub fn parse_frame(frame: &[u8]) -> Result<(PayloadHeader, &[u8]), FrameDefect> {
    let frame_bytes = check_header(frame)?;
    if frame.len() < frame_bytes {
        return Err(FrameDefect::Truncated);
    }
    if frame.len() > frame_bytes {
        // The bytes were re-read and the length field changed in between.
        return Err(FrameDefect::BadLength);
    }
    let payload_len = (frame_bytes - FRAME_HEADER_BYTES) as u32;
    let stored_crc = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes"));
    let payload = &frame[FRAME_HEADER_BYTES..];
    if frame_crc(payload_len, payload) != stored_crc {
        return Err(FrameDefect::BadCrc);
    }
    let u64_at = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let index = u64_at(0);
    let synced_first_index = u64_at(8);
    let synced_bytes = u64_at(16);
    let synced_attempt = payload[24];
    let version = payload[25];
    let flags = payload[26];
    if version != PAYLOAD_VERSION
        || flags & !FLAG_HAS_SYNCED != 0
        || payload[27..32] != [0; 5]
        || synced_attempt > super::segment::SEGMENT_ATTEMPT_MAX
    {
        return Err(FrameDefect::BadPayloadHeader);
    }
    let synced = if flags & FLAG_HAS_SYNCED != 0 {
        Some(SyncedPoint {
            segment: SegmentName::new(synced_first_index, synced_attempt),
            bytes: synced_bytes,
        })
    } else {
        if synced_first_index != 0 || synced_bytes != 0 || synced_attempt != 0 {
            return Err(FrameDefect::BadPayloadHeader);
        }
        None
    };
    Ok((PayloadHeader { index, synced }, &payload[PAYLOAD_HEADER_BYTES..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64) -> PayloadHeader {
        PayloadHeader {
            index,
            synced: Some(SyncedPoint {
                segment: SegmentName::new(3, 1),
                bytes: 4096,
            }),
        }
    }

    #[test]
    fn round_trip() {
        let mut out = vec![0xAA]; // frames append after existing bytes
        let n = encode_frame(&mut out, &header(77), b"avro-body");
        assert_eq!(n, out.len() - 1);
        let frame = &out[1..];
        assert_eq!(check_header(frame), Ok(n));
        let (parsed, body) = parse_frame(frame).unwrap();
        assert_eq!(parsed, header(77));
        assert_eq!(body, b"avro-body");
        let none = PayloadHeader {
            index: 1,
            synced: None,
        };
        let mut out = Vec::new();
        encode_frame(&mut out, &none, b"x");
        assert_eq!(parse_frame(&out).unwrap().0, none);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut frame = Vec::new();
        encode_frame(&mut frame, &header(5), b"some reading body bytes");
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                let verdict = match check_header(&damaged) {
                    Ok(n) if n == damaged.len() => parse_frame(&damaged).map(|_| ()),
                    Ok(_) => Err(FrameDefect::Truncated),
                    Err(defect) => Err(defect),
                };
                assert!(verdict.is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn implausible_headers_are_refused_without_allocation() {
        let mut frame = Vec::new();
        encode_frame(&mut frame, &header(5), b"b");
        assert_eq!(check_header(&frame[..11]), Err(FrameDefect::ShortHeader));
        assert_eq!(check_header(&[0; 12]), Err(FrameDefect::BadMagic));
        let mut huge = frame.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check_header(&huge), Err(FrameDefect::BadLength));
        let mut tiny = frame.clone();
        tiny[4..8].copy_from_slice(&(PAYLOAD_HEADER_BYTES as u32).to_le_bytes());
        assert_eq!(check_header(&tiny), Err(FrameDefect::BadLength));
        assert_eq!(
            parse_frame(&frame[..frame.len() - 1]),
            Err(FrameDefect::Truncated)
        );
    }
}
