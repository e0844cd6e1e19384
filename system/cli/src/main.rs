//! The `soilstream` command line.
//!
//! Each subcommand lives in its own module with a clap `Args` struct and a
//! `run` function; this file only dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod registry_cmd;

/// soilstream: fault-tolerant ingestion of field soil-sensor readings into Kafka.
#[derive(Debug, Parser)]
#[command(name = "soilstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The Confluent-compatible Schema Registry service.
    Registry(registry_cmd::Args),
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
    // One current-thread runtime for every subcommand: the seams' futures
    // are not `Send`, and the simulator runs the same code single-threaded.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async move {
        match cli.command {
            Command::Registry(args) => registry_cmd::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
