//! The `soilstream` command line.
//!
//! Each subcommand lives in its own module with a clap `Args` struct and a
//! `run` function; this file only dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod archive_cmd;
mod args;
mod backfill_cmd;
mod capstone_cmd;
mod consume_cmd;
mod gateway_cmd;
mod qaqc_cmd;
mod registry_cmd;
mod serve;
mod sim_cmd;
mod spool_cmd;

/// soilstream: fault-tolerant ingestion of field soil-sensor readings into Kafka.
#[derive(Debug, Parser)]
#[command(name = "soilstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: run the whole pipeline through the course's failure
    /// demonstration in the simulator (nothing to install), check every
    /// invariant and write the resilience report (report.md, report.html,
    /// run.json, charts/).
    Capstone(capstone_cmd::Args),
    /// Run a field gateway: sample probes into the durable spool and forward
    /// it to the raw topic (runs on embedded defaults without --config).
    Gateway(gateway_cmd::Args),
    /// Print the readings of a topic, decoded, with partition, offset and times.
    Consume(consume_cmd::Args),
    /// Run the QA/QC stream processor: raw readings into clean, quarantine,
    /// flag revisions, window aggregates and alerts (embedded defaults
    /// without --config).
    Qaqc(qaqc_cmd::Args),
    /// Archive clean readings into Parquet files by event date (local
    /// directory or S3), exactly once; `archive verify`, `archive replay`.
    Archive(archive_cmd::Args),
    /// Ingest an SD-card log (CSV) into the raw topic with the original event
    /// times; resumable, rate-limited.
    Backfill(backfill_cmd::Args),
    /// Inspect or verify a spool directory (read-only; works on damaged spools).
    Spool(spool_cmd::Args),
    /// Run the Confluent-compatible schema registry service.
    Registry(registry_cmd::Args),
    /// Play scenarios in the deterministic simulator and check the invariants.
    Sim(sim_cmd::Args),
}

/// Runs an async command on a current-thread tokio runtime.
fn block_on(
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
}

/// Logs go to stderr, filtered by `SOILSTREAM_LOG` (e.g. `debug`,
/// `soilstream::spool=trace`), else at `default_level`.
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOILSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // In a simulation run the components' logs are events of the simulated
    // world (thousands of them): the summary says what matters, so they are
    // off unless SOILSTREAM_LOG asks for them.
    init_tracing(match cli.command {
        // The real world's own clients see the broker go down on purpose.
        Command::Sim(_) | Command::Capstone(_) => {
            "warn,soilstream=off,soilstream_sim=off,rdkafka=off,librdkafka=off"
        }
        _ => "info",
    });
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Gateway(args) => block_on(gateway_cmd::run(args)),
        Command::Qaqc(args) => block_on(qaqc_cmd::run(args)),
        Command::Consume(args) => block_on(consume_cmd::run(args)),
        Command::Archive(args) => block_on(archive_cmd::run(args)),
        Command::Backfill(args) => block_on(backfill_cmd::run(args)),
        Command::Spool(args) => spool_cmd::run(args),
        Command::Registry(args) => block_on(registry_cmd::run(args)),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Capstone(args) => capstone_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
