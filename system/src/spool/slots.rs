//! Slot files: small state records rewritten whole and made durable with
//! `sync_data`, each carrying a generation number and a CRC.
//!
//! ```text
//! slot = magic [4] | version u8 = 1 | reserved [3] = 0 | generation u64 LE
//!      | payload_len u32 LE | crc32c u32 LE over (bytes 0..20 ++ payload) | payload
//! ```
//!
//! A slot is rewritten in place (truncate, append, sync), so a power cut
//! during a write can leave it torn; that is why state is always kept in two
//! slots (see the cursor and the sequence reservations), and a reader takes
//! the valid one with the highest generation. Reading never fails: a missing,
//! unreadable or damaged slot is reported as such.

use crate::disk::{Disk, read_exact_at};
use std::io;
use std::path::Path;

/// Size of the slot header, in bytes.
pub const SLOT_HEADER_BYTES: usize = 24;
const SLOT_VERSION: u8 = 1;

/// What reading a slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotRead {
    /// No such file.
    Missing,
    /// The file exists but holds no valid record.
    Invalid(&'static str),
    /// A valid record.
    Valid {
        /// Its generation.
        generation: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
}

impl SlotRead {
    /// The generation of a valid slot.
    pub fn generation(&self) -> Option<u64> {
        match self {
            SlotRead::Valid { generation, .. } => Some(*generation),
            _ => None,
        }
    }
}

fn encode(magic: [u8; 4], generation: u64, payload: &[u8]) -> Vec<u8> {
    let payload_len = u32::try_from(payload.len()).expect("slot payloads are bounded by callers");
    let mut out = Vec::with_capacity(SLOT_HEADER_BYTES + payload.len());
    out.extend_from_slice(&magic);
    out.push(SLOT_VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..20]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode(magic: [u8; 4], bytes: &[u8], payload_max_bytes: usize) -> SlotRead {
    if bytes.len() < SLOT_HEADER_BYTES {
        return SlotRead::Invalid("shorter than a slot header");
    }
    if bytes[0..4] != magic {
        return SlotRead::Invalid("bad magic");
    }
    if bytes[4] != SLOT_VERSION || bytes[5..8] != [0; 3] {
        return SlotRead::Invalid("unknown version");
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let payload_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
    if payload_len > payload_max_bytes || bytes.len() != SLOT_HEADER_BYTES + payload_len {
        return SlotRead::Invalid("length does not match");
    }
    let stored_crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[SLOT_HEADER_BYTES..];
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[0..20]), payload) != stored_crc {
        return SlotRead::Invalid("CRC mismatch");
    }
    SlotRead::Valid {
        generation,
        payload: payload.to_vec(),
    }
}

/// Reads the slot at `path`. Never fails: problems are part of the answer.
pub fn read_slot(disk: &dyn Disk, path: &Path, magic: [u8; 4], payload_max_bytes: usize) -> SlotRead {
    match disk.exists(path) {
        Ok(false) => return SlotRead::Missing,
        Ok(true) => {}
        Err(_) => return SlotRead::Invalid("unreadable"),
    }
    let file = match disk.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return SlotRead::Missing,
        Err(_) => return SlotRead::Invalid("unreadable"),
    };
    let len = match file.len() {
        Ok(len) => len,
        Err(_) => return SlotRead::Invalid("unreadable"),
    };
    if len > (SLOT_HEADER_BYTES + payload_max_bytes) as u64 {
        return SlotRead::Invalid("longer than any valid slot");
    }
    let mut bytes = vec![0; usize::try_from(len).expect("bounded above")];
    match read_exact_at(file.as_ref(), 0, &mut bytes) {
        Ok(n) if n == bytes.len() => decode(magic, &bytes, payload_max_bytes),
        Ok(_) => SlotRead::Invalid("shorter than its length"),
        Err(_) => SlotRead::Invalid("unreadable"),
    }
}

/// Rewrites the slot at `path` and makes it durable (`sync_data`). The
/// directory entry must already be durable (see [`ensure_slot_files`]).
pub fn write_slot(
    disk: &dyn Disk,
    path: &Path,
    magic: [u8; 4],
    generation: u64,
    payload: &[u8],
) -> io::Result<()> {
    let bytes = encode(magic, generation, payload);
    let mut file = disk.create_truncate(path)?;
    file.append(&bytes)?;
    file.sync_data()
}

/// Writes `payload` into each of `paths` that does not exist, then makes
/// the new directory entries durable. Returns whether anything was written.
pub fn ensure_slot_files(
    disk: &dyn Disk,
    dir: &Path,
    paths: &[&Path],
    magic: [u8; 4],
    generation: u64,
    payload: &[u8],
) -> io::Result<bool> {
    let mut created = false;
    for path in paths {
        if !disk.exists(path)? {
            write_slot(disk, path, magic, generation, payload)?;
            created = true;
        }
    }
    if created {
        disk.sync_dir(dir)?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::CrashDisk;
    use std::path::PathBuf;

    const MAGIC: [u8; 4] = *b"TEST";

    fn setup() -> (CrashDisk, PathBuf) {
        let disk = CrashDisk::new(3);
        disk.create_dir_all(Path::new("/s")).unwrap();
        (disk, PathBuf::from("/s/slot"))
    }

    #[test]
    fn round_trip_and_missing() {
        let (disk, path) = setup();
        assert_eq!(read_slot(&disk, &path, MAGIC, 64), SlotRead::Missing);
        write_slot(&disk, &path, MAGIC, 7, b"payload").unwrap();
        assert_eq!(
            read_slot(&disk, &path, MAGIC, 64),
            SlotRead::Valid {
                generation: 7,
                payload: b"payload".to_vec()
            }
        );
        assert!(matches!(
            read_slot(&disk, &path, *b"OTHR", 64),
            SlotRead::Invalid(_)
        ));
        assert!(matches!(read_slot(&disk, &path, MAGIC, 3), SlotRead::Invalid(_)));
    }

    #[test]
    fn any_flip_or_cut_is_invalid() {
        let (disk, path) = setup();
        write_slot(&disk, &path, MAGIC, 1, b"abc").unwrap();
        let len = disk.file_bytes(&path).unwrap().len() as u64;
        for offset in 0..len {
            disk.flip_bit(&path, offset, 3).unwrap();
            assert!(
                matches!(read_slot(&disk, &path, MAGIC, 64), SlotRead::Invalid(_)),
                "{offset}"
            );
            disk.flip_bit(&path, offset, 3).unwrap();
        }
        let bytes = encode(MAGIC, 1, b"abc");
        for cut in 0..bytes.len() {
            assert!(matches!(decode(MAGIC, &bytes[..cut], 64), SlotRead::Invalid(_)));
        }
    }

    #[test]
    fn ensure_creates_durably_only_missing_files() {
        let (disk, _) = setup();
        let dir = Path::new("/s");
        let a = dir.join("a");
        let b = dir.join("b");
        write_slot(&disk, &a, MAGIC, 5, b"keep").unwrap();
        assert!(ensure_slot_files(&disk, dir, &[&a, &b], MAGIC, 0, b"init").unwrap());
        assert!(!ensure_slot_files(&disk, dir, &[&a, &b], MAGIC, 0, b"init").unwrap());
        disk.crash();
        assert_eq!(read_slot(&disk, &a, MAGIC, 64).generation(), Some(5));
        assert_eq!(read_slot(&disk, &b, MAGIC, 64).generation(), Some(0));
    }
}
