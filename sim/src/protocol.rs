//! The simulated broker's wire protocol: request/response types and framing.
//!
//! A frame on the stream is
//!
//! ```text
//! length: u32 BE   bytes after the 8-byte header (correlation id + payload)
//! crc32c: u32 BE   CRC-32C of those bytes
//! correlation_id: u64 BE
//! payload          postcard-encoded `Request` or `Response`
//! ```
//!
//! A response carries the correlation id of its request. Frames are bounded
//! (`max_frame_bytes`); a length over the bound, a CRC mismatch or a payload
//! that does not decode is an error, never a panic, and the connection is
//! then closed (the stream can no longer be trusted to be in sync).
//!
//! The requests mirror the Kafka APIs the system uses (Metadata,
//! InitProducerId, Produce, Fetch, ListOffsets, OffsetCommit, OffsetFetch,
//! and the consumer-group APIs JoinGroup, Heartbeat, LeaveGroup and a
//! generation-fenced OffsetCommit), reduced to what the simulation needs.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes before the correlation id: length and CRC.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// Bytes of the correlation id.
pub const CORRELATION_ID_BYTES: usize = 8;
/// Default bound on a frame's length field (correlation id + payload).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The length field is out of bounds.
    #[error("frame length {length_bytes} outside {min_bytes}..={max_bytes}")]
    BadLength {
        /// The length field read.
        length_bytes: u32,
        /// Smallest valid length.
        min_bytes: u32,
        /// Largest accepted length.
        max_bytes: u32,
    },
    /// The CRC does not match the bytes.
    #[error("frame crc mismatch: header {expected:#010x}, computed {actual:#010x}")]
    BadCrc {
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes received.
        actual: u32,
    },
    /// The payload is not a valid message.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The message does not fit in a frame.
    #[error("message of {length_bytes} bytes exceeds the frame bound of {max_bytes}")]
    TooLarge {
        /// Encoded length.
        length_bytes: usize,
        /// Bound.
        max_bytes: u32,
    },
}

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Correlation id: a response carries its request's.
    pub correlation_id: u64,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Builds a frame around `payload`.
pub fn encode_frame(
    correlation_id: u64,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<Vec<u8>, ProtocolError> {
    let length = CORRELATION_ID_BYTES + payload.len();
    let length_field = u32::try_from(length)
        .ok()
        .filter(|l| *l <= max_frame_bytes)
        .ok_or(ProtocolError::TooLarge {
            length_bytes: length,
            max_bytes: max_frame_bytes,
        })?;
    let mut frame = Vec::with_capacity(FRAME_PREFIX_BYTES + length);
    frame.extend_from_slice(&length_field.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame[FRAME_PREFIX_BYTES..]);
    frame[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(frame)
}

/// Writes one frame (in a single write, so turmoil sends one segment).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    correlation_id: u64,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<(), ProtocolError> {
    let frame = encode_frame(correlation_id, payload, max_frame_bytes)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it.
///
/// Not cancel-safe: if the future is dropped part-way, drop the stream too.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<Frame>, ProtocolError> {
    let mut prefix = [0_u8; FRAME_PREFIX_BYTES];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        filled += n;
    }
    let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let expected_crc = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    let min_bytes = CORRELATION_ID_BYTES as u32;
    if length < min_bytes || length > max_frame_bytes {
        return Err(ProtocolError::BadLength {
            length_bytes: length,
            min_bytes,
            max_bytes: max_frame_bytes,
        });
    }
    let mut body = vec![0_u8; length as usize];
    reader.read_exact(&mut body).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Truncated
        } else {
            ProtocolError::Io(error)
        }
    })?;
    let actual_crc = crc32c::crc32c(&body);
    if actual_crc != expected_crc {
        return Err(ProtocolError::BadCrc {
            expected: expected_crc,
            actual: actual_crc,
        });
    }
    let mut id = [0_u8; CORRELATION_ID_BYTES];
    id.copy_from_slice(&body[..CORRELATION_ID_BYTES]);
    body.drain(..CORRELATION_ID_BYTES);
    Ok(Some(Frame {
        correlation_id: u64::from_be_bytes(id),
        payload: body,
    }))
}

/// Encodes a message (request or response) as a frame payload.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    postcard::to_allocvec(message).map_err(|error| ProtocolError::Decode(error.to_string()))
}

