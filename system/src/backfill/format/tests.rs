//! The formats against real files (`system/tests/fixtures/field-logs/`,
//! sources and licences in its `SOURCES.md`) and against small synthetic
//! tables for what the real excerpts do not contain (a missing temperature,
//! percent and Fahrenheit units, a status column).

use super::*;
use crate::backfill::profile::{Profile, UtcOffset};
use std::path::PathBuf;

fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field-logs")
        .join(relative)
}

fn rules(profile: Profile, utc_offset: Option<&str>) -> CellRules {
    CellRules {
        utc_offset: utc_offset
            .map(|o| UtcOffset::parse(o).unwrap())
            .or(profile.utc_offset),
        profile,
        default_depth_cm: None,
    }
}

fn decode_fixture(relative: &str, rules: CellRules) -> (LogFormat, Vec<ParsedRow>, Vec<RowError>) {
    let path = fixture(relative);
    let bytes = std::fs::read(&path).unwrap();
    decode_all(&bytes, &path, None, rules).unwrap()
}

fn utc_ms(text: &str) -> i64 {
    UtcOffset::UTC.naive_to_epoch_ms(text).unwrap()
}

const COSMOS_HEADER: &str = "ismn/header_values/COSMOS/ARM-1/COSMOS_COSMOS_ARM-1_sm_0.000000_0.190000_Cosmic-ray-Probe_20170810_20180809.stm";
const COSMOS_CEOP: &str = "ismn/ceop_sep/COSMOS/ARM-1/COSMOS_COSMOS_ARM-1_sm_0.000000_0.190000_Cosmic-ray-Probe_20170810_20180809.stm";

#[test]
fn ismn_header_line_file_gives_utc_readings_with_flags_and_no_temperature() {
    let (format, rows, errors) = decode_fixture(COSMOS_HEADER, rules(Profile::default(), None));
    assert_eq!(format, LogFormat::Ismn);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rows.len(), 48);
    let first = &rows[0];
    assert_eq!(first.sensor_id, "COSMOS.ARM-1.Cosmic-ray-Probe.0-19cm");
    assert_eq!(first.event_time_ms, utc_ms("2017-08-10 00:00"));
    assert_eq!(first.moisture_vwc, 0.141);
    assert_eq!(
        first.soil_temp_c, None,
        "an ISMN sm file has no temperature: none is invented"
    );
    assert_eq!(first.depth_cm, 19);
    assert_eq!(
        first.source_flag.as_deref(),
        Some("G"),
        "provider flag `M` (none) is not appended"
    );
    let flags: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r.source_flag.as_deref()).collect();
    assert!(
        flags.contains("D03,D05") && flags.contains("D08,D05"),
        "{flags:?}"
    );
    // Identities: seq = line, strictly increasing in file order.
    assert!(rows.windows(2).all(|w| w[0].line < w[1].line));
}

#[test]
fn ismn_ceop_and_header_line_files_of_the_same_sensor_agree() {
    let (_, header, _) = decode_fixture(COSMOS_HEADER, rules(Profile::default(), None));
    let (format, ceop, errors) = decode_fixture(COSMOS_CEOP, rules(Profile::default(), None));
    assert_eq!(format, LogFormat::Ismn);
    assert!(errors.is_empty(), "{errors:?}");
    let facts = |rows: &[ParsedRow]| -> Vec<(String, i64, u64, i32, Option<String>)> {
        rows.iter()
            .map(|r| {
                (
                    r.sensor_id.clone(),
                    r.event_time_ms,
                    r.moisture_vwc.to_bits(),
                    r.depth_cm,
                    r.source_flag.clone(),
                )
            })
            .collect()
    };
    assert_eq!(facts(&header), facts(&ceop));
}

