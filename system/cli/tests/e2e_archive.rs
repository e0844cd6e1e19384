//! End-to-end: the real `soilstream archive` process behind real gateways,
//! qaqc and a real broker (Tansu), writing Parquet to a local directory:
//! the archive aborts at a crash point of its protocol (the test-only crash
//! hook, `SOILSTREAM_ARCHIVE_CRASH_AT`) after a few committed batches, is
//! restarted, catches up, and then `soilstream archive verify --brokers`
//! must find every offset of the clean topic archived once, in its event
//! date's directory, with nothing else there; `soilstream archive replay`
//! of the archived dates must put the same records, byte for byte, on a
//! fresh topic, and a second replay must add nothing (resume).
//!
//! Needs the `tansu` binary (`$SOILSTREAM_TANSU`, see the README).

mod common;

use common::RegistryProcess;
use common::broker::{RAW_TOPIC, read_topic, start_broker};
use common::gateway::{DRAIN_TIMEOUT_MS, Gateway, GatewaySpec, SOILSTREAM};
use common::logs::LogsOnFailure;
use common::qaqc::{
    QAQC_ASSIGN_TIMEOUT_MS, QAQC_CATCH_UP_TIMEOUT_MS, QAQC_GROUP, Qaqc, QaqcSpec, wait_until_caught_up,
};
use serde_json::Value;
use soilstream::archive::layout::event_date;
use soilstream::archive::protocol::CrashPoint;
use soilstream_containers::{ChildProcess, ChildSpec, TansuBroker, TansuConfig, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 3;
const CLEAN_TOPIC: &str = "soil-moisture-clean";
const ARCHIVE_GROUP: &str = "soilstream-e2e-archive";
/// `[group] session_timeout_ms` of the archive in these tests.
const SESSION_TIMEOUT_MS: u64 = 6_000;

struct World {
    logs: LogsOnFailure,
    registry: RegistryProcess,
    broker: TansuBroker,
    dir: tempfile::TempDir,
}

impl World {
    fn start() -> Self {
        let broker = start_broker(TansuConfig::default().topic(RAW_TOPIC, PARTITIONS));
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

    fn archive_root(&self) -> PathBuf {
        self.path("archive-root")
    }

    fn archive_config(&self, instance_id: &str) -> PathBuf {
        let path = self.path(&format!("{instance_id}.toml"));
        let text = format!(
            r#"[archive]
instance_id = "{instance_id}"
group_id = "{ARCHIVE_GROUP}"
topic = "{CLEAN_TOPIC}"
retry_initial_ms = 100
retry_max_ms = 1000
log_interval_ms = 5000

[rotation]
max_rows = 25
max_age_ms = 1500
max_open_dates = 4

[store]
url = "file://{root}"

[group]
session_timeout_ms = {SESSION_TIMEOUT_MS}
heartbeat_interval_ms = 1000

[kafka]
bootstrap_servers = "{brokers}"

[registry]
url = "{registry}"

[metrics]
listen = ""
"#,
            root = self.archive_root().display(),
            brokers = self.broker.bootstrap_servers(),
            registry = self.registry.url,
        );
        std::fs::write(&path, text).expect("write the archive config");
        path
    }

    fn start_archive(&mut self, instance_id: &str, crash: Option<(CrashPoint, u64)>) -> ChildProcess {
        let log = self.path(&format!("{instance_id}.log"));
        let mut spec = ChildSpec::new(SOILSTREAM, &log)
            .arg("archive")
            .arg("--config")
            .arg(self.archive_config(instance_id))
            .env("SOILSTREAM_LOG", "info,soilstream::archive=debug");
        if let Some((point, passes)) = crash {
            spec = spec
                .env("SOILSTREAM_ARCHIVE_CRASH_AT", point.name())
                .env("SOILSTREAM_ARCHIVE_CRASH_AFTER", passes.to_string());
        }
        self.logs.watch(instance_id.to_string(), log);
        ChildProcess::spawn(spec).expect("start soilstream archive")
    }

    fn verify(&self) -> (bool, Value, String) {
        let output = Command::new(SOILSTREAM)
            .args(["archive", "verify"])
            .arg(self.archive_root())
            .args(["--brokers", &self.broker.bootstrap_servers(), "--json"])
            .output()
            .expect("run soilstream archive verify");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (
            output.status.success(),
            json,
            format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        )
    }
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(CLEAN_TOPIC)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs `point` as the crash point of a whole flow; see the module docs.
fn crash_restart_verify_replay(point: CrashPoint) {
    let started = Instant::now();
    let mut world = World::start();
    let mut qaqc = Qaqc::start(
        &world.path("qaqc"),
        &QaqcSpec::new(
            "qaqc-archive",
            &world.broker.bootstrap_servers(),
            &world.registry.url,
        ),
    );
    world.logs.watch("qaqc", qaqc.log_path());
    qaqc.wait_until_owning(&(0..PARTITIONS as i32).collect(), QAQC_ASSIGN_TIMEOUT_MS);
    let mut spec = GatewaySpec::new("gw-archive", &world.broker.bootstrap_servers(), RAW_TOPIC);
    spec.interval_ms = 200;
    spec.sensors = 6;
    spec.registry_url = Some(world.registry.url.clone());
    let mut gateway = Gateway::start(&world.path("gw-archive"), &spec);
    world.logs.watch("gw-archive", gateway.log_path());

    // The archive crashes at `point` after two batches passed it.
    let mut archive = world.start_archive("archive-a", Some((point, 2)));
    let crashed = archive.wait(120_000);
    assert!(
        crashed.is_some_and(|s| !s.success()),
        "the archive should have crashed at {} ({crashed:?})",
        point.name()
    );
    eprintln!(
        "[{:>5.1}s] archive crashed at {}",
        started.elapsed().as_secs_f64(),
        point.name()
    );
    // An orchestrator's restart delay: Tansu 0.6.0 needs the dead member's
    // session to expire before a new member joins (see e2e_qaqc.rs).
    std::thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_500));
    let mut archive = world.start_archive("archive-b", None);

    gateway.wait_for_ledger(300, 120_000);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    gateway.stop(spec.shutdown_grace_ms);
    wait_until_caught_up(
        &mut [&mut qaqc],
        &world.broker.client_config(),
        RAW_TOPIC,
        QAQC_GROUP,
        QAQC_CATCH_UP_TIMEOUT_MS,
    );
    qaqc.stop();
    eprintln!("[{:>5.1}s] qaqc caught up", started.elapsed().as_secs_f64());

    // The archive catches up with the clean topic: verify against the broker is clean.
    let mut last = String::new();
    let caught_up = wait_until("the archive holds every clean offset", 90_000, || {
        let (ok, _, text) = world.verify();
        last = text;
        ok
    });
    assert!(caught_up.is_ok(), "archive verify never came out clean:\n{last}");
    let termination = archive.terminate(30_000).expect("SIGTERM the archive");
    assert!(
        termination.status.success() && !termination.forced,
        "{termination:?}"
    );
    let (ok, report, text) = world.verify();
    assert!(ok, "{text}");

    // Every clean record once; dates are event dates.
    let (clean, _) = read_topic(&world.broker, CLEAN_TOPIC);
    assert!(clean.len() >= 200, "only {} clean records", clean.len());
    assert_eq!(report["rows"].as_u64(), Some(clean.len() as u64), "{text}");
    let mut dates: BTreeMap<String, u64> = BTreeMap::new();
    for record in &clean {
        *dates.entry(event_date(record.timestamp_ms)).or_default() += 1;
    }
    let archived_dates: BTreeMap<String, u64> =
        serde_json::from_value(report["rows_per_date"].clone()).expect("rows per date");
    assert_eq!(archived_dates, dates);
    let files = parquet_files(&world.archive_root());
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
    assert!(files.len() >= 3, "{files:?}");

    // Replay the archived dates onto a fresh topic: the same bytes.
    let from = dates.keys().next().expect("a date").clone();
    let to = dates.keys().last().expect("a date").clone();
    let replay = |world: &World| {
        let output = Command::new(SOILSTREAM)
            .args(["archive", "replay"])
            .arg(world.archive_root())
            .args(["--from", &from, "--to", &to, "--target", "replayed"])
            .args(["--brokers", &world.broker.bootstrap_servers()])
            .output()
            .expect("run soilstream archive replay");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        text
    };
    let first = replay(&world);
    assert!(
        first.contains(&format!("replayed {} records", clean.len())),
        "{first}"
    );
    let second = replay(&world);
    assert!(second.contains("replayed 0 records"), "a rerun resumes: {second}");
    let (replayed, _) = read_topic(&world.broker, "replayed");
    assert_eq!(replayed.len(), clean.len());
    let originals: BTreeMap<(i32, i64), &soilstream::transport::ConsumedRecord> =
        clean.iter().map(|r| ((r.partition, r.offset), r)).collect();
    let mut seen = BTreeSet::new();
    for record in &replayed {
        let header = |name: &str| -> i64 {
            std::str::from_utf8(record.header(name).expect("source header"))
                .unwrap()
                .parse()
                .unwrap()
        };
        let source = (
            header("archive.src.partition") as i32,
            header("archive.src.offset"),
        );
        let original = originals.get(&source).expect("a replayed record has an original");
        assert_eq!(record.partition, original.partition);
        assert_eq!(record.value, original.value, "byte-exact at {source:?}");
        assert_eq!(record.key, original.key);
        assert_eq!(record.timestamp_ms, original.timestamp_ms);
        assert!(seen.insert(source), "replayed twice: {source:?}");
    }
    eprintln!(
        "[{:>5.1}s] done ({})",
        started.elapsed().as_secs_f64(),
        point.name()
    );
}

#[test]
fn the_archive_crashed_between_its_data_files_and_its_marker_recovers_exactly_once() {
    crash_restart_verify_replay(CrashPoint::AfterDataFiles);
}

#[test]
fn the_archive_crashed_after_its_marker_before_the_group_commit_recovers_exactly_once() {
    crash_restart_verify_replay(CrashPoint::AfterIntentRemoved);
}
