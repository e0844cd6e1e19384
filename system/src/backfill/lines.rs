//! Physical lines and CSV fields of an SD-card log.
//!
//! The log is read one physical line at a time (ended by `\n`, `\r\n` or a
//! lone `\r`: loggers and data archives write all three, and some files of
//! the ISMN archive mix them), never more than [`MAX_LINE_BYTES`] of a line in
//! memory, so a corrupt stretch without line breaks (a common failure of SD
//! cards) costs one rejected row, not the process's memory. Line numbers are
//! physical: the first line of the file is line 1, blank lines count.
//!
//! Fields are split with the RFC 4180 rules restricted to one line: a field
//! is either unquoted (no `,` and no `"` inside) or wholly quoted, with `""`
//! standing for one `"`. A quoted field cannot span lines: loggers do not
//! write such fields, and allowing them would let one stray quote swallow the
//! rest of the file into one row.

use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read};

/// Longest line accepted, in bytes (without the line terminator). Longer
/// lines are rejected as a whole; only their first `MAX_LINE_BYTES` bytes
/// are kept (for the rejects file).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Largest number of fields accepted on one line (header or row): a wide
/// logger table has a column per sensor, depth and quantity.
pub const MAX_FIELDS: usize = 1024;

/// A reader that hashes (SHA-256) and counts every byte it passes on.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes_read: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes_read: 0,
        }
    }

    /// Bytes read from the inner reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Lower-case hex SHA-256 of everything read so far.
    pub fn sha256_hex(&self) -> String {
        to_hex(&self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes_read += n as u64;
        Ok(n)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// One physical line, borrowed from the [`LineReader`]'s buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// Physical line number, from 1.
    pub number: u64,
    /// The line's bytes without the terminator; at most [`MAX_LINE_BYTES`].
    pub bytes: &'a [u8],
    /// Whether the line was longer than [`MAX_LINE_BYTES`] (and `bytes` is
    /// only its beginning).
    pub truncated: bool,
}

impl Line<'_> {
    /// Whether the line holds nothing but spaces and tabs.
    pub fn is_blank(&self) -> bool {
        !self.truncated && self.bytes.iter().all(|b| *b == b' ' || *b == b'\t')
    }
}

/// Reads physical lines with a bounded buffer.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buffer: Vec<u8>,
    line_number: u64,
    /// The last line ended with `\r`: a `\n` right after it belongs to the
    /// same terminator.
    after_cr: bool,
}

impl<R: BufRead> LineReader<R> {
    /// Reads lines from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buffer: Vec::with_capacity(256),
            line_number: 0,
            after_cr: false,
        }
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The number of the last line returned (0 before the first).
    pub fn line_number(&self) -> u64 {
        self.line_number
    }

    /// The next line, or `None` at the end of the input. A final line without
    /// a terminator is a line; an empty input has no lines.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buffer.clear();
        let mut truncated = false;
        let mut saw_bytes = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            if self.after_cr {
                self.after_cr = false;
                if available[0] == b'\n' {
                    self.inner.consume(1);
                    continue;
                }
            }
            saw_bytes = true;
            let terminator = available.iter().position(|b| *b == b'\n' || *b == b'\r');
            let consumed = terminator.map_or(available.len(), |i| i + 1);
            let content = &available[..terminator.unwrap_or(available.len())];
            let room = MAX_LINE_BYTES + 1 - self.buffer.len().min(MAX_LINE_BYTES + 1);
            let kept = content.len().min(room);
            self.buffer.extend_from_slice(&content[..kept]);
            if kept < content.len() {
                truncated = true;
            }
            let ended_by_cr = terminator.is_some_and(|i| available[i] == b'\r');
            self.inner.consume(consumed);
            if terminator.is_some() {
                self.after_cr = ended_by_cr;
                break;
            }
        }
        if !saw_bytes {
            return Ok(None);
        }
        if self.buffer.len() > MAX_LINE_BYTES {
            truncated = true;
            self.buffer.truncate(MAX_LINE_BYTES);
        }
        assert!(self.buffer.len() <= MAX_LINE_BYTES, "line buffer bounded");
        self.line_number += 1;
        Ok(Some(Line {
            number: self.line_number,
            bytes: &self.buffer,
            truncated,
        }))
    }
}

/// Why a line could not be split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A quoted field has no closing quote on the line.
    #[error("unterminated quoted field (quoted fields cannot span lines)")]
    UnterminatedQuote,
    /// Text follows a closing quote before the next comma.
    #[error("text after the closing quote of field {field}")]
    TextAfterQuote {
        /// 1-based field index.
        field: usize,
    },
    /// A quote appears inside an unquoted field.
    #[error("quote inside unquoted field {field}")]
    QuoteInUnquotedField {
        /// 1-based field index.
        field: usize,
    },
    /// More than [`MAX_FIELDS`] fields.
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// The fields of one line, in a buffer reused from line to line.
#[derive(Debug, Default)]
pub struct Fields {
    text: String,
    ends: Vec<usize>,
}

