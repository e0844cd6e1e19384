//! Simulator speed on the capstone-sized world (issue 3, item 8): 5 gateways
//! x 20 probes sampling every minute for 48 simulated hours, a 24 h power
//! outage on one gateway and a 2 h network outage on another (plus the rest
//! of `scenarios/storm-mix.toml`). Target: under 30 s of wall time on
//! a 2-core machine. Then the capstone itself (`scenarios/capstone.toml`,
//! with the qaqc, archive and object store hosts and an SD-card backfill,
//! what `soilstream capstone` runs): target well under a minute.
//!
//! A bench binary that prints ratios (criterion's statistics add nothing for
//! a 10 s run): `cargo bench -p soilstream-benches --bench sim_speed`.
//! `SIM_SPEED_SEEDS` (default 3) sets how many seeds are run.

use soilstream_benches::thousands;
use soilstream_scenarios::runner::{RunOptions, run_scenario};
use soilstream_scenarios::scenario::Scenario;
use soilstream_scenarios::world::PlantedBug;
use std::path::Path;

/// The target for the capstone world, wall seconds.
const TARGET_WALL_S: f64 = 30.0;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: run the measurement in both cases, quickly when tested.
    let seeds: u64 = std::env::var("SIM_SPEED_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for (file, target_wall_s) in [
        ("storm-mix.toml", TARGET_WALL_S),
        ("capstone.toml", CAPSTONE_TARGET_WALL_S),
    ] {
        measure(file, seeds, target_wall_s);
    }
}

/// The capstone's target, wall seconds ("well under a minute").
const CAPSTONE_TARGET_WALL_S: f64 = 30.0;

fn measure(file: &str, seeds: u64, target_wall_s: f64) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = &scenario.topology;
    println!(
        "world `{}`: {} gateways x {} probes every {} s, {:.0} simulated h, tick {} ms",
        scenario.name,
        t.gateways,
        t.sensors_per_gateway,
        t.sample_interval_ms / 1000,
        scenario.duration_s as f64 / 3600.0,
        scenario.tick_ms
    );
    let mut worst_wall_s: f64 = 0.0;
    for seed in 1..=seeds {
        let result = run_scenario(
            &scenario,
            RunOptions {
                seed,
                planted: PlantedBug::None,
            },
        );
        let wall_s = result.wall_ms as f64 / 1000.0;
        worst_wall_s = worst_wall_s.max(wall_s);
        println!(
            "seed {seed}: {} in {wall_s:.2} wall s = {} simulated s per wall s; {} readings delivered; wall/target = {:.2}",
            if result.passed() { "PASS" } else { "FAIL" },
            thousands(result.speed()),
            thousands(result.check.tally.delivered_unique as f64),
            wall_s / target_wall_s
        );
        assert!(result.passed(), "{}", result.summary());
    }
    println!(
        "worst: {worst_wall_s:.2} wall s against a {target_wall_s:.0} s target ({})",
        if worst_wall_s <= target_wall_s {
            "met"
        } else {
            "MISSED"
        }
    );
}
