//! The real `soilstream gateway` in a container on a test's network, its
//! configuration, spool and ledger in a host directory bind-mounted at
//! `/gw`.

use super::handle::ContainerHandle;
use super::{ContainerLogs, DockerError, DockerImage, DockerNetwork, start_container};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::{GenericImage, ImageExt};

/// Where the host directory is mounted in the container.
const MOUNT_DIR: &str = "/gw";

/// The metrics port inside the container.
const METRICS_PORT: u16 = 9898;

/// Timeout of one `/metrics` request, in ms.
const SCRAPE_TIMEOUT_MS: u64 = 2_000;

/// Interval between two readiness checks, in ms.
const READY_POLL_INTERVAL_MS: u64 = 100;

/// Exit code of a process ended by SIGKILL (128 + 9).
const SIGKILL_EXIT_CODE: i64 = 137;

/// How the gateway container is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayContainerConfig {
    /// The `soilstream` image (see
    /// [`build_soilstream_image`](super::build_soilstream_image)).
    pub image: DockerImage,
    /// The gateway's configuration file (TOML), written to
    /// `/gw/gateway.toml`. Its spool directory, metrics address and brokers
    /// are overridden by flags (`/gw/spool`, `0.0.0.0:9898`,
    /// `bootstrap_servers`).
    pub config_toml: String,
    /// `--brokers`: e.g. [`TansuContainer::bootstrap_servers`](super::TansuContainer::bootstrap_servers).
    pub bootstrap_servers: String,
    /// More arguments after `soilstream gateway ...`.
    pub extra_args: Vec<String>,
    /// `SOILSTREAM_LOG` in the container.
    pub log_filter: String,
    /// How long the gateway may take to serve `/metrics`, in ms.
    pub ready_timeout_ms: u64,
}

impl GatewayContainerConfig {
    /// A gateway running `image` with the configuration `config_toml`,
    /// delivering to `bootstrap_servers`.
    pub fn new(
        image: DockerImage,
        config_toml: impl Into<String>,
        bootstrap_servers: impl Into<String>,
    ) -> Self {
        Self {
            image,
            config_toml: config_toml.into(),
            bootstrap_servers: bootstrap_servers.into(),
            extra_args: Vec::new(),
            log_filter: "info".into(),
            ready_timeout_ms: 30_000,
        }
    }
}

/// How a gateway container ended after [`GatewayContainer::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayExit {
    /// The process's exit code.
    pub exit_code: i64,
    /// Whether the engine had to SIGKILL it (it did not exit in time on
    /// SIGTERM).
    pub forced: bool,
    /// Time from the stop request to the exit, in ms.
    pub elapsed_ms: u64,
}

