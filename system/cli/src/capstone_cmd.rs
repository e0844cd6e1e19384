//! `soilstream capstone`: the whole pipeline through the course's failure
//! demonstration in the simulator, checked, with the resilience report.

use crate::sim_cmd::{parse_planted_bug, run_with_progress, write_run_report};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::path::PathBuf;
use std::process::ExitCode;

/// The seed of the default capstone run (and of the committed sample in
/// `reports/capstone/`).
pub const DEFAULT_SEED: u64 = 1;

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
        "capstone: {} (seed {}), {} gateways x {} probes, broker, registry, qaqc, archive, {} SD-card backfill(s)",
        scenario.name,
        args.seed,
        scenario.topology.gateways,
        scenario.topology.sensors_per_gateway,
        scenario.backfills.len()
    );
    let result = run_with_progress(&scenario, args.seed, args.planted_bug);
    let report = write_run_report(&scenario, &result, &command, &args.out)?;
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
    Ok(if report.verdict == soilstream_reports::Verdict::Pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