/// Decodes a frame payload; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ProtocolError> {
    let (message, rest) =
        postcard::take_from_bytes(payload).map_err(|error| ProtocolError::Decode(error.to_string()))?;
    if rest.is_empty() {
        Ok(message)
    } else {
        Err(ProtocolError::Decode(format!("{} trailing bytes", rest.len())))
    }
}

/// Broker error codes (the Kafka ones the simulation needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// The topic or partition does not exist.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// The fetch offset is outside the log.
    #[error("offset out of range")]
    OffsetOutOfRange,
    /// The batch's sequence does not follow the last appended one: a gap.
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    /// The batch's sequence is older than the broker still remembers.
    #[error("duplicate sequence number outside the dedup window")]
    DuplicateSequence,
    /// The producer id was never issued by this broker.
    #[error("unknown producer id")]
    UnknownProducerId,
    /// A newer epoch of this producer exists.
    #[error("producer fenced")]
    ProducerFenced,
    /// The broker's storage failed; retry.
    #[error("storage error")]
    StorageError,
    /// The broker cannot serve the request now (injected fault); retry.
    #[error("not leader or follower")]
    NotLeaderOrFollower,
    /// The request is malformed or exceeds a limit.
    #[error("invalid request")]
    InvalidRequest,
    /// The consumer group is rebalancing: re-send JoinGroup.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// The member id is not (or no longer) a member of the group: join
    /// afresh, without a member id.
    #[error("unknown member id")]
    UnknownMemberId,
    /// The generation is not the group's current one (or not the member's).
    #[error("illegal generation")]
    IllegalGeneration,
}

impl ErrorCode {
    /// Whether resending the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::StorageError | Self::NotLeaderOrFollower)
    }
}

/// A record on the wire and in the broker's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value, if any.
    pub value: Option<Vec<u8>>,
    /// CreateTime, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl WireRecord {
    /// Size in bytes for batch and fetch limits: an upper bound of its
    /// encoded size (payload bytes plus the worst-case length prefixes and
    /// tags), so that limits in these units bound frames.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 32;
        const HEADER_OVERHEAD_BYTES: usize = 12;
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES)
            .sum();
        OVERHEAD_BYTES
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers
    }
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Partition counts of topics.
    Metadata {
        /// Topic names.
        topics: Vec<String>,
    },
    /// A new idempotent producer session.
    InitProducerId,
    /// Append batches (at most one per partition).
    Produce(ProduceRequest),
    /// Read records.
    Fetch(FetchRequest),
    /// Low and high watermarks of a partition.
    ListOffsets {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Store a consumer group's next offsets.
    OffsetCommit {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// (partition, next offset to read).
        offsets: Vec<(i32, i64)>,
    },
    /// Read a consumer group's committed offsets.
    OffsetFetch {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partitions.
        partitions: Vec<i32>,
    },
    /// Join (or re-join) a consumer group; also counts as a heartbeat.
    /// Answered with [`Response::JoinGroup`].
    JoinGroup {
        /// Group id.
        group: String,
        /// The topic the group consumes (one per group).
        topic: String,
        /// The member id from an earlier JoinGroup; `None`: a new member.
        member_id: Option<String>,
        /// The member is removed when no request of it arrives for this long.
        session_timeout_ms: u64,
        /// How long a rebalance waits for this member to re-join.
        rebalance_timeout_ms: u64,
    },
    /// Keep a membership alive and learn whether a rebalance started.
    /// Answered with [`Response::Heartbeat`].
    Heartbeat {
        /// Group id.
        group: String,
        /// Member id.
        member_id: String,
        /// The member's generation.
        generation: u64,
    },
    /// Leave a group at once (the others rebalance). Answered with
    /// [`Response::LeaveGroup`].
    LeaveGroup {
        /// Group id.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// Store a group's next offsets on behalf of a member of a generation:
    /// refused once the generation is over. Answered with
    /// [`Response::OffsetCommit`].
    GroupOffsetCommit {
        /// Group id.
        group: String,
        /// Member id.
        member_id: String,
        /// The member's generation.
        generation: u64,
        /// Topic.
        topic: String,
        /// (partition, next offset to read).
        offsets: Vec<(i32, i64)>,
    },
}

/// Where a JoinGroup left the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinOutcome {
    /// The rebalance is not complete yet: re-send JoinGroup (with this id)
    /// after a short delay.
    Pending {
        /// The member's id (newly issued for a new member).
        member_id: String,
    },
    /// The member is part of a new (or the current) generation.
    Joined {
        /// The member's id.
        member_id: String,
        /// The group's generation.
        generation: u64,
        /// The partitions assigned to this member in that generation,
        /// ascending.
        partitions: Vec<i32>,
    },
}

