//! The scenario suites `cargo test` runs: every scenario file over the CI
//! seeds, determinism, and the planted bugs the checker must catch.
//!
//! CI seeds: `SOILSTREAM_SIM_SEEDS` (`A..B`, inclusive), default `1..3`. The
//! long sweep is a separate command (README, "Seed sweeps").

use soilstream_scenarios::archived::ArchiveAnomaly;
use soilstream_scenarios::checker::AnomalyKind;
use soilstream_scenarios::downstream::DownstreamAnomaly;
use soilstream_scenarios::runner::{RunOptions, RunResult, run_scenario};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::path::{Path, PathBuf};

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn load(name: &str) -> Scenario {
    let path = suite_dir().join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn ci_seeds() -> std::ops::RangeInclusive<u64> {
    let text = std::env::var("SOILSTREAM_SIM_SEEDS").unwrap_or_else(|_| "1..3".into());
    let (a, b) = text
        .split_once("..")
        .unwrap_or_else(|| panic!("SOILSTREAM_SIM_SEEDS={text} is not A..B"));
    let a: u64 = a.parse().expect("seed");
    let b: u64 = b.trim_start_matches('=').parse().expect("seed");
    a..=b
}

/// Logs of the simulated components on stderr when `SOILSTREAM_LOG` is set
/// (e.g. `soilstream::qaqc=info`), for debugging a failing seed.
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("SOILSTREAM_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

fn run(scenario: &Scenario, seed: u64, planted: PlantedBug) -> RunResult {
    init_logs();
    run_scenario(scenario, RunOptions { seed, planted })
}

/// Runs `name` over the CI seeds; fails with every failing summary and the
/// command that reproduces it.
fn passes_ci_seeds(name: &str) {
    let scenario = load(name);
    let mut failures = Vec::new();
    for seed in ci_seeds() {
        let result = run(&scenario, seed, PlantedBug::None);
        eprintln!(
            "{name} seed {seed}: {} in {} ms wall",
            if result.passed() { "PASS" } else { "FAIL" },
            result.wall_ms
        );
        if std::env::var_os("SOILSTREAM_SIM_VERBOSE").is_some() {
            eprintln!("{}", result.summary());
        }
        if !result.passed() {
            failures.push(format!(
                "{}\nreproduce: soilstream sim run scenarios/{name}.toml --seed {seed}\n",
                result.summary()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Scenario files with their own test file (extra assertions):
/// `tests/registry_and_backfill.rs`.
const SCENARIOS_TESTED_ELSEWHERE: [&str; 3] = [
    "backfill-after-power-outage",
    "backfill-toa5-card",
    "registry-outage",
];

/// Every other file in `scenarios/`, each with its own test below.
const SCENARIOS: [&str; 17] = [
    "archive-crash-loop",
    "archive-rebalance",
    "backfill-windows",
    "capstone",
    "capstone-short",
    "broker-crash",
    "disk-damage",
    "disk-full-long-outage",
    "flapping-link",
    "hostile-input",
    "network-outage-2h",
    "power-outage-24h",
    "qaqc-crash-loop",
    "rebalance-storm",
    "reboot-loop-during-drain",
    "steady-state",
    "storm-mix",
];

#[test]
fn every_scenario_file_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(suite_dir())
        .expect("suite dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("Cargo.toml"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut tested: Vec<&str> = SCENARIOS
        .iter()
        .chain(&SCENARIOS_TESTED_ELSEWHERE)
        .copied()
        .collect();
    tested.sort();
    assert_eq!(names, tested, "add a test for every scenario file");
    for name in SCENARIOS {
        load(name); // parses and validates
    }
}

#[test]
fn archive_crash_loop() {
    passes_ci_seeds("archive-crash-loop");
}

#[test]
fn archive_rebalance() {
    passes_ci_seeds("archive-rebalance");
}

#[test]
fn backfill_windows() {
    passes_ci_seeds("backfill-windows");
}

#[test]
fn capstone() {
    passes_ci_seeds("capstone");
    // The binary runs the embedded copy: it is this file.
    assert_eq!(
        soilstream_scenarios::scenario::Scenario::capstone(),
        load("capstone")
    );
}

/// The capstone at the size the real world's test plays it
/// (`system/cli/tests/capstone_real.rs`): both worlds pass it.
#[test]
fn capstone_short() {
    passes_ci_seeds("capstone-short");
}

#[test]
fn hostile_input() {
    passes_ci_seeds("hostile-input");
}

#[test]
fn qaqc_crash_loop() {
    passes_ci_seeds("qaqc-crash-loop");
}

#[test]
fn rebalance_storm() {
    passes_ci_seeds("rebalance-storm");
}

#[test]
fn broker_crash() {
    passes_ci_seeds("broker-crash");
}

#[test]
fn disk_damage() {
    passes_ci_seeds("disk-damage");
}

#[test]
fn disk_full_long_outage() {
    passes_ci_seeds("disk-full-long-outage");
}

#[test]
fn flapping_link() {
    passes_ci_seeds("flapping-link");
}

#[test]
fn network_outage_2h() {
    passes_ci_seeds("network-outage-2h");
}

#[test]
fn power_outage_24h() {
    passes_ci_seeds("power-outage-24h");
}

#[test]
fn reboot_loop_during_drain() {
    passes_ci_seeds("reboot-loop-during-drain");
}

#[test]
fn steady_state() {
    passes_ci_seeds("steady-state");
}

#[test]
fn storm_mix() {
    passes_ci_seeds("storm-mix");
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let scenario = load("network-outage-2h");
    let a = run(&scenario, 11, PlantedBug::None);
    let b = run(&scenario, 11, PlantedBug::None);
    let c = run(&scenario, 12, PlantedBug::None);
    assert_eq!(a.summary(), b.summary(), "same seed, same summary byte for byte");
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.events, b.events);
    assert_ne!(a.digest, c.digest, "a different seed must give a different trace");
}

/// The downstream stages (qaqc, three archive instances rebalancing, the
/// object store host) replay from the seed too: same summary, same store.
#[test]
fn the_archive_world_replays_from_its_seed() {
    let scenario = load("archive-rebalance");
    let a = run(&scenario, 5, PlantedBug::None);
    let b = run(&scenario, 5, PlantedBug::None);
    let c = run(&scenario, 6, PlantedBug::None);
    assert_eq!(a.summary(), b.summary(), "same seed, same summary byte for byte");
    assert_eq!(a.archive, b.archive);
    assert_eq!(a.archive_activity, b.archive_activity);
    assert_ne!(a.digest, c.digest, "a different seed must give a different trace");
}

/// A planted bug must make every CI run of the scenario fail because
/// acknowledged readings went missing: as `kind`, or as more loss to
/// reported spool damage than the scenario allows (a spool that acked
/// unsynced data finds it torn after the power cut and reports it).
fn caught(name: &str, bug: PlantedBug, kind: AnomalyKind) {
    let scenario = load(name);
    for seed in ci_seeds() {
        let result = run(&scenario, seed, bug);
        let excess_damage =
            result.check.tally.lost_to_reported_damage_or_drop > scenario.expect.max_lost_to_reported_damage;
        assert!(
            !result.passed() && (result.check.count(kind) > 0 || excess_damage),
            "planted bug {} not caught by {name} seed {seed} as {}:\n{}",
            bug.name(),
            kind.name(),
            result.summary()
        );
    }
}

#[test]
fn planted_ack_before_sync_is_caught() {
    caught("power-outage-24h", PlantedBug::AckBeforeSync, AnomalyKind::Lost);
}

#[test]
fn planted_cursor_before_delivery_is_caught() {
    caught(
        "power-outage-24h",
        PlantedBug::CursorBeforeDelivery,
        AnomalyKind::Lost,
    );
}

#[test]
fn planted_truncate_at_first_bad_crc_is_caught() {
    caught(
        "disk-damage",
        PlantedBug::TruncateAtFirstBadCrc,
        AnomalyKind::Lost,
    );
}

#[test]
fn planted_skip_segment_sync_dir_is_caught() {
    caught(
        "power-outage-24h",
        PlantedBug::SkipSegmentSyncDir,
        AnomalyKind::Lost,
    );
}

/// A planted qaqc bug must make every CI run of the scenario fail with the
/// downstream anomaly `kind`.
fn caught_downstream(name: &str, bug: PlantedBug, kind: DownstreamAnomaly) {
    caught_as(name, bug, kind.name(), |r| {
        r.downstream.as_ref().map_or(0, |d| d.count(kind))
    });
}

/// A planted bug must make every CI run of the scenario fail with
/// `found(result) > 0` occurrences of the anomaly called `kind`.
fn caught_as(name: &str, bug: PlantedBug, kind: &str, found: impl Fn(&RunResult) -> u64) {
    let scenario = load(name);
    for seed in ci_seeds() {
        let result = run(&scenario, seed, bug);
        assert!(
            !result.passed() && found(&result) > 0,
            "planted bug {} not caught by {name} seed {seed} as {kind}:\n{}",
            bug.name(),
            result.summary()
        );
    }
}

#[test]
fn planted_qaqc_commit_before_ack_is_caught() {
    caught_downstream(
        "qaqc-crash-loop",
        PlantedBug::QaqcCommitBeforeAck,
        DownstreamAnomaly::LostDownstream,
    );
}

#[test]
fn planted_qaqc_dedup_not_rebuilt_is_caught() {
    caught_downstream(
        "qaqc-crash-loop",
        PlantedBug::QaqcDedupNotRebuilt,
        DownstreamAnomaly::DuplicateDownstream,
    );
}

#[test]
fn planted_qaqc_windows_on_arrival_time_is_caught() {
    caught_downstream(
        "backfill-windows",
        PlantedBug::QaqcWindowsOnArrivalTime,
        DownstreamAnomaly::WindowMismatch,
    );
}

#[test]
fn planted_qaqc_late_readings_dropped_is_caught() {
    caught_downstream(
        "backfill-windows",
        PlantedBug::QaqcLateReadingsDropped,
        DownstreamAnomaly::LostDownstream,
    );
}

/// A planted archive bug must make every CI run of the scenario fail with
/// the archive anomaly `kind`.
fn caught_in_archive(name: &str, bug: PlantedBug, kind: ArchiveAnomaly) {
    caught_as(name, bug, kind.name(), |r| {
        r.archive.as_ref().map_or(0, |a| a.count(kind))
    });
}

#[test]
fn planted_archive_offsets_before_marker_is_caught() {
    caught_in_archive(
        "archive-crash-loop",
        PlantedBug::ArchiveOffsetsBeforeMarker,
        ArchiveAnomaly::LostArchive,
    );
}

#[test]
fn planted_archive_wall_clock_file_names_is_caught() {
    caught_in_archive(
        "backfill-windows",
        PlantedBug::ArchiveWallClockFileNames,
        ArchiveAnomaly::MisfiledArchive,
    );
}

#[test]
fn planted_backfill_missing_as_zero_is_caught() {
    // The SD card has NAN temperatures (about one row in 32): a backfill
    // that sends them as 0 degC changes readings the ledger holds.
    caught(
        "backfill-windows",
        PlantedBug::BackfillMissingAsZero,
        AnomalyKind::Corrupt,
    );
}

#[test]
fn planted_archive_recovery_keeps_uncommitted_is_caught() {
    caught_in_archive(
        "archive-crash-loop",
        PlantedBug::ArchiveRecoveryKeepsUncommitted,
        ArchiveAnomaly::OrphanFile,
    );
}
