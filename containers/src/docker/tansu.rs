//! Tansu 0.6.0 in a container on a test's network, its SQLite database on a
//! named volume.

use super::handle::ContainerHandle;
use super::image::build_tansu_image;
use super::{ContainerLogs, DockerError, DockerImage, DockerNetwork, block_on, start_container};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use soilstream::transport::kafka::{KafkaClientConfig, ensure_topics};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use testcontainers::bollard::models::{PortBinding, VolumeCreateRequest};
use testcontainers::bollard::query_parameters::RemoveVolumeOptionsBuilder;
use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::{GenericImage, ImageExt};

/// The Kafka port inside the container.
const KAFKA_PORT: u16 = 9092;

/// Where the data volume is mounted (the broker's working directory).
const DATA_DIR: &str = "/data";

/// Timeout of one readiness probe (a metadata request), in ms.
const PROBE_TIMEOUT_MS: u64 = 1_000;

/// Interval between two readiness probes, in ms.
const PROBE_INTERVAL_MS: u64 = 100;

/// Environment variable whose value, if set, becomes the broker's `RUST_LOG`.
const TANSU_LOG_ENV: &str = "SOILSTREAM_TANSU_LOG";

/// How the broker container is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TansuContainerConfig {
    /// Topics to create once the broker is ready: `(name, partitions)`.
    pub topics: Vec<(String, u32)>,
    /// The image to run; `None` builds (or finds) it with
    /// [`build_tansu_image`](super::build_tansu_image).
    pub image: Option<DockerImage>,
    /// How long to wait for the broker to answer metadata requests, in ms.
    pub ready_timeout_ms: u64,
    /// How long [`TansuContainer::stop`] lets the broker exit after SIGTERM
    /// before the engine sends SIGKILL, in seconds.
    pub stop_timeout_s: u32,
}

impl Default for TansuContainerConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            image: None,
            ready_timeout_ms: 30_000,
            // Tansu may take seconds to honour SIGTERM (see the process fixture).
            stop_timeout_s: 10,
        }
    }
}

impl TansuContainerConfig {
    /// Adds a topic to create.
    pub fn topic(mut self, name: impl Into<String>, partitions: u32) -> Self {
        self.topics.push((name.into(), partitions));
        self
    }

    /// Runs this image instead of building one.
    pub fn image(mut self, image: DockerImage) -> Self {
        self.image = Some(image);
        self
    }
}

/// A Tansu broker in a container: see the [module docs](super) for the
/// networking. Its Kafka port is published on the network's gateway address
/// and advertised as such, so the host and the containers on the network
/// use the same address ([`bootstrap_servers`](Self::bootstrap_servers)).
///
/// Dropping it removes the container and its data volume.
pub struct TansuContainer {
    handle: ContainerHandle,
    image: DockerImage,
    volume: String,
    host_port: u16,
    config: TansuContainerConfig,
}

impl std::fmt::Debug for TansuContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TansuContainer")
            .field("name", &self.handle.name())
            .field("image", &self.image.reference())
            .field("network", &self.handle.network().name())
            .field("bootstrap_servers", &self.bootstrap_servers())
            .field("volume", &self.volume)
            .finish()
    }
}

