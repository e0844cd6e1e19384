//! End-to-end: the real `soilstream qaqc` process between real gateways and
//! a real broker (Tansu, SQLite engine), with `soilstream registry serve` for
//! the schemas: a steady flow, qaqc killed with SIGKILL mid-stream and in the
//! middle of a gateway's backlog, two instances sharing the raw topic with
//! one of them killed, a backfill of days-old readings into live windows,
//! and Confluent's Python client reading the clean topic.
//!
//! Every test ends the same way: the gateways stop, qaqc catches up (the
//! group committed every raw partition's end, no window open, nothing in
//! flight, lag 0) and stops on SIGTERM, and then two checkers judge what the
//! broker holds: the shared raw checker (`soilstream_scenarios::checker`, the
//! simulator's) against the gateways' ledgers, and the downstream checker
//! (`soilstream_scenarios::downstream`) over the raw topic and the five qaqc
//! output topics, with the settings read from the TOML file qaqc ran with.
//! A test passes only if both are valid; a failing one prints both reports
//! and the log tails of every process.
//!
//! qaqc runs with 10 s windows closed after 5 s of silence, commits every
//! 200 ms, checkpoints every 2 s and a 6 s group session
//! (`common::qaqc::QaqcSpec::config`); gateways sample every second.
//!
//! # Tansu 0.6.0 and killed group members
//!
//! Tansu 0.6.0 never hands a killed member's partitions to the survivors:
//! about one session timeout after the kill the survivor is revoked, but it
//! is given back only its old assignment, and the dead member's partitions
//! stay unassigned until the membership changes again (a member joins or
//! leaves; see the module docs of `soilstream::transport::kafka_group`). So
//! "two instances, one killed" here means what an orchestrator does on that
//! broker: the killed instance is restarted and the group re-forms. The test
//! asserts that the survivor keeps processing its own partitions through
//! the expiry, that every partition is owned again after the restart, and
//! that nothing is lost or duplicated across it; it does not assert the
//! limitation itself.
//!
//! Every killed instance (in both kill tests) is restarted only once its
//! group session has expired, like an orchestrator with a restart delay: a
//! member that joins during the last 3 s of a dead leader's session can make
//! Tansu 0.6.0 form the group with no partition assigned to anyone, for
//! good (`common::qaqc::Qaqc::restart_once_its_session_expired` says how).
//!
//! The tests take turns (one mutex): each runs a broker, a registry,
//! gateways and one or two qaqc processes, whose waits are bounded in
//! seconds; two at once on a small machine would only make them slower.
//! Needs the `tansu` binary, and for the Python test an interpreter with
//! `confluent-kafka` (`$SOILSTREAM_PYTHON`, see `tests/python/requirements.txt`).

mod common;

use common::RegistryProcess;
use common::broker::{RAW_TOPIC, start_broker, topic_record_count};
use common::gateway::{DRAIN_TIMEOUT_MS, Gateway, GatewaySpec, SECONDS_MS, SOILSTREAM, now_ms};
use common::logs::LogsOnFailure;
use common::python::{python, require_confluent_kafka, tests_dir};
use common::qaqc::{
    GroupOffsets, Ownership, QAQC_ASSIGN_TIMEOUT_MS, QAQC_CATCH_UP_TIMEOUT_MS, QAQC_GROUP, Qaqc, QaqcScrape,
    QaqcSpec, Verdict, WINDOW_SIZE_MS, judge, read_all, wait_until_caught_up,
};
use serde_json::Value;
use soilstream::codec::from_wire;
use soilstream::model::Reading;
use soilstream::qaqc::records::{CleanReading, OutputCodecs, WindowAggregate};
use soilstream::transport::kafka::KafkaClientConfig;
use soilstream::transport::{ConsumedRecord, partition_for_key};
use soilstream_containers::{ChildProcess, ChildSpec, FaultProxy, TansuBroker, TansuConfig};
use soilstream_scenarios::ledger::Ledger;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Partitions of the raw topic (and so of every output) unless a test says
/// otherwise.
const PARTITIONS: u32 = 3;

/// How long a gateway may take to make a test's readings durable, in ms.
const FLOW_TIMEOUT_MS: u64 = 60_000;

/// How long `soilstream consume`, a backfill or a Python client may run, in
/// ms.
const CLIENT_TIMEOUT_MS: u64 = 60_000;

/// Two floats that went through a JSON text (shortest decimal form, parsed
/// back: serde_json's default parser may be one ulp off) and an Avro double.
const FLOAT_TOLERANCE: f64 = 1e-9;

