//! The real world in containers: where a Docker engine is present, the Tansu
//! broker, the `soilstream` gateway and the `soilstream qaqc` processor run
//! as containers (testcontainers), and a test cuts them off the network,
//! pauses them and kills them.
//!
//! Compiled always (no cargo feature); every entry point first asks
//! [`DockerAvailability::detect`] whether an engine answers, and the suites
//! skip with [`SKIP_MESSAGE`] when none does (set
//! [`REQUIRE_DOCKER_ENV`]`=1` to make that a failure instead). An engine
//! that answers with an error ([`DockerAvailability::Unusable`]) fails them:
//! only its absence is a reason to skip.
//!
//! # Images without a registry
//!
//! Nothing is ever pulled. [`build_tansu_image`] and [`build_soilstream_image`]
//! build `FROM scratch` images from local binaries: the binary plus the shared
//! libraries `ldd` lists (the dynamic loader, libc, libm, libgcc_s, OpenSSL,
//! zlib, ...), copied to the paths the loader expects, and an empty `/tmp`.
//! The build context is a tar archive made here and sent to the engine's
//! classic builder (no BuildKit, no base image). The tag is content-addressed
//! (`soilstream-tansu:<first 16 hex digits of a SHA-256 over the recipe and
//! every file>`), so a build is skipped when the tag exists and a rebuilt
//! binary gets a new tag. testcontainers 0.28 has no pull policy and pulls
//! when creating a container fails with "no such image", so the fixtures
//! check that the image exists right before they create a container and fail
//! with [`DockerError::ImageMissing`] otherwise.
//!
//! # Networking
//!
//! Tansu has one listener and advertises one address, which every client
//! then uses: the tests on the host (producers, the checker's consumer) and
//! the gateway in its container. Each test gets its own user-defined bridge
//! network ([`DockerNetwork`]); the broker publishes its Kafka port on that
//! network's gateway address (the host side of the bridge, e.g.
//! `172.18.0.1:PORT`) and advertises exactly that address:
//!
//! * from the host it is a local address: the published port forwards it to
//!   the broker;
//! * from a container on the network it is the bridge's gateway: the same
//!   published port forwards it (hairpin) to the broker;
//! * a container disconnected from the network (a partition) loses its only
//!   interface and with it every route to the broker, while the host and the
//!   other containers keep theirs;
//! * the host port is fixed when the container is created, so it survives a
//!   kill and restart and a disconnect and reconnect of the broker.
//!
//! The alternatives fail one requirement each: advertising the container
//! name works only for clients inside the network (the host cannot resolve
//! it); advertising a loopback port works only for the host; sharing the
//! broker's network namespace with the gateway (`--network container:...`)
//! leaves nothing to disconnect between them, and the gateway loses its
//! network when the broker is killed; advertising the broker's own address on
//! the bridge changes when it is reconnected or restarted. No traffic leaves
//! the host: the broker's port is published on the test network's gateway
//! address only, the gateway's metrics port on 127.0.0.1 only.
//!
//! This needs the engine to run on this host (a Linux engine whose bridge
//! addresses are local; the gateway's files are bind mounts), which
//! [`DockerNetwork::create`] checks.
//!
//! # Clean-up
//!
//! Every container, volume and network carries the label
//! `org.soilstream.session=<session>`. Each fixture removes what it created
//! when dropped (also while a failing test unwinds), and dropping the last
//! handle of a [`DockerNetwork`] force-removes whatever is left with its
//! session label (a container whose start failed half way, say) and then the
//! network. A test process killed outright (SIGKILL, Ctrl-C) runs no
//! destructor; its network carries its pid and host name
//! (`org.soilstream.pid`, `org.soilstream.host`), and the next
//! [`DockerNetwork::create`] on the same host removes the sessions of
//! processes that no longer exist. Images are kept: they are the cache.
//! Remove them with
//! `docker image rm $(docker image ls -q --filter label=org.soilstream.fixture=docker)`.
//!
//! # Engine versions
//!
//! Checked with Docker Engine 20.10 (API 1.41, fuse-overlayfs) and
//! testcontainers 0.28 over bollard 0.21.1. bollard 0.21.1 sends its
//! requests without an API version in the path, so the engine answers in its
//! own (newest) version; an engine that refused the client would be reported
//! [`DockerAvailability::Unusable`], not skipped. Everything used here (user
//! networks, connect/disconnect, published ports on one address, named
//! volumes, the classic builder, the cgroup freezer) exists in API 1.41.
//!
//! # Threads
//!
//! The API is synchronous like the rest of this crate: Docker requests run on
//! one process-wide tokio runtime and the caller blocks on their result, so
//! the fixtures work from plain `#[test]`s and inside other runtimes.

