//! `soilstream qaqc`: run the QA/QC stream processor against a real broker.

use anyhow::Context;
use soilstream::component::Shutdown;
use soilstream::qaqc::kafka::kafka_parts;
use soilstream::qaqc::{QaqcFileConfig, QaqcMetrics, run_qaqc};
use soilstream::registry::{
    HttpRegistryClient, HttpRegistryClientConfig, InProcessRegistry, SchemaRegistry, TcpConnector,
};
use soilstream::transport::kafka::{KafkaConsumer, ensure_topics};
use soilstream::transport::{ConsumeError, LogConsumer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// Run the QA/QC stream processor: it joins the consumer group on the raw
/// topic and writes the clean, quarantine, flags, aggregates and alerts
/// topics (created with the raw topic's partition count when absent).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Without it the embedded defaults are used
    /// (see examples/qaqc.toml).
    #[arg(long, env = "SOILSTREAM_QAQC_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `[qaqc] instance_id`.
    #[arg(long, env = "SOILSTREAM_QAQC_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Overrides `[qaqc] group_id`.
    #[arg(long, env = "SOILSTREAM_QAQC_GROUP_ID")]
    group_id: Option<String>,
    /// Overrides `[qaqc] state_dir`.
    #[arg(long, env = "SOILSTREAM_QAQC_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Overrides `[kafka] bootstrap_servers`.
    #[arg(long, env = "SOILSTREAM_BROKERS")]
    brokers: Option<String>,
    /// Overrides `[registry] url`.
    #[arg(long, env = "SOILSTREAM_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Overrides `[metrics] listen` (empty disables the endpoint).
    #[arg(long, env = "SOILSTREAM_QAQC_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// A librdkafka property `key=value`, applied after `[kafka.properties]`
    /// (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = crate::args::parse_kafka_property)]
    kafka_property: Vec<(String, String)>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn effective_config(&self) -> anyhow::Result<QaqcFileConfig> {
        let (mut config, origin) = match &self.config {
            Some(path) => (QaqcFileConfig::load(path)?, path.display().to_string()),
            None => (
                QaqcFileConfig::embedded_defaults(),
                "embedded defaults".to_owned(),
            ),
        };
        if let Some(id) = &self.instance_id {
            config.qaqc.instance_id = id.clone();
        }
        if let Some(group) = &self.group_id {
            config.qaqc.group_id = group.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.qaqc.state_dir = dir.clone();
        }
        if let Some(brokers) = &self.brokers {
            config.kafka.bootstrap_servers = brokers.clone();
        }
        if let Some(url) = &self.registry_url {
            config.registry.url = Some(url.clone()).filter(|u| !u.is_empty());
        }
        if let Some(listen) = &self.metrics_listen {
            config.metrics.listen = listen.clone();
        }
        for (key, value) in &self.kafka_property {
            config.kafka.properties.insert(key.clone(), value.clone());
        }
        config.validate(&format!("{origin} with overrides"))?;
        Ok(config)
    }
}

/// Runs qaqc until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.effective_config()?;
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let settings = config.settings();
    // Two instances on one state directory would overwrite each other's
    // checkpoints.
    let _state_lock = crate::args::lock_dir(
        &settings.qaqc.state_dir,
        "qaqc state directory",
        "give every qaqc instance its own --state-dir",
    )?;
    let kafka = config.kafka.clone();
    // Outputs are co-partitioned with the raw topic: create the missing ones
    // with its partition count; ensure_topics refuses existing ones with
    // another count.
    let probe =
        KafkaConsumer::new(&kafka, &settings.qaqc.group_id).context("invalid [kafka] configuration")?;
    let raw_partitions = match probe.partition_count(&settings.topics.raw).await {
        Ok(n) => n,
        Err(ConsumeError::UnknownTopic(topic)) => anyhow::bail!(
            "the raw topic `{topic}` does not exist on {}; create it first (the gateways produce to it)",
            kafka.bootstrap_servers
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("asking {} for the raw topic", kafka.bootstrap_servers));
        }
    };
    drop(probe);
    let outputs: Vec<(&str, u32)> = settings
        .topics
        .outputs()
        .into_iter()
        .map(|t| (t, raw_partitions))
        .collect();
    ensure_topics(&kafka.bootstrap_servers, &kafka.properties, &outputs)
        .await
        .context("the output topics must have the raw topic's partition count (co-partitioning)")?;

    let registry: Rc<dyn SchemaRegistry> = match &config.registry.url {
        Some(url) => Rc::new(
            HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default())
                .context("invalid [registry] url")?,
        ),
        None => Rc::new(InProcessRegistry::new()),
    };
    let metrics = QaqcMetrics::new();
    let parts = kafka_parts(
        &kafka,
        &settings.qaqc.group_id,
        config.group,
        registry,
        metrics.clone(),
        None,
    )
    .context("invalid [kafka] or [group] configuration")?;
    let metrics_listener = crate::serve::bind_metrics(&config.metrics.listen).await?;
    let (trigger, shutdown) = Shutdown::new();
    let render = metrics.clone();
    // run_qaqc rebuilds partitions in tasks of its own thread
    // (`tokio::task::spawn_local`), which need a LocalSet around it.
    let result = tokio::task::LocalSet::new()
        .run_until(crate::serve::run_component(
            metrics_listener,
            std::sync::Arc::new(move || render.render()),
            trigger,
            shutdown.clone(),
            run_qaqc(settings, parts, shutdown),
        ))
        .await?;
    let report = result?;
    tracing::info!(?report, "qaqc finished");
    Ok(ExitCode::SUCCESS)
}
