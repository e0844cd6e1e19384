//! Property-based fuzzing of the simulated broker's wire protocol: frames
//! read from arbitrary or mutated bytes, and request / response payloads
//! decoded from them, give a value or a typed error, never a panic; a
//! length field beyond the frame limit is refused before the body is
//! allocated. The campaign length is proptest's `PROPTEST_CASES`.

use proptest::prelude::*;
use soilstream_sim::protocol::{
    DEFAULT_MAX_FRAME_BYTES, ProtocolError, Request, Response, decode, encode, encode_frame, read_frame,
};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Reads every frame of `bytes` until the end or the first error, decoding
/// each payload both ways.
fn read_all(bytes: &[u8]) -> Result<usize, ProtocolError> {
    block_on(async {
        let mut reader = bytes;
        let mut frames = 0;
        while let Some(frame) = read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES).await? {
            let _ = decode::<Request>(&frame.payload);
            let _ = decode::<Response>(&frame.payload);
            frames += 1;
        }
        Ok(frames)
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_reader_or_the_decoders(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = read_all(&bytes);
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Response>(&bytes);
    }

    #[test]
    fn mutated_valid_frames_are_read_or_refused(
        topic in "[a-z-]{1,20}",
        partition in any::<i32>(),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4),
    ) {
        let request = Request::ListOffsets { topic, partition };
        let payload = encode(&request).expect("encodes");
        let mut frame = encode_frame(42, &payload, DEFAULT_MAX_FRAME_BYTES).expect("a small frame");
        prop_assert_eq!(read_all(&frame).ok(), Some(1));
        for (at, bit) in flips {
            let at = at % frame.len();
            frame[at] ^= 1 << bit;
        }
        // A flipped bit is caught by the length check, the CRC, or decodes
        // to a request; never a panic.
        let _ = read_all(&frame);
    }
}

#[test]
fn a_length_field_beyond_the_limit_is_refused_before_allocating() {
    // Too short for a correlation id, or beyond the limit.
    for length in [0, 7, DEFAULT_MAX_FRAME_BYTES + 1, 1 << 31, u32::MAX] {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        match read_all(&bytes) {
            Err(ProtocolError::BadLength { length_bytes, .. }) => assert_eq!(length_bytes, length),
            other => panic!("length {length}: expected BadLength, got {other:?}"),
        }
    }
}
