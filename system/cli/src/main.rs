//! The `soilstream` command line.
//!
//! Each subcommand lives in its own module with a clap `Args` struct and a
//! `run` function; this file only dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod consume_cmd;

/// soilstream: fault-tolerant ingestion of field soil-sensor readings into Kafka.
#[derive(Debug, Parser)]
#[command(name = "soilstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the readings of a topic, decoded, with partition, offset and times.
    Consume(consume_cmd::Args),
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOILSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Consume(args) => block_on(consume_cmd::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
