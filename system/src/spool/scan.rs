//! Scanning a segment: yields intact frames and damaged byte ranges, in file
//! order, resynchronising past damage.
//!
//! A bad frame is re-read from disk up to [`READ_ATTEMPTS`] times before it
//! is declared damaged (a flaky read must not cost an intact record). Past a
//! damaged frame the scanner looks for the next offset where the magic
//! starts a frame whose length is plausible and whose CRC matches; the bytes
//! in between are one damaged range. Reads go through a bounded window: one
//! chunk of [`READ_CHUNK_BYTES`], or one largest frame.

use super::frame::{self, FRAME_HEADER_BYTES, FRAME_MAGIC, FrameDefect, PayloadHeader};
use super::segment::ByteRange;
use crate::disk::{DiskFile, read_exact_at};
use std::io;

/// Bytes read at once while scanning.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// Reads of one frame (first read + re-reads) before it is declared damaged.
pub const READ_ATTEMPTS: u32 = 4;

/// What to do when the disk reports a read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadErrors {
    /// Return the error (runtime reading: the caller retries later).
    Propagate,
    /// Declare the rest of the segment unreadable damage (recovery, verify:
    /// the spool must open whatever the disk does).
    AsDamage,
}

/// Why a range is damaged, as the scanner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDefect {
    /// The bytes at the start of the range are not a valid frame.
    Frame(FrameDefect),
    /// The disk would not return the bytes.
    ReadError,
}

impl ScanDefect {
    /// A short human description.
    pub fn describe(&self) -> &'static str {
        match self {
            ScanDefect::Frame(FrameDefect::ShortHeader) => "partial frame header",
            ScanDefect::Frame(FrameDefect::BadMagic) => "bad magic",
            ScanDefect::Frame(FrameDefect::BadLength) => "bad length",
            ScanDefect::Frame(FrameDefect::Truncated) => "truncated frame",
            ScanDefect::Frame(FrameDefect::BadCrc) => "CRC mismatch",
            ScanDefect::Frame(FrameDefect::BadPayloadHeader) => "bad payload header",
            ScanDefect::ReadError => "read error",
        }
    }
}

/// An intact frame.
#[derive(Debug, Clone)]
pub struct ScannedFrame {
    /// Offset of the frame in the file.
    pub offset: u64,
    /// Size of the frame (header + payload), in bytes.
    pub frame_bytes: u64,
    /// The payload header.
    pub header: PayloadHeader,
    /// The Avro body.
    pub body: Vec<u8>,
}

/// One item of a scan.
#[derive(Debug, Clone)]
pub enum ScanItem {
    /// An intact frame.
    Frame(ScannedFrame),
    /// A damaged range, up to the next intact frame or the end.
    Damage(ByteRange, ScanDefect),
}

/// Buffered bytes of one file, reusable across scans of the same file.
#[derive(Debug, Default)]
pub struct ReadWindow {
    start: u64,
    bytes: Vec<u8>,
}

impl ReadWindow {
    /// Forgets the buffered bytes (the next scan may be of another file).
    pub fn clear(&mut self) {
        self.start = 0;
        self.bytes.clear();
    }
}

/// Scans `[position, end)` of one file.
pub struct Scanner<'a> {
    file: &'a dyn DiskFile,
    window: &'a mut ReadWindow,
    position: u64,
    end: u64,
    read_errors: ReadErrors,
    stop_at_first_damage: bool,
    found_ahead: Option<ScannedFrame>,
    scratch: Vec<u8>,
    /// Frames that failed a first read and were intact on a re-read.
    pub transient_read_retries: u64,
}

impl<'a> Scanner<'a> {
    /// A scanner of `file` from `position` to `end` (exclusive).
    pub fn new(
        file: &'a dyn DiskFile,
        window: &'a mut ReadWindow,
        position: u64,
        end: u64,
        read_errors: ReadErrors,
    ) -> Self {
        assert!(position <= end, "scan range {position}..{end} is reversed");
        Self {
            file,
            window,
            position,
            end,
            read_errors,
            stop_at_first_damage: false,
            found_ahead: None,
            scratch: Vec::new(),
            transient_read_retries: 0,
        }
    }

    /// Test-only planted bug: treat everything from the first bad frame to
    /// the end as damaged instead of resynchronising.
    pub fn stop_at_first_damage(mut self, stop: bool) -> Self {
        self.stop_at_first_damage = stop;
        self
    }

