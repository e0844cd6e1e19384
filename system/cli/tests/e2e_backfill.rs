//! End-to-end: `soilstream backfill` of the example SD-card logs into a real
//! broker (Tansu). The expected readings are computed here from the CSV
//! itself (times parsed with jiff, not with the backfill's parser) and the
//! topic is judged by the shared checker against them.
//!
//! Needs the `tansu` binary; a failing test prints the backfill's and the
//! broker's log tails.

mod common;

use common::broker::{RAW_TOPIC, check_raw, read_topic, start_raw_broker, topic_record_count};
use common::gateway::SOILSTREAM;
use common::logs::LogsOnFailure;
use serde_json::Value;
use soilstream::model::{Reading, ReadingId};
use soilstream::transport::ConsumedRecord;
use soilstream_containers::{ChildProcess, ChildSpec, TansuBroker};
use soilstream_scenarios::checker::{AnomalyKind, CheckOptions, check_topic};
use soilstream_scenarios::ledger::Ledger;
use soilstream_scenarios::runner::decode_raw;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The backfill's own gateway id, as in `examples/README.md`.
const GATEWAY_ID: &str = "gw-07-sd";

/// Rows in `examples/sdcard-log.csv`.
const EXAMPLE_ROWS: usize = 100;

/// How long a backfill of the example may take, in ms.
const BACKFILL_TIMEOUT_MS: u64 = 60_000;

/// Environment variables the backfill reads settings from.
const BACKFILL_ENV_VARS: &[&str] = &["SOILSTREAM_BROKERS", "SOILSTREAM_REGISTRY_URL"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Copies an example log into `dir`, so its checkpoint and rejects files
/// land there and not in the repository.
fn copy_example(name: &str, dir: &Path) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(examples_dir().join(name), &copy).expect("copy the example log");
    copy
}

/// The readings a CSV's good rows stand for: identity (gateway, sensor,
/// physical line number), event time from the row's RFC 3339 time.
/// Expects the example's column order and skips rows that do not parse.
fn expected_readings(csv: &Path) -> Vec<Reading> {
    let text = std::fs::read_to_string(csv).expect("read the CSV");
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().expect("a header row");
    assert_eq!(
        header,
        "sensor_id,timestamp,moisture,temperature,ec,depth_cm,battery_v"
    );
    lines
        .filter_map(|(index, line)| {
            let fields: Vec<&str> = line.split(',').collect();
            let [sensor, time, moisture, temperature, ec, depth, battery] = fields[..] else {
                return None;
            };
            let optional = |text: &str| (!text.is_empty()).then(|| text.parse::<f64>().ok()).flatten();
            Some(Reading {
                gateway_id: GATEWAY_ID.into(),
                sensor_id: Some(sensor).filter(|s| !s.is_empty())?.to_owned(),
                seq: index as u64 + 1,
                event_time_ms: time.parse::<jiff::Timestamp>().ok()?.as_millisecond(),
                moisture_vwc: moisture.parse().ok()?,
                soil_temp_c: Some(temperature.parse().ok()?),
                bulk_ec_ds_m: optional(ec),
                depth_cm: depth.parse().ok()?,
                battery_v: optional(battery),
                source_flag: None,
            })
        })
        .collect()
}

/// A ledger that knows every reading of the file: anything else in the
/// topic is unexpected.
fn ledger_of(readings: &[Reading]) -> Ledger {
    let mut ledger = Ledger::new(true);
    for reading in readings {
        ledger.sampled(reading);
    }
    ledger.durable(readings);
    ledger
}

