//! `soilstream sim run`: play a scenario in the deterministic simulator.

use anyhow::Context;
use soilstream_scenarios::runner::{
    RunOptions, RunProgress, RunResult, run_scenario, run_scenario_with_progress,
};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run scenarios in the deterministic simulator.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SimCommand {
    /// Run a scenario file with one seed or a range of seeds, check every
    /// invariant and print a summary. Exits non-zero if any run fails, with
    /// the command that reproduces it.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenario file (TOML), e.g. scenarios/power-outage-24h.toml, or a
    /// directory: every `*.toml` in it except `Cargo.toml`, in name order.
    file: PathBuf,
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (inclusive), e.g. `1..200`.
    #[arg(long, value_parser = parse_seed_range)]
    seeds: Option<RangeInclusive<u64>>,
    /// Plant a known bug to see the checker catch it: ack-before-sync,
    /// cursor-before-delivery, truncate-at-first-bad-crc, skip-segment-sync-dir.
    #[arg(long, value_parser = parse_planted_bug, default_value = "none")]
    planted_bug: PlantedBug,
    /// Write the resilience report (report.md, report.html, run.json,
    /// charts/) of the run into this directory (one seed; for a directory
    /// of scenarios, one subdirectory per scenario).
    #[arg(long, conflicts_with = "seeds")]
    report: Option<PathBuf>,
}

fn parse_seed_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not A..B"))?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let a: u64 = a.trim().parse().map_err(|_| format!("`{a}` is not a seed"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("`{b}` is not a seed"))?;
    if a > b {
        return Err(format!("empty range {a}..{b}"));
    }
    if b - a >= 1_000_000 {
        return Err("at most 1000000 seeds at once".into());
    }
    Ok(a..=b)
}

/// Parses a `--planted-bug` value.
pub fn parse_planted_bug(text: &str) -> Result<PlantedBug, String> {
    PlantedBug::parse(text).ok_or_else(|| {
        let names: Vec<_> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug `{text}`; one of: none, {}", names.join(", "))
    })
}

fn reproduce_command(args: &RunArgs, file: &std::path::Path, seed: u64) -> String {
    let mut command = format!("soilstream sim run {} --seed {seed}", file.display());
    if args.planted_bug != PlantedBug::None {
        command.push_str(&format!(" --planted-bug {}", args.planted_bug.name()));
    }
    command
}

/// Runs `scenario` in the simulator with a progress display on stderr.
pub fn run_with_progress(scenario: &Scenario, seed: u64, planted: PlantedBug) -> RunResult {
    let options = RunOptions { seed, planted };
    with_progress(scenario, |progress| {
        run_scenario_with_progress(scenario, options, progress)
    })
}

/// Calls `run` with a progress display on stderr fed by the progress it
/// reports: a bar on a terminal, a plain line every tenth of the scripted
/// time otherwise.
pub fn with_progress<T>(scenario: &Scenario, run: impl FnOnce(&mut dyn FnMut(RunProgress)) -> T) -> T {
    use std::io::IsTerminal;
    let planned_s = (scenario.duration_s).max(1);
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(planned_s),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} scenario s {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let result = run(&mut |p| {
            let at_s = p.simulated_ms / 1_000;
            if at_s > bar.length().unwrap_or(0) {
                bar.set_length(at_s);
            }
            bar.set_position(at_s);
            bar.set_message(p.phase.name());
        });
        bar.finish_and_clear();
        result
    } else {
        let mut next_tenth = 1;
        let mut last_phase = None;
        run(&mut |p| {
            let tenth = p.simulated_ms * 10 / (planned_s * 1_000);
            if tenth >= next_tenth || last_phase != Some(p.phase) {
                eprintln!(
                    "progress: {:.1} of {:.1} scenario h ({})",
                    p.simulated_ms as f64 / 3_600_000.0,
                    planned_s as f64 / 3_600.0,
                    p.phase.name()
                );
                next_tenth = tenth + 1;
                last_phase = Some(p.phase);
            }
        })
    }
}

/// Builds the report of a simulated run and writes it into `dir`.
pub fn write_run_report(
    scenario: &Scenario,
    result: &RunResult,
    command: &str,
    dir: &std::path::Path,
) -> anyhow::Result<soilstream_reports::Report> {
    write_report_of(
        scenario,
        result,
        soilstream_reports::RunContext {
            world: soilstream_reports::WorldKind::Sim,
            command: command.to_owned(),
            wall_clock: None,
        },
        dir,
    )
}

