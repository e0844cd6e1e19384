//! End-to-end: the real `soilstream gateway` process against a real broker
//! (Tansu, SQLite engine), through network outages, a broker kill -9, a
//! gateway kill -9 mid-drain and bytes flipped in its spool.
//!
//! Every test ends the same way: the gateway has drained and stopped, the raw
//! topic is read to its end, and the shared checker (the one the simulator
//! uses) judges it against the gateway's ledger file, which lists every
//! reading the spool acknowledged durable. Needs the `tansu` binary (see
//! `soilstream_containers::TANSU_INSTALL_HINT`); a failing test prints the
//! checker's report and the gateway's and the broker's log tails.

mod common;

use common::broker::{
    RAW_TOPIC, assert_every_durable_reading_delivered, check_raw, first_copies, load_ledger,
    print_duplicates, read_topic, start_raw_broker,
};
use common::gateway::{DRAIN_TIMEOUT_MS, Gateway, GatewaySpec, SECONDS_MS, SOILSTREAM, now_ms};
use common::logs::LogsOnFailure;
use serde_json::Value;
use soilstream::model::ReadingId;
use soilstream_containers::TansuBroker;
use soilstream_scenarios::checker::AnomalyKind;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// Exit status of `soilstream spool verify` when synced data is damaged.
const VERIFY_EXIT_DAMAGED: i32 = 3;

/// Logs printed if the test fails.
fn watch_logs(broker: &TansuBroker, gateway: &Gateway) -> LogsOnFailure {
    let mut logs = LogsOnFailure::new();
    logs.watch("gateway", gateway.log_path())
        .watch("broker", broker.log_path());
    logs
}

/// Fails if the broker logged a panic (Tansu keeps running after one and
/// answers errors from then on).
fn assert_broker_healthy(broker: &TansuBroker) {
    let panics = broker.panics_in_log();
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
}

