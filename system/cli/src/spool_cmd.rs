//! `soilstream spool inspect|verify DIR`: read-only tools for a gateway's
//! spool directory. Both work on a damaged spool and never modify it.

use clap::{Args as ClapArgs, Subcommand};
use soilstream::disk::StdDisk;
use soilstream::spool::{self, Verdict};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code of `verify` when only power-cut traces were found.
pub const EXIT_CRASH_DEBRIS: u8 = 2;
/// Exit code of `verify` when synced data is damaged or state was lost.
pub const EXIT_DAMAGED: u8 = 3;

/// Inspect or verify a spool directory (read-only).
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: SpoolCommand,
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Segments, records, bytes, cursor, oldest and newest event time,
    /// per-sensor counts and damage.
    Inspect {
        /// The spool directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Full CRC scan with a damage report. Exit status: 0 clean, 2 only the
    /// traces a power cut leaves (torn tail), 3 damage to synced data or lost
    /// state, 1 when the directory cannot be read.
    Verify {
        /// The spool directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `soilstream spool ...`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        SpoolCommand::Inspect { dir, json } => {
            let report = spool::inspect(&StdDisk, &dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        SpoolCommand::Verify { dir, json } => {
            let report = spool::verify(&StdDisk, &dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            let (code, advice) = match report.verdict {
                Verdict::Clean => (ExitCode::SUCCESS, None),
                Verdict::CrashDebrisOnly => (
                    ExitCode::from(EXIT_CRASH_DEBRIS),
                    Some(
                        "the spool holds only what an interrupted write leaves (a torn tail, unsynced \
                         bytes, a torn state copy). Nothing acknowledged is affected: the gateway skips \
                         these bytes when it opens the spool and deletes them once the records around \
                         them are delivered. No action is needed.",
                    ),
                ),
                Verdict::Damaged => (
                    ExitCode::from(EXIT_DAMAGED),
                    Some(
                        "data that had been synced is damaged (or the cursor / sequence state was \
                         lost). Records in the damaged ranges will not be delivered; every intact \
                         record, including those after the damage, still will be when the gateway \
                         opens the spool. Keep a copy of this directory for analysis, and check or \
                         replace the storage: synced bytes should never change.",
                    ),
                ),
            };
            if let Some(advice) = advice {
                eprintln!("spool verify: {:?}: {advice}", report.verdict);
            }
            Ok(code)
        }
    }
}
