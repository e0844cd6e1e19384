//! The real world for soilstream's test suites: a Kafka-protocol broker
//! (Tansu 0.6.0) as a process, a TCP fault proxy, and component processes
//! that can be killed, paused and restarted.
//!
//! | fixture | what it does |
//! |---|---|
//! | [`TansuBroker`] | starts `tansu broker` with the SQLite engine in a temporary directory on a free loopback port, waits until it answers metadata requests, creates topics; stop (SIGTERM, then SIGKILL), kill -9, restart on the same data and port, pause/resume (SIGSTOP/SIGCONT); optionally behind a [`FaultProxy`] that the broker advertises |
//! | [`FaultProxy`] | loopback TCP proxy: pass, cut (reset all connections, refuse new ones), blackhole (accept, swallow, never answer), per-direction latency, restore |
//! | [`ChildProcess`] | any binary (e.g. the `soilstream` gateway) with its output in a log file: kill -9, SIGTERM with a deadline, wait, pause/resume, restart |
//!
//! Everything here is real-world only: threads, wall-clock time and real
//! sockets are fine. The API is synchronous so it can be used from plain
//! `#[test]`s and from `#[tokio::test]`s alike (the proxy runs its own runtime
//! on its own thread; broker admin requests run on a helper thread).
//!
//! Where a Docker engine is present, the same suites can later run the broker
//! and the components as containers (testcontainers, network disconnect for
//! cuts); this crate does not depend on Docker.

mod error;
mod process;
mod proxy;
mod tansu;
mod wait;

pub use error::FixtureError;
pub use process::{ChildProcess, ChildSpec, Termination};
pub use proxy::{FaultProxy, ProxyMode, ProxyStats};
pub use tansu::{TANSU_ENV, TANSU_INSTALL_HINT, TansuBroker, TansuConfig, find_tansu};
pub use wait::{free_loopback_port, wait_until};
