//! Tansu 0.6.0 in a container on a test's network, its SQLite database on a
//! named volume.

use super::image::build_tansu_image;
use super::{
    Container, ContainerLogs, DockerError, DockerImage, DockerNetwork, block_on, container_status,
    log_tail_for_error, remove_container, start_container, wait_until_stopped,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use soilstream::transport::kafka::{KafkaClientConfig, ensure_topics};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testcontainers::bollard::models::{PortBinding, VolumeCreateRequest};
use testcontainers::bollard::query_parameters::{KillContainerOptionsBuilder, RemoveVolumeOptionsBuilder};
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

/// How long a killed container may take to be reported stopped, in ms.
const KILL_TIMEOUT_MS: u64 = 10_000;

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
    network: DockerNetwork,
    image: DockerImage,
    name: String,
    volume: String,
    host_port: u16,
    config: TansuContainerConfig,
    container: Option<Arc<Container>>,
}

impl std::fmt::Debug for TansuContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TansuContainer")
            .field("name", &self.name)
            .field("image", &self.image.reference())
            .field("network", &self.network.name())
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
            network: network.clone(),
            image,
            name,
            volume,
            host_port: 0,
            config,
            container: None,
        };
        // From here on, dropping `broker` removes what exists of it.
        let gateway_ip = network.gateway_ip();
        let cluster_id = format!("{}-cluster", network.session());
        let log_level = std::env::var(TANSU_LOG_ENV).ok();
        let (container, host_port) = start_container(
            &engine,
            &broker.name,
            &broker.image,
            || broker.network.free_gateway_port(),
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
                    .with_container_name(broker.name.as_str())
                    .with_network(broker.network.name())
                    .with_mount(Mount::volume_mount(broker.volume.as_str(), DATA_DIR))
                    .with_working_dir(DATA_DIR)
                    .with_labels(broker.network.labels())
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
        broker.container = Some(container);
        broker.host_port = host_port;
        broker.wait_ready(false)?;
        let topics: Vec<(String, u32)> = broker.config.topics.clone();
        let borrowed: Vec<(&str, u32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        broker.create_topics(&borrowed)?;
        broker.wait_ready(true)?;
        tracing::info!(
            container = %broker.name,
            bootstrap = %broker.bootstrap_servers(),
            image = %broker.image,
            "tansu container ready"
        );
        Ok(broker)
    }

    /// The address every client uses, on the host and in containers on the
    /// network alike: `<network gateway>:<published port>`.
    pub fn bootstrap_servers(&self) -> String {
        format!("{}:{}", self.network.gateway_ip(), self.host_port)
    }

    /// A client configuration pointing at
    /// [`bootstrap_servers`](Self::bootstrap_servers).
    pub fn client_config(&self) -> KafkaClientConfig {
        KafkaClientConfig::new(self.bootstrap_servers())
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.container.as_ref().map_or("", |c| c.id())
    }

    /// The image it runs.
    pub fn image(&self) -> &DockerImage {
        &self.image
    }

    /// The network it is on.
    pub fn network(&self) -> &DockerNetwork {
        &self.network
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
        ContainerLogs::new(self.network.engine().client(), self.name.clone())
    }

    /// The last `lines` lines of the broker's log (every run), or why they
    /// cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        self.logs()
            .tail(lines)
            .unwrap_or_else(|e| format!("<cannot read the logs of {}: {e}>", self.name))
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
        let docker = self.network.engine().client();
        let name = self.name.clone();
        block_on(async move { Ok(container_status(&docker, &name).await?.running) })
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
        let docker = self.network.engine().client();
        let name = self.name.clone();
        block_on(async move {
            docker
                .kill_container(
                    &name,
                    Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                )
                .await
                .map_err(|e| DockerError::api(format!("killing {name}"), e))?;
            wait_until_stopped(&docker, &name, KILL_TIMEOUT_MS).await?;
            Ok(())
        })?;
        tracing::info!(container = %self.name, "tansu container killed (SIGKILL)");
        Ok(())
    }

    /// Stops the broker: SIGTERM, then SIGKILL after the configured
    /// `stop_timeout_s`.
    pub fn stop(&self) -> Result<(), DockerError> {
        let container = self.container()?;
        let timeout = i32::try_from(self.config.stop_timeout_s).unwrap_or(i32::MAX);
        block_on(async move {
            container
                .stop_with_timeout(Some(timeout))
                .await
                .map_err(|e| DockerError::Testcontainers {
                    what: "stopping the broker".into(),
                    source: e,
                })
        })
    }

    /// Starts the same container again after a kill or stop: same volume
    /// (same data), same published port, same network; waits until it
    /// answers and lists the configured topics.
    pub fn restart(&self) -> Result<(), DockerError> {
        if self.is_running()? {
            return Err(DockerError::State(format!(
                "{} runs; kill or stop it before restarting",
                self.name
            )));
        }
        let started = Instant::now();
        let container = self.container()?;
        block_on(async move {
            container.start().await.map_err(|e| DockerError::Testcontainers {
                what: "starting the broker again".into(),
                source: e,
            })
        })?;
        self.wait_ready(true)?;
        tracing::info!(
            container = %self.name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tansu container restarted"
        );
        Ok(())
    }

    /// Freezes the broker (cgroup freezer): connections stay open, nothing
    /// is answered.
    pub fn pause(&self) -> Result<(), DockerError> {
        let container = self.container()?;
        block_on(async move {
            container.pause().await.map_err(|e| DockerError::Testcontainers {
                what: "pausing the broker".into(),
                source: e,
            })
        })
    }

    /// Thaws a paused broker.
    pub fn unpause(&self) -> Result<(), DockerError> {
        let container = self.container()?;
        block_on(async move {
            container
                .unpause()
                .await
                .map_err(|e| DockerError::Testcontainers {
                    what: "unpausing the broker".into(),
                    source: e,
                })
        })
    }

    /// Cuts the broker off the network: neither the host nor any container
    /// reaches it until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self) -> Result<(), DockerError> {
        self.network.disconnect(&self.name)?;
        tracing::info!(container = %self.name, "tansu container disconnected from the network");
        Ok(())
    }

    /// Connects the broker to the network again; its published port (and so
    /// its advertised address) is the same as before.
    pub fn reconnect(&self) -> Result<(), DockerError> {
        self.network.connect(&self.name)?;
        tracing::info!(container = %self.name, "tansu container reconnected to the network");
        Ok(())
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
        let docker = self.network.engine().client();
        let timeout_ms = self.config.ready_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let name = self.name.clone();
            let client = docker.clone();
            let status = block_on(async move { container_status(&client, &name).await })?;
            if !status.running {
                let name = self.name.clone();
                let client = docker.clone();
                let log_tail = block_on(async move { Ok(log_tail_for_error(&client, &name).await) })?;
                return Err(DockerError::Exited {
                    container: self.name.clone(),
                    status: status.to_string(),
                    log_tail,
                });
            }
            if let Ok(metadata) = probe.fetch_metadata(None, Duration::from_millis(PROBE_TIMEOUT_MS)) {
                let listed = |name: &String| metadata.topics().iter().any(|t| t.name() == name);
                if expected.iter().all(listed) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(DockerError::Timeout {
                    what: format!("{} to answer on {}", self.name, self.bootstrap_servers()),
                    timeout_ms,
                    log_tail: self.log_tail(super::LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(PROBE_INTERVAL_MS));
        }
    }

    fn container(&self) -> Result<Arc<Container>, DockerError> {
        self.container
            .clone()
            .ok_or_else(|| DockerError::State(format!("{} was never started", self.name)))
    }
}

impl Drop for TansuContainer {
    fn drop(&mut self) {
        let engine = self.network.engine().clone();
        match self.container.take() {
            Some(container) => remove_container(&engine, &self.name, container),
            None => {
                if let Err(error) = super::remove_container_by_name(&engine, &self.name) {
                    tracing::warn!(container = %self.name, %error, "removing the broker container");
                }
            }
        }
        let docker = engine.client();
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