mod gateway;
mod handle;
mod image;
mod network;
mod qaqc;
mod tansu;

pub use gateway::{GatewayContainer, GatewayContainerConfig, GatewayExit};
pub use image::{
    DockerImage, SOILSTREAM_IMAGE_REPOSITORY, TANSU_IMAGE_REPOSITORY, build_soilstream_image,
    build_tansu_image, shared_libraries,
};
pub use network::DockerNetwork;
pub use qaqc::{QaqcContainer, QaqcContainerConfig, QaqcExit};
pub use tansu::{TansuContainer, TansuContainerConfig};

use crate::FixtureError;
use futures::StreamExt;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use testcontainers::bollard::Docker;
use testcontainers::bollard::container::LogOutput;
use testcontainers::bollard::query_parameters::{InspectContainerOptions, LogsOptionsBuilder};

/// What the container suites print when they skip because no engine answers.
pub const SKIP_MESSAGE: &str =
    "Docker engine not reachable: skipping the container suite; the process suite covers the same invariants";

/// Set to `1` to make an unreachable Docker engine fail the container suites
/// instead of skipping them (for machines that must run them).
pub const REQUIRE_DOCKER_ENV: &str = "SOILSTREAM_REQUIRE_DOCKER";

/// Label carried by every image, container, volume and network made here.
pub const FIXTURE_LABEL: &str = "org.soilstream.fixture";

/// Label naming the [`DockerNetwork`] session a container, volume or network
/// belongs to.
pub const SESSION_LABEL: &str = "org.soilstream.session";

/// Label naming the process that created a session's network.
pub const PID_LABEL: &str = "org.soilstream.pid";

/// Label naming the host that process ran on.
pub const HOST_LABEL: &str = "org.soilstream.host";

/// How long detecting the engine may take (connect and `/_ping`), in ms.
const DETECT_TIMEOUT_MS: u64 = 5_000;

/// Interval between two checks of a container's state, in ms.
const STATE_POLL_INTERVAL_MS: u64 = 50;

/// Lines of a container's log included in error messages.
const LOG_TAIL_LINES: usize = 60;

/// Why a container fixture operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No Docker engine answers (the one case the suites skip).
    #[error("Docker engine not reachable at {host}: {reason}")]
    Unavailable {
        /// Where the engine was looked for (`DOCKER_HOST` or the default socket).
        host: String,
        /// What failed.
        reason: String,
    },
    /// An engine answers but refuses to work with this client.
    #[error("the Docker engine at {host} answers but cannot be used: {reason}")]
    Unusable {
        /// Where the engine answered.
        host: String,
        /// Its answer.
        reason: String,
    },
    /// A request to the engine failed.
    #[error("docker: {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The engine's (or the transport's) error.
        #[source]
        source: testcontainers::bollard::errors::Error,
    },
    /// testcontainers failed to create or manage a container.
    #[error("testcontainers: {what}: {source}")]
    Testcontainers {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: testcontainers::TestcontainersError,
    },
    /// The image to run is not in the engine; it is never pulled.
    #[error(
        "image {image} is not in the Docker engine and is never pulled: build it first (build_tansu_image / build_soilstream_image)"
    )]
    ImageMissing {
        /// `repository:tag`.
        image: String,
    },
    /// Building an image failed.
    #[error("building image {image}: {detail}")]
    Build {
        /// `repository:tag`.
        image: String,
        /// The builder's message.
        detail: String,
    },
    /// Finding the shared libraries of a binary failed.
    #[error("finding the shared libraries of {binary}: {detail}")]
    Libraries {
        /// The binary.
        binary: String,
        /// What went wrong.
        detail: String,
    },
    /// The engine answered something this crate cannot use.
    #[error("unexpected answer from the Docker engine: {0}")]
    Unexpected(String),
    /// A local I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A condition was not met in time.
    #[error("timed out after {timeout_ms} ms waiting for {what}{}", log_suffix(.log_tail))]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long, in ms.
        timeout_ms: u64,
        /// The end of the container's log, if any.
        log_tail: String,
    },
    /// A container exited while it was expected to run.
    #[error("container {container} exited ({status}){}", log_suffix(.log_tail))]
    Exited {
        /// The container's name.
        container: String,
        /// Its state and exit code.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A Kafka client or admin operation failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The operation does not fit the fixture's current state.
    #[error("{0}")]
    State(String),
    /// A process-world fixture failed (e.g. the `tansu` binary is missing).
    #[error(transparent)]
    Fixture(#[from] FixtureError),
}

fn log_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; log tail:\n{tail}")
    }
}

