//! End-to-end: the real `soilstream archive` process behind real gateways,
//! qaqc and a real broker (Tansu), writing Parquet to a local directory and
//! to a real S3-compatible server on loopback (moto in server mode, which
//! enforces create-if-absent puts). While the gateway streams, archive
//! instances abort one after the other at the crash points of the protocol
//! (the test-only crash hook `SOILSTREAM_ARCHIVE_CRASH_AT`, `abort()` as
//! abrupt as `kill -9`), each restarted after the group session of the
//! previous one expired; the last instance catches up. Then:
//! `soilstream archive verify --brokers` must find every offset of the clean
//! topic archived once, in its event date's directory, with nothing else
//! there; DuckDB and pyarrow must read the files by date with the counts the
//! clean topic gives; `soilstream archive replay` of the archived dates must
//! put the same records, byte for byte, on a fresh topic, and a rerun must
//! add nothing.
//!
//! `after-first-data-file` needs a batch spanning two event dates, which a
//! live flow does not make: on the local directory, while the archive is
//! down, `soilstream backfill` writes two-day-old readings of an SD-card log
//! behind the live flow, and the next instance crashes between the two data
//! files of the first batch that holds both dates. The backfilled readings
//! must then be archived under their own (old) date.
//!
//! Besides `archive verify`, the archive checker the simulator uses
//! (`soilstream_scenarios::archived`) judges the store against the clean
//! topic row by row.
//!
//! Needs the `tansu` binary (`$SOILSTREAM_TANSU`) and a Python with the
//! packages of `tests/python/requirements.txt` (`$SOILSTREAM_PYTHON`).

mod common;

use common::RegistryProcess;
use common::broker::{RAW_TOPIC, read_topic, start_broker};
use common::gateway::{DRAIN_TIMEOUT_MS, Gateway, GatewaySpec, SOILSTREAM, now_ms};
use common::logs::LogsOnFailure;
use common::python::{python, tests_dir};
use common::qaqc::{
    QAQC_ASSIGN_TIMEOUT_MS, QAQC_CATCH_UP_TIMEOUT_MS, QAQC_GROUP, Qaqc, QaqcSpec, wait_until_caught_up,
};
use serde_json::Value;
use soilstream::archive::config::StoreConfig;
use soilstream::archive::layout::event_date;
use soilstream::archive::objstore::ObjectStoreArchive;
use soilstream::archive::protocol::CrashPoint;
use soilstream_containers::{ChildProcess, ChildSpec, TansuBroker, TansuConfig, wait_until};
use soilstream_scenarios::archived::{ArchiveCheckOptions, check_archive};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 3;
const CLEAN_TOPIC: &str = "soil-moisture-clean";
const ARCHIVE_GROUP: &str = "soilstream-e2e-archive";
/// `[group] session_timeout_ms` of the archive in these tests.
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Where the archive writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

/// Gateway id of the SD-card log backfilled behind the live flow.
const BACKFILL_GATEWAY_ID: &str = "gw-archive-sd";
/// How old the backfilled readings are: two days (inside qaqc's 3-day
/// state horizon).
const BACKFILL_AGE_MS: i64 = 2 * 86_400_000;
const S3_BUCKET: &str = "soilstream-e2e";
const S3_PREFIX: &str = "archive";
const S3_KEY: &str = "soilstream-test";
const S3_SECRET: &str = "soilstream-test-secret";