/// Reports a test's runtime.
fn done(test: &str, started: Instant) {
    eprintln!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn steady_flow_delivers_every_durable_reading_once_in_order() {
    let started = Instant::now();
    let broker = start_raw_broker(false);
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec::new("gw-steady", &broker.bootstrap_servers(), RAW_TOPIC);
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let _logs = watch_logs(&broker, &gateway);

    // About four seconds of 5 probes sampled every 200 ms.
    gateway.wait_for_ledger(100, SECONDS_MS);
    gateway.wait_for("100 deliveries", SECONDS_MS, |m| m.delivered() >= 100);
    gateway.stop(spec.shutdown_grace_ms);

    let ledger = load_ledger(&gateway.ledger_path());
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    let in_topic = assert_every_durable_reading_delivered(&ledger, &records, &report);
    // A clean run: one copy of each durable reading and nothing else (after
    // a clean stop the ledger lists every reading the spool made durable).
    assert_eq!(report.tally.duplicates, 0, "{report}");
    assert_eq!(records.len(), ledger.entries().len(), "{report}");
    let ledger_ids: BTreeSet<ReadingId> = ledger.entries().keys().cloned().collect();
    assert_eq!(in_topic, ledger_ids);
    let sensors: BTreeSet<&str> = ledger.entries().keys().map(|id| id.sensor_id.as_str()).collect();
    assert_eq!(sensors.len(), spec.sensors as usize, "every probe was sampled");
    assert_broker_healthy(&broker);
    done("steady flow", started);
}

/// One sensor's readings by when they were sampled: their places
/// (partition, offset) in the topic.
#[derive(Debug, Default)]
struct OutageSplit {
    /// Sampled while the link was down.
    during: Vec<(i32, i64)>,
    /// Sampled after it came back.
    after: Vec<(i32, i64)>,
}

#[test]
fn network_outage_cut_then_blackhole_loses_nothing_and_the_backlog_goes_first() {
    let started = Instant::now();
    let broker = start_raw_broker(true);
    let proxy = broker.proxy().expect("a proxy");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec::new("gw-outage", &broker.bootstrap_servers(), RAW_TOPIC);
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let _logs = watch_logs(&broker, &gateway);
    gateway.wait_for_ledger(25, SECONDS_MS);
    gateway.wait_for("25 deliveries before the outage", SECONDS_MS, |m| {
        m.delivered() >= 25
    });

    // The link fails loudly: connections reset, new ones refused.
    let outage_started_ms = now_ms();
    proxy.cut().unwrap();
    gateway.wait_for("the gateway to see the broker down", SECONDS_MS, |m| {
        !m.broker_up()
    });
    let cut_at = gateway.ledger_len();
    gateway.wait_for_ledger(cut_at + 25, SECONDS_MS);
    // Then silently: connections accepted, nothing answered.
    proxy.blackhole();
    let blackholed_at = gateway.ledger_len();
    gateway.wait_for_ledger(blackholed_at + 50, SECONDS_MS);
    let before_restore = gateway.metrics().expect("metrics during the outage");
    let outage_ended_ms = now_ms();
    proxy.restore();
    let restored_ms = now_ms();
    // At most the round in flight at the cut can have slipped through.
    assert!(
        before_restore.spool_depth_records() >= 75 - u64::from(spec.sensors),
        "the outage held readings back: {before_restore:?}"
    );

    // Live readings keep flowing behind the backlog.
    let restored_at = gateway.ledger_len();
    gateway.wait_for_ledger(restored_at + 25, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);

    let ledger = load_ledger(&gateway.ledger_path());
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    assert_every_durable_reading_delivered(&ledger, &records, &report);
    print_duplicates(&report);

    // Per sensor, every reading sampled during the outage precedes (in offset
    // order) every reading sampled after it, judged from the ledger's event
    // times against the outage window.
    let first = first_copies(&records);
    let mut per_sensor: BTreeMap<&str, OutageSplit> = BTreeMap::new();
    for (id, entry) in ledger.entries() {
        let (place, _) = &first[id];
        let t = entry.reading.event_time_ms;
        let split = per_sensor.entry(id.sensor_id.as_str()).or_default();
        if (outage_started_ms..outage_ended_ms).contains(&t) {
            split.during.push(*place);
        } else if t >= restored_ms {
            split.after.push(*place);
        }
    }
    assert_eq!(per_sensor.len(), spec.sensors as usize);
    for (sensor, OutageSplit { during, after }) in &per_sensor {
        assert!(
            !during.is_empty() && !after.is_empty(),
            "{sensor}: {} reading(s) sampled during the outage, {} after it",
            during.len(),
            after.len()
        );
        let partitions: BTreeSet<i32> = during.iter().chain(after).map(|(p, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "{sensor} stays in one partition");
        let last_during = during.iter().map(|(_, o)| *o).max().expect("non-empty");
        let first_after = after.iter().map(|(_, o)| *o).min().expect("non-empty");
        assert!(
            last_during < first_after,
            "{sensor}: a reading sampled during the outage (offset {last_during}) follows one sampled \
             after it (offset {first_after})"
        );
    }
    assert_broker_healthy(&broker);
    done("network outage", started);
}

#[test]
fn broker_kill_9_and_restart_mid_stream_loses_nothing() {
    let started = Instant::now();
    let mut broker = start_raw_broker(false);
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec::new("gw-broker-crash", &broker.bootstrap_servers(), RAW_TOPIC);
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let _logs = watch_logs(&broker, &gateway);
    gateway.wait_for_ledger(25, SECONDS_MS);
    gateway.wait_for("25 deliveries before the crash", SECONDS_MS, |m| {
        m.delivered() >= 25
    });

    broker.kill9().unwrap();
    gateway.wait_for("the gateway to see the broker down", SECONDS_MS, |m| {
        !m.broker_up()
    });
    let killed_at = gateway.ledger_len();
    gateway.wait_for_ledger(killed_at + 25, SECONDS_MS);
    let before_restart = gateway.metrics().expect("metrics while the broker is down");
    assert!(
        before_restart.spool_depth_records() >= 20,
        "readings waited in the spool: {before_restart:?}"
    );
    broker.restart().unwrap();

    let restarted_at = gateway.ledger_len();
    gateway.wait_for_ledger(restarted_at + 25, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);

    let ledger = load_ledger(&gateway.ledger_path());
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    assert_every_durable_reading_delivered(&ledger, &records, &report);
    print_duplicates(&report);
    assert_broker_healthy(&broker);
    done("broker kill -9", started);
}

#[test]
fn gateway_kill_9_mid_drain_then_restart_delivers_every_durable_reading() {
    let started = Instant::now();
    let broker = start_raw_broker(true);
    let proxy = broker.proxy().expect("a proxy");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new("gw-crash", &broker.bootstrap_servers(), RAW_TOPIC);
    // 100 readings/s; a small window and link latency (below) pace the drain
    // so the kill lands in the middle of it. The cursor is persisted several
    // times during the drain: a cursor that ran ahead of the delivery reports
    // would then lose the records in flight at the kill.
    spec.sensors = 10;
    spec.interval_ms = 100;
    spec.max_in_flight_records = 40;
    spec.cursor_persist_interval_ms = 100;
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let _logs = watch_logs(&broker, &gateway);
    gateway.wait_for_ledger(100, SECONDS_MS);
    gateway.wait_for("100 deliveries", SECONDS_MS, |m| m.delivered() >= 100);

    // A backlog builds up behind a cut link.
    proxy.cut().unwrap();
    gateway.wait_for("the gateway to see the broker down", SECONDS_MS, |m| {
        !m.broker_up()
    });
    let cut_at = gateway.ledger_len();
    gateway.wait_for_ledger(cut_at + 400, SECONDS_MS);
    let backlog = gateway.metrics().expect("metrics").spool_depth_records();
    assert!(backlog >= 350, "a backlog of {backlog} readings");

    // The link comes back slow; kill the gateway while it drains.
    proxy.restore();
    proxy.set_latency_ms(50, 50);
    let delivered_before = gateway.metrics().expect("metrics").delivered();
    let at_kill = gateway.wait_for("the drain to be under way", DRAIN_TIMEOUT_MS, |m| {
        m.delivered() >= delivered_before + 120
    });
    gateway.kill9();
    assert!(
        at_kill.spool_depth_records() >= 100,
        "the gateway was killed mid-drain: {at_kill:?}"
    );
    let killed_at = gateway.ledger_len();

    // Same spool, same ledger, fast link.
    proxy.set_latency_ms(0, 0);
    gateway.restart();
    gateway.wait_for_ledger(killed_at + 100, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);

    let ledger = load_ledger(&gateway.ledger_path());
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    assert_every_durable_reading_delivered(&ledger, &records, &report);
    // Records delivered after the last persisted cursor are sent again by
    // the restarted gateway: counted and reported here, removed downstream.
    print_duplicates(&report);
    assert_broker_healthy(&broker);
    done("gateway kill -9 mid-drain", started);
}

/// Runs `soilstream ARGS` to completion.
fn soilstream(args: &[&str]) -> Output {
    Command::new(SOILSTREAM)
        .args(args)
        .env("SOILSTREAM_LOG", "warn")
        .output()
        .expect("run soilstream")
}

/// `soilstream spool inspect DIR --json`.
fn inspect(spool: &Path) -> Value {
    let out = soilstream(&["spool", "inspect", spool.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

/// Inverts `bytes` bytes at the middle of `path`; returns the first offset.
fn flip_bytes_in_the_middle(path: &Path, bytes: usize) -> u64 {
    let mut content = std::fs::read(path).unwrap();
    let at = content.len() / 2;
    for byte in &mut content[at..at + bytes] {
        *byte = !*byte;
    }
    std::fs::write(path, &content).unwrap();
    at as u64
}

#[test]
fn a_spool_with_bytes_flipped_in_the_middle_is_reported_and_drains_every_intact_record() {
    let started = Instant::now();
    let broker = start_raw_broker(true);
    let proxy = broker.proxy().expect("a proxy");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new("gw-damaged", &broker.bootstrap_servers(), RAW_TOPIC);
    spec.sensors = 10;
    spec.interval_ms = 100;
    spec.segment_max_bytes = Some(8_192);
    spec.shutdown_grace_ms = 1_000;
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let _logs = watch_logs(&broker, &gateway);
    gateway.wait_for_ledger(50, SECONDS_MS);
    gateway.wait_for("50 deliveries", SECONDS_MS, |m| m.delivered() >= 50);

    // Stop the gateway while it is cut off: the backlog stays on disk.
    proxy.cut().unwrap();
    gateway.wait_for("the gateway to see the broker down", SECONDS_MS, |m| {
        !m.broker_up()
    });
    let cut_at = gateway.ledger_len();
    gateway.wait_for_ledger(cut_at + 400, SECONDS_MS);
    gateway.stop(spec.shutdown_grace_ms);

    // Damage a segment in the middle of the backlog.
    let spool = gateway.spool_dir();
    let before = inspect(&spool);
    let segments = before["segments"].as_array().expect("segments");
    let undelivered: Vec<&Value> = segments[..segments.len() - 1]
        .iter()
        .filter(|s| s["records"].as_u64() > Some(0) && s["records"] == s["undelivered_records"])
        .collect();
    assert!(
        undelivered.len() >= 2,
        "several segments of backlog: {}",
        serde_json::to_string_pretty(&before).unwrap()
    );
    let victim = undelivered[undelivered.len() / 2]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    const FLIPPED_BYTES: usize = 16;
    let flipped_at = flip_bytes_in_the_middle(&spool.join(&victim), FLIPPED_BYTES);

    // `spool verify` names the damage and fails.
    let out = soilstream(&["spool", "verify", spool.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(VERIFY_EXIT_DAMAGED), "{text}");
    let out = soilstream(&["spool", "verify", spool.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(VERIFY_EXIT_DAMAGED));
    let verify: Value = serde_json::from_slice(&out.stdout).expect("verify prints JSON");
    eprintln!("spool verify:\n{text}");
    assert_eq!(verify["verdict"], "damaged", "{verify}");
    let ranges = verify["damage"]["ranges"].as_array().expect("ranges");
    assert!(!ranges.is_empty(), "{verify}");
    let mut damaged_indexes = BTreeSet::new();
    for range in ranges {
        assert_eq!(range["segment"], victim.as_str(), "{range}");
        assert_eq!(range["kind"], "before_synced_point", "{range}");
        let (start, end) = (
            range["start_offset"].as_u64().unwrap(),
            range["end_offset"].as_u64().unwrap(),
        );
        assert!(
            start <= flipped_at + FLIPPED_BYTES as u64 && end > flipped_at,
            "range {start}..{end} covers the flipped bytes at {flipped_at}"
        );
        assert!(
            text.contains(&format!("{victim} bytes {start}..{end}")),
            "the text report names the range {start}..{end}:\n{text}"
        );
        let missing = &range["missing_indexes"];
        damaged_indexes.extend(missing["first"].as_u64().unwrap()..=missing["last"].as_u64().unwrap());
    }
    let damaged = verify["damage"]["records_missing_total"].as_u64().unwrap();
    assert!(damaged >= 1, "{verify}");
    assert_eq!(damaged_indexes.len() as u64, damaged, "{verify}");

    // Restarted on the damaged spool, the gateway reports the same damage
    // and delivers every intact record, including those after the damage.
    proxy.restore();
    gateway.restart();
    let opened = gateway.metrics().expect("metrics after the restart");
    assert_eq!(opened.damaged_records(), damaged, "{opened:?}");
    let restarted_at = gateway.ledger_len();
    gateway.wait_for_ledger(restarted_at + 50, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);

    let mut ledger = load_ledger(&gateway.ledger_path());
    ledger.damage_reported(&spec.gateway_id, damaged);
    let (records, partitions) = read_topic(&broker, RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    assert!(report.valid, "{report}");
    assert_eq!(report.count(AnomalyKind::Lost), 0, "{report}");
    assert!(
        report.tally.lost_to_reported_damage_or_drop <= damaged,
        "lost only within the reported damage:\n{report}"
    );
    print_duplicates(&report);

    // Exactly the readings at the damaged spool indexes are missing. The
    // spool numbers records from 1 in the order they become durable, which
    // is the ledger's order (both runs stopped cleanly, so it is complete).
    let delivered: BTreeSet<ReadingId> = first_copies(&records).into_keys().collect();
    let ledger_in_order = gateway.ledger_readings();
    assert_eq!(ledger_in_order.len(), ledger.entries().len());
    let mut wrongly = Vec::new();
    for (position, reading) in ledger_in_order.iter().enumerate() {
        let index = position as u64 + 1;
        let is_delivered = delivered.contains(&reading.id());
        if is_delivered == damaged_indexes.contains(&index) {
            wrongly.push((index, reading.id(), is_delivered));
        }
    }
    assert!(
        wrongly.is_empty(),
        "(spool index, reading, delivered) contradicting the damage report {damaged_indexes:?}: {wrongly:?}"
    );
    assert_eq!(
        report.tally.lost_to_reported_damage_or_drop, damaged,
        "every damaged record had been durable and undelivered:\n{report}"
    );
    assert_broker_healthy(&broker);
    done("spool damage", started);
}