    /// Offset of the next item.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next frame or damaged range; `None` at the end.
    pub fn next_item(&mut self) -> io::Result<Option<ScanItem>> {
        let start = self.position;
        match self.next_inner() {
            Ok(item) => Ok(item),
            Err(error) => match self.read_errors {
                ReadErrors::Propagate => Err(error),
                ReadErrors::AsDamage => {
                    tracing::warn!(%error, offset = start, "spool scan: unreadable bytes treated as damage");
                    self.found_ahead = None;
                    self.position = self.end;
                    Ok(Some(ScanItem::Damage(
                        ByteRange::new(start, self.end),
                        ScanDefect::ReadError,
                    )))
                }
            },
        }
    }

    fn next_inner(&mut self) -> io::Result<Option<ScanItem>> {
        if let Some(frame) = self.found_ahead.take() {
            assert_eq!(
                frame.offset, self.position,
                "a frame found ahead starts where damage ended"
            );
            self.position = frame.offset + frame.frame_bytes;
            return Ok(Some(ScanItem::Frame(frame)));
        }
        if self.position >= self.end {
            return Ok(None);
        }
        let start = self.position;
        let defect = match self.frame_at(start)? {
            Ok(frame) => {
                self.position = start + frame.frame_bytes;
                assert!(self.position <= self.end, "frames lie within the scan range");
                return Ok(Some(ScanItem::Frame(frame)));
            }
            Err(defect) => defect,
        };
        let damage_end = if self.stop_at_first_damage {
            self.end
        } else {
            match self.resync(start + 1)? {
                Some(frame) => {
                    let offset = frame.offset;
                    self.found_ahead = Some(frame);
                    offset
                }
                None => self.end,
            }
        };
        self.position = damage_end;
        Ok(Some(ScanItem::Damage(
            ByteRange::new(start, damage_end),
            ScanDefect::Frame(defect),
        )))
    }

    /// Makes the window cover `[at, at + len)` clipped to the end of the scan
    /// range; returns how many bytes from `at` are available.
    fn fill(&mut self, at: u64, len: usize) -> io::Result<usize> {
        assert!(at <= self.end);
        let wanted_end = self.end.min(at + len as u64);
        let window_end = self.window.start + self.window.bytes.len() as u64;
        if self.window.start <= at && wanted_end <= window_end {
            return Ok(usize::try_from(wanted_end - at).expect("bounded by len"));
        }
        let read_end = self.end.min(at + len.max(READ_CHUNK_BYTES) as u64);
        let read_len = usize::try_from(read_end - at).expect("bounded by a chunk or a frame");
        let mut last_error = None;
        for _ in 0..READ_ATTEMPTS {
            self.window.bytes.resize(read_len, 0);
            match read_exact_at(self.file, at, &mut self.window.bytes) {
                Ok(got) => {
                    self.window.bytes.truncate(got);
                    self.window.start = at;
                    if got < read_len {
                        // The file is shorter than the caller believed.
                        self.end = at + got as u64;
                    }
                    return Ok(got.min(len));
                }
                Err(error) => last_error = Some(error),
            }
        }
        self.window.clear();
        Err(last_error.expect("at least one attempt"))
    }

    fn window_slice(&self, at: u64, len: usize) -> &[u8] {
        let from = usize::try_from(at - self.window.start).expect("within the window");
        &self.window.bytes[from..from + len]
    }

    /// The frame at `at`, re-reading a bad one from disk before giving up.
    fn frame_at(&mut self, at: u64) -> io::Result<Result<ScannedFrame, FrameDefect>> {
        let available = self.fill(at, FRAME_HEADER_BYTES)?;
        if available < FRAME_HEADER_BYTES {
            return Ok(Err(FrameDefect::ShortHeader));
        }
        let first = match frame::check_header(self.window_slice(at, FRAME_HEADER_BYTES)) {
            Ok(frame_bytes) if at + frame_bytes as u64 > self.end => Err(FrameDefect::Truncated),
            Ok(frame_bytes) => {
                let available = self.fill(at, frame_bytes)?;
                if available < frame_bytes {
                    // The file turned out shorter than the scan range.
                    Err(FrameDefect::Truncated)
                } else {
                    let bytes = self.window_slice(at, frame_bytes);
                    frame::parse_frame(bytes).map(|(header, body)| ScannedFrame {
                        offset: at,
                        frame_bytes: frame_bytes as u64,
                        header,
                        body: body.to_vec(),
                    })
                }
            }
            Err(defect) => Err(defect),
        };
        let defect = match first {
            Ok(frame) => return Ok(Ok(frame)),
            Err(defect) => defect,
        };
        for _ in 1..READ_ATTEMPTS {
            if let Ok(frame) = self.reread_frame(at) {
                self.transient_read_retries += 1;
                tracing::debug!(
                    offset = at,
                    "spool scan: frame intact on re-read (transient read corruption)"
                );
                return Ok(Ok(frame));
            }
        }
        Ok(Err(defect))
    }

