//! Property-based fuzzing of the decoders that read bytes from outside: the
//! Confluent wire format, Avro bodies of readings (v1 and v3) and of every
//! qaqc output, and the field-log formats the backfill reads (long and wide
//! CSV, TOA5, ISMN; arbitrary bytes and mutations of the real fixtures,
//! with and without a profile).
//! Arbitrary bytes and mutations of valid values must give a value or a
//! typed error, never a panic, and a length field claiming gigabytes must
//! be refused before anything that size is allocated.
//!
//! The campaign length is proptest's `PROPTEST_CASES` (default 256 per
//! property; CI runs the default).

use proptest::prelude::*;
use soilstream::codec::{ReadingCodec, from_wire, to_wire};
use soilstream::model::Reading;
use soilstream::qaqc::records::OutputCodecs;

fn reading(seq: u64, moisture_vwc: f64) -> Reading {
    Reading {
        gateway_id: "gw-north".into(),
        sensor_id: "probe-17".into(),
        seq,
        event_time_ms: 1_717_000_000_000,
        moisture_vwc,
        soil_temp_c: Some(12.25),
        bulk_ec_ds_m: Some(0.61),
        depth_cm: 45,
        battery_v: None,
        source_flag: None,
    }
}

/// A mutation of `bytes`: a flipped bit, a cut, an inserted run, or a
/// replaced byte, at positions drawn by proptest.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Mutation::Set(at, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(at, bit) => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
            Mutation::Insert(at, run) => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, run.iter().copied());
            }
            Mutation::Set(at, v) => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = *v;
                }
            }
        }
    }
}

/// Decodes `value` as the raw topic's consumers do: wire format, then the
/// shipped schema. Must not panic.
/// Real field-log fixtures (each is decoded with and without a profile).
const FIELD_LOGS: [&str; 3] = [
    "toa5/campbell_scientific_tao5.excerpt.dat",
    "ismn/header_values/RSMN/Adamclisi/RSMN_RSMN_Adamclisi_sm_0.000000_0.050000_Meter-5TM_1_1_19500101_20260512.stm",
    "ismn/ceop_sep_cr/SMOSMANIA/SMOSMANIA_SMOSMANIA_Narbonne_sm_0.050000_0.050000_ThetaProbe-ML2X_20070101_20070131.stm",
];

fn fixture_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field-logs")
        .join(relative)
}

/// Decodes `bytes` as a field log: detected (`format` 0) or forced to one of
/// the four formats, with the TOA5 example profile or none: any result but
/// a panic will do.
fn decode_field_log(bytes: &[u8], format: usize, name: &str) {
    use soilstream::backfill::format::{CellRules, LogFormat, decode_all};
    use soilstream::backfill::profile::{Profile, UtcOffset};
    let forced = format
        .checked_sub(1)
        .map(|i| LogFormat::ALL[i % LogFormat::ALL.len()]);
    let profiles = [
        Profile::default(),
        Profile::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/profiles/toa5-frf-village.toml"),
        )
        .expect("the example profile"),
    ];
    for profile in profiles {
        let rules = CellRules {
            utc_offset: Some(UtcOffset::UTC),
            profile,
            default_depth_cm: Some(10),
        };
        let _ = decode_all(bytes, std::path::Path::new(name), forced, rules);
    }
}

fn decode_raw(codec: &ReadingCodec, value: &[u8]) -> Option<Reading> {
    let (_, body) = from_wire(value).ok()?;
    codec.decode_body(body).ok()
}

fn decode_outputs(codecs: &OutputCodecs, body: &[u8]) {
    let _ = codecs.clean.decode_body(body);
    let _ = codecs.flags.decode_body(body);
    let _ = codecs.aggregates.decode_body(body);
    let _ = codecs.alerts.decode_body(body);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for codec in [ReadingCodec::v1(), ReadingCodec::v3()] {
            let _ = decode_raw(&codec, &bytes);
            let _ = codec.decode_body(&bytes);
        }
        decode_outputs(&OutputCodecs::default(), &bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_field_log_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        format in 0usize..5,
    ) {
        decode_field_log(&bytes, format, "fuzz.dat");
        decode_field_log(&bytes, format, "fuzz.stm");
    }

    #[test]
    fn mutated_real_field_logs_decode_or_fail_cleanly(
        fixture in 0usize..FIELD_LOGS.len(),
        mutations in proptest::collection::vec(mutation(), 1..8),
        format in 0usize..5,
    ) {
        let path = fixture_path(FIELD_LOGS[fixture]);
        let mut bytes = std::fs::read(&path).expect("a fixture");
        apply(&mut bytes, &mutations);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        decode_field_log(&bytes, format, &name);
    }

    #[test]
    fn mutated_valid_values_decode_or_fail_cleanly(
        seq in 0..i64::MAX as u64,
        moisture in 0.0f64..0.6,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let codec = ReadingCodec::v1();
        let original = reading(seq, moisture);
        let body = codec.encode_body(&original).expect("a valid reading encodes");
        let mut value = to_wire(7, &body);
        // Unmutated, it round-trips.
        prop_assert_eq!(decode_raw(&codec, &value), Some(original));
        apply(&mut value, &mutations);
        let _ = decode_raw(&codec, &value);
        let mut body = body;
        apply(&mut body, &mutations);
        let _ = codec.decode_body(&body);
        decode_outputs(&OutputCodecs::default(), &body);
    }
}

/// Zigzag varint of `n` (Avro's long encoding).
fn avro_long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn a_length_field_of_gigabytes_is_refused_before_allocating() {
    let codec = ReadingCodec::v1();
    let codecs = OutputCodecs::default();
    for claimed in [1_i64 << 31, (1_i64 << 40) + 3, i64::MAX / 2] {
        // The first field of every record is a string: its length comes first.
        let mut body = avro_long(claimed);
        body.extend_from_slice(b"tiny");
        let error = codec
            .decode_body(&body)
            .expect_err("a length of gigabytes is refused")
            .to_string();
        assert!(
            error.contains("allocate"),
            "refused for its size, before allocating: {error}"
        );
        assert!(from_wire(&to_wire(1, &body)).is_ok());
        decode_outputs(&codecs, &body);
    }
    // A negative length is an error, not a panic.
    assert!(codec.decode_body(&avro_long(-5)).is_err());
}