/// Builds the report of a run of any world and writes it into `dir`.
pub fn write_report_of(
    scenario: &Scenario,
    result: &RunResult,
    context: soilstream_reports::RunContext,
    dir: &std::path::Path,
) -> anyhow::Result<soilstream_reports::Report> {
    let report = soilstream_reports::build_report(scenario, result, &context);
    soilstream_reports::write_report(&report, dir)?;
    Ok(report)
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        SimCommand::Run(args) => run_files(&args),
    }
}

/// The scenario files `path` names: itself, or the scenarios in a directory.
fn scenario_files(path: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let file = entry?.path();
        if file.extension().is_some_and(|x| x == "toml") && !file.ends_with("Cargo.toml") {
            files.push(file);
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no scenario (*.toml) in {}", path.display());
    Ok(files)
}

fn run_files(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let files = scenario_files(&args.file)?;
    let mut failed = Vec::new();
    for file in &files {
        if files.len() > 1 {
            println!("== {}", file.display());
        }
        if run_scenarios(args, file, files.len() > 1)? != ExitCode::SUCCESS {
            failed.push(file.display().to_string());
        }
    }
    if files.len() > 1 {
        println!(
            "{} of {} scenario file(s) passed{}",
            files.len() - failed.len(),
            files.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failing: {}", failed.join(", "))
            }
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn one_line(result: &RunResult) -> String {
    let t = &result.check.tally;
    format!(
        "seed {:>6}: {} sampled={} durable={} delivered={} lost_before_durable={} duplicates={} drain={} digest={:016x}",
        result.seed,
        if result.passed() { "PASS" } else { "FAIL" },
        t.sampled,
        t.durable,
        t.delivered_unique,
        t.lost_before_durable,
        t.duplicates,
        result
            .drain_ms
            .map_or("never".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        result.digest,
    )
}

/// Runs one scenario file over the seeds; `one_of_many` puts its report in a
/// subdirectory named after the scenario.
fn run_scenarios(args: &RunArgs, file: &std::path::Path, one_of_many: bool) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(file).with_context(|| "loading the scenario")?;
    let seeds = match (&args.seed, &args.seeds) {
        (Some(seed), None) => *seed..=*seed,
        (None, Some(range)) => range.clone(),
        (None, None) => 1..=1,
        (Some(_), Some(_)) => unreachable!("clap rejects --seed with --seeds"),
    };
    let single = seeds.start() == seeds.end();
    let mut stdout = std::io::stdout().lock();
    let mut failed = Vec::new();
    let mut simulated_ms = 0u64;
    let mut wall_ms = 0u64;
    for seed in seeds.clone() {
        let result = run_scenario(
            &scenario,
            RunOptions {
                seed,
                planted: args.planted_bug,
            },
        );
        simulated_ms += result.simulated_ms;
        wall_ms += result.wall_ms;
        if let Some(dir) = &args.report {
            let dir = if one_of_many {
                dir.join(&scenario.name)
            } else {
                dir.clone()
            };
            let mut command = reproduce_command(args, file, seed);
            command.push_str(&format!(" --report {}", dir.display()));
            let report = write_run_report(&scenario, &result, &command, &dir)?;
            eprintln!(
                "report: {} ({}; open {} in a browser)",
                dir.join("report.md").display(),
                report.verdict.name(),
                dir.join("report.html").display()
            );
        }
        if single {
            write!(stdout, "{}", result.summary())?;
        } else {
            writeln!(stdout, "{}", one_line(&result))?;
        }
        eprintln!(
            "timing: seed {seed}: {:.1} simulated h in {:.2} wall s ({:.0} simulated s per wall s)",
            result.simulated_ms as f64 / 3_600_000.0,
            result.wall_ms as f64 / 1000.0,
            result.speed()
        );
        if !result.passed() {
            if !single {
                write!(stdout, "{}", result.summary())?;
            }
            failed.push(seed);
        }
    }
    let runs = seeds.end() - seeds.start() + 1;
    if !single {
        writeln!(
            stdout,
            "{} of {runs} run(s) passed for scenario {}",
            runs - failed.len() as u64,
            scenario.name
        )?;
    }
    eprintln!(
        "timing: total {:.1} simulated h in {:.1} wall s",
        simulated_ms as f64 / 3_600_000.0,
        wall_ms as f64 / 1000.0
    );
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(stdout, "failing seed(s): {failed:?}; reproduce with:")?;
    for seed in failed.iter().take(10) {
        writeln!(stdout, "  {}", reproduce_command(args, file, *seed))?;
    }
    Ok(ExitCode::FAILURE)
}