/// Produce request: one batch per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceRequest {
    /// Producer id from InitProducerId.
    pub producer_id: u64,
    /// Producer epoch from InitProducerId.
    pub producer_epoch: u16,
    /// The batches.
    pub batches: Vec<ProduceBatch>,
}

/// A batch for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceBatch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Sequence number of the first record (per producer and partition,
    /// from 0, consecutive).
    pub base_sequence: u64,
    /// Records, at least one.
    pub records: Vec<WireRecord>,
}

/// Fetch request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// (topic, partition, offset to read from).
    pub partitions: Vec<(String, i32, i64)>,
    /// Wait up to this long for records if there are none.
    pub max_wait_ms: u64,
    /// At most this many records in the response.
    pub max_records: u32,
    /// At most about this many bytes (at least one record is returned if any
    /// is available, whatever its size).
    pub max_bytes: u32,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Partition counts, in request order (`None`: unknown topic).
    Metadata {
        /// (topic, partition count).
        topics: Vec<(String, Option<u32>)>,
    },
    /// The new producer session.
    InitProducerId {
        /// Producer id.
        producer_id: u64,
        /// Producer epoch.
        producer_epoch: u16,
    },
    /// Per-batch results, in request order.
    Produce {
        /// Results.
        results: Vec<ProduceResult>,
    },
    /// Per-partition results, in request order.
    Fetch {
        /// Results.
        results: Vec<FetchResult>,
    },
    /// Watermarks.
    ListOffsets {
        /// Low and high watermark, or the error.
        result: Result<(i64, i64), ErrorCode>,
    },
    /// Offsets stored.
    OffsetCommit {
        /// Ok, or the error.
        result: Result<(), ErrorCode>,
    },
    /// Committed offsets.
    OffsetFetch {
        /// (partition, committed next offset if any), or the error.
        result: Result<Vec<(i32, Option<i64>)>, ErrorCode>,
    },
    /// Where a JoinGroup left the member.
    JoinGroup {
        /// The outcome, or the error.
        result: Result<JoinOutcome, ErrorCode>,
    },
    /// Heartbeat answer.
    Heartbeat {
        /// Ok, or why the membership is not current.
        result: Result<(), ErrorCode>,
    },
    /// LeaveGroup answer.
    LeaveGroup {
        /// Ok, or the error.
        result: Result<(), ErrorCode>,
    },
    /// The whole request failed.
    Error(ErrorCode),
}

/// Result of one produced batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResult {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the batch's first record (also for a deduplicated resend).
    pub result: Result<i64, ErrorCode>,
}

/// Result of fetching one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResult {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The records with their offsets (consecutive from the requested
    /// offset) and the high watermark, or the error.
    pub result: Result<FetchedRecords, ErrorCode>,
}

