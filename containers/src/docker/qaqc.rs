//! The real `soilstream qaqc` in a container on a test's network, its
//! configuration and state directory in a host directory bind-mounted at
//! `/qaqc`.

use super::gateway::scrape;
use super::handle::ContainerHandle;
use super::{ContainerLogs, DockerError, DockerImage, DockerNetwork, start_container};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::{GenericImage, ImageExt};

/// Where the host directory is mounted in the container.
const MOUNT_DIR: &str = "/qaqc";

/// The metrics port inside the container.
const METRICS_PORT: u16 = 9899;

/// Interval between two readiness checks, in ms.
const READY_POLL_INTERVAL_MS: u64 = 100;

/// Exit code of a process ended by SIGKILL (128 + 9).
const SIGKILL_EXIT_CODE: i64 = 137;

/// How the qaqc container is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaqcContainerConfig {
    /// The `soilstream` image (see
    /// [`build_soilstream_image`](super::build_soilstream_image)).
    pub image: DockerImage,
    /// qaqc's configuration file (TOML), written to `/qaqc/qaqc.toml`. Its
    /// state directory, metrics address and brokers are overridden by flags
    /// (`/qaqc/state`, `0.0.0.0:9899`, `bootstrap_servers`), and so is its
    /// registry when [`registry_url`](Self::registry_url) is set.
    pub config_toml: String,
    /// `--brokers`: e.g. [`TansuContainer::bootstrap_servers`](super::TansuContainer::bootstrap_servers).
    pub bootstrap_servers: String,
    /// `--registry-url`, reachable from the container (e.g. a registry
    /// listening on the network's gateway address).
    pub registry_url: Option<String>,
    /// More arguments after `soilstream qaqc ...`.
    pub extra_args: Vec<String>,
    /// `SOILSTREAM_LOG` in the container.
    pub log_filter: String,
    /// How long qaqc may take to serve `/metrics`, in ms.
    pub ready_timeout_ms: u64,
}

impl QaqcContainerConfig {
    /// qaqc running `image` with the configuration `config_toml`, on
    /// `bootstrap_servers`.
    pub fn new(
        image: DockerImage,
        config_toml: impl Into<String>,
        bootstrap_servers: impl Into<String>,
    ) -> Self {
        Self {
            image,
            config_toml: config_toml.into(),
            bootstrap_servers: bootstrap_servers.into(),
            registry_url: None,
            extra_args: Vec::new(),
            log_filter: "info".into(),
            ready_timeout_ms: 30_000,
        }
    }
}

/// How a qaqc container ended after [`QaqcContainer::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QaqcExit {
    /// The process's exit code.
    pub exit_code: i64,
    /// Whether the engine had to SIGKILL it (it did not exit in time on
    /// SIGTERM).
    pub forced: bool,
    /// Time from the stop request to the exit, in ms.
    pub elapsed_ms: u64,
}