#[test]
fn ismn_files_with_bare_cr_line_ends_and_a_quoted_sensor_name() {
    let cr_header = "ismn/header_values_cr/SMOSMANIA/SMOSMANIA_SMOSMANIA_Narbonne_sm_0.050000_0.050000_ThetaProbe-ML2X_20070101_20070131.stm";
    let cr_ceop = "ismn/ceop_sep_cr/SMOSMANIA/SMOSMANIA_SMOSMANIA_Narbonne_sm_0.050000_0.050000_ThetaProbe-ML2X_20070101_20070131.stm";
    let (_, a, errors_a) = decode_fixture(cr_header, rules(Profile::default(), None));
    let (_, b, errors_b) = decode_fixture(cr_ceop, rules(Profile::default(), None));
    assert!(
        errors_a.is_empty() && errors_b.is_empty(),
        "{errors_a:?} {errors_b:?}"
    );
    assert_eq!(a.len(), 31, "one line per row although the file has no \\n");
    assert_eq!(a[0].sensor_id, "SMOSMANIA.Narbonne.ThetaProbe-ML2X.5-5cm");
    assert_eq!(a[0].event_time_ms, utc_ms("2007-01-01 01:00"));
    assert_eq!(a[0].source_flag.as_deref(), Some("U"));
    let pairs = |rows: &[ParsedRow]| -> Vec<(i64, u64)> {
        rows.iter()
            .map(|r| (r.event_time_ms, r.moisture_vwc.to_bits()))
            .collect()
    };
    assert_eq!(pairs(&a), pairs(&b));

    let rsmn = "ismn/header_values/RSMN/Adamclisi/RSMN_RSMN_Adamclisi_sm_0.000000_0.050000_Meter-5TM_1_1_19500101_20260512.stm";
    let (_, rows, errors) = decode_fixture(rsmn, rules(Profile::default(), None));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rows[0].sensor_id, "RSMN.Adamclisi.Meter-5TM.0-5cm");
    assert_eq!(rows[1].source_flag.as_deref(), Some("D04"));
    assert_eq!(rows.last().unwrap().source_flag.as_deref(), Some("D01,D02,D03"));
    assert_eq!(rows.last().unwrap().moisture_vwc, 0.022);
}

#[test]
fn ismn_profile_sensor_id_and_a_temperature_file_is_refused() {
    let profile = Profile::parse("sensor_id = \"arm-1-cosmic\"", "p.toml").unwrap();
    let (_, rows, _) = decode_fixture(COSMOS_HEADER, rules(profile, None));
    assert!(rows.iter().all(|r| r.sensor_id == "arm-1-cosmic"));
    let path = PathBuf::from("COSMOS_COSMOS_ARM-1_ts_0.050000_0.050000_Probe_20170810_20180809.stm");
    let error = decode_all(
        b"COSMOS COSMOS ARM-1 36.6 -97.4 322.0 0.05 0.05 Probe\n2017/08/10 00:00 21.5 G M\n",
        &path,
        None,
        rules(Profile::default(), None),
    )
    .unwrap_err();
    assert!(error.to_string().contains("soil temperature"), "{error}");
}

const TOA5: &str = "toa5/campbell_scientific_tao5.excerpt.dat";

fn example_profile(name: &str) -> Profile {
    Profile::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/profiles")
            .join(name),
    )
    .unwrap()
}

fn frf_profile() -> Profile {
    example_profile("toa5-frf-village.toml")
}

#[test]
fn toa5_file_with_a_profile_gives_utc_readings_in_schema_units() {
    let (format, rows, errors) = decode_fixture(TOA5, rules(frf_profile(), None));
    assert_eq!(format, LogFormat::Toa5);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rows.len(), 30);
    let first = &rows[0];
    assert_eq!(first.line, 5, "four header lines");
    assert_eq!(first.sensor_id, "frf-village-vw-10cm");
    // "2014-11-02 00:00:00" on a logger keeping UTC-5 is 05:00 UTC.
    assert_eq!(first.event_time_ms, utc_ms("2014-11-02 05:00"));
    assert_eq!(first.moisture_vwc, 0.232);
    assert_eq!(first.soil_temp_c, Some(4.243));
    assert_eq!(first.battery_v, Some(13.46), "BattV_Min found by its name");
    assert_eq!(first.depth_cm, 10);
    assert_eq!(first.source_flag, None);
    // The "NAN" cells of the file are in columns the profile does not read.
    assert!(rows.iter().all(|r| r.soil_temp_c.is_some()));
}

