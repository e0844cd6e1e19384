//! `soilstream archive`: run the archive, verify an archive, replay a date
//! range onto a topic.

use anyhow::Context;
use soilstream::archive::config::StoreConfig;
use soilstream::archive::kafka::{crash_hook_from_env, kafka_parts};
use soilstream::archive::objstore::ObjectStoreArchive;
use soilstream::archive::replay::{HEADER_SRC_OFFSET, HEADER_SRC_PARTITION, ReplayOptions, replay};
use soilstream::archive::store::ArchiveStore;
use soilstream::archive::verify::{VerifyOptions, verify};
use soilstream::archive::{ArchiveFileConfig, ArchiveMetrics, run_archive};
use soilstream::component::Shutdown;
use soilstream::registry::{
    HttpRegistryClient, HttpRegistryClientConfig, InProcessRegistry, SchemaRegistry, TcpConnector,
};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer, KafkaProducer, ensure_topics};
use soilstream::transport::{LogConsumer, read_topic_to_end};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// Archive clean readings into Parquet files partitioned by event date
/// (a local directory or S3), exactly once; or verify / replay an archive.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Check an archive: markers chain, every offset and reading identity
    /// once, dates match directories, no orphan or leftover files; with
    /// --brokers, no offset of the topic missing. Exit 1 with a report when
    /// anything is wrong.
    Verify(VerifyArgs),
    /// Produce the committed records of a date range to a topic: same
    /// partitions, offset order, original bytes and event times, with
    /// source headers; a rerun resumes after what the target already has.
    Replay(ReplayArgs),
}