/// `soilstream qaqc` in a container on a test's network.
///
/// Its directory on the host ([`dir`](Self::dir)) holds `qaqc.toml` and
/// `state/` (the checkpoints); the container runs as the directory's owner,
/// so the files stay the test's. `/metrics` is published on a loopback port
/// of the host ([`metrics_addr`](Self::metrics_addr)).
///
/// Dropping it removes the container and the directory.
pub struct QaqcContainer {
    handle: ContainerHandle,
    metrics_addr: SocketAddr,
    config: QaqcContainerConfig,
    // Declared last: removed after the container (fields drop in order).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for QaqcContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QaqcContainer")
            .field("name", &self.handle.name())
            .field("image", &self.config.image.reference())
            .field("network", &self.handle.network().name())
            .field("dir", &self.dir.path())
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl QaqcContainer {
    /// Writes the configuration, starts qaqc on `network` and waits until
    /// its `/metrics` endpoint answers from the host.
    pub fn start(network: &DockerNetwork, config: QaqcContainerConfig) -> Result<Self, DockerError> {
        let engine = network.engine().clone();
        let dir = tempfile::Builder::new()
            .prefix("soilstream-qaqc-container-")
            .tempdir()
            .map_err(|e| DockerError::io("creating qaqc's directory", e))?;
        let config_path = dir.path().join("qaqc.toml");
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
        let mut qaqc = Self {
            handle: ContainerHandle::new(network, network.container_name("qaqc"), "qaqc"),
            metrics_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            config,
            dir,
        };
        let mut args: Vec<String> = [
            "qaqc",
            "--config",
            "/qaqc/qaqc.toml",
            "--state-dir",
            "/qaqc/state",
            "--metrics-listen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("0.0.0.0:{METRICS_PORT}"));
        args.push("--brokers".into());
        args.push(qaqc.config.bootstrap_servers.clone());
        if let Some(url) = &qaqc.config.registry_url {
            args.push("--registry-url".into());
            args.push(url.clone());
        }
        args.extend(qaqc.config.extra_args.iter().cloned());
        let (container, port) = start_container(
            &engine,
            qaqc.handle.name(),
            &qaqc.config.image,
            || crate::free_loopback_port().map_err(DockerError::from),
            |port| {
                GenericImage::new(qaqc.config.image.repository(), qaqc.config.image.tag())
                    .with_exposed_port(METRICS_PORT.tcp())
                    .with_cmd(args.iter().map(String::as_str))
                    .with_container_name(qaqc.handle.name())
                    .with_network(qaqc.handle.network().name())
                    .with_mount(Mount::bind_mount(host_dir.as_str(), MOUNT_DIR))
                    .with_working_dir(MOUNT_DIR)
                    .with_user(user.as_str())
                    .with_env_var("SOILSTREAM_LOG", qaqc.config.log_filter.as_str())
                    .with_labels(qaqc.handle.network().labels())
                    .with_startup_timeout(Duration::from_millis(qaqc.config.ready_timeout_ms))
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
        qaqc.handle.started(container);
        qaqc.metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        qaqc.wait_ready()?;
        tracing::info!(
            container = %qaqc.handle.name(),
            metrics = %qaqc.metrics_addr,
            dir = %qaqc.dir.path().display(),
            "qaqc container ready"
        );
        Ok(qaqc)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// The host directory mounted at `/qaqc`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file on the host.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("qaqc.toml")
    }

    /// The state directory (checkpoints) on the host.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where `/metrics` answers on the host.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A handle reading qaqc's logs.
    pub fn logs(&self) -> ContainerLogs {
        self.handle.logs()
    }

    /// The last `lines` lines of qaqc's log (every run), or why they cannot
    /// be read.
    pub fn log_tail(&self, lines: usize) -> String {
        self.handle.log_tail(lines)
    }

    /// One `GET /metrics`: the OpenMetrics text.
    pub fn scrape_metrics(&self) -> Result<String, DockerError> {
        scrape(self.metrics_addr)
    }

    /// Whether qaqc's container runs.
    pub fn is_running(&self) -> Result<bool, DockerError> {
        self.handle.is_running()
    }

    /// SIGKILL: no commit, no checkpoint, no LeaveGroup. The container and
    /// its directory stay for [`restart`](Self::restart).
    pub fn kill(&self) -> Result<(), DockerError> {
        self.handle.kill()
    }

    /// SIGTERM, then SIGKILL if qaqc has not exited after `timeout_s`
    /// seconds; reports how it ended.
    pub fn stop(&self, timeout_s: u32) -> Result<QaqcExit, DockerError> {
        let started = Instant::now();
        let status = self.handle.stop(timeout_s)?;
        let exit_code = status.exit_code.ok_or_else(|| {
            DockerError::Unexpected(format!(
                "{} stopped without an exit code ({status})",
                self.handle.name()
            ))
        })?;
        Ok(QaqcExit {
            exit_code,
            forced: exit_code == SIGKILL_EXIT_CODE,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Starts the same container again (same configuration, state directory
    /// and ports) after it exited or was killed; waits for `/metrics`.
    pub fn restart(&self) -> Result<(), DockerError> {
        self.handle.start_again()?;
        self.wait_ready()
    }

    /// Cuts qaqc off the network until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self) -> Result<(), DockerError> {
        self.handle.disconnect()
    }

    /// Connects qaqc to the network again.
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