impl DockerError {
    pub(crate) fn api(what: impl Into<String>, source: testcontainers::bollard::errors::Error) -> Self {
        Self::Api {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Whether the engine answered `404 Not Found` (no such container, image,
/// network or volume).
pub(crate) fn is_not_found(error: &testcontainers::bollard::errors::Error) -> bool {
    matches!(
        error,
        testcontainers::bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// A Docker engine that answered: a cheap, cloneable handle.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    host: String,
    version: String,
    api_version: String,
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("host", &self.host)
            .field("version", &self.version)
            .field("api_version", &self.api_version)
            .finish()
    }
}

impl DockerEngine {
    /// Where the engine listens (`DOCKER_HOST` or the default socket).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The engine's version, e.g. `20.10.24`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The newest API version the engine speaks, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The bollard client (shared with testcontainers) for requests the
    /// fixtures do not wrap. Use it from the fixtures' runtime only.
    pub(crate) fn client(&self) -> Docker {
        self.docker.clone()
    }

    /// Whether the engine holds the image `reference` (`repository:tag`);
    /// never pulls.
    pub fn has_image(&self, reference: &str) -> Result<bool, DockerError> {
        image::image_exists(self, reference)
    }

    /// Names of the containers carrying `label=value` (running or not).
    pub fn containers_labelled(&self, label: &str, value: &str) -> Result<Vec<String>, DockerError> {
        let docker = self.client();
        let filter = format!("{label}={value}");
        block_on(async move {
            let filters = std::collections::HashMap::from([("label", vec![filter.as_str()])]);
            let options = testcontainers::bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            let containers = docker
                .list_containers(Some(options))
                .await
                .map_err(|e| DockerError::api("listing containers", e))?;
            Ok(containers
                .into_iter()
                .filter_map(|c| c.names.and_then(|names| names.into_iter().next()))
                .map(|name| name.trim_start_matches('/').to_string())
                .collect())
        })
    }

    /// Names of the volumes carrying `label=value`.
    pub fn volumes_labelled(&self, label: &str, value: &str) -> Result<Vec<String>, DockerError> {
        let docker = self.client();
        let filter = format!("{label}={value}");
        block_on(async move {
            let filters = std::collections::HashMap::from([("label", vec![filter.as_str()])]);
            let options = testcontainers::bollard::query_parameters::ListVolumesOptionsBuilder::new()
                .filters(&filters)
                .build();
            let volumes = docker
                .list_volumes(Some(options))
                .await
                .map_err(|e| DockerError::api("listing volumes", e))?;
            Ok(volumes
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect())
        })
    }

    /// Names of the networks carrying `label=value`.
    pub fn networks_labelled(&self, label: &str, value: &str) -> Result<Vec<String>, DockerError> {
        let docker = self.client();
        let filter = format!("{label}={value}");
        block_on(async move {
            let filters = std::collections::HashMap::from([("label", vec![filter.as_str()])]);
            let options = testcontainers::bollard::query_parameters::ListNetworksOptionsBuilder::new()
                .filters(&filters)
                .build();
            let networks = docker
                .list_networks(Some(options))
                .await
                .map_err(|e| DockerError::api("listing networks", e))?;
            Ok(networks.into_iter().filter_map(|n| n.name).collect())
        })
    }
}

/// Whether a usable Docker engine answers on this machine.
#[derive(Debug, Clone)]
pub enum DockerAvailability {
    /// The engine answered `/_ping` and `/version`.
    Available(DockerEngine),
    /// No engine answered; why. The container suites skip.
    Unavailable {
        /// Where the engine was looked for.
        host: String,
        /// What failed (no socket, connection refused, no answer in time, ...).
        reason: String,
    },
    /// An engine answered, but with an error (it refuses this client's API
    /// version, say). Not a reason to skip: the suites fail.
    Unusable {
        /// Where the engine answered.
        host: String,
        /// Its answer.
        reason: String,
    },
}

impl DockerAvailability {
    /// Looks for the engine the way testcontainers does (`DOCKER_HOST`, else
    /// the default socket), once per process: connects, pings and asks for
    /// the version, within 5 s.
    pub fn detect() -> Self {
        static DETECTED: OnceLock<DockerAvailability> = OnceLock::new();
        DETECTED
            .get_or_init(|| {
                let host = std::env::var("DOCKER_HOST")
                    .ok()
                    .filter(|h| !h.trim().is_empty())
                    .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
                Self::detect_at(&host)
            })
            .clone()
    }

    /// Looks for an engine at `host` (`unix:///path`, `tcp://host:port`,
    /// `http://host:port`), without caching.
    pub fn detect_at(host: &str) -> Self {
        let owned_host = host.to_string();
        let probe = async move {
            let unavailable = |reason: String| Self::Unavailable {
                host: owned_host.clone(),
                reason,
            };
            // The engine answering with an error is not its absence.
            let failed = |request: &str, error: testcontainers::bollard::errors::Error| {
                let reason = format!("{request} failed: {error}");
                match error {
                    testcontainers::bollard::errors::Error::DockerResponseServerError { .. } => {
                        Self::Unusable {
                            host: owned_host.clone(),
                            reason,
                        }
                    }
                    _ => unavailable(reason),
                }
            };
            let docker = match Docker::connect_with_host(&owned_host) {
                Ok(docker) => docker,
                Err(error) => return unavailable(format!("cannot connect: {error}")),
            };
            let timeout = Duration::from_millis(DETECT_TIMEOUT_MS);
            match tokio::time::timeout(timeout, docker.ping()).await {
                Err(_) => return unavailable(format!("no answer to /_ping within {DETECT_TIMEOUT_MS} ms")),
                Ok(Err(error)) => return failed("/_ping", error),
                Ok(Ok(_)) => {}
            }
            let version = match tokio::time::timeout(timeout, docker.version()).await {
                Err(_) => return unavailable(format!("no answer to /version within {DETECT_TIMEOUT_MS} ms")),
                Ok(Err(error)) => return failed("/version", error),
                Ok(Ok(version)) => version,
            };
            Self::Available(DockerEngine {
                docker,
                host: owned_host.clone(),
                version: version.version.unwrap_or_else(|| "unknown".into()),
                api_version: version.api_version.unwrap_or_else(|| "unknown".into()),
            })
        };
        block_on(async move { Ok(probe.await) }).unwrap_or_else(|error| Self::Unavailable {
            host: host.to_string(),
            reason: error.to_string(),
        })
    }

    /// The engine, if one answered.
    pub fn engine(&self) -> Option<&DockerEngine> {
        match self {
            Self::Available(engine) => Some(engine),
            Self::Unavailable { .. } | Self::Unusable { .. } => None,
        }
    }

    /// For a container test named `test`: the engine; or, when none
    /// answers, prints [`SKIP_MESSAGE`] with the reason (past the test
    /// harness's output capture) and returns `None`
    /// (the test then returns), unless [`REQUIRE_DOCKER_ENV`] is `1`, which
    /// turns the absence into an error. An engine that answers with an
    /// error is an error, never a skip.
    pub fn engine_or_skip(&self, test: &str) -> Result<Option<DockerEngine>, DockerError> {
        match self {
            Self::Available(engine) => Ok(Some(engine.clone())),
            Self::Unusable { host, reason } => Err(DockerError::Unusable {
                host: host.clone(),
                reason: reason.clone(),
            }),
            Self::Unavailable { host, reason } => {
                if std::env::var(REQUIRE_DOCKER_ENV).is_ok_and(|v| v.trim() == "1") {
                    return Err(DockerError::Unavailable {
                        host: host.clone(),
                        reason: format!("{reason} ({REQUIRE_DOCKER_ENV}=1 requires an engine)"),
                    });
                }
                // Written to the process's stderr directly, not through
                // `eprintln!`, which the test harness captures: a skip must
                // show in a plain `cargo test` run.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{test}: {SKIP_MESSAGE} ({host}: {reason})"
                );
                Ok(None)
            }
        }
    }
}

/// The process-wide runtime Docker requests run on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, DockerError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("soilstream-docker")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| DockerError::State(format!("cannot build the Docker runtime: {e}")))
}

/// Runs `future` on the Docker runtime and blocks until it finishes. Works
/// from any thread, inside another runtime too (it then blocks that thread,
/// like every synchronous fixture here).
pub(crate) fn block_on<F, T>(future: F) -> Result<T, DockerError>
where
    F: Future<Output = Result<T, DockerError>> + Send + 'static,
    T: Send + 'static,
{
    let runtime = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| DockerError::State("a Docker request task panicked".into()))?
}

/// A unique name stem for one fixture session: process id, a counter and
/// the time, so parallel tests and processes never collide.
pub(crate) fn session_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "soilstream-{}-{}-{nanos:08x}",
        std::process::id(),
        SESSIONS.fetch_add(1, Ordering::Relaxed)
    )
}

