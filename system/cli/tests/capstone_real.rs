//! `soilstream capstone --world real`: the capstone's demonstration against
//! real processes (Tansu behind the fault proxy, the registry, the gateways,
//! qaqc, the archive and the SD-card backfill as `soilstream` processes),
//! judged by the simulator's checkers and written up by the same report
//! code. The real report must have the simulated report's structure (every
//! section and chart of the committed sample `reports/capstone/`, plus the
//! wall-clock section) and PASS; a planted bug the real gateway can carry
//! must turn it FAIL with the anomaly named.
//!
//! The demonstration here is `scenarios/capstone-short.toml` (two gateways,
//! the broker down for half an hour, a slow SD-card backfill): on this
//! 2-core machine the full capstone's backfill (hundreds of rows a second
//! against Tansu 0.6.0 with the SQLite engine) makes qaqc's and the
//! archive's group sessions expire, and Tansu then leaves the group with no
//! partition assigned (README, "The capstone against real processes").
//!
//! The tests take turns (one mutex): each runs a whole real world on a
//! small machine. Needs the `tansu` binary (`$SOILSTREAM_TANSU` or PATH).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const SOILSTREAM: &str = env!("CARGO_BIN_EXE_soilstream");

static ONE_WORLD_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn capstone(args: &[&str]) -> Output {
    let tansu = std::env::var("SOILSTREAM_TANSU").ok();
    let mut command = Command::new(SOILSTREAM);
    command.arg("capstone").args(args);
    if let Some(tansu) = tansu {
        command.env("SOILSTREAM_TANSU", tansu);
    }
    command.output().expect("run soilstream capstone")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `##` and `###` headings of a report, in order.
fn headings(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        .map(str::to_owned)
        .collect()
}

fn charts(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("charts"))
        .expect("a charts directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_capstone_against_real_processes_passes_with_the_simulated_reports_structure() {
    let _turn = ONE_WORLD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().expect("a temporary directory");
    let report_dir = out.path().join("report");
    let work_dir = out.path().join("world");
    let scenario = repo_root().join("scenarios/capstone-short.toml");
    let output = capstone(&[
        "--world",
        "real",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--out",
        report_dir.to_str().expect("utf-8"),
        "--work-dir",
        work_dir.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout.contains("verdict: PASS"), "{}", describe(&output));

    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("run.json")).expect("run.json"))
            .expect("run.json parses");
    assert_eq!(run["identity"]["world"], "real", "{run:#}");
    assert_eq!(run["verdict"], "PASS", "{:#}", run["verdict_reasons"]);
    assert_eq!(run["wall_clock"]["time_compression"], 60);

    // The same report as the simulator's: every section and chart of the
    // committed sample, and the wall-clock section after them.
    let sample_dir = repo_root().join("reports/capstone");
    let sample = std::fs::read_to_string(sample_dir.join("report.md")).expect("the committed sample");
    let real = std::fs::read_to_string(report_dir.join("report.md")).expect("report.md");
    let mut expected = headings(&sample);
    expected.push("## Wall clock (not deterministic)".into());
    assert_eq!(headings(&real), expected, "{real}");
    assert_eq!(charts(&report_dir), charts(&sample_dir));
    let html = std::fs::read_to_string(report_dir.join("report.html")).expect("report.html");
    assert!(html.contains("id=\"wall-clock\""));
    assert!(!html.contains("<script"), "the HTML report carries no script");

    // The real world really ran: the broker was killed and came back, the
    // backfill delivered its card.
    let faults = run["faults"].as_array().expect("faults");
    assert!(
        faults.iter().all(|f| f["covered"] == true),
        "every fault took effect: {faults:#?}"
    );
    assert!(work_dir.join("gw-1-sd/summary.json").exists());
    assert!(work_dir.join("broker.log").exists());
    assert!(work_dir.join("gw-0/gateway.log").exists());
}

/// A scenario short enough for a planted bug: two gateways, the broker down
/// for a minute, and gateway 0 losing power while its backlog is queued in
/// the producer.
const POWER_CUT_DURING_OUTAGE: &str = r#"
name = "power-cut-during-outage"
description = "The broker goes down; a gateway loses power while its backlog waits in the producer."
duration_s = 600
tick_ms = 1000

[topology]
gateways = 2
sensors_per_gateway = 3
sample_interval_ms = 10000
partitions = 3

[expect]
drain_within_s = 600

[qaqc]
instances = 0

[[fault]]
kind = "broker_crash"
at_s = 120
duration_s = 180

[[fault]]
kind = "power_loss"
gateway = 0
at_s = 240
duration_s = 60
"#;

#[test]
fn a_planted_bug_turns_the_real_report_fail_with_the_loss_named() {
    let _turn = ONE_WORLD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().expect("a temporary directory");
    let scenario = out.path().join("power-cut.toml");
    std::fs::write(&scenario, POWER_CUT_DURING_OUTAGE).expect("write the scenario");
    let report_dir = out.path().join("report");
    let args = |planted: &str| {
        vec![
            "--world".to_owned(),
            "real".into(),
            "--compression".into(),
            "10".into(),
            "--scenario".into(),
            scenario.display().to_string(),
            "--planted-bug".into(),
            planted.into(),
            "--out".into(),
            report_dir.display().to_string(),
        ]
    };
    let output = capstone(
        &args("cursor-before-delivery")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verdict: FAIL"), "{}", describe(&output));
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("run.json")).expect("run.json"))
            .expect("run.json parses");
    let reasons = run["verdict_reasons"].to_string();
    assert!(reasons.contains("lost"), "the loss is named: {reasons}");

    // Without the bug, the same world passes.
    let output = capstone(&args("none").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", describe(&output));
}