/// The tests take turns (see the module docs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reports a test's runtime.
fn done(test: &str, started: Instant) {
    eprintln!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// Prints how long a test took to get somewhere.
fn lap(test: &str, started: Instant, what: &str) {
    eprintln!("{test}: {what} at {:.1} s", started.elapsed().as_secs_f64());
}

/// Partitions `0..count`.
fn all_partitions(count: u32) -> BTreeSet<i32> {
    (0..count as i32).collect()
}

/// The probe ids a gateway spec samples (the simulator's naming).
fn probe_ids(spec: &GatewaySpec) -> Vec<String> {
    (0..spec.sensors)
        .map(|i| format!("{}-probe-{i:03}", spec.gateway_id))
        .collect()
}

/// Asserts that the probes of `spec` land in every partition, so that every
/// partition carries data and every owner has work.
fn assert_probes_cover(spec: &GatewaySpec, partitions: u32) {
    let covered: BTreeSet<i32> = probe_ids(spec)
        .iter()
        .map(|id| partition_for_key(id.as_bytes(), partitions))
        .collect();
    assert_eq!(
        covered,
        all_partitions(partitions),
        "the probes of {} must cover every partition",
        spec.gateway_id
    );
}

/// A broker with the raw topic, a registry, a directory and the logs to
/// print on failure. Fields drop in order: the logs print before the
/// processes and their directories go.
struct World {
    logs: LogsOnFailure,
    registry: RegistryProcess,
    broker: TansuBroker,
    dir: tempfile::TempDir,
}

impl World {
    fn start(partitions: u32) -> Self {
        let broker = start_broker(TansuConfig::default().topic(RAW_TOPIC, partitions));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry = RegistryProcess::start(&dir.path().join("registry"), &dir.path().join("registry.log"));
        let mut logs = LogsOnFailure::new();
        logs.watch("broker", broker.log_path())
            .watch("registry", dir.path().join("registry.log"));
        Self {
            logs,
            registry,
            broker,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kafka(&self) -> KafkaClientConfig {
        self.broker.client_config()
    }

    /// A gateway sampling `sensors` probes every second, registry-backed.
    fn gateway_spec(&self, gateway_id: &str, sensors: u32) -> GatewaySpec {
        let mut spec = GatewaySpec::new(gateway_id, &self.broker.bootstrap_servers(), RAW_TOPIC);
        spec.interval_ms = 1_000;
        spec.sensors = sensors;
        spec.registry_url = Some(self.registry.url.clone());
        spec
    }

    fn start_gateway(&mut self, spec: &GatewaySpec) -> Gateway {
        let gateway = Gateway::start(&self.path(&spec.gateway_id), spec);
        self.logs.watch(spec.gateway_id.clone(), gateway.log_path());
        gateway
    }

    fn qaqc_spec(&self, instance_id: &str) -> QaqcSpec {
        QaqcSpec::new(instance_id, &self.broker.bootstrap_servers(), &self.registry.url)
    }

    fn start_qaqc(&mut self, spec: &QaqcSpec) -> Qaqc {
        let qaqc = Qaqc::start(&self.path(&spec.instance_id), spec);
        self.logs.watch(spec.instance_id.clone(), qaqc.log_path());
        qaqc
    }
}

/// The durable readings of every gateway, from their ledger files.
fn ledger_of(gateways: &[&Gateway]) -> Ledger {
    let mut ledger = Ledger::new(false);
    for gateway in gateways {
        let loaded = ledger
            .load_jsonl(&gateway.ledger_path())
            .unwrap_or_else(|e| panic!("loading a ledger: {e}"));
        assert!(loaded > 0, "{} lists no reading", gateway.ledger_path().display());
    }
    ledger
}

/// Decodes a clean record as written (its own schema).
fn clean_of(record: &ConsumedRecord) -> CleanReading {
    let (_, body) = from_wire(record.value.as_deref().expect("a value")).expect("the wire format");
    OutputCodecs::default()
        .clean
        .decode_body(body)
        .expect("a clean reading")
}

/// Decodes an aggregate as written (its own schema).
fn aggregate_of(record: &ConsumedRecord) -> WindowAggregate {
    let (_, body) = from_wire(record.value.as_deref().expect("a value")).expect("the wire format");
    OutputCodecs::default()
        .aggregates
        .decode_body(body)
        .expect("a window aggregate")
}

/// The schema id in a record's value.
fn schema_id_of(record: &ConsumedRecord) -> u32 {
    from_wire(record.value.as_deref().expect("a value"))
        .expect("the wire format")
        .0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= FLOAT_TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

fn json_f64(value: &Value, field: &str) -> f64 {
    value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{field}` in {value}"))
}

fn json_i64(value: &Value, field: &str) -> i64 {
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer `{field}` in {value}"))
}

fn json_str<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {value}"))
}

fn json_strings(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("no array `{field}` in {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// JSON lines printed by a client.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line}: {e}")))
        .collect()
}

/// `soilstream consume --topic TOPIC --registry URL --from-beginning --json`
/// until `records` records were printed (or 10 s without one); its JSON
/// lines.
fn soilstream_consume(world: &World, topic: &str, records: usize) -> Vec<Value> {
    let log = world.path(&format!("consume-{topic}.log"));
    let spec = ChildSpec::new(SOILSTREAM, &log)
        .args(["consume", "--brokers", &world.broker.bootstrap_servers()])
        .args(["--topic", topic, "--from-beginning", "--json"])
        .args(["--registry", &world.registry.url])
        .args(["--max-records", &records.to_string(), "--idle-exit-ms", "10000"])
        .env("SOILSTREAM_LOG", "warn")
        .env_remove("SOILSTREAM_BROKERS")
        .env_remove("SOILSTREAM_REGISTRY_URL");
    let mut consume = ChildProcess::spawn(spec).expect("spawn soilstream consume");
    let Some(status) = consume.wait(CLIENT_TIMEOUT_MS) else {
        consume.kill9().expect("kill consume");
        panic!("soilstream consume --topic {topic} did not exit within {CLIENT_TIMEOUT_MS} ms");
    };
    let text = std::fs::read_to_string(&log).expect("consume's output");
    assert!(status.success(), "soilstream consume failed ({status}):\n{text}");
    json_lines(&text)
}

/// Checks what `soilstream consume` printed of the clean topic against the
/// records rdkafka read: every record, decoded through the registry with
/// the `CleanSoilReading` schema, with the same identity, moisture, flags
/// and event time.
fn assert_consume_decodes_clean(lines: &[Value], clean: &[ConsumedRecord]) {
    assert_eq!(lines.len(), clean.len(), "consume printed every clean record");
    let by_place: BTreeMap<(i64, i64), &ConsumedRecord> = clean
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r))
        .collect();
    for line in lines {
        assert!(line.get("error").is_none(), "every clean record decodes: {line}");
        assert_eq!(line["schema"], "io.soilstream.qaqc.CleanSoilReading", "{line}");
        let place = (json_i64(line, "partition"), json_i64(line, "offset"));
        let record = by_place
            .get(&place)
            .unwrap_or_else(|| panic!("consume printed a record rdkafka did not read: {line}"));
        assert_eq!(
            json_i64(line, "schema_id"),
            i64::from(schema_id_of(record)),
            "{line}"
        );
        let want = clean_of(record);
        let value = &line["value"];
        assert_eq!(json_str(value, "gateway_id"), want.gateway_id, "{line}");
        assert_eq!(json_str(value, "sensor_id"), want.sensor_id, "{line}");
        assert_eq!(json_i64(value, "seq"), want.seq, "{line}");
        assert_eq!(json_i64(value, "event_time"), want.event_time, "{line}");
        assert_eq!(json_i64(line, "timestamp_ms"), want.event_time, "{line}");
        assert!(
            close(json_f64(value, "moisture_pct"), want.moisture_pct),
            "{line} vs {want:?}"
        );
        assert_eq!(json_strings(value, "flags"), want.flags, "{line}");
        assert_eq!(value["lookahead_complete"], want.lookahead_complete, "{line}");
    }
}

/// Checks what `soilstream consume` printed of the aggregates topic against
/// the records rdkafka read.
fn assert_consume_decodes_aggregates(lines: &[Value], aggregates: &[ConsumedRecord]) {
    assert_eq!(
        lines.len(),
        aggregates.len(),
        "consume printed every window aggregate"
    );
    let by_place: BTreeMap<(i64, i64), &ConsumedRecord> = aggregates
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r))
        .collect();
    for line in lines {
        assert!(line.get("error").is_none(), "every aggregate decodes: {line}");
        assert_eq!(line["schema"], "io.soilstream.qaqc.SoilWindowAggregate", "{line}");
        let place = (json_i64(line, "partition"), json_i64(line, "offset"));
        let record = by_place
            .get(&place)
            .unwrap_or_else(|| panic!("consume printed an aggregate rdkafka did not read: {line}"));
        let want = aggregate_of(record);
        let value = &line["value"];
        assert_eq!(json_str(value, "sensor_id"), want.sensor_id, "{line}");
        assert_eq!(json_i64(value, "window_start"), want.window_start, "{line}");
        assert_eq!(json_i64(value, "window_end"), want.window_end, "{line}");
        assert_eq!(json_i64(value, "revision"), i64::from(want.revision), "{line}");
        assert_eq!(json_i64(value, "count"), i64::from(want.count), "{line}");
        assert!(
            close(json_f64(value, "moisture_pct_mean"), want.moisture_pct_mean),
            "{line} vs {want:?}"
        );
        assert_eq!(value["historical"], want.historical, "{line}");
    }
}

/// Per (sensor, window start), the revisions written, in offset order.
fn window_revisions(aggregates: &[ConsumedRecord]) -> BTreeMap<(String, i64), Vec<WindowAggregate>> {
    let mut windows: BTreeMap<(String, i64), Vec<WindowAggregate>> = BTreeMap::new();
    for record in aggregates {
        let a = aggregate_of(record);
        windows
            .entry((a.sensor_id.clone(), a.window_start))
            .or_default()
            .push(a);
    }
    windows
}

/// Asserts what every verdict here has in common beyond validity: clean
/// readings and windows for every probe of `specs`.
fn assert_every_probe_cleaned_and_windowed(verdict: &Verdict, specs: &[&GatewaySpec]) {
    let cleaned: BTreeSet<String> = verdict
        .topics
        .clean
        .iter()
        .map(|r| clean_of(r).sensor_id)
        .collect();
    let windowed: BTreeSet<String> = window_revisions(&verdict.topics.aggregates)
        .into_keys()
        .map(|(sensor, _)| sensor)
        .collect();
    for spec in specs {
        for probe in probe_ids(spec) {
            assert!(cleaned.contains(&probe), "no clean reading of {probe}");
            assert!(windowed.contains(&probe), "no window of {probe}");
        }
    }
}

/// About 20 s of one gateway (five probes, one reading a second) through one
/// qaqc: both checkers valid, every probe cleaned and windowed, qaqc's own
/// counters equal to what the topics hold, and `soilstream consume
/// --registry` decodes every clean record (`CleanSoilReading`) and every
/// window (`SoilWindowAggregate`) as rdkafka read them.
#[test]
fn a_steady_flow_is_cleaned_and_windowed_exactly_once_and_decodes_through_the_registry() {
    let _turn = one_at_a_time();
    let test = "steady flow";
    let started = Instant::now();
    let mut world = World::start(PARTITIONS);
    let mut qaqc = world.start_qaqc(&world.qaqc_spec("qaqc-steady"));
    qaqc.wait_until_owning(&all_partitions(PARTITIONS), QAQC_ASSIGN_TIMEOUT_MS);
    let spec = world.gateway_spec("gw-steady", 5);
    assert_probes_cover(&spec, PARTITIONS);
    let mut gateway = world.start_gateway(&spec);
    lap(test, started, "qaqc owns every partition, gateway running");

    // About 20 s of five probes sampled every second.
    gateway.wait_for_ledger(100, FLOW_TIMEOUT_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);
    let caught_up = catch_up_and_stop(test, started, &world, &mut qaqc);

    let ledger = ledger_of(&[&gateway]);
    let verdict = judge(&world.kafka(), &ledger, qaqc.settings());
    // One copy of every reading in raw; each one clean or quarantined once
    // (the downstream checker), windows for every probe.
    assert_eq!(verdict.raw.tally.duplicates, 0, "{}", verdict.raw);
    assert_eq!(
        verdict.downstream.tally.raw_identities,
        ledger.entries().len() as u64
    );
    assert!(verdict.downstream.tally.clean > 0, "{}", verdict.downstream);
    assert_every_probe_cleaned_and_windowed(&verdict, &[&spec]);
    // The in-process counters agree with the topics.
    assert_eq!(
        caught_up[0].records_out("soil-moisture-clean"),
        verdict.topics.clean.len() as u64
    );
    assert_eq!(
        caught_up[0].records_out("soil-moisture-aggregates"),
        verdict.topics.aggregates.len() as u64
    );

    // Any Confluent-wire consumer with the registry decodes the outputs:
    // `soilstream consume` fetches their writer schemas by id.
    let clean_lines = soilstream_consume(&world, "soil-moisture-clean", verdict.topics.clean.len());
    assert_consume_decodes_clean(&clean_lines, &verdict.topics.clean);
    let aggregate_lines = soilstream_consume(
        &world,
        "soil-moisture-aggregates",
        verdict.topics.aggregates.len(),
    );
    assert_consume_decodes_aggregates(&aggregate_lines, &verdict.topics.aggregates);
    done(test, started);
}

/// Readings a backlog gateway spools behind its cut link.
const BACKLOG_READINGS: u64 = 600;

/// A gateway sampling ten probes every 100 ms whose only way to the broker
/// is a fault proxy, cut: it spools [`BACKLOG_READINGS`] readings, then the
/// caller restores the proxy and the gateway drains its backlog at once.
/// (The proxy carries only the bootstrap connection: once the gateway has
/// the broker's metadata it talks to the broker's own address.)
fn start_backlog_gateway(world: &mut World, gateway_id: &str) -> (Gateway, GatewaySpec, FaultProxy) {
    let proxy = FaultProxy::start(world.broker.broker_addr()).expect("a fault proxy");
    proxy.cut().expect("cut the backlog gateway's link");
    let mut spec = world.gateway_spec(gateway_id, 10);
    spec.bootstrap_servers = proxy.addr().to_string();
    spec.interval_ms = 100;
    let mut gateway = world.start_gateway(&spec);
    gateway.wait_for_ledger(BACKLOG_READINGS, FLOW_TIMEOUT_MS);
    (gateway, spec, proxy)
}

/// Restarts a killed instance once its session expired and asserts the
/// rebuild of every partition.
fn restart_and_rebuild(test: &str, started: Instant, qaqc: &mut Qaqc, all: &BTreeSet<i32>, kill: &str) {
    qaqc.restart_once_its_session_expired();
    let rebuilt = qaqc.wait_until_owning(all, QAQC_ASSIGN_TIMEOUT_MS);
    assert_rebuilt(qaqc, &rebuilt, all);
    lap(
        test,
        started,
        &format!(
            "restarted after the {kill} kill; rebuilt (partition, records read back): {:?}",
            rebuilt.rebuilds
        ),
    );
}

/// qaqc killed with SIGKILL three times and restarted on its state
/// directory: mid-stream; early in a gateway's backlog of 600 readings, with
/// hundreds of its outputs in flight and nothing of it committed; and in a
/// second backlog right after offsets covering part of it were committed,
/// with outputs still in flight (the kill that catches offsets committed
/// ahead of the acknowledgements: with the planted `commit_before_ack` bug
/// this test reports readings lost downstream). Each restart rebuilds every
/// partition (log and metrics), and the checkers find no loss and no
/// duplicate downstream.
#[test]
fn qaqc_killed_mid_stream_and_mid_backlog_rebuilds_and_loses_or_repeats_nothing() {
    let _turn = one_at_a_time();
    let test = "qaqc kill -9";
    let started = Instant::now();
    let mut world = World::start(PARTITIONS);
    let all = all_partitions(PARTITIONS);
    // Outputs wait 50 ms in the client before they are sent (librdkafka's
    // linger): a kill loses those not sent yet, so the restarts must write
    // outputs that are really missing, not only recognise ones that landed.
    let mut spec = world.qaqc_spec("qaqc-crash");
    spec.kafka_properties
        .push(("linger.ms".to_owned(), "50".to_owned()));
    let mut qaqc = world.start_qaqc(&spec);
    qaqc.wait_until_owning(&all, QAQC_ASSIGN_TIMEOUT_MS);
    let offsets = GroupOffsets::new(&world.kafka(), &qaqc.settings().qaqc.group_id, RAW_TOPIC)
        .expect("an offsets client");
    let live_spec = world.gateway_spec("gw-live", 5);
    assert_probes_cover(&live_spec, PARTITIONS);
    let mut live = world.start_gateway(&live_spec);

    // 1. Mid-stream: killed while live readings flow; readings go on
    // arriving while it is down.
    qaqc.wait_for("clean readings of 5 s of flow", FLOW_TIMEOUT_MS, |m| {
        m.records_out("soil-moisture-clean") >= 25
    });
    qaqc.kill9();
    let raw_at_kill = topic_record_count(&world.broker, RAW_TOPIC);
    let deadline = Instant::now() + Duration::from_millis(SECONDS_MS);
    while topic_record_count(&world.broker, RAW_TOPIC) < raw_at_kill + 10 {
        assert!(
            Instant::now() < deadline,
            "no raw readings arrived while qaqc was down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    restart_and_rebuild(test, started, &mut qaqc, &all, "mid-stream");

    // 2. Early in a backlog: killed once qaqc has read a quarter of it,
    // hundreds of outputs in flight, none of it committed yet.
    let (mut first_backlog, first_spec, first_proxy) = start_backlog_gateway(&mut world, "gw-backlog-a");
    let committed_before = offsets.total(all.clone()).expect("committed offsets");
    let read_before = qaqc.metrics().expect("qaqc's metrics").records_in();
    first_proxy.restore();
    let at_kill = qaqc.wait_for("qaqc a quarter into the backlog", FLOW_TIMEOUT_MS, |m| {
        m.records_in() >= read_before + BACKLOG_READINGS / 4
    });
    qaqc.kill9();
    let committed = offsets.total(all.clone()).expect("committed offsets") - committed_before;
    assert!(
        at_kill.in_flight_outputs() >= BACKLOG_READINGS / 10 && committed < (BACKLOG_READINGS / 2) as i64,
        "qaqc was killed early in the backlog: {committed} raw record(s) committed since it arrived; \
         metrics at the kill: {}",
        at_kill.summary()
    );
    lap(
        test,
        started,
        &format!(
            "killed early in the first backlog, {committed} record(s) of it committed ({})",
            at_kill.summary()
        ),
    );
    first_backlog.wait_until_drained(DRAIN_TIMEOUT_MS);
    first_backlog.stop(first_spec.shutdown_grace_ms);
    restart_and_rebuild(test, started, &mut qaqc, &all, "early-backlog");

    // 3. Right after a commit in a backlog: killed once offsets covering a
    // tenth of it were committed while outputs were still unacknowledged.
    // Offsets must never run ahead of the acknowledgements of the outputs
    // they cover, or the outputs lost with the process are never written.
    let (mut second_backlog, second_spec, second_proxy) = start_backlog_gateway(&mut world, "gw-backlog-b");
    let committed_before = offsets.total(all.clone()).expect("committed offsets");
    second_proxy.restore();
    let deadline = Instant::now() + Duration::from_millis(FLOW_TIMEOUT_MS);
    let (at_kill, committed) = loop {
        let metrics = qaqc.metrics();
        let committed = offsets.total(all.clone());
        if let (Ok(m), Ok(c)) = (&metrics, &committed)
            && *c >= committed_before + BACKLOG_READINGS as i64 / 10
            && m.in_flight_outputs() > 0
        {
            break (m.clone(), *c - committed_before);
        }
        assert!(
            Instant::now() < deadline,
            "the backlog was never part committed with outputs in flight: committed {committed:?} \
             (from {committed_before}), metrics {metrics:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    qaqc.kill9();
    lap(
        test,
        started,
        &format!(
            "killed after a commit in the second backlog, {committed} record(s) of it committed ({})",
            at_kill.summary()
        ),
    );
    second_backlog.wait_until_drained(DRAIN_TIMEOUT_MS);
    second_backlog.stop(second_spec.shutdown_grace_ms);
    restart_and_rebuild(test, started, &mut qaqc, &all, "after-commit");

    live.stop(live_spec.shutdown_grace_ms);
    catch_up_and_stop(test, started, &world, &mut qaqc);

    let verdict = judge(
        &world.kafka(),
        &ledger_of(&[&live, &first_backlog, &second_backlog]),
        qaqc.settings(),
    );
    assert!(
        verdict.downstream.tally.raw_identities >= 2 * BACKLOG_READINGS,
        "{}",
        verdict.downstream
    );
    assert_every_probe_cleaned_and_windowed(&verdict, &[&live_spec, &first_spec, &second_spec]);
    done(test, started);
}

/// Asserts that the current incarnation rebuilt every partition it owns
/// from the output topics (its log and its metrics say so).
fn assert_rebuilt(qaqc: &Qaqc, ownership: &Ownership, partitions: &BTreeSet<i32>) {
    let rebuilt: BTreeSet<i32> = ownership.rebuilds.iter().map(|(p, _)| *p).collect();
    assert!(
        rebuilt.is_superset(partitions),
        "the log shows a rebuild of {partitions:?}: {ownership:?}"
    );
    let metrics = qaqc.metrics().expect("qaqc's metrics");
    assert!(
        metrics.rebuilds() >= partitions.len() as u64,
        "soilstream_qaqc_rebuilds_total counts the rebuilds: {}",
        metrics.summary()
    );
}

/// Waits until `a` and `b` each process some partitions, none twice, all
/// of them together; returns their ownerships.
fn wait_until_shared(
    a: &mut Qaqc,
    b: &mut Qaqc,
    all: &BTreeSet<i32>,
    timeout_ms: u64,
) -> (Ownership, Ownership) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        assert!(a.is_running() && b.is_running(), "a qaqc instance exited");
        let (oa, ob) = (a.ownership(), b.ownership());
        let union: BTreeSet<i32> = oa.ready.union(&ob.ready).copied().collect();
        let shared = !oa.ready.is_empty()
            && !ob.ready.is_empty()
            && oa.ready.is_disjoint(&ob.ready)
            && union == *all
            && oa.assigned == oa.ready
            && ob.assigned == ob.ready;
        if shared {
            return (oa, ob);
        }
        assert!(
            Instant::now() < deadline,
            "the two instances did not share {all:?} within {timeout_ms} ms: {oa:?} / {ob:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two instances (own state directories) in one group over four raw
/// partitions: both get partitions, none twice; one is killed, the survivor
/// keeps processing its own through the session expiry (see the module docs
/// for Tansu 0.6.0), the killed one is restarted and the group re-forms with
/// every partition owned; the checkers find no loss and no duplicate.
#[test]
fn two_instances_share_the_partitions_and_one_killed_and_restarted_loses_or_repeats_nothing() {
    let _turn = one_at_a_time();
    let test = "two instances";
    let started = Instant::now();
    const PAIR_PARTITIONS: u32 = 4;
    let all = all_partitions(PAIR_PARTITIONS);
    let mut world = World::start(PAIR_PARTITIONS);
    let spec = world.gateway_spec("gw-group", 6);
    assert_probes_cover(&spec, PAIR_PARTITIONS);
    let mut first = world.start_qaqc(&world.qaqc_spec("qaqc-first"));
    first.wait_until_owning(&all, QAQC_ASSIGN_TIMEOUT_MS);
    let mut gateway = world.start_gateway(&spec);
    first.wait_for("clean readings of the first instance", FLOW_TIMEOUT_MS, |m| {
        m.records_out("soil-moisture-clean") >= 12
    });

    // A second instance (its own state directory) joins: the group splits
    // the partitions between them.
    let mut second = world.start_qaqc(&world.qaqc_spec("qaqc-second"));
    assert_ne!(first.state_dir(), second.state_dir());
    let (own_first, own_second) = wait_until_shared(&mut first, &mut second, &all, QAQC_ASSIGN_TIMEOUT_MS);
    lap(
        test,
        started,
        &format!(
            "shared: first {:?}, second {:?}",
            own_first.ready, own_second.ready
        ),
    );
    second.wait_for("clean readings of the second instance", FLOW_TIMEOUT_MS, |m| {
        m.records_out("soil-moisture-clean") >= 6
    });

    // The second is killed. After its session times out the first is
    // revoked and assigned again; on Tansu 0.6.0 it keeps (at least) its own
    // partitions, and the dead member's wait for a membership change.
    let before_kill = first.ownership();
    second.kill9();
    let deadline = Instant::now() + Duration::from_millis(QAQC_ASSIGN_TIMEOUT_MS);
    let survivor = loop {
        let own = first.ownership();
        if own.assignments > before_kill.assignments
            && own.ready.is_superset(&before_kill.ready)
            && own.assigned == own.ready
        {
            break own;
        }
        assert!(
            first.is_running() && Instant::now() < deadline,
            "the survivor was not assigned again after the session timeout: {own:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    lap(
        test,
        started,
        &format!(
            "after the session timeout the survivor owns {:?} (the killed member had {:?})",
            survivor.ready, own_second.ready
        ),
    );
    let out_before = first
        .metrics()
        .expect("metrics")
        .records_out("soil-moisture-clean");
    first.wait_for("the survivor to go on processing", FLOW_TIMEOUT_MS, |m| {
        m.records_out("soil-moisture-clean") > out_before
    });

    // Restarted on its own state directory, as an orchestrator would: the
    // group re-forms and every partition has an owner again.
    second.restart_once_its_session_expired();
    let (own_first, own_second) = wait_until_shared(&mut first, &mut second, &all, QAQC_ASSIGN_TIMEOUT_MS);
    lap(
        test,
        started,
        &format!(
            "re-formed: first {:?}, second {:?} (rebuilt {:?})",
            own_first.ready, own_second.ready, own_second.rebuilds
        ),
    );
    assert_rebuilt(&second, &own_second, &own_second.ready);

    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);
    let caught_up = wait_until_caught_up(
        &mut [&mut first, &mut second],
        &world.kafka(),
        RAW_TOPIC,
        QAQC_GROUP,
        QAQC_CATCH_UP_TIMEOUT_MS,
    );
    lap(
        test,
        started,
        &format!(
            "caught up: first {}; second {}",
            caught_up[0].summary(),
            caught_up[1].summary()
        ),
    );
    first.stop();
    second.stop();

    let verdict = judge(&world.kafka(), &ledger_of(&[&gateway]), first.settings());
    assert_every_probe_cleaned_and_windowed(&verdict, &[&spec]);
    done(test, started);
}

/// Gateway id of the SD-card log (the backfill's own: seq numbers are the
/// file's line numbers).
const BACKFILL_GATEWAY_ID: &str = "gw-farm-sd";

/// How old the historical rows are: two days, inside the 3-day state
/// horizon (older rows would be refused as `too_late`).
const HISTORY_AGE_MS: i64 = 2 * 86_400_000;

/// Rows per probe two days back, one every 15 minutes.
const HISTORY_ROWS_PER_PROBE: i64 = 8;

/// The readings a backfill of `rows` stands for (`seq` = line number: the
/// header is line 1).
fn backfill_readings(rows: &[Reading]) -> Vec<Reading> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| Reading {
            gateway_id: BACKFILL_GATEWAY_ID.into(),
            seq: i as u64 + 2,
            ..r.clone()
        })
        .collect()
}

/// Writes `rows` as an SD-card log (event times as epoch ms).
fn write_sdcard_log(path: &Path, rows: &[Reading]) {
    let mut text = String::from("sensor_id,timestamp,moisture,temperature,ec,depth_cm,battery_v\n");
    for r in rows {
        let optional = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        text.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.sensor_id,
            r.event_time_ms,
            r.moisture_vwc,
            optional(r.soil_temp_c),
            optional(r.bulk_ec_ds_m),
            r.depth_cm,
            optional(r.battery_v)
        ));
    }
    std::fs::write(path, text).expect("write the SD-card log");
}

/// Waits until the one qaqc instance has read the whole raw topic, then
/// stops it; returns its last scrape.
fn catch_up_and_stop(test: &str, started: Instant, world: &World, qaqc: &mut Qaqc) -> Vec<QaqcScrape> {
    let caught_up = wait_until_caught_up(
        &mut [&mut *qaqc],
        &world.kafka(),
        RAW_TOPIC,
        QAQC_GROUP,
        QAQC_CATCH_UP_TIMEOUT_MS,
    );
    lap(
        test,
        started,
        &format!("qaqc caught up ({})", caught_up[0].summary()),
    );
    qaqc.stop();
    caught_up
}

/// Runs `soilstream backfill` to completion.
fn run_backfill(world: &World, csv: &Path) -> Output {
    Command::new(SOILSTREAM)
        .arg("backfill")
        .arg(csv)
        .args(["--gateway-id", BACKFILL_GATEWAY_ID])
        .args(["--brokers", &world.broker.bootstrap_servers()])
        .args(["--topic", RAW_TOPIC, "--registry", &world.registry.url, "--json"])
        .env("SOILSTREAM_LOG", "info")
        .env_remove("SOILSTREAM_BROKERS")
        .env_remove("SOILSTREAM_REGISTRY_URL")
        .output()
        .expect("run soilstream backfill")
}

/// `soilstream backfill` of an SD-card log for the live gateway's probes
/// while live data flows: one reading into each window the live stream had
/// already written, and two-day-old readings. The written windows get a
/// revision above 1, the old ones are written as historical, nothing goes to
/// quarantine as `too_late`, every backfilled reading is clean, and the
/// checkers are valid.
#[test]
fn a_backfill_of_days_old_readings_revises_live_windows_and_writes_historical_ones() {
    let _turn = one_at_a_time();
    let test = "backfill";
    let started = Instant::now();
    let mut world = World::start(PARTITIONS);
    let mut qaqc = world.start_qaqc(&world.qaqc_spec("qaqc-backfill"));
    qaqc.wait_until_owning(&all_partitions(PARTITIONS), QAQC_ASSIGN_TIMEOUT_MS);
    let spec = world.gateway_spec("gw-farm", 5);
    assert_probes_cover(&spec, PARTITIONS);
    let mut gateway = world.start_gateway(&spec);
    let probes = probe_ids(&spec);

    // Wait until the live stream wrote two windows of every probe (the
    // second one full: ten readings).
    let deadline = Instant::now() + Duration::from_millis(FLOW_TIMEOUT_MS);
    let written = loop {
        let windows = window_revisions(&read_all(&world.kafka(), "soil-moisture-aggregates"));
        let mut per_probe: BTreeMap<&String, usize> = BTreeMap::new();
        for (sensor, _) in windows.keys() {
            *per_probe.entry(sensor).or_default() += 1;
        }
        if probes.iter().all(|p| per_probe.get(p).is_some_and(|n| *n >= 2)) {
            break windows;
        }
        assert!(
            Instant::now() < deadline,
            "the live stream wrote no window of some probe: {:?}",
            windows.keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(1_000));
    };
    lap(
        test,
        started,
        &format!("{} live window(s) written", written.len()),
    );

    // The SD-card log of the same probes: one reading in each window the
    // live stream already wrote (just after its start, with the values of
    // the live reading nearest to it), and two-day-old readings every 15
    // minutes.
    let live: Vec<Reading> = gateway.ledger_readings();
    let mut rows: Vec<Reading> = Vec::new();
    // (sensor, window start) -> the revision the live stream had written.
    let mut revised_targets: BTreeMap<(String, i64), i32> = BTreeMap::new();
    for ((sensor, window_start), revisions) in &written {
        let written_revision = revisions.last().expect("a revision").revision;
        assert!(revisions.iter().all(|a| !a.historical), "{revisions:?}");
        let taken: BTreeSet<i64> = live
            .iter()
            .filter(|r| &r.sensor_id == sensor)
            .map(|r| r.event_time_ms)
            .collect();
        let event_time_ms = (window_start + 1..)
            .find(|t| !taken.contains(t))
            .expect("a free ms");
        // (A plausible one: the probe simulator sometimes sends garbage,
        // which qaqc quarantines.)
        let nearest = live
            .iter()
            .filter(|r| &r.sensor_id == sensor && (0.05..0.45).contains(&r.moisture_vwc))
            .min_by_key(|r| (r.event_time_ms - event_time_ms).abs())
            .expect("live readings of the probe");
        rows.push(Reading {
            event_time_ms,
            ..nearest.clone()
        });
        revised_targets.insert((sensor.clone(), *window_start), written_revision);
    }
    let history_start_ms = (now_ms() - HISTORY_AGE_MS) / WINDOW_SIZE_MS * WINDOW_SIZE_MS;
    let mut historical_targets: BTreeSet<(String, i64)> = BTreeSet::new();
    for (index, sensor) in probes.iter().enumerate() {
        let depth_cm = live
            .iter()
            .find(|r| &r.sensor_id == sensor)
            .expect("a live reading of the probe")
            .depth_cm;
        for k in 0..HISTORY_ROWS_PER_PROBE {
            let event_time_ms = history_start_ms + k * 900_000 + index as i64 * 1_000;
            rows.push(Reading {
                gateway_id: String::new(),
                sensor_id: sensor.clone(),
                seq: 0,
                event_time_ms,
                moisture_vwc: 0.25 + 0.002 * k as f64 + 0.01 * index as f64,
                soil_temp_c: Some(14.0 + 0.1 * k as f64),
                bulk_ec_ds_m: Some(0.5),
                depth_cm,
                battery_v: Some(3.6),
                source_flag: None,
            });
            historical_targets.insert((sensor.clone(), event_time_ms / WINDOW_SIZE_MS * WINDOW_SIZE_MS));
        }
    }
    let backfilled = backfill_readings(&rows);
    let csv = world.path("sdcard-log.csv");
    write_sdcard_log(&csv, &rows);
    let output = run_backfill(&world, &csv);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the backfill failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = json_lines(&stdout).pop().expect("a JSON summary");
    assert_eq!(summary["completed"], true, "{summary}");
    assert_eq!(summary["rows_produced"], rows.len(), "{summary}");
    assert_eq!(summary["rows_rejected"], 0, "{summary}");
    lap(
        test,
        started,
        &format!(
            "backfilled {} row(s): {} into written windows, {} two days old",
            rows.len(),
            revised_targets.len(),
            historical_targets.len()
        ),
    );

    // Live data goes on flowing after the backfill, then everything stops.
    let after = gateway.ledger_len();
    gateway.wait_for_ledger(after + 25, FLOW_TIMEOUT_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);
    let caught_up = catch_up_and_stop(test, started, &world, &mut qaqc);

    let mut ledger = ledger_of(&[&gateway]);
    ledger.durable(&backfilled);
    let verdict = judge(&world.kafka(), &ledger, qaqc.settings());
    // Nothing was refused as too late, and every backfilled reading is clean.
    assert_eq!(
        verdict.downstream.tally.quarantined.get("too_late"),
        None,
        "{}",
        verdict.downstream
    );
    let clean_backfill = verdict
        .topics
        .clean
        .iter()
        .filter(|r| clean_of(r).gateway_id == BACKFILL_GATEWAY_ID)
        .count();
    assert_eq!(clean_backfill, backfilled.len(), "{}", verdict.downstream);
    // The windows the live stream had written were revised, the two-day-old
    // ones written as historical.
    let windows = window_revisions(&verdict.topics.aggregates);
    for (target, written_revision) in &revised_targets {
        let revisions = &windows[target];
        let last = revisions.last().expect("revisions");
        assert!(
            last.revision > *written_revision && last.revision > 1 && !last.historical,
            "{target:?} (revision {written_revision} before the backfill) was revised: {revisions:?}"
        );
    }
    for target in &historical_targets {
        let revisions = windows
            .get(target)
            .unwrap_or_else(|| panic!("no window {target:?}"));
        assert!(
            revisions.iter().all(|a| a.historical),
            "{target:?} is historical: {revisions:?}"
        );
    }
    assert!(verdict.downstream.tally.windows_revised >= revised_targets.len() as u64);
    assert!(verdict.downstream.tally.windows_historical >= historical_targets.len() as u64);
    assert!(
        caught_up[0].late_window_revisions() >= revised_targets.len() as u64,
        "{}",
        caught_up[0].summary()
    );
    assert_eq!(caught_up[0].quarantined("too_late"), 0);
    done(test, started);
}

/// Runs `tests/python/qaqc_clean_reader.py`; returns its JSON lines.
fn python_clean_reader(world: &World) -> Vec<Value> {
    let output = Command::new(python())
        .arg(tests_dir().join("python/qaqc_clean_reader.py"))
        .args(["--bootstrap", &world.broker.bootstrap_servers()])
        .args(["--registry", &world.registry.url])
        .args(["--timeout-s", &(CLIENT_TIMEOUT_MS / 1_000).to_string()])
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "qaqc_clean_reader.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    json_lines(&String::from_utf8_lossy(&output.stdout))
}

/// Confluent's Python client (`DeserializingConsumer` + `AvroDeserializer`
/// through the registry) reads the clean topic: every record, with the
/// identity, values, flags, key, headers and timestamp rdkafka read.
#[test]
fn python_reads_the_clean_topic_through_the_registry_as_rdkafka_does() {
    let _turn = one_at_a_time();
    let test = "Python clean reader";
    let python = python();
    require_confluent_kafka(&python);
    let started = Instant::now();
    let mut world = World::start(PARTITIONS);
    let mut qaqc = world.start_qaqc(&world.qaqc_spec("qaqc-python"));
    qaqc.wait_until_owning(&all_partitions(PARTITIONS), QAQC_ASSIGN_TIMEOUT_MS);
    let spec = world.gateway_spec("gw-python", 5);
    assert_probes_cover(&spec, PARTITIONS);
    let mut gateway = world.start_gateway(&spec);
    gateway.wait_for_ledger(50, FLOW_TIMEOUT_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);
    wait_until_caught_up(
        &mut [&mut qaqc],
        &world.kafka(),
        RAW_TOPIC,
        QAQC_GROUP,
        QAQC_CATCH_UP_TIMEOUT_MS,
    );
    qaqc.stop();
    let verdict = judge(&world.kafka(), &ledger_of(&[&gateway]), qaqc.settings());

    let lines = python_clean_reader(&world);
    assert_eq!(
        lines.len(),
        verdict.topics.clean.len(),
        "Python read every clean record"
    );
    let by_place: BTreeMap<(i64, i64), &ConsumedRecord> = verdict
        .topics
        .clean
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r))
        .collect();
    let mut identities = BTreeSet::new();
    for line in &lines {
        let place = (json_i64(line, "partition"), json_i64(line, "offset"));
        let record = by_place
            .get(&place)
            .unwrap_or_else(|| panic!("Python read a record rdkafka did not: {line}"));
        let want = clean_of(record);
        let got = &line["record"];
        assert_eq!(json_str(line, "key"), want.sensor_id, "{line}");
        assert_eq!(line["create_time"], true, "{line}");
        assert_eq!(json_i64(line, "timestamp_ms"), want.event_time, "{line}");
        assert_eq!(line["headers"]["gateway_id"], want.gateway_id.as_str(), "{line}");
        assert_eq!(line["headers"]["seq"], want.seq.to_string().as_str(), "{line}");
        assert_eq!(json_str(got, "gateway_id"), want.gateway_id, "{line}");
        assert_eq!(json_str(got, "sensor_id"), want.sensor_id, "{line}");
        assert_eq!(json_i64(got, "seq"), want.seq, "{line}");
        assert_eq!(json_i64(got, "event_time_ms"), want.event_time, "{line}");
        assert!(
            close(json_f64(got, "moisture_pct"), want.moisture_pct),
            "{line} vs {want:?}"
        );
        assert!(
            match (got["soil_temp_c"].as_f64(), want.soil_temp_c) {
                (Some(got), Some(want)) => close(got, want),
                (got, want) => got == want,
            },
            "{line} vs {want:?}"
        );
        assert_eq!(json_i64(got, "depth_cm"), i64::from(want.depth_cm), "{line}");
        assert_eq!(json_strings(got, "flags"), want.flags, "{line}");
        assert_eq!(got["lookahead_complete"], want.lookahead_complete, "{line}");
        assert_eq!(
            json_i64(got, "source_schema_id"),
            i64::from(want.source_schema_id),
            "{line}"
        );
        assert!(
            identities.insert((want.gateway_id.clone(), want.sensor_id.clone(), want.seq)),
            "one record per identity: {line}"
        );
    }
    // What Python decoded is every reading of the ledger that qaqc did not
    // quarantine.
    let quarantined: u64 = verdict.downstream.tally.quarantined.values().sum();
    assert_eq!(
        identities.len() as u64 + quarantined,
        verdict.downstream.tally.raw_identities
    );
    done(test, started);
}

/// The log parser the other tests rely on for who owns what.
#[test]
fn ownership_follows_assignments_revocations_and_rebuilds_in_the_log() {
    let log = "\
x  INFO soilstream::transport::kafka_group: partitions assigned group=g generation=1 partitions=[0, 1, 2, 3]
x  INFO soilstream::qaqc::run: partitions assigned generation=1 partitions=[0, 1, 2, 3]
x  INFO soilstream::qaqc::run: partition state rebuilt partition=0 records_read=0 reconciled=0 resume=0
x  INFO soilstream::qaqc::run: partition state rebuilt partition=1 records_read=4 reconciled=0 resume=0
x  INFO soilstream::qaqc::run: partitions revoked partitions=[0, 1, 2, 3]
x  INFO soilstream::qaqc::run: partitions assigned generation=2 partitions=[2, 3]
x  INFO soilstream::qaqc::run: partition state rebuilt partition=3 records_read=17 reconciled=1 resume=9
";
    let own = Ownership::parse(log);
    assert_eq!(own.assigned, BTreeSet::from([2, 3]));
    assert_eq!(own.ready, BTreeSet::from([3]));
    assert_eq!(own.assignments, 2);
    assert_eq!(own.rebuilds, vec![(0, 0), (1, 4), (3, 17)]);
    let lost = format!(
        "{log}x  WARN soilstream::qaqc::run: partitions lost (session expired or fenced) partitions=[3]\n"
    );
    assert_eq!(Ownership::parse(&lost).ready, BTreeSet::new());
}

/// The field-log fixtures (real files: sources and licences in
/// `system/tests/fixtures/field-logs/SOURCES.md`).
fn field_log_fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/field-logs")
        .join(relative)
}

/// Physical lines ended by `\n`, `\r\n` or a lone `\r`, numbered from 1
/// (written here, not taken from the backfill, to check it).
fn physical_lines(bytes: &[u8]) -> Vec<(u64, String)> {
    let text = String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.to_owned()))
        .collect()
}

/// UTC ms of a naive `YYYY-MM-DD HH:MM[:SS]` at `offset_hours`.
fn naive_ms(text: &str, offset_hours: i8) -> i64 {
    let civil: jiff::civil::DateTime = text
        .replace('/', "-")
        .replacen(' ', "T", 1)
        .parse()
        .expect("a date and time");
    jiff::tz::Offset::constant(offset_hours)
        .to_timestamp(civil)
        .expect("in range")
        .as_millisecond()
}

/// What the ISMN header-line fixture holds, read here from its text.
fn ismn_expected(path: &Path, gateway_id: &str) -> Vec<Reading> {
    physical_lines(&std::fs::read(path).unwrap())
        .into_iter()
        .skip(1)
        .filter_map(|(line, text)| {
            let t: Vec<&str> = text.split_whitespace().collect();
            (t.len() >= 4).then(|| Reading {
                gateway_id: gateway_id.into(),
                sensor_id: "COSMOS.ARM-1.Cosmic-ray-Probe.0-19cm".into(),
                seq: line,
                event_time_ms: naive_ms(&format!("{} {}", t[0], t[1]), 0),
                moisture_vwc: t[2].parse().unwrap(),
                soil_temp_c: None,
                bulk_ec_ds_m: None,
                depth_cm: 19,
                battery_v: None,
                source_flag: Some(t[3].to_owned()),
            })
        })
        .collect()
}

/// What the TOA5 fixture holds under `examples/profiles/toa5-frf-village.toml`.
fn toa5_expected(path: &Path, gateway_id: &str) -> Vec<Reading> {
    physical_lines(&std::fs::read(path).unwrap())
        .into_iter()
        .skip(4)
        .map(|(line, text)| {
            let f: Vec<String> = text.split(',').map(|c| c.trim_matches('"').to_owned()).collect();
            Reading {
                gateway_id: gateway_id.into(),
                sensor_id: "frf-village-vw-10cm".into(),
                seq: line,
                event_time_ms: naive_ms(&f[0], -5),
                moisture_vwc: f[14].parse().unwrap(),
                soil_temp_c: Some(f[15].parse().unwrap()),
                bulk_ec_ds_m: None,
                depth_cm: 10,
                battery_v: Some(f[2].parse().unwrap()),
                source_flag: None,
            }
        })
        .collect()
}

/// Runs `soilstream backfill FILE --gateway-id ID` with the world's broker
/// and registry and `extra` arguments; asserts it completed with no reject.
fn backfill_field_log(world: &World, file: &Path, gateway_id: &str, extra: &[&str], rows: usize) {
    let output = Command::new(SOILSTREAM)
        .arg("backfill")
        .arg(file)
        .args(["--gateway-id", gateway_id])
        .args(["--brokers", &world.broker.bootstrap_servers()])
        .args(["--topic", RAW_TOPIC, "--registry", &world.registry.url, "--json"])
        .args(extra)
        .env("SOILSTREAM_LOG", "info")
        .env_remove("SOILSTREAM_BROKERS")
        .env_remove("SOILSTREAM_REGISTRY_URL")
        .output()
        .expect("run soilstream backfill");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the backfill of {} failed ({}):\n{stdout}\n{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = json_lines(&stdout).pop().expect("a JSON summary");
    assert_eq!(summary["completed"], true, "{summary}");
    assert_eq!(summary["rows_produced"], rows, "{summary}");
    assert_eq!(summary["rows_rejected"], 0, "{summary}");
}

/// An ISMN `.stm` and a Campbell TOA5 `.dat` file, neither written by
/// soilstream, backfilled without a converter (the TOA5 one with the shipped
/// example profile): every reading lands with the event time the file means
/// in UTC (TOA5: the logger's local standard time, UTC-5 in the profile),
/// moisture in m3/m3, the ISMN readings without a temperature (absent, not
/// zero) and with ISMN's flag; qaqc cleans every one of them (none is
/// quarantined: no documented rule applies) and carries the provider's flag
/// into the clean record.
#[test]
fn ismn_and_toa5_field_logs_are_backfilled_and_cleaned_without_a_converter() {
    let _turn = one_at_a_time();
    let test = "field-logs";
    let started = Instant::now();
    let mut world = World::start(PARTITIONS);
    let mut qaqc = world.start_qaqc(&world.qaqc_spec("qaqc-field-logs"));
    qaqc.wait_until_owning(&all_partitions(PARTITIONS), QAQC_ASSIGN_TIMEOUT_MS);

    let copy = |relative: &str| {
        let source = field_log_fixture(relative);
        let target = world.path(source.file_name().unwrap().to_str().unwrap());
        std::fs::copy(&source, &target).expect("copy the fixture");
        target
    };
    let ismn = copy(
        "ismn/header_values/COSMOS/ARM-1/COSMOS_COSMOS_ARM-1_sm_0.000000_0.190000_Cosmic-ray-Probe_20170810_20180809.stm",
    );
    let toa5 = copy("toa5/campbell_scientific_tao5.excerpt.dat");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/profiles/toa5-frf-village.toml");
    let ismn_readings = ismn_expected(&ismn, "ismn-cosmos-sd");
    let toa5_readings = toa5_expected(&toa5, "frf-village-sd");
    assert_eq!((ismn_readings.len(), toa5_readings.len()), (48, 30));
    backfill_field_log(&world, &ismn, "ismn-cosmos-sd", &[], ismn_readings.len());
    backfill_field_log(
        &world,
        &toa5,
        "frf-village-sd",
        &["--profile", profile.to_str().unwrap()],
        toa5_readings.len(),
    );
    lap(test, started, "both field logs backfilled");

    catch_up_and_stop(test, started, &world, &mut qaqc);

    // The raw checker compares every delivered reading with the ones read
    // from the files here: values, event times, missing temperatures, flags.
    let mut ledger = Ledger::new(true);
    let all: Vec<Reading> = ismn_readings.iter().chain(&toa5_readings).cloned().collect();
    for reading in &all {
        ledger.sampled(reading);
    }
    ledger.durable(&all);
    let verdict = judge(&world.kafka(), &ledger, qaqc.settings());
    assert!(verdict.raw.valid, "{}", verdict.raw);
    assert_eq!(
        verdict.raw.tally.delivered_unique,
        all.len() as u64,
        "{}",
        verdict.raw
    );
    assert!(
        verdict.topics.quarantine.is_empty(),
        "no documented rule applies to these readings, yet qaqc quarantined some:\n{}",
        verdict.downstream
    );
    let clean: Vec<CleanReading> = verdict.topics.clean.iter().map(clean_of).collect();
    assert_eq!(clean.len(), all.len());
    for reading in &all {
        let c = clean
            .iter()
            .find(|c| c.gateway_id == reading.gateway_id && c.seq as u64 == reading.seq)
            .unwrap_or_else(|| panic!("{reading:?} is not clean"));
        assert_eq!(c.soil_temp_c, reading.soil_temp_c, "{c:?}");
        assert_eq!(c.source_flag, reading.source_flag, "{c:?}");
        assert_eq!(c.event_time, reading.event_time_ms, "{c:?}");
    }
    // The raw values were written with schema v3 (optional temperature).
    let v3_ids: BTreeSet<u32> = verdict.raw_records.iter().map(schema_id_of).collect();
    assert_eq!(v3_ids.len(), 1, "one writer schema: {v3_ids:?}");
    done(test, started);
}
