//! On-disk framing of the broker's files: CRC'd entries, read back up to the
//! first entry that is not intact.
//!
//! ```text
//! magic: u8 = 0xB7
//! length: u32 LE      payload bytes
//! crc32c: u32 LE      over the length field and the payload
//! payload             postcard-encoded entry
//! ```
//!
//! Reading stops at the first entry that is short (a torn tail), has a bad
//! magic, an out-of-bounds length, a CRC mismatch or a payload that does not
//! decode. Everything before it is returned with the length of that valid
//! prefix; the caller decides what to do with the rest (the broker never
//! appends after it: it starts a new file).

use serde::Serialize;
use serde::de::DeserializeOwned;
use soilstream::disk::{DiskFile, read_exact_at};
use std::io;

const MAGIC: u8 = 0xB7;
/// Bytes of an entry header.
pub(crate) const ENTRY_HEADER_BYTES: usize = 9;

/// Why reading stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The whole file was read.
    End,
    /// The last entry is incomplete (torn write or crash mid-append).
    Torn,
    /// An entry is damaged (magic, length, CRC or payload).
    Damaged,
}

/// The intact prefix of a file.
#[derive(Debug)]
pub(crate) struct ReadEntries<T> {
    /// Decoded entries, in file order.
    pub entries: Vec<T>,
    /// Bytes covered by `entries`.
    pub valid_bytes: u64,
    /// Why reading stopped.
    pub stop: Stop,
}

/// Encodes one entry.
pub(crate) fn encode_entry<T: Serialize>(entry: &T, max_entry_bytes: usize) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(entry).map_err(|error| io::Error::other(error.to_string()))?;
    if payload.len() > max_entry_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("entry of {} bytes exceeds {max_entry_bytes}", payload.len()),
        ));
    }
    let length = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&length);
    crc = crc32c::crc32c_append(crc, &payload);
    let mut bytes = Vec::with_capacity(ENTRY_HEADER_BYTES + payload.len());
    bytes.push(MAGIC);
    bytes.extend_from_slice(&length);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Parses the intact prefix of `bytes`.
pub(crate) fn decode_entries<T: DeserializeOwned>(bytes: &[u8], max_entry_bytes: usize) -> ReadEntries<T> {
    let mut entries = Vec::new();
    let mut position = 0_usize;
    let stop = loop {
        let rest = &bytes[position..];
        if rest.is_empty() {
            break Stop::End;
        }
        if rest.len() < ENTRY_HEADER_BYTES {
            break Stop::Torn;
        }
        if rest[0] != MAGIC {
            break Stop::Damaged;
        }
        let length_field = [rest[1], rest[2], rest[3], rest[4]];
        let length = u32::from_le_bytes(length_field) as usize;
        if length > max_entry_bytes {
            break Stop::Damaged;
        }
        if rest.len() < ENTRY_HEADER_BYTES + length {
            break Stop::Torn;
        }
        let expected_crc = u32::from_le_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + length];
        let actual_crc = crc32c::crc32c_append(crc32c::crc32c(&length_field), payload);
        if actual_crc != expected_crc {
            break Stop::Damaged;
        }
        match postcard::from_bytes::<T>(payload) {
            Ok(entry) => entries.push(entry),
            Err(_) => break Stop::Damaged,
        }
        position += ENTRY_HEADER_BYTES + length;
    };
    ReadEntries {
        entries,
        valid_bytes: position as u64,
        stop,
    }
}

/// Reads a whole file (at most `max_file_bytes`) and parses its intact prefix.
pub(crate) fn read_entries<T: DeserializeOwned>(
    file: &dyn DiskFile,
    max_entry_bytes: usize,
    max_file_bytes: u64,
) -> io::Result<ReadEntries<T>> {
    let length = file.len()?;
    if length > max_file_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file of {length} bytes exceeds {max_file_bytes}"),
        ));
    }
    let mut bytes = vec![0_u8; length as usize];
    let read = read_exact_at(file, 0, &mut bytes)?;
    bytes.truncate(read);
    Ok(decode_entries(&bytes, max_entry_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn two_entries() -> Vec<u8> {
        let mut bytes = encode_entry(&(1_u32, "one".to_string()), MAX).expect("encode");
        bytes.extend(encode_entry(&(2_u32, "two".to_string()), MAX).expect("encode"));
        bytes
    }

    #[test]
    fn reads_back_every_entry() {
        let read = decode_entries::<(u32, String)>(&two_entries(), MAX);
        assert_eq!(read.entries, vec![(1, "one".to_string()), (2, "two".to_string())]);
        assert_eq!(read.stop, Stop::End);
        assert_eq!(read.valid_bytes, two_entries().len() as u64);
    }

    #[test]
    fn a_torn_tail_keeps_the_intact_prefix() {
        let bytes = two_entries();
        let first_len = encode_entry(&(1_u32, "one".to_string()), MAX)
            .expect("encode")
            .len();
        for cut in first_len + 1..bytes.len() {
            let read = decode_entries::<(u32, String)>(&bytes[..cut], MAX);
            assert_eq!(read.entries.len(), 1, "cut at {cut}");
            assert_eq!(read.valid_bytes, first_len as u64);
            assert_eq!(read.stop, Stop::Torn);
        }
    }

    #[test]
    fn any_bit_flip_stops_reading_at_the_damaged_entry() {
        let bytes = two_entries();
        let first_len = encode_entry(&(1_u32, "one".to_string()), MAX)
            .expect("encode")
            .len();
        for index in first_len..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[index] ^= 1 << bit;
                let read = decode_entries::<(u32, String)>(&damaged, MAX);
                assert_eq!(read.entries.len(), 1, "flip of bit {bit} in byte {index}");
                assert_ne!(read.stop, Stop::End);
            }
        }
        let zeros = vec![0_u8; 64];
        assert_eq!(decode_entries::<(u32, String)>(&zeros, MAX).stop, Stop::Damaged);
    }

    #[test]
    fn oversized_entries_are_refused() {
        assert!(encode_entry(&vec![0_u8; 2 * MAX], MAX).is_err());
    }
}
