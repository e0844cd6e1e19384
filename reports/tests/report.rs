//! The report, end to end: a short simulated run rendered twice (byte
//! equality, an insta snapshot of `report.md`), the HTML's structure, a
//! planted bug turning the report to FAIL, the committed capstone sample,
//! and a real browser rendering `report.html`.

use soilstream_reports::model::{Completeness, Verdict};
use soilstream_reports::{Report, RunContext, WorldKind, build_report, render};
use soilstream_scenarios::runner::{RunOptions, run_scenario};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A short run with every part the report draws: two gateways, the broker
/// stopped for ten minutes and a gateway's power cut meanwhile, qaqc, the archive, an SD-card log reaching an
/// hour before the start.
const SHORT: &str = r#"
name = "report-short"
description = "A short run for the report tests: a broker outage, qaqc, the archive and an SD-card backfill."
duration_s = 2400
tick_ms = 1000

[topology]
gateways = 2
sensors_per_gateway = 2
sample_interval_ms = 60000
partitions = 2

[expect]
drain_within_s = 900
max_lost_before_durable = 10

[qaqc]
instances = 1

[archive]
instances = 1

[[fault]]
kind = "broker_crash"
at_s = 600
duration_s = 600

[[fault]]
kind = "power_loss"
gateway = 0
at_s = 900
duration_s = 120

[[backfill]]
gateway = 1
at_s = 1500
log_from_s = -3600
log_to_s = 1200
max_rate_rows_per_s = 10
"#;

fn short() -> Scenario {
    Scenario::parse(SHORT, "report-short (test)").expect("the test scenario is valid")
}

fn report_of(scenario: &Scenario, seed: u64, planted: PlantedBug, command: &str) -> Report {
    let run = run_scenario(scenario, RunOptions { seed, planted });
    build_report(
        scenario,
        &run,
        &RunContext {
            world: WorldKind::Sim,
            command: command.to_owned(),
            wall_clock: None,
        },
    )
}

fn file<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
    &files
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} rendered"))
        .1
}

#[test]
fn a_short_run_gives_the_same_bytes_twice_and_its_markdown_matches_the_snapshot() {
    let scenario = short();
    let command = "soilstream sim run report-short.toml --seed 3 --report out";
    let first = render(&report_of(&scenario, 3, PlantedBug::None, command));
    let second = render(&report_of(&scenario, 3, PlantedBug::None, command));
    assert_eq!(
        first.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        second.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        assert!(a == b, "{name} differs between two runs of the same seed");
    }
    let md = file(&first, "report.md");
    assert!(md.contains("✅ PASS"), "the short run passes:\n{md}");
    insta::assert_snapshot!("report_short_seed_3_md", md);
}

#[test]
fn the_html_is_self_contained_with_every_section_chart_and_table() {
    let report = report_of(&short(), 3, PlantedBug::None, "test");
    let files = render(&report);
    let html = file(&files, "report.html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    for forbidden in ["<script", "src=", "<link", "@import", "url(http", "<img"] {
        assert!(!html.contains(forbidden), "report.html holds {forbidden}");
    }
    assert_eq!(html.matches("<style>").count(), 1, "one style block");
    assert_eq!(
        html.matches("<svg").count(),
        html.matches("</svg>").count(),
        "every svg is closed"
    );
    for id in [
        "verdict",
        "identity",
        "demonstration",
        "architecture",
        "faults",
        "charts",
        "ledger",
        "invariants",
        "anomalies",
        "decisions",
        "reflection",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no section {id}");
    }
    for chart in soilstream_reports::charts::charts(&report) {
        assert!(
            html.contains(&format!("<figure id=\"chart-{}\"><svg", chart.id)),
            "chart {} is not inline",
            chart.id
        );
        let md = file(&files, "report.md");
        assert!(md.contains(&format!("(charts/{}.svg)", chart.file)));
        assert!(file(&files, &format!("charts/{}.svg", chart.file)).starts_with("<svg"));
    }
    assert!(html.contains("class=\"banner PASS\""));
    // Every evidence link of a demonstration step points at an element.
    for step in &report.demo_steps {
        assert!(
            html.contains(&format!("id=\"{}\"", step.link)),
            "dangling link {}",
            step.link
        );
    }
    // Faults are drawn as bands, the run has data points.
    assert!(html.contains("class=\"band\""));
    assert!(html.matches("class=\"point\"").count() > 50);
    let json: serde_json::Value = serde_json::from_str(file(&files, "run.json")).expect("run.json parses");
    assert_eq!(json["verdict"], "PASS");
    assert_eq!(json["identity"]["seed"], 3);
}

#[test]
fn a_planted_bug_gives_a_fail_report_that_names_the_anomaly_and_draws_the_loss() {
    let report = report_of(&short(), 3, PlantedBug::CursorBeforeDelivery, "test");
    assert_eq!(report.verdict, Verdict::Fail);
    let lost = report
        .anomalies
        .iter()
        .find(|a| a.checker == "raw" && a.kind == "lost")
        .expect("the anomaly list names the lost readings");
    assert!(lost.count > 0 && !lost.examples.is_empty());
    let red_cells = report
        .series
        .completeness
        .iter()
        .flat_map(|r| r.hours.values())
        .filter(|c| **c == Completeness::Lost)
        .count();
    assert!(red_cells > 0, "the completeness map shows the loss");
    let files = render(&report);
    let md = file(&files, "report.md");
    assert!(md.contains("❌ FAIL") && md.contains("`lost`"));
    assert!(file(&files, "report.html").contains("class=\"banner FAIL\""));
}

#[test]
fn the_capstone_passes_with_every_step_shown_and_every_fault_covered_on_the_ci_seeds() {
    for seed in 1..=3 {
        let report = report_of(&Scenario::capstone(), seed, PlantedBug::None, "test");
        assert_eq!(
            report.verdict,
            Verdict::Pass,
            "seed {seed}: {:?}",
            report.verdict_reasons
        );
        assert_eq!(report.demo_steps.len(), 5);
        assert!(
            report.demo_steps.iter().all(|s| s.passed == Some(true)),
            "seed {seed}: {:?}",
            report.demo_steps
        );
        assert!(
            report
                .faults
                .iter()
                .all(|f| f.covered && f.drained_after_ms.is_some())
        );
        assert!(report.series.revised_windows.iter().map(|c| c.count).sum::<u64>() >= 100);
    }
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("capstone")
}

#[test]
fn the_committed_capstone_sample_matches_what_the_code_produces() {
    let report = report_of(
        &Scenario::capstone(),
        1,
        PlantedBug::None,
        "soilstream capstone --seed 1",
    );
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.verdict_reasons);
    let files = render(&report);
    let dir = sample_dir();
    if std::env::var_os("SOILSTREAM_UPDATE_SAMPLE").is_some() {
        soilstream_reports::write_report(&report, &dir).expect("writes the sample");
        return;
    }
    for (name, contents) in &files {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *contents,
            "reports/capstone/{name} no longer matches what the code produces; regenerate the sample with \
             `cargo run --release -p soilstream-cli -- capstone --out reports/capstone` (or \
             SOILSTREAM_UPDATE_SAMPLE=1 cargo test -p soilstream-reports --test report committed) and review the diff"
        );
    }
}