impl Fields {
    /// An empty field set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `index` (0-based), unquoted, untrimmed.
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.text[start..end])
    }

    /// Splits `line` (one physical line, no terminator) into fields,
    /// replacing the previous content. An empty line is one empty field.
    pub fn split(&mut self, line: &str) -> Result<(), SplitError> {
        self.text.clear();
        self.ends.clear();
        let bytes = line.as_bytes();
        let mut at = 0;
        loop {
            if self.ends.len() == MAX_FIELDS {
                return Err(SplitError::TooManyFields);
            }
            let field = self.ends.len() + 1;
            if bytes.get(at) == Some(&b'"') {
                at += 1;
                loop {
                    let Some(quote) = line[at..].find('"') else {
                        return Err(SplitError::UnterminatedQuote);
                    };
                    self.text.push_str(&line[at..at + quote]);
                    at += quote + 1;
                    if bytes.get(at) == Some(&b'"') {
                        self.text.push('"');
                        at += 1;
                    } else {
                        break;
                    }
                }
                self.ends.push(self.text.len());
                match bytes.get(at) {
                    None => return Ok(()),
                    Some(b',') => at += 1,
                    Some(_) => return Err(SplitError::TextAfterQuote { field }),
                }
            } else {
                let end = line[at..].find(',').map_or(line.len(), |i| at + i);
                let value = &line[at..end];
                if value.contains('"') {
                    return Err(SplitError::QuoteInUnquotedField { field });
                }
                self.text.push_str(value);
                self.ends.push(self.text.len());
                if end == line.len() {
                    return Ok(());
                }
                at = end + 1;
            }
        }
    }
}

/// Quotes `value` as one CSV field (always quoted, `"` doubled).
pub fn quote_field(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<(u64, Vec<u8>, bool)> {
        let mut reader = LineReader::new(io::BufReader::with_capacity(7, input));
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push((line.number, line.bytes.to_vec(), line.truncated));
        }
        out
    }

    #[test]
    fn physical_lines_with_crlf_blank_and_unterminated_last_line() {
        let lines = lines_of(b"a,b\r\n\nc\n  \nlast");
        assert_eq!(
            lines,
            vec![
                (1, b"a,b".to_vec(), false),
                (2, b"".to_vec(), false),
                (3, b"c".to_vec(), false),
                (4, b"  ".to_vec(), false),
                (5, b"last".to_vec(), false),
            ]
        );
        assert!(lines_of(b"").is_empty());
        assert_eq!(lines_of(b"\n"), vec![(1, vec![], false)]);
    }

    #[test]
    fn lone_cr_and_mixed_terminators_end_lines() {
        // The buffer holds 7 bytes: a `\r\n` split across two fills is still
        // one terminator.
        let lines = lines_of(b"h1\n\rrow-1\r\nrow-22\rrow-3 \r\rlast\r");
        let texts: Vec<(u64, &[u8])> = lines.iter().map(|(n, b, _)| (*n, b.as_slice())).collect();
        assert_eq!(
            texts,
            vec![
                (1, &b"h1"[..]),
                (2, &b""[..]),
                (3, &b"row-1"[..]),
                (4, &b"row-22"[..]),
                (5, &b"row-3 "[..]),
                (6, &b""[..]),
                (7, &b"last"[..]),
            ]
        );
        let split_crlf = lines_of(b"abcdef\r\nxyz");
        assert_eq!(split_crlf.len(), 2, "{split_crlf:?}");
    }

    #[test]
    fn long_lines_are_truncated_and_the_next_line_is_intact() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 3];
        input.extend_from_slice(b"\nnext\n");
        let mut exact = vec![b'y'; MAX_LINE_BYTES];
        exact.extend_from_slice(b"\r\n");
        input.extend_from_slice(&exact);
        let lines = lines_of(&input);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].1.len(), MAX_LINE_BYTES);
        assert!(lines[0].2, "over-long line is marked");
        assert_eq!(lines[1], (2, b"next".to_vec(), false));
        assert_eq!(lines[2].1.len(), MAX_LINE_BYTES);
        assert!(!lines[2].2, "a line of exactly the limit plus CR is accepted");
    }

    #[test]
    fn hashing_reader_hashes_everything() {
        let mut reader = HashingReader::new(&b"abc"[..]);
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).unwrap();
        assert_eq!(reader.bytes_read(), 3);
        assert_eq!(
            reader.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn split(line: &str) -> Result<Vec<String>, SplitError> {
        let mut fields = Fields::new();
        fields.split(line)?;
        Ok((0..fields.len())
            .map(|i| fields.get(i).unwrap().to_owned())
            .collect())
    }

    #[test]
    fn splitting_fields() {
        assert_eq!(split("a,b,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split("").unwrap(), [""]);
        assert_eq!(split("a,,").unwrap(), ["a", "", ""]);
        assert_eq!(
            split(r#""x, y","say ""hi""",z"#).unwrap(),
            ["x, y", r#"say "hi""#, "z"]
        );
        assert_eq!(split(r#""""#).unwrap(), [""]);
        assert_eq!(split(r#"a,"b"#), Err(SplitError::UnterminatedQuote));
        assert_eq!(split(r#""a"b,c"#), Err(SplitError::TextAfterQuote { field: 1 }));
        assert_eq!(
            split(r#"a,b"c"#),
            Err(SplitError::QuoteInUnquotedField { field: 2 })
        );
        let many = vec!["1"; MAX_FIELDS + 1].join(",");
        assert_eq!(split(&many), Err(SplitError::TooManyFields));
        assert_eq!(split(&vec!["1"; MAX_FIELDS].join(",")).unwrap().len(), MAX_FIELDS);
    }

    #[test]
    fn quoting_round_trips() {
        let value = r#"a "b", c"#;
        assert_eq!(split(&quote_field(value)).unwrap(), [value]);
    }
}