/// The labels of everything a session creates: the fixture, the session,
/// and the process and host that own it (so that a later run can remove what
/// a killed test process left behind).
pub(crate) fn session_labels(session: &str) -> Vec<(String, String)> {
    let mut labels = vec![
        (FIXTURE_LABEL.to_string(), "docker".to_string()),
        (SESSION_LABEL.to_string(), session.to_string()),
        (PID_LABEL.to_string(), std::process::id().to_string()),
    ];
    if let Some(host) = host_name() {
        labels.push((HOST_LABEL.to_string(), host));
    }
    labels
}

/// This host's name, if known.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// A container started by testcontainers.
pub(crate) type Container = testcontainers::ContainerAsync<testcontainers::GenericImage>;

/// Attempts at starting a container when the host port picked for it is
/// taken by someone else in the meantime.
const PORT_ATTEMPTS: u32 = 3;

/// Starts the container `name` of `image` with testcontainers, its request
/// made by `request` for a host port from `pick_port`; when the engine
/// reports the port taken, removes the half-made container and tries again
/// with another port. Never pulls: the image must exist.
pub(crate) fn start_container(
    engine: &DockerEngine,
    name: &str,
    image: &DockerImage,
    pick_port: impl Fn() -> Result<u16, DockerError>,
    request: impl Fn(u16) -> testcontainers::ContainerRequest<testcontainers::GenericImage>,
) -> Result<(std::sync::Arc<Container>, u16), DockerError> {
    use testcontainers::runners::AsyncRunner;
    let mut attempt = 1;
    loop {
        // testcontainers pulls when creating fails with "no such image":
        // make sure that cannot happen.
        if !image::image_exists(engine, &image.reference())? {
            return Err(DockerError::ImageMissing {
                image: image.reference(),
            });
        }
        let port = pick_port()?;
        let container_request = request(port);
        let started = block_on(async move { Ok(container_request.start().await) })?;
        match started {
            Ok(container) => return Ok((std::sync::Arc::new(container), port)),
            Err(error) => {
                let text = error_chain(&error);
                // The container may exist, created but not started: remove
                // it (a failure here is logged; the start error is what
                // matters, and the network's clean-up sweeps leftovers).
                if let Err(removal) = remove_container_by_name(engine, name) {
                    tracing::warn!(container = name, error = %removal, "removing a container that did not start");
                }
                let port_taken =
                    text.contains("port is already allocated") || text.contains("address already in use");
                if port_taken && attempt < PORT_ATTEMPTS {
                    tracing::warn!(container = name, port, "host port taken; retrying with another");
                    attempt += 1;
                    continue;
                }
                return Err(DockerError::Testcontainers {
                    what: format!("starting container {name} from {image}"),
                    source: error,
                });
            }
        }
    }
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Force-removes a container (and its anonymous volumes) if it exists.
pub(crate) fn remove_container_by_name(engine: &DockerEngine, name: &str) -> Result<(), DockerError> {
    let docker = engine.client();
    let name = name.to_string();
    block_on(async move {
        let options = testcontainers::bollard::query_parameters::RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(DockerError::api(format!("removing container {name}"), error)),
        }
    })
}