impl TansuContainer {
    /// Starts the broker on `network`, waits until it answers metadata
    /// requests from the host and creates the configured topics.
    pub fn start(network: &DockerNetwork, config: TansuContainerConfig) -> Result<Self, DockerError> {
        let engine = network.engine().clone();
        let image = match &config.image {
            Some(image) => image.clone(),
            None => build_tansu_image(&engine)?,
        };
        let name = network.container_name("tansu");
        let volume = format!("{name}-data");
        create_volume(network, &volume)?;
        let mut broker = Self {
            handle: ContainerHandle::new(network, name, "broker"),
            image,
            volume,
            host_port: 0,
            config,
        };
        // From here on, dropping `broker` removes what exists of it.
        let gateway_ip = network.gateway_ip();
        let cluster_id = format!("{}-cluster", network.session());
        let log_level = std::env::var(TANSU_LOG_ENV).ok();
        let (container, host_port) = start_container(
            &engine,
            broker.handle.name(),
            &broker.image,
            || broker.handle.network().free_gateway_port(),
            |port| {
                let advertised = format!("tcp://{gateway_ip}:{port}");
                let listener = format!("tcp://0.0.0.0:{KAFKA_PORT}");
                let binding_ip = gateway_ip.to_string();
                let mut request = GenericImage::new(broker.image.repository(), broker.image.tag())
                    .with_exposed_port(KAFKA_PORT.tcp())
                    .with_cmd([
                        "broker",
                        "--storage-engine",
                        "sqlite://tansu.db",
                        "--listener-url",
                        listener.as_str(),
                        "--advertised-listener-url",
                        advertised.as_str(),
                        "--cluster-id",
                        cluster_id.as_str(),
                    ])
                    .with_container_name(broker.handle.name())
                    .with_network(broker.handle.network().name())
                    .with_mount(Mount::volume_mount(broker.volume.as_str(), DATA_DIR))
                    .with_working_dir(DATA_DIR)
                    .with_labels(broker.handle.network().labels())
                    .with_startup_timeout(Duration::from_millis(broker.config.ready_timeout_ms))
                    .with_host_config_modifier(move |host| {
                        // Published on the test network's gateway address
                        // only (not on every interface of the host).
                        host.publish_all_ports = Some(false);
                        host.port_bindings = Some(HashMap::from([(
                            format!("{KAFKA_PORT}/tcp"),
                            Some(vec![PortBinding {
                                host_ip: Some(binding_ip.clone()),
                                host_port: Some(port.to_string()),
                            }]),
                        )]));
                    });
                if let Some(level) = &log_level {
                    request = request.with_env_var("RUST_LOG", level.as_str());
                }
                request
            },
        )?;
        broker.handle.started(container);
        broker.host_port = host_port;
        broker.wait_ready(false)?;
        let topics: Vec<(String, u32)> = broker.config.topics.clone();
        let borrowed: Vec<(&str, u32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        broker.create_topics(&borrowed)?;
        broker.wait_ready(true)?;
        tracing::info!(
            container = %broker.handle.name(),
            bootstrap = %broker.bootstrap_servers(),
            image = %broker.image,
            "tansu container ready"
        );
        Ok(broker)
    }

    /// The address every client uses, on the host and in containers on the
    /// network alike: `<network gateway>:<published port>`.
    pub fn bootstrap_servers(&self) -> String {
        format!("{}:{}", self.handle.network().gateway_ip(), self.host_port)
    }

    /// A client configuration pointing at
    /// [`bootstrap_servers`](Self::bootstrap_servers).
    pub fn client_config(&self) -> KafkaClientConfig {
        KafkaClientConfig::new(self.bootstrap_servers())
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.handle.id()
    }

    /// The image it runs.
    pub fn image(&self) -> &DockerImage {
        &self.image
    }

    /// The network it is on.
    pub fn network(&self) -> &DockerNetwork {
        self.handle.network()
    }

    /// The named volume holding the SQLite database.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// The published host port (on the network's gateway address).
    pub fn host_port(&self) -> u16 {
        self.host_port
    }

    /// A handle reading the broker's logs.
    pub fn logs(&self) -> ContainerLogs {
        self.handle.logs()
    }

    /// The last `lines` lines of the broker's log (every run), or why they
    /// cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        self.handle.log_tail(lines)
    }

    /// Lines of the broker's log reporting a panic (Tansu keeps running
    /// after a request handler panics).
    pub fn panics_in_log(&self) -> Result<Vec<String>, DockerError> {
        Ok(self
            .logs()
            .all()?
            .lines()
            .filter(|line| line.contains("panicked at"))
            .map(str::to_string)
            .collect())
    }

    /// Whether the broker's container runs (a paused one runs).
    pub fn is_running(&self) -> Result<bool, DockerError> {
        self.handle.is_running()
    }

    /// Creates topics (`(name, partitions)`) that do not exist yet.
    pub fn create_topics(&self, topics: &[(&str, u32)]) -> Result<(), DockerError> {
        if topics.is_empty() {
            return Ok(());
        }
        let bootstrap = self.bootstrap_servers();
        let owned: Vec<(String, u32)> = topics.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        block_on(async move {
            let borrowed: Vec<(&str, u32)> = owned.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            ensure_topics(&bootstrap, &BTreeMap::new(), &borrowed)
                .await
                .map_err(|e| DockerError::Kafka(format!("creating topics on {bootstrap}: {e}")))
        })
    }