/// Options of `soilstream archive` (run).
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML). Without it the embedded defaults are used
    /// (see examples/archive.toml).
    #[arg(long, env = "SOILSTREAM_ARCHIVE_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `[archive] instance_id`.
    #[arg(long, env = "SOILSTREAM_ARCHIVE_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Overrides `[archive] group_id`.
    #[arg(long, env = "SOILSTREAM_ARCHIVE_GROUP_ID")]
    group_id: Option<String>,
    /// Overrides `[store] url` (`file://DIR` or `s3://BUCKET[/PREFIX]`).
    #[arg(long, env = "SOILSTREAM_ARCHIVE_STORE")]
    store: Option<String>,
    /// Overrides `[kafka] bootstrap_servers`.
    #[arg(long, env = "SOILSTREAM_BROKERS")]
    brokers: Option<String>,
    /// Overrides `[registry] url`.
    #[arg(long, env = "SOILSTREAM_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Overrides `[metrics] listen` (empty disables the endpoint).
    #[arg(long, env = "SOILSTREAM_ARCHIVE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// A librdkafka property `key=value`, applied after `[kafka.properties]`
    /// (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = crate::args::parse_kafka_property)]
    kafka_property: Vec<(String, String)>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Where an archive is, for verify and replay.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The archive: `file://DIR`, a plain directory path, or `s3://BUCKET[/PREFIX]`.
    root: String,
    /// Topic whose archive to read.
    #[arg(long, default_value = "soil-moisture-clean")]
    topic: String,
    /// The event-time field of the files.
    #[arg(long, default_value = "event_time")]
    event_time_field: String,
    /// S3 endpoint (else `AWS_ENDPOINT_URL`).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region (else `AWS_REGION`).
    #[arg(long)]
    region: Option<String>,
    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long)]
    allow_http: bool,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<ObjectStoreArchive> {
        let url = if self.root.contains("://") {
            self.root.clone()
        } else {
            format!("file://{}", self.root)
        };
        if let Some(dir) = url.strip_prefix("file://") {
            anyhow::ensure!(
                std::path::Path::new(dir).is_dir(),
                "{dir} is not a directory (give the archive root: the [store] url of `soilstream archive`)"
            );
        }
        let config = StoreConfig {
            url,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            ..StoreConfig::default()
        };
        ObjectStoreArchive::open(&config).context("opening the archive")
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Fields identifying a reading, comma-separated (each identity must be
    /// archived once).
    #[arg(long, default_value = "gateway_id,sensor_id,seq", value_delimiter = ',')]
    identity_fields: Vec<String>,
    /// A broker to compare with: every offset of the topic must be archived.
    #[arg(long)]
    brokers: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// First event date, YYYY-MM-DD (inclusive).
    #[arg(long)]
    from: String,
    /// Last event date, YYYY-MM-DD (inclusive; default: --from).
    #[arg(long)]
    to: Option<String>,
    /// Topic to produce to (created with the archived partitions when absent).
    #[arg(long)]
    target: String,
    /// Broker to produce to.
    #[arg(long, env = "SOILSTREAM_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
}

impl RunArgs {
    fn effective_config(&self) -> anyhow::Result<ArchiveFileConfig> {
        let (mut config, origin) = match &self.config {
            Some(path) => (ArchiveFileConfig::load(path)?, path.display().to_string()),
            None => (
                ArchiveFileConfig::embedded_defaults(),
                "embedded defaults".to_owned(),
            ),
        };
        if let Some(id) = &self.instance_id {
            config.archive.instance_id = id.clone();
        }
        if let Some(group) = &self.group_id {
            config.archive.group_id = group.clone();
        }
        if let Some(store) = &self.store {
            config.store.url = store.clone();
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

fn registry_for(url: &Option<String>) -> anyhow::Result<Rc<dyn SchemaRegistry>> {
    Ok(match url {
        Some(url) => Rc::new(
            HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default())
                .context("invalid [registry] url")?,
        ),
        None => Rc::new(InProcessRegistry::new()),
    })
}

/// Runs `soilstream archive ...`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(Action::Verify(verify_args)) => run_verify(verify_args).await,
        Some(Action::Replay(replay_args)) => run_replay(replay_args).await,
        None => run_archive_until_stopped(args.run).await,
    }
}

async fn run_archive_until_stopped(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.effective_config()?;
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let settings = config.settings();
    let store = ObjectStoreArchive::open(&config.store).context("opening the [store]")?;
    tracing::info!(store = %store.description(), "archive store");
    store.check_usable().await.context("checking the [store]")?;
    let registry = registry_for(&config.registry.url)?;
    let crash = crash_hook_from_env().map_err(anyhow::Error::msg)?;
    let metrics = ArchiveMetrics::new();
    let parts = kafka_parts(
        &config.kafka,
        &settings.archive.group_id,
        config.group,
        Rc::new(store),
        registry,
        crash,
        metrics.clone(),
        None,
    )
    .context("invalid [kafka] or [group] configuration")?;
    let metrics_listener = crate::serve::bind_metrics(&config.metrics.listen).await?;
    let (trigger, shutdown) = Shutdown::new();
    let render = metrics.clone();
    let result = tokio::task::LocalSet::new()
        .run_until(crate::serve::run_component(
            metrics_listener,
            std::sync::Arc::new(move || render.render()),
            trigger,
            shutdown.clone(),
            run_archive(settings, parts, shutdown),
        ))
        .await?;
    let report = result?;
    tracing::info!(?report, "archive finished");
    Ok(ExitCode::SUCCESS)
}

async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let topic_offsets = match &args.brokers {
        Some(brokers) => {
            let kafka = KafkaClientConfig::new(brokers);
            let consumer =
                KafkaConsumer::new(&kafka, "soilstream-archive-verify").context("invalid --brokers")?;
            let partitions = consumer
                .partition_count(&args.store.topic)
                .await
                .with_context(|| format!("asking {brokers} for `{}`", args.store.topic))?;
            let mut offsets = BTreeMap::new();
            for p in 0..partitions as i32 {
                offsets.insert(p, consumer.watermarks(&args.store.topic, p).await?);
            }
            Some(offsets)
        }
        None => None,
    };
    let options = VerifyOptions {
        event_time_field: args.store.event_time_field.clone(),
        identity_fields: args.identity_fields.clone(),
        topic_offsets,
    };
    let report = verify(&store as &dyn ArchiveStore, &args.store.topic, &options).await?;
    if args.json {
        let json = serde_json::json!({
            "topic": args.store.topic,
            "clean": report.is_clean(),
            "rows": report.rows(),
            "files": report.files,
            "rows_per_date": report.rows_per_date,
            "partitions": report.partitions.iter().map(|(p, s)| (p.to_string(), serde_json::json!({
                "first": s.first, "next": s.next, "batches": s.batches, "rows": s.rows, "skipped": s.skipped,
            }))).collect::<BTreeMap<_, _>>(),
            "problem_count": report.problem_count,
            "problems": report.problems,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", report.render(&args.store.topic));
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let to = args.to.clone().unwrap_or_else(|| args.from.clone());
    for date in [&args.from, &to] {
        anyhow::ensure!(
            date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
            "`{date}` is not a date YYYY-MM-DD"
        );
    }
    let kafka = KafkaClientConfig::new(&args.brokers);
    // Partitions as archived: the target gets as many.
    let mut report = soilstream::archive::verify::VerifyReport::default();
    let batches =
        soilstream::archive::verify::committed_batches(&store, &args.store.topic, &mut report).await?;
    let partitions = batches.keys().max().map_or(1, |p| *p as u32 + 1);
    ensure_topics(
        &kafka.bootstrap_servers,
        &kafka.properties,
        &[(&args.target, partitions)],
    )
    .await
    .with_context(|| {
        format!(
            "the target topic `{}` needs at least {partitions} partitions",
            args.target
        )
    })?;
    // Resume: the highest source offset already on the target, per partition.
    let mut consumer =
        KafkaConsumer::new(&kafka, "soilstream-archive-replay").context("invalid --brokers")?;
    let existing = read_topic_to_end(&mut consumer, &args.target, 30_000).await?;
    let mut already: BTreeMap<i32, i64> = BTreeMap::new();
    for record in &existing {
        let source = |name: &str| {
            record
                .header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        if let (Some(p), Some(o)) = (source(HEADER_SRC_PARTITION), source(HEADER_SRC_OFFSET)) {
            let entry = already.entry(p as i32).or_insert(o);
            *entry = (*entry).max(o);
        }
    }
    let producer = KafkaProducer::new(&kafka).context("invalid --brokers")?;
    let options = ReplayOptions {
        from_date: args.from.clone(),
        to_date: to.clone(),
        target_topic: args.target.clone(),
        event_time_field: args.store.event_time_field.clone(),
        already_replayed: already,
    };
    let done = replay(&store, &args.store.topic, &options, &producer).await?;
    println!(
        "replayed {} records of {}..={} from {} files to `{}` ({} already there from an earlier run)",
        done.produced, args.from, to, done.files_read, args.target, done.resumed_past
    );
    Ok(ExitCode::SUCCESS)
}