/// Removes a fixture's container at the end of its life: inside the Docker
/// runtime (testcontainers' own drop needs one), with its anonymous volumes.
pub(crate) fn remove_container(engine: &DockerEngine, name: &str, container: std::sync::Arc<Container>) {
    let removed = block_on(async move {
        match std::sync::Arc::try_unwrap(container) {
            Ok(container) => container.rm().await.map_err(|e| DockerError::Testcontainers {
                what: "removing the container".into(),
                source: e,
            }),
            // Still shared (cannot happen: the fixtures never hand it out):
            // testcontainers removes it when the last handle goes.
            Err(shared) => {
                drop(shared);
                Ok(())
            }
        }
    });
    if let Err(error) = removed {
        tracing::warn!(container = name, %error, "removing the container; retrying by name");
        if let Err(error) = remove_container_by_name(engine, name) {
            tracing::warn!(container = name, %error, "removing the container by name");
        }
    }
}

/// A container's state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerStatus {
    pub running: bool,
    pub paused: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub status: String,
}

impl std::fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(code) = self.exit_code
            && !self.running
        {
            write!(f, ", exit code {code}")?;
        }
        if self.oom_killed {
            write!(f, ", killed for lack of memory")?;
        }
        Ok(())
    }
}

/// Inspects a container's state.
pub(crate) async fn container_status(
    docker: &Docker,
    container: &str,
) -> Result<ContainerStatus, DockerError> {
    let inspect = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| DockerError::api(format!("inspecting container {container}"), e))?;
    let state = inspect
        .state
        .ok_or_else(|| DockerError::Unexpected(format!("container {container} has no state")))?;
    let running = state.running.ok_or_else(|| {
        DockerError::Unexpected(format!(
            "the state of container {container} does not say whether it runs"
        ))
    })?;
    Ok(ContainerStatus {
        running,
        paused: state.paused.unwrap_or(false),
        exit_code: state.exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        status: state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| if running { "running" } else { "not running" }.to_string()),
    })
}