/// `soilstream backfill FILE --gateway-id gw-07-sd --brokers B ARGS`.
fn backfill_command(broker: &TansuBroker, csv: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "backfill",
        csv.to_str().unwrap(),
        "--gateway-id",
        GATEWAY_ID,
        "--brokers",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(broker.bootstrap_servers());
    args.extend(["--topic", RAW_TOPIC, "--json"].iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a command of the binary to completion, its environment cleared of
/// the settings it would read.
fn run(args: &[String]) -> Output {
    let mut command = Command::new(SOILSTREAM);
    command.args(args).env("SOILSTREAM_LOG", "info");
    for var in BACKFILL_ENV_VARS {
        command.env_remove(var);
    }
    command.output().expect("run soilstream")
}

/// The JSON summary a `--json` backfill prints on stdout.
fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary on stdout: {stdout}"));
    serde_json::from_str(line).expect("the summary is JSON")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Per identity, the readings its records hold.
fn copies_by_identity(records: &[ConsumedRecord]) -> BTreeMap<ReadingId, Vec<(Reading, i64)>> {
    let mut copies: BTreeMap<ReadingId, Vec<(Reading, i64)>> = BTreeMap::new();
    for record in records {
        let reading = decode_raw(record.value.as_deref().expect("a value")).expect("decodes");
        copies
            .entry(reading.id())
            .or_default()
            .push((reading, record.timestamp_ms));
    }
    copies
}

#[test]
fn backfill_of_the_example_log_lands_100_records_stamped_with_the_csv_times() {
    let started = Instant::now();
    let broker = start_raw_broker(false);
    let mut logs = LogsOnFailure::new();
    logs.watch("broker", broker.log_path());
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_example("sdcard-log.csv", dir.path());
    let expected = expected_readings(&csv);
    assert_eq!(expected.len(), EXAMPLE_ROWS);

    let output = run(&backfill_command(&broker, &csv, &[]));
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary(&output);
    assert_eq!(summary["completed"], true, "{summary}");
    assert_eq!(summary["rows_read"], EXAMPLE_ROWS, "{summary}");
    assert_eq!(summary["rows_produced"], EXAMPLE_ROWS, "{summary}");
    assert_eq!(summary["rows_rejected"], 0, "{summary}");

    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    assert_eq!(records.len(), EXAMPLE_ROWS);
    // Each record's Kafka timestamp is its row's time, read from the CSV.
    let time_of_line: BTreeMap<u64, i64> = expected.iter().map(|r| (r.seq, r.event_time_ms)).collect();
    for record in &records {
        let reading = decode_raw(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            Some(&record.timestamp_ms),
            time_of_line.get(&reading.seq),
            "line {}: Kafka timestamp vs the CSV's time",
            reading.seq
        );
    }
    // And the checker agrees: exactly the file's readings, once each, values
    // intact, keyed and partitioned by sensor, per-sensor order kept.
    let ledger = ledger_of(&expected);
    let report = check_topic(
        &ledger,
        &records,
        partitions,
        &decode_raw,
        CheckOptions {
            duplicates_fail: true,
        },
    );
    eprintln!("{report}");
    assert!(report.valid, "{report}");
    assert_eq!(report.tally.delivered_unique, EXAMPLE_ROWS as u64, "{report}");
    eprintln!(
        "backfill of the example: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_backfill_killed_halfway_and_rerun_adds_no_identity_and_changes_no_value() {
    let started = Instant::now();
    let broker = start_raw_broker(false);
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_example("sdcard-log.csv", dir.path());
    let expected = expected_readings(&csv);

    // 20 rows/s: the 100 rows take 5 s; checkpoint every 10 rows.
    let slow = backfill_command(&broker, &csv, &["--max-rate", "20", "--checkpoint-every", "10"]);
    let mut spec = ChildSpec::new(SOILSTREAM, dir.path().join("backfill.log"))
        .args(&slow)
        .env("SOILSTREAM_LOG", "info");
    for var in BACKFILL_ENV_VARS {
        spec = spec.env_remove(var);
    }
    let mut logs = LogsOnFailure::new();
    logs.watch("backfill", dir.path().join("backfill.log"))
        .watch("broker", broker.log_path());
    let mut child = ChildProcess::spawn(spec).expect("spawn the backfill");
    let deadline = Instant::now() + Duration::from_millis(BACKFILL_TIMEOUT_MS);
    while topic_record_count(&broker, RAW_TOPIC) < 30 {
        assert!(child.is_running(), "the backfill ended before it was killed");
        assert!(Instant::now() < deadline, "the backfill made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill9().unwrap();
    let at_kill = topic_record_count(&broker, RAW_TOPIC);
    assert!(
        at_kill < EXAMPLE_ROWS as i64,
        "killed halfway: {at_kill} records were in the topic"
    );

    // The same file again (at full speed): resumes after the checkpoint.
    let output = run(&backfill_command(&broker, &csv, &["--checkpoint-every", "10"]));
    assert!(output.status.success(), "{}", describe(&output));
    let summary = summary(&output);
    assert_eq!(summary["completed"], true, "{summary}");
    let resumed_after = summary["resumed_after_line"].as_u64().unwrap();
    assert!(resumed_after > 1, "resumed from the checkpoint: {summary}");
    assert_eq!(
        summary["rows_skipped_done"].as_u64().unwrap() + summary["rows_produced"].as_u64().unwrap(),
        EXAMPLE_ROWS as u64,
        "{summary}"
    );

    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    // No identity the file does not hold ("unexpected") and no identity
    // with other values ("corrupt"); repeats are counted, not failed.
    let ledger = ledger_of(&expected);
    let report = check_raw(&ledger, &records, partitions);
    assert!(report.valid, "{report}");
    assert_eq!(report.count(AnomalyKind::Unexpected), 0, "{report}");
    assert_eq!(report.count(AnomalyKind::Corrupt), 0, "{report}");
    assert_eq!(report.tally.delivered_unique, EXAMPLE_ROWS as u64, "{report}");
    let by_line: BTreeMap<ReadingId, &Reading> = expected.iter().map(|r| (r.id(), r)).collect();
    for (id, copies) in copies_by_identity(&records) {
        let original = by_line
            .get(&id)
            .unwrap_or_else(|| panic!("{id:?} is a new identity"));
        for (copy, timestamp_ms) in copies {
            assert_eq!(&&copy, original, "a repeat of {id:?} with other values");
            assert_eq!(timestamp_ms, original.event_time_ms);
        }
    }
    eprintln!(
        "killed with {at_kill} record(s) in the topic; the re-run resumed after line {resumed_after}; \
         {} repeat(s) in the topic",
        report.tally.duplicates
    );
    eprintln!(
        "killed backfill re-run: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn broken_rows_get_line_numbered_errors_and_a_rejects_file() {
    let started = Instant::now();
    let broker = start_raw_broker(false);
    let mut logs = LogsOnFailure::new();
    logs.watch("broker", broker.log_path());
    let dir = tempfile::tempdir().unwrap();
    let csv = copy_example("sdcard-log-broken.csv", dir.path());
    let file = csv.display().to_string();

    let output = run(&backfill_command(&broker, &csv, &[]));
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        format!("{file}:4: timestamp: not an RFC 3339 time with offset nor integer epoch milliseconds"),
        format!("{file}:6: moisture: not a number: \"ERR\""),
        format!("{file}:8: depth_cm: missing: row has 5 fields, header has 7"),
        format!("{file}:10: sensor_id: empty"),
    ] {
        assert!(stderr.contains(&expected), "no `{expected}` in:\n{stderr}");
    }
    let summary = summary(&output);
    assert_eq!(summary["rows_read"], 10, "{summary}");
    assert_eq!(summary["rows_produced"], 6, "{summary}");
    assert_eq!(summary["rows_rejected"], 4, "{summary}");
    let rejects_path = PathBuf::from(format!("{file}.rejects.csv"));
    assert_eq!(
        summary["rejects_path"],
        rejects_path.display().to_string(),
        "{summary}"
    );
    let mut rejects = csv::Reader::from_path(&rejects_path).expect("a rejects file");
    assert_eq!(
        rejects.headers().unwrap(),
        vec!["line", "column", "reason", "original_line"]
    );
    let original_lines: Vec<String> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let rejected: Vec<(u64, String)> = rejects
        .records()
        .map(|row| {
            let row = row.expect("a CSV row");
            let line: u64 = row[0].parse().expect("a line number");
            assert!(!row[2].is_empty(), "a reason: {row:?}");
            assert_eq!(&row[3], original_lines[line as usize - 1], "the original line");
            (line, row[1].to_owned())
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (4, "timestamp".to_owned()),
            (6, "moisture".to_owned()),
            (8, "depth_cm".to_owned()),
            (10, "sensor_id".to_owned())
        ]
    );

    // The good rows landed, on their own line numbers.
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let good = expected_readings(&csv);
    assert_eq!(
        good.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [2, 3, 5, 9, 11, 12],
        "the test's own reading of the file"
    );
    let report = check_topic(
        &ledger_of(&good),
        &records,
        partitions,
        &decode_raw,
        CheckOptions {
            duplicates_fail: true,
        },
    );
    assert!(report.valid, "{report}");
    assert_eq!(report.tally.records_in_topic, 6, "{report}");

    // With --strict the run stops at the first bad row, exit code 2.
    let strict_csv = dir.path().join("strict.csv");
    std::fs::copy(&csv, &strict_csv).unwrap();
    let output = run(&backfill_command(&broker, &strict_csv, &["--strict"]));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:4: timestamp:", strict_csv.display())),
        "{stderr}"
    );
    eprintln!("broken rows: passed in {:.1} s", started.elapsed().as_secs_f64());
}
