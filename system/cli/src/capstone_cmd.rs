//! `soilstream capstone`: the whole pipeline through the course's failure
//! demonstration in the simulator, checked, with the resilience report.

use crate::sim_cmd::{parse_planted_bug, run_with_progress, with_progress, write_report_of};
use anyhow::Context;
use soilstream_containers::pipeline::{RealWorldOptions, run_real_world};
use soilstream_reports::{RunContext, WallClock, WorldKind};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::path::PathBuf;
use std::process::ExitCode;

/// The seed of the default capstone run (and of the committed sample in
/// `reports/capstone/`).
pub const DEFAULT_SEED: u64 = 1;

/// Default time compression of a real run: an hour of the script takes a
/// minute.
pub const DEFAULT_COMPRESSION: u32 = 60;

/// Wall-clock ms between two samples of a real world.
const REAL_SAMPLE_INTERVAL_MS: u64 = 500;

/// Where the capstone runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// The deterministic simulator (no service needed; the same seed gives
    /// the same report, byte for byte).
    Sim,
    /// Real processes on loopback: Tansu behind the fault proxy, the
    /// registry, the gateways, qaqc, the archive and the backfill as
    /// `soilstream` processes (needs `tansu` on PATH or `$SOILSTREAM_TANSU`).
    Real,
}

/// Run the capstone: four gateways, the broker, the registry, qaqc, the
/// archive and an SD-card backfill through the demonstration (steady flow;
/// the broker stops and the gateways spool; it returns and the history goes
/// first; a 24 h SD-card log is backfilled behind live data; the system
/// drains), check every invariant and write the resilience report.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The seed every random choice derives from (the same seed gives
    /// byte-identical reports).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Directory for report.md, report.html, run.json and charts/.
    #[arg(long, default_value = "capstone-report")]
    out: PathBuf,
    /// Plant a known bug to see the report turn FAIL (e.g.
    /// cursor-before-delivery); `none` by default.
    #[arg(long, value_parser = parse_planted_bug, default_value = "none")]
    planted_bug: PlantedBug,
    /// A scenario file to play instead of the embedded capstone
    /// (`scenarios/capstone.toml`).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Where to run it.
    #[arg(long, value_enum, default_value_t = World::Sim)]
    world: World,
    /// Real world only: scenario seconds per wall-clock second (60: the
    /// capstone's four scripted hours take four minutes).
    #[arg(long, default_value_t = DEFAULT_COMPRESSION, value_parser = clap::value_parser!(u32).range(1..=3600))]
    compression: u32,
    /// Real world only: where the processes' directories and logs go
    /// [default: a temporary directory, removed after a PASS].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (scenario, origin) = match &args.scenario {
        Some(path) => (Scenario::load(path)?, Some(path.clone())),
        None => (Scenario::capstone(), None),
    };
    let mut command = format!("soilstream capstone --seed {}", args.seed);
    if let Some(path) = &origin {
        command.push_str(&format!(" --scenario {}", path.display()));
    }
    if args.planted_bug != PlantedBug::None {
        command.push_str(&format!(" --planted-bug {}", args.planted_bug.name()));
    }
    println!(
        "capstone: {} (seed {}), {} gateways x {} probes, broker, registry, {} qaqc, {} archive, {} SD-card backfill(s)",
        scenario.name,
        args.seed,
        scenario.topology.gateways,
        scenario.topology.sensors_per_gateway,
        scenario.qaqc.instances,
        scenario.archive.instances,
        scenario.backfills.len()
    );
    let (result, context, scratch) = match args.world {
        World::Sim => (
            run_with_progress(&scenario, args.seed, args.planted_bug),
            RunContext {
                world: WorldKind::Sim,
                command,
                wall_clock: None,
            },
            None,
        ),
        World::Real => {
            command.push_str(&format!(" --world real --compression {}", args.compression));
            let (work_dir, scratch) = match &args.work_dir {
                Some(dir) => (dir.clone(), None),
                None => {
                    let dir = tempfile::Builder::new()
                        .prefix("soilstream-capstone-")
                        .tempdir()
                        .context("creating a work directory")?;
                    (dir.path().to_owned(), Some(dir))
                }
            };
            let options = RealWorldOptions {
                program: std::env::current_exe().context("finding the soilstream binary")?,
                work_dir,
                compression: args.compression,
                seed: args.seed,
                planted: args.planted_bug,
                sample_interval_ms: REAL_SAMPLE_INTERVAL_MS,
            };
            println!(
                "real world: {}x compressed (about {} s of wall clock), processes in {}",
                args.compression,
                scenario.duration_s / u64::from(args.compression),
                options.work_dir.display()
            );
            let run = with_progress(&scenario, |progress| {
                run_real_world(&scenario, &options, progress)
            })?;
            let context = RunContext {
                world: WorldKind::Real,
                command,
                wall_clock: Some(WallClock {
                    started_at: jiff::Timestamp::from_millisecond(run.started_at_ms)
                        .map_or_else(|_| format!("{} ms", run.started_at_ms), |t| t.to_string()),
                    elapsed_ms: run.result.wall_ms,
                    time_compression: run.compression,
                    work_dir: run.work_dir.display().to_string(),
                }),
            };
            (run.result, context, scratch)
        }
    };
    let report = write_report_of(&scenario, &result, context, &args.out)?;
    print!("{}", result.summary());
    println!("verdict: {}", report.verdict.name());
    for reason in report.verdict_reasons.iter().take(5) {
        println!("  - {reason}");
    }
    println!(
        "report: {} (open {} in a browser)",
        args.out.join("report.md").display(),
        args.out.join("report.html").display()
    );
    let passed = report.verdict == soilstream_reports::Verdict::Pass;
    if let Some(scratch) = scratch
        && !passed
    {
        // Keep the processes' logs of a run that did not pass.
        println!("processes' logs kept in {}", scratch.keep().display());
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