/// Waits until a container no longer runs (after a kill or stop).
pub(crate) async fn wait_until_stopped(
    docker: &Docker,
    container: &str,
    timeout_ms: u64,
) -> Result<ContainerStatus, DockerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let status = container_status(docker, container).await?;
        if !status.running {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DockerError::Timeout {
                what: format!("container {container} to stop"),
                timeout_ms,
                log_tail: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(STATE_POLL_INTERVAL_MS)).await;
    }
}

/// The last `lines` lines (`None`: all) of a container's stdout and stderr
/// (every run of it), interleaved as the engine stored them.
pub(crate) async fn container_logs(
    docker: &Docker,
    container: &str,
    lines: Option<usize>,
) -> Result<String, DockerError> {
    let tail = lines.map_or_else(|| "all".to_string(), |n| n.to_string());
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&tail)
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut text = String::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| DockerError::api(format!("reading the logs of {container}"), e))?;
        match frame {
            LogOutput::StdOut { message }
            | LogOutput::StdErr { message }
            | LogOutput::Console { message } => {
                text.push_str(&String::from_utf8_lossy(&message));
            }
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(text)
}

/// The log tail for an error message (empty if the logs cannot be read).
pub(crate) async fn log_tail_for_error(docker: &Docker, container: &str) -> String {
    container_logs(docker, container, Some(LOG_TAIL_LINES))
        .await
        .unwrap_or_else(|e| format!("<cannot read the logs: {e}>"))
}

/// Reads a container's logs from outside the fixture that owns it (e.g. to
/// print them when a test fails, while the test still uses the fixture).
#[derive(Clone)]
pub struct ContainerLogs {
    docker: Docker,
    container: String,
}

impl std::fmt::Debug for ContainerLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerLogs")
            .field("container", &self.container)
            .finish()
    }
}

