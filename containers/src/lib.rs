//! The real world for soilstream's test suites: a Kafka-protocol broker
//! (Tansu 0.6.0) as a process, a TCP fault proxy, and component processes
//! that can be killed, paused and restarted; and, where a Docker engine is
//! present, the broker, the gateway and qaqc as containers ([`docker`]).
//!
//! | fixture | what it does |
//! |---|---|
//! | [`TansuBroker`] | starts `tansu broker` with the SQLite engine in a temporary directory on a free loopback port, waits until it answers metadata requests, creates topics; stop (SIGTERM, then SIGKILL), kill -9, restart on the same data and port, pause/resume (SIGSTOP/SIGCONT); optionally behind a [`FaultProxy`] that the broker advertises |
//! | [`FaultProxy`] | loopback TCP proxy: pass, cut (reset all connections, refuse new ones), blackhole (accept, swallow, never answer), per-direction latency, restore |
//! | [`ChildProcess`] | any binary (e.g. the `soilstream` gateway) with its output in a log file: kill -9, SIGTERM with a deadline, wait, pause/resume, restart |
//!
//! [`pipeline`] is the real world's scenario runner (`soilstream capstone
//! --world real`): a scenario played against the broker, the registry and
//! every component as `soilstream` processes, judged by the simulator's
//! judge, observed for the same report.
//!
//! Everything here is real-world only: threads, wall-clock time and real
//! sockets are fine. The API is synchronous so it can be used from plain
//! `#[test]`s and from `#[tokio::test]`s alike (the proxy runs its own runtime
//! on its own thread; broker admin requests run on a helper thread).
//!
//! The container world ([`docker`], always compiled, used only where an
//! engine answers):
//!
//! | fixture | what it does |
//! |---|---|
//! | [`DockerAvailability`] | whether a Docker engine answers (`DOCKER_HOST` or the default socket); the container suites skip with [`docker::SKIP_MESSAGE`] when none does |
//! | [`build_tansu_image`], [`build_soilstream_image`] | `FROM scratch` images from local binaries and the libraries `ldd` lists, tagged by content, built once, never pulled |
//! | [`DockerNetwork`] | a user-defined bridge network per test; removes every container and volume of its session when dropped |
//! | [`TansuContainer`] | Tansu in a container (testcontainers), SQLite on a named volume, Kafka port published on the network's gateway address and advertised as such; kill (SIGKILL), stop, restart on the same volume, pause/unpause, disconnect/reconnect |
//! | [`GatewayContainer`] | the real `soilstream gateway` in a container, configuration, spool and ledger on a bind mount, `/metrics` on a loopback port; kill, stop, restart, pause, disconnect/reconnect (a partition) |
//! | [`QaqcContainer`] | the real `soilstream qaqc` in a container from the same image, configuration and state directory on a bind mount, `/metrics` on a loopback port; kill, stop, restart, disconnect/reconnect |

pub mod docker;
mod error;
pub mod pipeline;
pub(crate) mod process;
mod proxy;
mod tansu;
mod wait;

pub use docker::{
    DockerAvailability, DockerEngine, DockerError, DockerImage, DockerNetwork, GatewayContainer,
    GatewayContainerConfig, QaqcContainer, QaqcContainerConfig, TansuContainer, TansuContainerConfig,
    build_soilstream_image, build_tansu_image,
};
pub use error::FixtureError;
pub use process::{ChildProcess, ChildSpec, START_BANNER, Termination};
pub use proxy::{FaultProxy, ProxyMode, ProxyStats};
pub use tansu::{TANSU_ENV, TANSU_INSTALL_HINT, TansuBroker, TansuConfig, TansuStorage, find_tansu};
pub use wait::{free_loopback_port, wait_until};
