//! `soilstream gateway`: run an edge gateway against a real broker.

use anyhow::Context;
use soilstream::clock::SystemClock;
use soilstream::disk::StdDisk;
use soilstream::gateway::config::{GatewayFileConfig, SourceConfig};
use soilstream::gateway::observer::{GatewayObserver, JsonlLedger, NoObserver};
use soilstream::gateway::{GatewayParts, GatewaySettings, ProducerFactory, Shutdown, run_gateway};
use soilstream::metrics::GatewayMetrics;
use soilstream::registry::{
    HttpRegistryClient, HttpRegistryClientConfig, InProcessRegistry, SchemaRegistry, TcpConnector,
};
use soilstream::source::SensorSimulator;
use soilstream::transport::kafka::KafkaProducer;
use soilstream::transport::{LogProducer, ProduceError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// Run a field gateway: sample probes into the durable spool and forward the
/// spool to the raw topic.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Without it the embedded defaults are used
    /// (see examples/gateway.toml).
    #[arg(long, env = "SOILSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `[gateway] id`.
    #[arg(long, env = "SOILSTREAM_GATEWAY_ID")]
    gateway_id: Option<String>,
    /// Overrides `[kafka] bootstrap_servers`.
    #[arg(long, env = "SOILSTREAM_BROKERS")]
    brokers: Option<String>,
    /// Overrides `[forwarder] topic`.
    #[arg(long, env = "SOILSTREAM_TOPIC")]
    topic: Option<String>,
    /// Overrides `[spool] dir`.
    #[arg(long, env = "SOILSTREAM_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Overrides `[sampler] interval_ms`.
    #[arg(long, env = "SOILSTREAM_INTERVAL_MS")]
    interval_ms: Option<u64>,
    /// Overrides `[source] sensors`.
    #[arg(long, env = "SOILSTREAM_SENSORS")]
    sensors: Option<u32>,
    /// Overrides `[source] seed`.
    #[arg(long, env = "SOILSTREAM_SEED")]
    seed: Option<u64>,
    /// Overrides `[metrics] listen` (empty disables the endpoint).
    #[arg(long, env = "SOILSTREAM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Overrides `[registry] url`.
    #[arg(long, env = "SOILSTREAM_REGISTRY_URL")]
    registry_url: Option<String>,
    /// A librdkafka property `key=value`, applied after `[kafka.properties]`
    /// (repeatable), e.g. `-X security.protocol=SASL_SSL`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = crate::args::parse_kafka_property)]
    kafka_property: Vec<(String, String)>,
    /// Append every reading acknowledged durable, as a JSON line, to this file
    /// (a ledger for checkers and tests).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    /// The configuration: file (or embedded defaults), then overrides.
    fn effective_config(&self) -> anyhow::Result<GatewayFileConfig> {
        let (mut config, origin) = match &self.config {
            Some(path) => (GatewayFileConfig::load(path)?, path.display().to_string()),
            None => (
                GatewayFileConfig::embedded_defaults(),
                "embedded defaults".to_owned(),
            ),
        };
        if let Some(id) = &self.gateway_id {
            // A derived probe prefix follows the new id.
            let SourceConfig::Simulator(sim) = &mut config.source;
            if sim.sensor_prefix == format!("{}-probe", config.gateway.id) {
                sim.sensor_prefix.clear();
            }
            config.gateway.id = id.clone();
        }
        if let Some(brokers) = &self.brokers {
            config.kafka.bootstrap_servers = brokers.clone();
        }
        if let Some(topic) = &self.topic {
            config.forwarder.topic = topic.clone();
        }
        if let Some(dir) = &self.spool_dir {
            config.spool.dir = dir.clone();
        }
        if let Some(ms) = self.interval_ms {
            config.sampler.interval_ms = ms;
        }
        let SourceConfig::Simulator(sim) = &mut config.source;
        if let Some(sensors) = self.sensors {
            sim.sensors = sensors;
        }
        if let Some(seed) = self.seed {
            sim.seed = seed;
        }
        if let Some(listen) = &self.metrics_listen {
            config.metrics.listen = listen.clone();
        }
        if let Some(url) = &self.registry_url {
            config.registry.url = Some(url.clone()).filter(|u| !u.is_empty());
        }
        for (key, value) in &self.kafka_property {
            config.kafka.properties.insert(key.clone(), value.clone());
        }
        config.fill_derived_defaults();
        config.validate(&format!("{origin} with overrides"))?;
        Ok(config)
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.effective_config()?;
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return Ok(ExitCode::SUCCESS);
    }
    // Two gateways on one spool would corrupt it.
    let _spool_lock = crate::args::lock_dir(
        &config.spool.dir,
        "spool directory",
        "stop the other gateway or use another --spool-dir",
    )?;
    let metrics = GatewayMetrics::new();
    let (trigger, shutdown) = Shutdown::new();

    let observer: Rc<dyn GatewayObserver> = match &args.ledger {
        Some(path) => Rc::new(
            JsonlLedger::open(path).with_context(|| format!("opening ledger file {}", path.display()))?,
        ),
        None => Rc::new(NoObserver),
    };
    let registry: Rc<dyn SchemaRegistry> = match &config.registry.url {
        Some(url) => Rc::new(
            HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default())
                .context("invalid [registry] url")?,
        ),
        None => Rc::new(InProcessRegistry::new()),
    };
    // Fail fast on a Kafka configuration librdkafka refuses.
    drop(KafkaProducer::new(&config.kafka).context("invalid [kafka] configuration")?);
    let kafka = config.kafka.clone();
    let producer_factory: ProducerFactory = Box::new(move || {
        KafkaProducer::new(&kafka)
            .map(|p| Rc::new(p) as Rc<dyn LogProducer>)
            .map_err(|e| ProduceError::Fatal(e.to_string()))
    });
    let SourceConfig::Simulator(sim_config) = config.source.clone();
    let parts = GatewayParts {
        disk: Rc::new(StdDisk),
        clock: Rc::new(SystemClock),
        source: Box::new(SensorSimulator::new(sim_config)),
        registry,
        producer_factory,
        observer,
        metrics: metrics.clone(),
    };
    let settings = GatewaySettings {
        gateway_id: config.gateway.id.clone(),
        sampler: config.sampler.clone(),
        spool: config.spool.clone(),
        forwarder: config.forwarder.clone(),
        log_interval_ms: config.gateway.log_interval_ms,
    };

    let metrics_listener = crate::serve::bind_metrics(&config.metrics.listen).await?;
    let render_metrics = metrics.clone();
    let gateway_result = crate::serve::run_component(
        metrics_listener,
        std::sync::Arc::new(move || render_metrics.render()),
        trigger,
        shutdown.clone(),
        run_gateway(settings, parts, shutdown),
    )
    .await?;
    gateway_result?;
    Ok(ExitCode::SUCCESS)
}