    /// Kills the broker with SIGKILL (no chance to flush anything) and waits
    /// until the engine reports it stopped. The container, its volume and
    /// its port stay for [`restart`](Self::restart).
    pub fn kill(&self) -> Result<(), DockerError> {
        self.handle.kill()
    }

    /// Stops the broker: SIGTERM, then SIGKILL after the configured
    /// `stop_timeout_s`.
    pub fn stop(&self) -> Result<(), DockerError> {
        self.handle.stop(self.config.stop_timeout_s).map(drop)
    }

    /// Starts the same container again after a kill or stop: same volume
    /// (same data), same published port, same network; waits until it
    /// answers and lists the configured topics.
    pub fn restart(&self) -> Result<(), DockerError> {
        let started = Instant::now();
        self.handle.start_again()?;
        self.wait_ready(true)?;
        tracing::info!(
            container = %self.handle.name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tansu container restarted"
        );
        Ok(())
    }

    /// Freezes the broker (cgroup freezer): connections stay open, nothing
    /// is answered.
    pub fn pause(&self) -> Result<(), DockerError> {
        self.handle.pause()
    }

    /// Thaws a paused broker.
    pub fn unpause(&self) -> Result<(), DockerError> {
        self.handle.unpause()
    }

    /// Cuts the broker off the network: neither the host nor any container
    /// reaches it until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self) -> Result<(), DockerError> {
        self.handle.disconnect()
    }

    /// Connects the broker to the network again; its published port (and so
    /// its advertised address) is the same as before.
    pub fn reconnect(&self) -> Result<(), DockerError> {
        self.handle.reconnect()
    }

    /// Waits until the broker answers a metadata request from the host (and,
    /// with `expect_topics`, lists the configured topics).
    pub fn wait_ready(&self, expect_topics: bool) -> Result<(), DockerError> {
        let expected: Vec<String> = if expect_topics {
            self.config.topics.iter().map(|(name, _)| name.clone()).collect()
        } else {
            Vec::new()
        };
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "200")
            .create()
            .map_err(|e| DockerError::Kafka(format!("creating the readiness probe: {e}")))?;
        self.handle.wait_until(
            &format!("{} to answer on {}", self.handle.name(), self.bootstrap_servers()),
            self.config.ready_timeout_ms,
            PROBE_INTERVAL_MS,
            || {
                probe
                    .fetch_metadata(None, Duration::from_millis(PROBE_TIMEOUT_MS))
                    .is_ok_and(|metadata| {
                        expected
                            .iter()
                            .all(|name| metadata.topics().iter().any(|t| t.name() == name))
                    })
            },
        )
    }
}

impl Drop for TansuContainer {
    fn drop(&mut self) {
        // The container first: its volume cannot go while it is in use.
        self.handle.remove();
        let docker = self.handle.network().engine().client();
        let volume = self.volume.clone();
        let removed = block_on(async move {
            match docker
                .remove_volume(
                    &volume,
                    Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
                )
                .await
            {
                Ok(()) => Ok(()),
                Err(error) if super::is_not_found(&error) => Ok(()),
                Err(error) => Err(DockerError::api(format!("removing volume {volume}"), error)),
            }
        });
        if let Err(error) = removed {
            tracing::warn!(volume = %self.volume, %error, "removing the broker's volume");
        }
    }
}

/// Creates the named volume for the broker's data, labelled with the
/// network's session.
fn create_volume(network: &DockerNetwork, volume: &str) -> Result<(), DockerError> {
    let docker = network.engine().client();
    let request = VolumeCreateRequest {
        name: Some(volume.to_string()),
        labels: Some(network.labels().into_iter().collect()),
        ..Default::default()
    };
    let volume = volume.to_string();
    block_on(async move {
        docker
            .create_volume(request)
            .await
            .map_err(|e| DockerError::api(format!("creating volume {volume}"), e))?;
        Ok(())
    })
}