/// Records read from a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedRecords {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Records.
    pub records: Vec<WireRecord>,
    /// The partition's high watermark at the time of the fetch.
    pub high_watermark: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn sample_request() -> Request {
        Request::Produce(ProduceRequest {
            producer_id: 7,
            producer_epoch: 0,
            batches: vec![ProduceBatch {
                topic: "t".into(),
                partition: 2,
                base_sequence: 40,
                records: vec![WireRecord {
                    key: Some(b"sensor-1".to_vec()),
                    value: None,
                    timestamp_ms: -5,
                    headers: vec![("h".into(), vec![1, 2])],
                }],
            }],
        })
    }

    #[test]
    fn messages_and_frames_round_trip() {
        let request = sample_request();
        let payload = encode(&request).expect("encode");
        let frame = encode_frame(99, &payload, DEFAULT_MAX_FRAME_BYTES).expect("frame");
        let mut stream = frame.as_slice();
        let read = block_on(read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES))
            .expect("read")
            .expect("frame");
        assert_eq!(read.correlation_id, 99);
        assert_eq!(decode::<Request>(&read.payload).expect("decode"), request);
        let mut empty: &[u8] = &[];
        assert!(
            block_on(read_frame(&mut empty, DEFAULT_MAX_FRAME_BYTES))
                .expect("eof")
                .is_none()
        );
    }

    #[test]
    fn group_messages_round_trip() {
        let requests = [
            Request::JoinGroup {
                group: "g".into(),
                topic: "t".into(),
                member_id: None,
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 60_000,
            },
            Request::Heartbeat {
                group: "g".into(),
                member_id: "member-3".into(),
                generation: 4,
            },
            Request::LeaveGroup {
                group: "g".into(),
                member_id: "member-3".into(),
            },
            Request::GroupOffsetCommit {
                group: "g".into(),
                member_id: "member-3".into(),
                generation: 4,
                topic: "t".into(),
                offsets: vec![(0, 7), (3, 1)],
            },
        ];
        for request in requests {
            let payload = encode(&request).expect("encode");
            assert_eq!(decode::<Request>(&payload).expect("decode"), request);
        }
        let responses = [
            Response::JoinGroup {
                result: Ok(JoinOutcome::Pending {
                    member_id: "member-3".into(),
                }),
            },
            Response::JoinGroup {
                result: Ok(JoinOutcome::Joined {
                    member_id: "member-3".into(),
                    generation: 5,
                    partitions: vec![2, 3],
                }),
            },
            Response::Heartbeat {
                result: Err(ErrorCode::RebalanceInProgress),
            },
            Response::LeaveGroup {
                result: Err(ErrorCode::UnknownMemberId),
            },
            Response::OffsetCommit {
                result: Err(ErrorCode::IllegalGeneration),
            },
        ];
        for response in responses {
            let payload = encode(&response).expect("encode");
            assert_eq!(decode::<Response>(&payload).expect("decode"), response);
        }
        for code in [
            ErrorCode::RebalanceInProgress,
            ErrorCode::UnknownMemberId,
            ErrorCode::IllegalGeneration,
        ] {
            assert!(!code.is_retriable(), "{code:?} is handled by the group client");
        }
    }

    #[test]
    fn every_corruption_of_a_frame_is_an_error() {
        let payload = encode(&sample_request()).expect("encode");
        let frame = encode_frame(1, &payload, DEFAULT_MAX_FRAME_BYTES).expect("frame");
        for index in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[index] ^= 1 << bit;
                let mut stream = damaged.as_slice();
                let result = block_on(read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES));
                assert!(
                    result.is_err(),
                    "flip of bit {bit} in byte {index} went unnoticed"
                );
            }
        }
        for cut in 1..frame.len() {
            let mut stream = &frame[..cut];
            let result = block_on(read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES));
            assert!(matches!(result, Err(ProtocolError::Truncated)), "cut at {cut}");
        }
    }

    #[test]
    fn limits_are_enforced_on_both_sides() {
        assert!(matches!(
            encode_frame(1, &[0; 100], 50),
            Err(ProtocolError::TooLarge { .. })
        ));
        let frame = encode_frame(1, &[0; 100], 1_000).expect("frame");
        let mut stream = frame.as_slice();
        assert!(matches!(
            block_on(read_frame(&mut stream, 50)),
            Err(ProtocolError::BadLength {
                length_bytes: 108,
                ..
            })
        ));
    }

    #[test]
    fn record_sizes_bound_their_encoding() {
        let record = WireRecord {
            key: Some(vec![1; 300]),
            value: Some(vec![2; 70_000]),
            timestamp_ms: i64::MIN,
            headers: (0..20).map(|i| (format!("h{i}"), vec![3; 200])).collect(),
        };
        assert!(encode(&record).expect("encode").len() <= record.size_bytes());
        let empty = WireRecord {
            key: None,
            value: None,
            timestamp_ms: i64::MAX,
            headers: vec![("".into(), vec![])],
        };
        assert!(encode(&empty).expect("encode").len() <= empty.size_bytes());
    }

    #[test]
    fn garbage_payloads_do_not_decode_or_panic() {
        let mut state = 0x1234_5678_u32;
        for length in 0..200 {
            let garbage: Vec<u8> = (0..length)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let _ = decode::<Request>(&garbage);
            let _ = decode::<Response>(&garbage);
        }
        // A valid message followed by junk is refused.
        let mut payload = encode(&Request::InitProducerId).expect("encode");
        payload.push(0);
        assert!(decode::<Request>(&payload).is_err());
        // A length prefix claiming a huge vector does not allocate it.
        let huge = [2_u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Request>(&huge).is_err());
    }
}