impl ContainerLogs {
    pub(crate) fn new(docker: Docker, container: impl Into<String>) -> Self {
        Self {
            docker,
            container: container.into(),
        }
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The last `lines` lines of its stdout and stderr, over every run.
    pub fn tail(&self, lines: usize) -> Result<String, DockerError> {
        let docker = self.docker.clone();
        let container = self.container.clone();
        block_on(async move { container_logs(&docker, &container, Some(lines)).await })
    }

    /// Its whole stdout and stderr, over every run.
    pub fn all(&self) -> Result<String, DockerError> {
        let docker = self.docker.clone();
        let container = self.container.clone();
        block_on(async move { container_logs(&docker, &container, None).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_that_is_not_there_is_reported_unavailable_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}", dir.path().join("no-docker.sock").display());
        let availability = DockerAvailability::detect_at(&host);
        let DockerAvailability::Unavailable { host: at, reason } = &availability else {
            panic!("a missing socket was reported available: {availability:?}");
        };
        assert_eq!(at, &host);
        assert!(!reason.is_empty());
        assert!(availability.engine().is_none());
        let unsupported = DockerAvailability::detect_at("ftp://nowhere");
        assert!(unsupported.engine().is_none(), "{unsupported:?}");
    }

    #[test]
    fn an_engine_that_answers_with_an_error_is_unusable_not_absent() {
        // Answers every request like an engine refusing this client's API
        // version.
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body =
                    r#"{"message":"client version 9.99 is too new. Maximum supported API version is 1.41"}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let availability = DockerAvailability::detect_at(&format!("tcp://{addr}"));
        let DockerAvailability::Unusable { reason, .. } = &availability else {
            panic!("an engine answering errors was not reported unusable: {availability:?}");
        };
        assert!(reason.contains("too new"), "{reason}");
        let error = availability.engine_or_skip("unusable").unwrap_err();
        assert!(matches!(error, DockerError::Unusable { .. }), "{error}");
    }

    #[test]
    fn session_names_are_unique_and_valid_docker_names() {
        let a = session_name();
        let b = session_name();
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
                "{name}"
            );
        }
    }

    #[test]
    fn a_host_port_taken_between_picking_and_starting_is_replaced() {
        use testcontainers::ImageExt;
        use testcontainers::core::IntoContainerPort;
        let Some(engine) = DockerAvailability::detect()
            .engine_or_skip("port retry")
            .unwrap_or_else(|e| panic!("{e}"))
        else {
            return;
        };
        let image = build_tansu_image(&engine).unwrap();
        let network = DockerNetwork::create(&engine).unwrap();
        // The first port offered is held by someone else.
        let squatter = std::net::TcpListener::bind((network.gateway_ip(), 0)).unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let offered = std::sync::Mutex::new(Vec::new());
        let name = network.container_name("retry");
        let (container, port) = start_container(
            &engine,
            &name,
            &image,
            || {
                let mut offered = offered.lock().unwrap();
                let port = if offered.is_empty() {
                    taken
                } else {
                    network.free_gateway_port()?
                };
                offered.push(port);
                Ok(port)
            },
            |port| {
                let ip = network.gateway_ip().to_string();
                testcontainers::GenericImage::new(image.repository(), image.tag())
                    .with_exposed_port(9092.tcp())
                    .with_cmd(["--version"])
                    .with_container_name(name.as_str())
                    .with_network(network.name())
                    .with_labels(network.labels())
                    .with_host_config_modifier(move |host| {
                        host.publish_all_ports = Some(false);
                        host.port_bindings = Some(std::collections::HashMap::from([(
                            "9092/tcp".to_string(),
                            Some(vec![testcontainers::bollard::models::PortBinding {
                                host_ip: Some(ip.clone()),
                                host_port: Some(port.to_string()),
                            }]),
                        )]));
                    })
            },
        )
        .unwrap_or_else(|e| panic!("the start was not retried on another port: {e}"));
        let offered = offered.into_inner().unwrap();
        assert_eq!(offered.len(), 2, "one retry: {offered:?}");
        assert_eq!(offered[0], taken);
        assert_eq!(port, offered[1]);
        assert_ne!(port, taken);
        remove_container(&engine, &name, container);
        drop(squatter);
    }

    #[test]
    fn block_on_works_inside_another_runtime() {
        let inner = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let value = inner.block_on(async { block_on(async { Ok(41 + 1) }) }).unwrap();
        assert_eq!(value, 42);
    }
}