#[test]
fn toa5_without_an_offset_or_without_groups_says_what_to_do() {
    let no_offset = Profile::parse(
        "[[sensor]]\nsensor_id = \"a\"\ndepth_cm = 10\nmoisture = \"VW_Avg\"\n",
        "p.toml",
    )
    .unwrap();
    let path = fixture(TOA5);
    let bytes = std::fs::read(&path).unwrap();
    let error = decode_all(&bytes, &path, None, rules(no_offset, None)).unwrap_err();
    assert!(error.to_string().contains("--utc-offset"), "{error}");
    let error = decode_all(&bytes, &path, None, rules(Profile::default(), Some("+00:00"))).unwrap_err();
    assert!(error.to_string().contains("no column group"), "{error}");
}

/// A CS655-style table as a CR1000X writes it; synthetic, for what the real
/// excerpt lacks: percent moisture, °F, µS/cm, NAN values and a status column.
const SYNTHETIC_TOA5: &str = "\
\"TOA5\",\"plot-7\",\"CR1000X\",\"1234\",\"CR1000X.Std.04\",\"CPU:soil.CR1X\",\"1111\",\"Hourly\"\r
\"TIMESTAMP\",\"RECORD\",\"BattV_Min\",\"VWC_10cm\",\"EC_10cm\",\"T_10cm\",\"VWC_30cm\",\"T_30cm\",\"Status\"\r
\"TS\",\"RN\",\"Volts\",\"%\",\"uS/cm\",\"Deg F\",\"m^3/m^3\",\"Deg C\",\"\"\r
\"\",\"\",\"Min\",\"Avg\",\"Avg\",\"Avg\",\"Avg\",\"Avg\",\"Smp\"\r
\"2024-06-01 00:00:00\",0,12.9,23.5,450,50,0.301,12.5,\"OK\"\r
\"2024-06-01 01:00:00\",1,12.9,23.1,\"NAN\",\"NAN\",0.299,12.4,\"OK\"\r
\"2024-06-01 02:00:00\",2,12.8,\"NAN\",440,51.8,0.297,-7999,\"SENSOR10_FAIL\"\r
";

#[test]
fn toa5_groups_from_names_units_converted_missing_values_absent() {
    let profile = Profile::parse("utc_offset = \"+01:00\"\nflag_column = \"Status\"", "p.toml").unwrap();
    let path = PathBuf::from("plot7_Hourly.dat");
    let (format, rows, errors) =
        decode_all(SYNTHETIC_TOA5.as_bytes(), &path, None, rules(profile, None)).unwrap();
    assert_eq!(format, LogFormat::Toa5);
    // Line 7: the 10 cm moisture is NAN: that group is reported, not sent.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 7);
    assert_eq!(errors[0].column, "VWC_10cm");
    assert!(
        errors[0]
            .reason
            .contains("a reading without moisture is not a reading")
    );
    assert_eq!(rows.len(), 5);
    let at = |line: u64, sensor: &str| {
        rows.iter()
            .find(|r| r.line == line && r.sensor_id == sensor)
            .unwrap()
    };
    let a = at(5, "plot-7-10cm");
    assert_eq!(a.event_time_ms, utc_ms("2024-05-31 23:00"));
    assert!((a.moisture_vwc - 0.235).abs() < 1e-12, "percent to m3/m3");
    assert!(
        (a.soil_temp_c.unwrap() - 10.0).abs() < 1e-12,
        "50 degF is 10 degC"
    );
    assert!((a.bulk_ec_ds_m.unwrap() - 0.45).abs() < 1e-12, "uS/cm to dS/m");
    assert_eq!(a.battery_v, Some(12.9));
    assert_eq!(a.source_flag.as_deref(), Some("OK"));
    assert_eq!(a.group, 0);
    let b = at(6, "plot-7-10cm");
    assert_eq!(
        (b.soil_temp_c, b.bulk_ec_ds_m),
        (None, None),
        "NAN is absent, not zero"
    );
    let deep = at(7, "plot-7-30cm");
    assert_eq!(deep.soil_temp_c, None, "-7999 is a missing marker");
    assert_eq!(deep.moisture_vwc, 0.297);
    assert_eq!(deep.source_flag.as_deref(), Some("SENSOR10_FAIL"));
    assert_eq!(deep.group, 1);
}