/// `soilstream gateway` in a container on a test's network.
///
/// Its directory on the host ([`dir`](Self::dir)) holds `gateway.toml`,
/// `spool/` and `ledger.jsonl`; the container runs as the directory's owner,
/// so the files stay the test's. `/metrics` is published on a loopback port
/// of the host ([`metrics_addr`](Self::metrics_addr)). While the gateway is
/// disconnected from the network, its metrics port is unreachable too (it is
/// forwarded over that network); the ledger file is not.
///
/// Dropping it removes the container and the directory.
pub struct GatewayContainer {
    handle: ContainerHandle,
    metrics_addr: SocketAddr,
    config: GatewayContainerConfig,
    // Declared last: removed after the container (fields drop in order).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for GatewayContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayContainer")
            .field("name", &self.handle.name())
            .field("image", &self.config.image.reference())
            .field("network", &self.handle.network().name())
            .field("dir", &self.dir.path())
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl GatewayContainer {
    /// Writes the configuration, starts the gateway on `network` and waits
    /// until its `/metrics` endpoint answers from the host.
    pub fn start(network: &DockerNetwork, config: GatewayContainerConfig) -> Result<Self, DockerError> {
        let engine = network.engine().clone();
        let dir = tempfile::Builder::new()
            .prefix("soilstream-gw-container-")
            .tempdir()
            .map_err(|e| DockerError::io("creating the gateway's directory", e))?;
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, &config.config_toml)
            .map_err(|e| DockerError::io(format!("writing {}", config_path.display()), e))?;
        let owner = std::fs::metadata(dir.path())
            .map_err(|e| DockerError::io(format!("reading the owner of {}", dir.path().display()), e))?;
        let user = format!("{}:{}", owner.uid(), owner.gid());
        let host_dir = dir
            .path()
            .to_str()
            .ok_or_else(|| DockerError::State(format!("{} is not UTF-8", dir.path().display())))?
            .to_string();
        let mut gateway = Self {
            handle: ContainerHandle::new(network, network.container_name("gateway"), "gateway"),
            metrics_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            config,
            dir,
        };
        let mut args: Vec<String> = [
            "gateway",
            "--config",
            "/gw/gateway.toml",
            "--ledger",
            "/gw/ledger.jsonl",
            "--spool-dir",
            "/gw/spool",
            "--metrics-listen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("0.0.0.0:{METRICS_PORT}"));
        args.push("--brokers".into());
        args.push(gateway.config.bootstrap_servers.clone());
        args.extend(gateway.config.extra_args.iter().cloned());
        let (container, port) = start_container(
            &engine,
            gateway.handle.name(),
            &gateway.config.image,
            || crate::free_loopback_port().map_err(DockerError::from),
            |port| {
                GenericImage::new(gateway.config.image.repository(), gateway.config.image.tag())
                    .with_exposed_port(METRICS_PORT.tcp())
                    .with_cmd(args.iter().map(String::as_str))
                    .with_container_name(gateway.handle.name())
                    .with_network(gateway.handle.network().name())
                    .with_mount(Mount::bind_mount(host_dir.as_str(), MOUNT_DIR))
                    .with_working_dir(MOUNT_DIR)
                    .with_user(user.as_str())
                    .with_env_var("SOILSTREAM_LOG", gateway.config.log_filter.as_str())
                    .with_labels(gateway.handle.network().labels())
                    .with_startup_timeout(Duration::from_millis(gateway.config.ready_timeout_ms))
                    .with_host_config_modifier(move |host| {
                        // Loopback only.
                        host.publish_all_ports = Some(false);
                        host.port_bindings = Some(HashMap::from([(
                            format!("{METRICS_PORT}/tcp"),
                            Some(vec![PortBinding {
                                host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                                host_port: Some(port.to_string()),
                            }]),
                        )]));
                    })
            },
        )?;
        gateway.handle.started(container);
        gateway.metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        gateway.wait_ready()?;
        tracing::info!(
            container = %gateway.handle.name(),
            metrics = %gateway.metrics_addr,
            dir = %gateway.dir.path().display(),
            "gateway container ready"
        );
        Ok(gateway)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// The host directory mounted at `/gw`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The ledger file: one JSON line per reading acknowledged durable.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("ledger.jsonl")
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Where `/metrics` answers on the host.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A handle reading the gateway's logs.
    pub fn logs(&self) -> ContainerLogs {
        self.handle.logs()
    }

    /// The last `lines` lines of the gateway's log (every run), or why they
    /// cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        self.handle.log_tail(lines)
    }

    /// One `GET /metrics`: the OpenMetrics text.
    pub fn scrape_metrics(&self) -> Result<String, DockerError> {
        scrape(self.metrics_addr)
    }

    /// Whether the gateway's container runs.
    pub fn is_running(&self) -> Result<bool, DockerError> {
        self.handle.is_running()
    }

    /// SIGKILL: no chance to flush, persist or say goodbye. The container
    /// and its directory stay for [`restart`](Self::restart).
    pub fn kill(&self) -> Result<(), DockerError> {
        self.handle.kill()
    }

    /// SIGTERM, then SIGKILL if the gateway has not exited after
    /// `timeout_s` seconds; reports how it ended.
    pub fn stop(&self, timeout_s: u32) -> Result<GatewayExit, DockerError> {
        let started = Instant::now();
        let status = self.handle.stop(timeout_s)?;
        let exit_code = status.exit_code.ok_or_else(|| {
            DockerError::Unexpected(format!(
                "{} stopped without an exit code ({status})",
                self.handle.name()
            ))
        })?;
        Ok(GatewayExit {
            exit_code,
            forced: exit_code == SIGKILL_EXIT_CODE,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Starts the same container again (same configuration, spool, ledger
    /// and ports) after it exited or was killed; waits for `/metrics`.
    pub fn restart(&self) -> Result<(), DockerError> {
        self.handle.start_again()?;
        self.wait_ready()
    }

    /// Freezes the gateway (cgroup freezer).
    pub fn pause(&self) -> Result<(), DockerError> {
        self.handle.pause()
    }

    /// Thaws a paused gateway.
    pub fn unpause(&self) -> Result<(), DockerError> {
        self.handle.unpause()
    }

    /// Cuts the gateway off the network (a partition): it keeps running and
    /// sampling, but no packet reaches the broker (nor its metrics port the
    /// host) until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self) -> Result<(), DockerError> {
        self.handle.disconnect()
    }

    /// Connects the gateway to the network again.
    pub fn reconnect(&self) -> Result<(), DockerError> {
        self.handle.reconnect()
    }

    /// Waits until `/metrics` answers from the host; fails at once if the
    /// container exits.
    fn wait_ready(&self) -> Result<(), DockerError> {
        self.handle.wait_until(
            &format!(
                "{} to serve /metrics on {}",
                self.handle.name(),
                self.metrics_addr
            ),
            self.config.ready_timeout_ms,
            READY_POLL_INTERVAL_MS,
            || scrape(self.metrics_addr).is_ok(),
        )
    }
}

/// One `GET /metrics` over HTTP/1.0 (the server closes the connection after
/// the body).
pub(super) fn scrape(addr: SocketAddr) -> Result<String, DockerError> {
    let timeout = Duration::from_millis(SCRAPE_TIMEOUT_MS);
    let io = |what: &str, e: std::io::Error| DockerError::io(format!("{what} {addr}/metrics"), e);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| io("connecting to", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io("setting timeouts for", e))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n")
        .map_err(|e| io("requesting", e))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| io("reading", e))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| DockerError::Unexpected(format!("{addr}/metrics answered no HTTP response")))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(DockerError::Unexpected(format!(
            "{addr}/metrics answered {status_line:?}"
        )));
    }
    Ok(body.to_string())
}
