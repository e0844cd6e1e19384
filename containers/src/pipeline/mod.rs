//! The real world's scenario runner: a scenario (the capstone, or any
//! scenario whose faults real processes can make) played against real
//! processes on loopback: Tansu behind the fault proxy, `soilstream
//! registry serve`, the gateways, qaqc and the archive as `soilstream`
//! processes ([`component`]), SD-card backfills as `soilstream backfill`
//! runs. Then the same judge as the simulator's
//! ([`soilstream_scenarios::judge`]) and the same observations
//! ([`soilstream_scenarios::observe`]), so the same report code serves both
//! worlds.
//!
//! # Time
//!
//! A scenario scripts hours; the real world plays it `compression` times
//! faster ([`RealWorldOptions::compression`]): a fault at 1:00:00 of the
//! script happens after a minute at 60, sampling every minute becomes every
//! second, windows of five minutes become windows of five seconds, and
//! every time the report shows is on the script's axis
//! ([`soilstream_scenarios::observe::TimeAxis`]). Two things keep their real
//! length: what a real broker and real clients need (group sessions of
//! seconds, client timeouts), and the calendar before the run (an SD card's
//! day-before rows are stamped with their true dates, so the archive files
//! them under yesterday). Where the calendar puts everything on fewer dates
//! than the scenario expects (a run started just after midnight UTC...), the
//! archive is expected to hold the dates there are.
//!
//! # What cannot be played
//!
//! Faults on one gateway's link (every client reaches the broker through
//! the one address the broker advertises), disk faults and clock faults (the
//! processes use the host's file system and clock), broker-side ack loss:
//! [`plan::Plan::new`] refuses a scenario that needs them and says why.
//! Delivery reports are not observable from outside a gateway: a reading's
//! first delivery is timed by the sample of the broker's high watermark that
//! first held it ([`soilstream_scenarios::ledger::Ledger::first_seen_in_topic`]).

pub mod component;
pub mod kafka;
pub mod metrics;
pub mod plan;
mod run;

pub use run::{RealRun, RealWorldError, RealWorldOptions, run_real_world};

/// `text` cut to about `max_chars` characters.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}
