//! The `soilstream` command line.
//!
//! Each subcommand lives in its own module with a clap `Args` struct and a
//! `run` function; this file only dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// soilstream: fault-tolerant ingestion of field soil-sensor readings into Kafka.
#[derive(Debug, Parser)]
#[command(name = "soilstream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

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
    let result: anyhow::Result<ExitCode> = match cli.command {};
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// WIRE: add `Backfill(backfill_cmd::Args)` to `Command` and dispatch it with
// `backfill_cmd::run` on a current-thread runtime; then drop the `allow`.
#[allow(dead_code)]
mod backfill_cmd;