    /// Reads the frame at `at` straight from disk, bypassing the window.
    fn reread_frame(&mut self, at: u64) -> Result<ScannedFrame, FrameDefect> {
        self.scratch.resize(FRAME_HEADER_BYTES, 0);
        match read_exact_at(self.file, at, &mut self.scratch) {
            Ok(n) if n == FRAME_HEADER_BYTES => {}
            _ => return Err(FrameDefect::ShortHeader),
        }
        let frame_bytes = frame::check_header(&self.scratch)?;
        if at + frame_bytes as u64 > self.end {
            return Err(FrameDefect::Truncated);
        }
        self.scratch.resize(frame_bytes, 0);
        match read_exact_at(self.file, at, &mut self.scratch) {
            Ok(n) if n == frame_bytes => {}
            _ => return Err(FrameDefect::Truncated),
        }
        let (header, body) = frame::parse_frame(&self.scratch)?;
        Ok(ScannedFrame {
            offset: at,
            frame_bytes: frame_bytes as u64,
            header,
            body: body.to_vec(),
        })
    }

    /// The first intact frame starting at or after `from`.
    fn resync(&mut self, from: u64) -> io::Result<Option<ScannedFrame>> {
        let mut at = from;
        while at + FRAME_HEADER_BYTES as u64 <= self.end {
            let available = self.fill(at, READ_CHUNK_BYTES)?;
            let found = self
                .window_slice(at, available)
                .windows(FRAME_MAGIC.len())
                .position(|candidate| candidate == FRAME_MAGIC);
            match found {
                Some(relative) => {
                    let candidate = at + relative as u64;
                    if let Ok(frame) = self.frame_at(candidate)? {
                        return Ok(Some(frame));
                    }
                    at = candidate + 1;
                }
                None => {
                    // Keep the last bytes: a magic may straddle the chunk end.
                    let step = available.saturating_sub(FRAME_MAGIC.len() - 1).max(1);
                    at += step as u64;
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Disk;
    use crate::disk::memory::{CrashDisk, FaultOp, PPM};
    use crate::spool::frame::encode_frame;
    use std::path::Path;

    fn frames(count: u64, body_len: usize) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for index in 1..=count {
            offsets.push(bytes.len() as u64);
            let header = PayloadHeader { index, synced: None };
            encode_frame(&mut bytes, &header, &vec![index as u8; body_len]);
        }
        (bytes, offsets)
    }

    fn disk_with(bytes: &[u8]) -> (CrashDisk, Box<dyn DiskFile>) {
        let disk = CrashDisk::new(11);
        disk.create_dir_all(Path::new("/d")).unwrap();
        let mut file = disk.create_new(Path::new("/d/f")).unwrap();
        file.append(bytes).unwrap();
        (disk, file)
    }

    fn scan_all(file: &dyn DiskFile, end: u64) -> Vec<ScanItem> {
        let mut window = ReadWindow::default();
        let mut scanner = Scanner::new(file, &mut window, 0, end, ReadErrors::AsDamage);
        let mut items = Vec::new();
        while let Some(item) = scanner.next_item().unwrap() {
            items.push(item);
        }
        items
    }

    fn indexes(items: &[ScanItem]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|item| match item {
                ScanItem::Frame(frame) => Some(frame.header.index),
                ScanItem::Damage(..) => None,
            })
            .collect()
    }

    fn damages(items: &[ScanItem]) -> Vec<ByteRange> {
        items
            .iter()
            .filter_map(|item| match item {
                ScanItem::Damage(range, _) => Some(*range),
                ScanItem::Frame(_) => None,
            })
            .collect()
    }

    #[test]
    fn clean_file_yields_every_frame() {
        let (bytes, _) = frames(500, 90); // spans several read chunks
        let (_disk, file) = disk_with(&bytes);
        let items = scan_all(file.as_ref(), bytes.len() as u64);
        assert_eq!(indexes(&items), (1..=500).collect::<Vec<_>>());
        assert!(damages(&items).is_empty());
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_the_rest_salvaged() {
        let (mut bytes, offsets) = frames(20, 40);
        bytes[offsets[7] as usize + 20] ^= 0x10; // payload of record 8
        bytes[offsets[12] as usize + 1] ^= 0x01; // magic of record 13
        let (_disk, file) = disk_with(&bytes);
        let items = scan_all(file.as_ref(), bytes.len() as u64);
        let expected: Vec<u64> = (1..=20).filter(|i| *i != 8 && *i != 13).collect();
        assert_eq!(indexes(&items), expected);
        assert_eq!(
            damages(&items),
            vec![
                ByteRange::new(offsets[7], offsets[8]),
                ByteRange::new(offsets[12], offsets[13])
            ]
        );
    }

    #[test]
    fn a_corrupt_length_does_not_swallow_the_following_frames() {
        let (mut bytes, offsets) = frames(6, 30);
        bytes[offsets[2] as usize + 6] = 0x7f; // length of record 3 becomes huge
        let (_disk, file) = disk_with(&bytes);
        let items = scan_all(file.as_ref(), bytes.len() as u64);
        assert_eq!(indexes(&items), vec![1, 2, 4, 5, 6]);
    }

    #[test]
    fn torn_tail_and_zero_gaps() {
        let (mut bytes, offsets) = frames(5, 30);
        for byte in &mut bytes[offsets[1] as usize..offsets[2] as usize] {
            *byte = 0; // a zero-filled gap where record 2 was
        }
        bytes.truncate(offsets[4] as usize + 7); // record 5 torn mid-header
        let (_disk, file) = disk_with(&bytes);
        let items = scan_all(file.as_ref(), bytes.len() as u64);
        assert_eq!(indexes(&items), vec![1, 3, 4]);
        assert_eq!(
            damages(&items),
            vec![
                ByteRange::new(offsets[1], offsets[2]),
                ByteRange::new(offsets[4], bytes.len() as u64)
            ]
        );
    }

    #[test]
    fn planted_stop_at_first_damage_loses_the_rest() {
        let (mut bytes, offsets) = frames(6, 30);
        bytes[offsets[1] as usize + 20] ^= 1;
        let (_disk, file) = disk_with(&bytes);
        let mut window = ReadWindow::default();
        let mut scanner = Scanner::new(
            file.as_ref(),
            &mut window,
            0,
            bytes.len() as u64,
            ReadErrors::AsDamage,
        )
        .stop_at_first_damage(true);
        let mut items = Vec::new();
        while let Some(item) = scanner.next_item().unwrap() {
            items.push(item);
        }
        assert_eq!(indexes(&items), vec![1]);
    }

    #[test]
    fn transient_read_corruption_is_retried_not_reported() {
        let (bytes, _) = frames(300, 60);
        let (disk, file) = disk_with(&bytes);
        disk.set_read_corruption_ppm(PPM / 20);
        let mut retries = 0;
        for _ in 0..100 {
            let mut window = ReadWindow::default();
            let mut scanner = Scanner::new(
                file.as_ref(),
                &mut window,
                0,
                bytes.len() as u64,
                ReadErrors::AsDamage,
            );
            let mut items = Vec::new();
            while let Some(item) = scanner.next_item().unwrap() {
                items.push(item);
            }
            assert_eq!(indexes(&items), (1..=300).collect::<Vec<_>>());
            retries += scanner.transient_read_retries;
        }
        assert!(retries > 0);
    }

    #[test]
    fn read_errors_propagate_or_become_damage() {
        let (bytes, _) = frames(3, 30);
        let (disk, file) = disk_with(&bytes);
        disk.fail_next(FaultOp::Read, READ_ATTEMPTS);
        let mut window = ReadWindow::default();
        let mut scanner = Scanner::new(
            file.as_ref(),
            &mut window,
            0,
            bytes.len() as u64,
            ReadErrors::Propagate,
        );
        assert!(scanner.next_item().is_err());
        disk.fail_next(FaultOp::Read, READ_ATTEMPTS);
        let items = scan_all(file.as_ref(), bytes.len() as u64);
        assert!(matches!(
            items.as_slice(),
            [ScanItem::Damage(_, ScanDefect::ReadError)]
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u64;
        for round in 0..50 {
            let mut bytes = Vec::new();
            for _ in 0..2000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((state >> 56) as u8);
            }
            if round % 2 == 0 {
                // Sprinkle magics with random lengths.
                for at in (0..1900).step_by(97) {
                    bytes[at..at + 4].copy_from_slice(&FRAME_MAGIC);
                }
            }
            let (_disk, file) = disk_with(&bytes);
            let items = scan_all(file.as_ref(), bytes.len() as u64);
            let covered: u64 = items
                .iter()
                .map(|item| match item {
                    ScanItem::Frame(frame) => frame.frame_bytes,
                    ScanItem::Damage(range, _) => range.len(),
                })
                .sum();
            assert_eq!(covered, bytes.len() as u64, "items tile the file");
        }
    }
}