/// The headless browser: `SOILSTREAM_CHROMIUM`, else `chromium` on the path.
fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("SOILSTREAM_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

/// What the browser printed.
struct BrowserOutput {
    stdout: String,
    stderr: String,
}

/// Runs the browser with `args`, its output into files (a DOM is larger
/// than a pipe's buffer), killing it after two minutes.
fn run_browser(browser: &str, args: &[String], dir: &Path, name: &str) -> BrowserOutput {
    let stdout_path = dir.join(format!("{name}.stdout"));
    let stderr_path = dir.join(format!("{name}.stderr"));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--user-data-dir={}", dir.join("profile").display()),
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("a stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("a stderr file"))
        .spawn()
        .expect("the browser starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("waits for the browser").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    BrowserOutput {
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

#[test]
fn report_html_renders_in_a_real_browser_with_every_chart() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("SOILSTREAM_REQUIRE_BROWSER").is_none(),
            "SOILSTREAM_REQUIRE_BROWSER is set and no chromium was found (apt-get install chromium)"
        );
        eprintln!("no headless chromium (apt-get install chromium): skipping the browser test");
        return;
    };
    let report = report_of(&short(), 3, PlantedBug::None, "test");
    let dir = tempfile::tempdir().expect("a temporary directory");
    soilstream_reports::write_report(&report, dir.path()).expect("writes the report");
    let page = format!("file://{}", dir.path().join("report.html").display());
    let dom = run_browser(
        &browser,
        &["--dump-dom".to_owned(), page.clone()],
        dir.path(),
        "dom",
    );
    let dom_text = &dom.stdout;
    assert!(
        dom_text.contains("</html>"),
        "the browser dumped no DOM: {}",
        dom.stderr
    );
    for chart in soilstream_reports::charts::charts(&report) {
        assert!(
            dom_text.contains(&format!("id=\"svg-{}\"", chart.id)),
            "the rendered DOM has no chart {}",
            chart.id
        );
    }
    assert!(dom_text.contains("id=\"svg-architecture\""));

    let png = dir.path().join("report.png");
    let shot = run_browser(
        &browser,
        &[
            "--window-size=1280,3000".to_owned(),
            format!("--screenshot={}", png.display()),
            page,
        ],
        dir.path(),
        "screenshot",
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}; browser said: {}",
            png.display(),
            shot.stderr
        )
    });
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sized PNG")];
    let info = reader.next_frame(&mut pixels).expect("the screenshot decodes");
    let channels = info.color_type.samples();
    let total = (info.width * info.height) as usize;
    let mut not_white = 0;
    let mut colours = std::collections::BTreeSet::new();
    for px in pixels[..info.buffer_size()].chunks(channels) {
        if px.iter().take(3).any(|v| *v < 240) {
            not_white += 1;
        }
        if colours.len() < 64 {
            colours.insert(px.iter().take(3).copied().collect::<Vec<u8>>());
        }
    }
    assert!(
        info.width >= 1000 && info.height >= 1000,
        "a full-size screenshot"
    );
    assert!(
        not_white * 100 > total,
        "the screenshot is blank: {not_white} of {total} pixels drawn"
    );
    assert!(
        colours.len() >= 16,
        "the screenshot has {} colours: no charts drawn",
        colours.len()
    );
}