/// moto on a loopback port, with the bucket created.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(log: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python())
            .arg(tests_dir().join("python/s3_server.py"))
            .arg(port.to_string())
            .arg(S3_BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("the S3 server log"))
            .spawn()
            .expect("start moto (pip install -r system/cli/tests/python/requirements.txt)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("moto's first line");
        assert_eq!(line.trim(), "ready", "moto did not start; see {}", log.display());
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct World {
    logs: LogsOnFailure,
    registry: RegistryProcess,
    broker: TansuBroker,
    dir: tempfile::TempDir,
    backend: Backend,
    s3: Option<S3Server>,
}

impl World {
    fn start(backend: Backend) -> Self {
        let broker = start_broker(TansuConfig::default().topic(RAW_TOPIC, PARTITIONS));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry = RegistryProcess::start(&dir.path().join("registry"), &dir.path().join("registry.log"));
        let mut logs = LogsOnFailure::new();
        logs.watch("broker", broker.log_path())
            .watch("registry", dir.path().join("registry.log"));
        let s3 = (backend == Backend::S3).then(|| {
            logs.watch("s3", dir.path().join("s3.log"));
            S3Server::start(&dir.path().join("s3.log"))
        });
        Self {
            logs,
            registry,
            broker,
            dir,
            backend,
            s3,
        }
    }

    /// The archive root as `archive verify` and `replay` take it.
    fn root_arg(&self) -> String {
        match self.backend {
            Backend::Local => self.archive_root().display().to_string(),
            Backend::S3 => format!("s3://{S3_BUCKET}/{S3_PREFIX}"),
        }
    }

    /// `--endpoint` and `--allow-http` for S3.
    fn store_args(&self) -> Vec<String> {
        match &self.s3 {
            Some(s3) => vec!["--endpoint".into(), s3.endpoint.clone(), "--allow-http".into()],
            None => vec![],
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(SOILSTREAM);
        command.args(args).arg(self.root_arg()).args(self.store_args());
        command
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_REGION", "us-east-1");
        command
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
{store}

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
            store = match &self.s3 {
                None => format!("url = \"file://{}\"", self.archive_root().display()),
                Some(s3) => format!(
                    "url = \"s3://{S3_BUCKET}/{S3_PREFIX}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
                     access_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{S3_SECRET}\"\nallow_http = true",
                    s3.endpoint
                ),
            },
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

    /// Backfills an SD-card log of two-day-old readings (four probes, one
    /// reading every 15 minutes for two hours) into the raw topic; returns
    /// how many readings it holds per event date.
    fn backfill_days_old_readings(&self) -> BTreeMap<String, u64> {
        let start_ms = now_ms() - BACKFILL_AGE_MS;
        let mut text = String::from("sensor_id,timestamp,moisture,temperature,ec,depth_cm,battery_v\n");
        let mut per_date: BTreeMap<String, u64> = BTreeMap::new();
        for row in 0..8_i64 {
            *per_date.entry(event_date(start_ms + row * 900_000)).or_default() += 4;
            for probe in 0..4 {
                text.push_str(&format!(
                    "{BACKFILL_GATEWAY_ID}-probe-{probe},{},0.{},12.5,0.4,{},3.7\n",
                    start_ms + row * 900_000,
                    20 + row,
                    10 * (probe + 1)
                ));
            }
        }
        let csv = self.path("sdcard-log.csv");
        std::fs::write(&csv, text).expect("write the SD-card log");
        let output = Command::new(SOILSTREAM)
            .arg("backfill")
            .arg(&csv)
            .args(["--gateway-id", BACKFILL_GATEWAY_ID])
            .args(["--brokers", &self.broker.bootstrap_servers()])
            .args(["--topic", RAW_TOPIC, "--registry", &self.registry.url, "--json"])
            .env("SOILSTREAM_LOG", "info")
            .env_remove("SOILSTREAM_BROKERS")
            .env_remove("SOILSTREAM_REGISTRY_URL")
            .output()
            .expect("run soilstream backfill");
        assert!(
            output.status.success(),
            "backfill failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        per_date
    }

    fn verify(&self) -> (bool, Value, String) {
        let output = self
            .command(&["archive", "verify"])
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

/// Crashes the archive at each of `crashes` in turn while a gateway streams
/// through qaqc, then lets a last instance catch up and judges; see the
/// module docs.
fn crash_chain_verify_read_replay(backend: Backend, crashes: &[(CrashPoint, u64)]) {
    let started = Instant::now();
    let mut world = World::start(backend);
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

    let mut backfilled_date = None;
    for (i, (point, passes)) in crashes.iter().enumerate() {
        if *point == CrashPoint::AfterFirstDataFile {
            // Old readings behind the live ones while the archive is down:
            // the next batches span two dates.
            backfilled_date = Some(world.backfill_days_old_readings());
            eprintln!(
                "[{:>5.1}s] backfilled two-day-old readings",
                started.elapsed().as_secs_f64()
            );
        }
        let mut archive = world.start_archive(&format!("archive-crash-{i}"), Some((*point, *passes)));
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
        // An orchestrator's restart delay: Tansu 0.6.0 needs the dead
        // member's session to expire before a new member joins (e2e_qaqc.rs).
        std::thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_500));
    }
    let mut archive = world.start_archive("archive-last", None);

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
    for (date, rows) in backfilled_date.iter().flatten() {
        assert_eq!(
            archived_dates.get(date),
            Some(rows),
            "the backfilled readings belong under event_date={date}: {archived_dates:?}"
        );
    }

    // The shared archive checker (the simulator's) agrees, row by row.
    let store_config = StoreConfig {
        url: match &world.s3 {
            Some(_) => world.root_arg(),
            None => format!("file://{}", world.archive_root().display()),
        },
        endpoint: world.s3.as_ref().map(|s3| s3.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some(S3_KEY.into()),
        secret_access_key: Some(S3_SECRET.into()),
        allow_http: true,
        ..StoreConfig::default()
    };
    let judged = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let store = ObjectStoreArchive::open(&store_config).expect("open the archive's store");
            let options = ArchiveCheckOptions {
                topic: CLEAN_TOPIC.into(),
                ..ArchiveCheckOptions::defaults()
            };
            check_archive(&store, &clean, &options).await
        })
        .expect("read the archive's store");
    assert!(judged.valid, "{judged}");
    assert_eq!(judged.tally.rows, clean.len() as u64, "{judged}");
    if backend == Backend::Local {
        let files = parquet_files(&world.archive_root());
        assert!(
            files
                .iter()
                .all(|f| f.extension().is_some_and(|e| e == "parquet")),
            "{files:?}"
        );
        assert!(files.len() >= 3, "{files:?}");
    }

    // Outside readers see the same rows by date.
    let mut readers = Command::new(python());
    readers
        .arg(tests_dir().join("python/archive_readers.py"))
        .arg(world.root_arg())
        .arg(CLEAN_TOPIC)
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET);
    if let Some(s3) = &world.s3 {
        readers.arg(&s3.endpoint);
    }
    let output = readers.output().expect("run archive_readers.py");
    let read_text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{read_text}");
    let read: Value =
        serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).expect("the readers' JSON");
    for reader in ["duckdb", "pyarrow"] {
        let by_date: BTreeMap<String, u64> =
            serde_json::from_value(read[reader].clone()).expect("counts by date");
        assert_eq!(by_date, dates, "{reader} reads other counts: {read_text}");
    }
    assert_eq!(
        read["duckdb_distinct_offsets"].as_u64(),
        Some(clean.len() as u64),
        "{read_text}"
    );
    assert_eq!(
        read["duckdb_dated_right"].as_u64(),
        Some(clean.len() as u64),
        "{read_text}"
    );

    // Replay the archived dates onto a fresh topic: the same bytes.
    let from = dates.keys().next().expect("a date").clone();
    let to = dates.keys().last().expect("a date").clone();
    let replay = |world: &World| {
        let output = world
            .command(&["archive", "replay"])
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
    eprintln!("[{:>5.1}s] done ({backend:?})", started.elapsed().as_secs_f64());
}

/// Every crash point, in an order that makes the recovery points meet
/// leftovers: `after-data-files` leaves an uncommitted attempt that the next
/// instance fences (and crashes after its abort marker, then after removing
/// the first of its files); `after-first-data-file` comes last, after a
/// backfill of old readings.
#[test]
fn a_local_archive_crashed_at_every_point_recovers_exactly_once_and_outside_readers_agree() {
    use CrashPoint::*;
    crash_chain_verify_read_replay(
        Backend::Local,
        &[
            (BeforeIntent, 1),
            (AfterIntent, 1),
            (AfterDataFiles, 1),
            (AfterAbortMarker, 0),
            (AfterDataFiles, 1),
            (AfterAbortedFileRemoved, 0),
            (AfterMarker, 1),
            (AfterIntentRemoved, 1),
            (AfterGroupCommit, 1),
            (AfterFirstDataFile, 0),
        ],
    );
}

/// The same on a real S3 API (moto on loopback).
#[test]
fn an_s3_archive_crashed_mid_batch_recovers_exactly_once_and_outside_readers_agree() {
    use CrashPoint::*;
    crash_chain_verify_read_replay(
        Backend::S3,
        &[(AfterDataFiles, 1), (AfterAbortMarker, 0), (AfterMarker, 1)],
    );
}

/// A bucket that does not exist is refused before the archive joins its
/// group (and by `verify`), with what to do; nothing is retried forever.
#[test]
fn a_missing_bucket_is_refused_at_start_with_what_to_do() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let s3 = S3Server::start(&dir.path().join("s3.log"));
    let store = format!(
        "[store]\nurl = \"s3://no-such-bucket/archive\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{S3_SECRET}\"\nallow_http = true\n\
         [kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n[metrics]\nlisten = \"\"\n",
        s3.endpoint
    );
    let config = dir.path().join("archive.toml");
    std::fs::write(&config, store).expect("write the config");
    let mut child = ChildProcess::spawn(
        ChildSpec::new(SOILSTREAM, dir.path().join("archive.log"))
            .arg("archive")
            .arg("--config")
            .arg(&config),
    )
    .expect("start soilstream archive");
    let status = child.wait(30_000);
    let log = std::fs::read_to_string(dir.path().join("archive.log")).unwrap_or_default();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    assert!(
        log.contains("no-such-bucket") && log.contains("does not exist") && log.contains("aws s3 mb"),
        "{log}"
    );
    assert!(!log.contains(S3_SECRET), "the secret leaked: {log}");

    let verify = Command::new(SOILSTREAM)
        .args(["archive", "verify", "s3://no-such-bucket/archive", "--endpoint"])
        .arg(&s3.endpoint)
        .arg("--allow-http")
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run soilstream archive verify");
    let text = String::from_utf8_lossy(&verify.stderr);
    assert!(
        !verify.status.success() && text.contains("does not exist"),
        "{text}"
    );
}