#[test]
fn wide_csv_with_a_prefix_and_detection_of_every_format() {
    let text = "timestamp,VWC_10cm,T_10cm,VWC_30cm\n2024-06-01T00:00:00Z,0.25,14.5,0.31\n2024-06-01T01:00:00Z,0.26,,0.30\n";
    let path = PathBuf::from("export.csv");
    let error = decode_all(text.as_bytes(), &path, None, rules(Profile::default(), None)).unwrap_err();
    assert!(error.to_string().contains("sensor_prefix"), "{error}");
    let profile = Profile::parse("sensor_prefix = \"site-3\"", "p.toml").unwrap();
    let (format, rows, errors) = decode_all(text.as_bytes(), &path, None, rules(profile, None)).unwrap();
    assert_eq!(format, LogFormat::WideCsv);
    assert!(errors.is_empty(), "{errors:?}");
    let ids: Vec<(&str, u64, Option<f64>)> = rows
        .iter()
        .map(|r| (r.sensor_id.as_str(), r.line, r.soil_temp_c))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("site-3-10cm", 2, Some(14.5)),
            ("site-3-30cm", 2, None),
            ("site-3-10cm", 3, None),
            ("site-3-30cm", 3, None),
        ]
    );

    let detect = |line: &str, name: &str| LogFormat::detect(line, name, &Profile::default());
    assert_eq!(detect("\"TOA5\",\"x\"", "a.dat"), Ok(LogFormat::Toa5));
    assert_eq!(
        detect("sensor_id,timestamp,moisture", "a.csv"),
        Ok(LogFormat::LongCsv)
    );
    assert_eq!(detect("TIMESTAMP,VWC_10cm", "a.csv"), Ok(LogFormat::WideCsv));
    assert_eq!(detect("whatever", "a.stm"), Ok(LogFormat::Ismn));
    let unknown = detect("date;value", "a.txt").unwrap_err();
    for format in LogFormat::ALL {
        assert!(unknown.contains(format.name()), "{unknown}");
    }
}

#[test]
fn the_shipped_example_profiles_do_what_their_comments_say() {
    let text = "Date Time,BattV,VWC_10cm,T_10cm,EC_10cm,VWC_30cm,T_30cm,EC_30cm,QC\n\
                2024-06-01 00:00,12.9,23.5,57.2,450,30.1,54.5,520,ok\n";
    let (format, rows, errors) = decode_all(
        text.as_bytes(),
        &PathBuf::from("export.csv"),
        None,
        rules(example_profile("wide-csv-percent.toml"), None),
    )
    .unwrap();
    assert_eq!(format, LogFormat::WideCsv);
    assert!(errors.is_empty(), "{errors:?}");
    let a = &rows[0];
    assert_eq!(a.sensor_id, "plot-3-10cm");
    assert_eq!(a.event_time_ms, utc_ms("2024-05-31 23:00"), "CET is UTC+1");
    assert!((a.moisture_vwc - 0.235).abs() < 1e-12);
    assert!((a.soil_temp_c.unwrap() - 14.0).abs() < 1e-9);
    assert!((a.bulk_ec_ds_m.unwrap() - 0.45).abs() < 1e-12);
    assert_eq!((a.battery_v, a.source_flag.as_deref()), (Some(12.9), Some("ok")));
    assert_eq!(rows[1].sensor_id, "plot-3-30cm");

    let (_, rows, _) = decode_fixture(COSMOS_HEADER, rules(example_profile("ismn-station.toml"), None));
    assert!(rows.iter().all(|r| r.sensor_id == "arm-1-cosmic-ray"));
}
