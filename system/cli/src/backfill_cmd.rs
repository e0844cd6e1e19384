//! `soilstream backfill`: ingests a field log (our long CSV, a wide CSV, a
//! Campbell TOA5 `.dat`, an ISMN `.stm`) into the raw topic, each record
//! stamped with its original event time.
//!
//! ```text
//! soilstream backfill examples/sdcard-log.csv --gateway-id gw-07-sd \
//!     --brokers 127.0.0.1:9092 --max-rate 500 --retention-ms 604800000
//! ```
//!
//! Re-running the same command after a kill resumes after the checkpoint
//! (`<FILE>.checkpoint`); re-running it after completion sends nothing.
//! Bad rows are listed in `<FILE>.rejects.csv` (or stop the run with
//! `--strict`). See `soilstream::backfill` for the CSV columns and the
//! checkpoint format.
//!
//! Exit codes: 0 done (bad rows may have been skipped: see the summary),
//! 1 error, 2 stopped at a bad row (`--strict`), 130 interrupted (resume by
//! running the same command again).
//!
//! Must run on a current-thread runtime: the producer seam is not `Send`.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use soilstream::backfill::format::{LogFormat, decode_all};
use soilstream::backfill::profile::{Profile, UtcOffset};
use soilstream::backfill::{
    BackfillError, BackfillOptions, BackfillProgress, BackfillSummary, DEFAULT_CHECKPOINT_EVERY_ROWS,
    DEFAULT_FUTURE_TOLERANCE_MS, DEFAULT_MAX_IN_FLIGHT_ROWS, DEFAULT_REGISTRY_WAIT_MS, DEFAULT_TOPIC,
    LogProgress, ProgressSnapshot, run_backfill,
};
use soilstream::clock::SystemClock;
use soilstream::registry::{
    HttpRegistryClient, HttpRegistryClientConfig, InProcessRegistry, SchemaRegistry, TcpConnector,
};
use soilstream::transport::LogProducer;
use soilstream::transport::kafka::{KafkaClientConfig, KafkaProducer, topic_retention_ms};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// Exit code of a run stopped by a bad row in strict mode.
const EXIT_BAD_ROW: u8 = 2;
/// Exit code of a run interrupted by Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Arguments of `soilstream backfill`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The field log: a long CSV (sensor_id, timestamp, moisture; optional
    /// temperature, ec, depth_cm, battery_v, flag), a wide CSV (VWC_10cm,
    /// T_10cm, ...), a Campbell Scientific TOA5 .dat or an ISMN .stm file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The file's format: long-csv, wide-csv, toa5, ismn [default: the
    /// profile's, else detected from the first line].
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    format: Option<LogFormat>,
    /// A mapping profile (TOML): which columns are which sensor, depth and
    /// quantity, their units, the UTC offset of naive timestamps, the values
    /// that mean missing (examples in examples/profiles/).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// UTC offset of naive timestamps, e.g. -06:00 (TOA5 loggers keep
    /// standard time without an offset); over the profile's.
    #[arg(long, value_name = "OFFSET", value_parser = parse_utc_offset)]
    utc_offset: Option<UtcOffset>,
    /// Decode the file and print what would be sent (and every bad row),
    /// without reaching a broker or a registry.
    #[arg(long)]
    dry_run: bool,
    /// Gateway id of the produced records. Use one of the backfill's own
    /// (e.g. `gw-07-sd`): seq numbers are the file's line numbers.
    #[arg(long, value_name = "ID")]
    gateway_id: String,
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(
        long,
        env = "SOILSTREAM_BROKERS",
        value_name = "ADDR",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Topic to produce to.
    #[arg(long, value_name = "T", default_value = DEFAULT_TOPIC)]
    topic: String,
    /// Most rows per second to send (default: as fast as the broker acknowledges).
    #[arg(long, value_name = "ROWS_PER_S")]
    max_rate: Option<u32>,
    /// Most rows sent and not yet acknowledged.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT_ROWS)]
    max_in_flight: usize,
    /// Stop at the first bad row (exit code 2) instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Where to write bad rows [default: <FILE>.rejects.csv].
    #[arg(long, value_name = "PATH")]
    rejects: Option<PathBuf>,
    /// Where to keep the resume checkpoint [default: <FILE>.checkpoint].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,
    /// Ignore an existing checkpoint and start from the first row.
    #[arg(long)]
    restart: bool,
    /// Depth in cm for rows without a depth_cm value.
    #[arg(long, value_name = "CM")]
    depth_cm: Option<i32>,
    /// The topic's retention.ms: warn about rows older than that [default:
    /// asked from the broker (DescribeConfigs), if it reports one].
    #[arg(long, value_name = "MS")]
    retention_ms: Option<i64>,
    /// Warn about event times more than this far ahead of the clock.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_FUTURE_TOLERANCE_MS)]
    future_tolerance_ms: i64,
    /// Keep retrying an unavailable schema registry this long before
    /// failing.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_REGISTRY_WAIT_MS)]
    registry_wait_ms: u64,
    /// Save the checkpoint after this many newly acknowledged rows.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECKPOINT_EVERY_ROWS)]
    checkpoint_every: u64,
    /// A librdkafka property, e.g. `-X security.protocol=SSL` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = crate::args::parse_kafka_property)]
    properties: Vec<(String, String)>,
    /// Print the summary as JSON (on stdout) instead of text.
    #[arg(long)]
    json: bool,
    /// Schema registry URL: the schema is registered (or looked up) there and
    /// its id written into every value. Without it: in-process id 1.
    #[arg(long, env = "SOILSTREAM_REGISTRY_URL", value_name = "URL")]
    registry: Option<String>,
}

fn parse_format(text: &str) -> Result<LogFormat, String> {
    LogFormat::parse(text)
}

fn parse_utc_offset(text: &str) -> Result<UtcOffset, String> {
    UtcOffset::parse(text)
}

impl Args {
    /// The library options these arguments stand for.
    fn options(&self) -> anyhow::Result<BackfillOptions> {
        let mut options = BackfillOptions::new(self.file.clone(), self.gateway_id.clone());
        options.format = self.format;
        options.utc_offset = self.utc_offset;
        options.profile = self.profile.as_deref().map(Profile::load).transpose()?;
        options.topic = self.topic.clone();
        options.default_depth_cm = self.depth_cm;
        options.strict = self.strict;
        options.rejects_path = self.rejects.clone();
        options.checkpoint_path = self.checkpoint.clone();
        options.restart = self.restart;
        options.max_rate_rows_per_s = self.max_rate;
        options.max_in_flight_rows = self.max_in_flight;
        options.checkpoint_every_rows = self.checkpoint_every;
        options.retention_ms = self.retention_ms;
        options.future_tolerance_ms = self.future_tolerance_ms;
        options.registry_wait_ms = self.registry_wait_ms;
        Ok(options)
    }
}

/// The producer the backfill sends through.
fn make_producer(brokers: &str, properties: &[(String, String)]) -> anyhow::Result<Rc<dyn LogProducer>> {
    let config = KafkaClientConfig {
        bootstrap_servers: brokers.to_owned(),
        properties: properties.iter().cloned().collect(),
    };
    Ok(Rc::new(KafkaProducer::new(&config)?))
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut options = args.options()?;
    options.validate()?;
    if args.dry_run {
        return dry_run(&options, args.json);
    }
    if options.retention_ms.is_none() {
        // Ask the broker; a broker that reports no retention (Tansu) leaves
        // the check off unless --retention-ms is given.
        let config = KafkaClientConfig {
            bootstrap_servers: args.brokers.clone(),
            properties: args.properties.iter().cloned().collect(),
        };
        match topic_retention_ms(&config, &args.topic).await {
            Ok(Some(ms)) => {
                tracing::info!(retention_ms = ms, topic = %args.topic, "topic retention from the broker");
                options.retention_ms = Some(ms);
            }
            Ok(None) => tracing::info!(
                topic = %args.topic,
                "the broker reports no retention.ms for the topic; pass --retention-ms to warn about rows older than it"
            ),
            Err(error) => tracing::warn!(%error, "cannot read the topic's retention.ms; pass --retention-ms"),
        }
    }
    let producer = make_producer(&args.brokers, &args.properties)
        .with_context(|| format!("creating the Kafka producer for {}", args.brokers))?;
    // Without a registry the values carry schema id 1 of an in-process
    // registry, which consumers decode with the shipped v1 schema.
    let registry: Box<dyn SchemaRegistry> = match &args.registry {
        Some(url) => Box::new(
            HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default())
                .context("--registry")?,
        ),
        None => Box::new(InProcessRegistry::new()),
    };
    let progress: Box<dyn BackfillProgress> = if std::io::stderr().is_terminal() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LogProgress::default())
    };
    let backfill = run_backfill(
        options,
        std::rc::Rc::new(soilstream::disk::StdDisk),
        producer.as_ref(),
        registry.as_ref(),
        &SystemClock,
        progress.as_ref(),
    );
    let result = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "interrupted: rows acknowledged up to the last checkpoint are kept; \
                 run the same command again to resume"
            );
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        result = backfill => result,
    };
    match result {
        Ok(summary) => {
            print_summary(&summary, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if let Some(summary) = error.partial_summary() {
                print_summary(summary, args.json)?;
            }
            if matches!(error, BackfillError::StrictReject { .. }) {
                eprintln!("error: {error}");
                return Ok(ExitCode::from(EXIT_BAD_ROW));
            }
            Err(error.into())
        }
    }
}

/// Most readings a dry run prints (the counts cover all of them).
const DRY_RUN_READINGS_SHOWN: usize = 20;

/// `--dry-run`: decodes the whole file and shows what would be sent.
fn dry_run(options: &BackfillOptions, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&options.csv_path)
        .with_context(|| format!("reading {}", options.csv_path.display()))?;
    let (format, rows, errors) = decode_all(&bytes, &options.csv_path, options.format, options.cell_rules())
        .map_err(BackfillError::Header)?;
    let mut stdout = std::io::stdout().lock();
    if json {
        let shown: Vec<serde_json::Value> = rows
            .iter()
            .take(DRY_RUN_READINGS_SHOWN)
            .map(|r| {
                serde_json::json!({
                    "line": r.line, "sensor_id": r.sensor_id, "event_time_ms": r.event_time_ms,
                    "moisture_vwc": r.moisture_vwc, "soil_temp_c": r.soil_temp_c,
                    "bulk_ec_ds_m": r.bulk_ec_ds_m, "depth_cm": r.depth_cm,
                    "battery_v": r.battery_v, "source_flag": r.source_flag,
                })
            })
            .collect();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let out = serde_json::json!({
            "format": format.name(), "readings": rows.len(), "rejected": errors.len(),
            "first_readings": shown, "rejects": errors,
        });
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(
            stdout,
            "{}: {} format, {} readings would be sent, {} rows rejected",
            options.csv_path.display(),
            format.name(),
            rows.len(),
            errors.len()
        )?;
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for r in rows.iter().take(DRY_RUN_READINGS_SHOWN) {
            writeln!(
                stdout,
                "  line {} {} {} moisture={} m3/m3 temp={} C ec={} dS/m depth={} cm battery={} V flag={}",
                r.line,
                r.sensor_id,
                soilstream::backfill::summary::format_event_time(r.event_time_ms),
                r.moisture_vwc,
                show(r.soil_temp_c),
                show(r.bulk_ec_ds_m),
                r.depth_cm,
                show(r.battery_v),
                r.source_flag.as_deref().unwrap_or("-")
            )?;
        }
        for error in errors.iter().take(DRY_RUN_READINGS_SHOWN) {
            writeln!(stdout, "  rejected: {error}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(summary: &BackfillSummary, json: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut stdout, summary).context("writing the summary")?;
        writeln!(stdout).context("writing the summary")?;
    } else {
        writeln!(stdout, "{summary}").context("writing the summary")?;
    }
    Ok(())
}

/// A progress bar on stderr: bytes of the file read (with the ETA) and
/// rows per second.
struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {percent:>3}% {bytes}/{total_bytes} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Self { bar }
    }
}

impl BackfillProgress for BarProgress {
    fn begin(&self, file_size_bytes: u64) {
        self.bar.set_length(file_size_bytes);
        self.bar.reset_elapsed();
    }

    fn update(&self, snapshot: &ProgressSnapshot) {
        self.bar
            .set_position(snapshot.bytes_read.min(snapshot.file_size_bytes));
        let elapsed_s = self.bar.elapsed().as_secs_f64();
        let done = snapshot.rows_produced + snapshot.rows_skipped_done + snapshot.rows_rejected;
        let rows_per_s = if elapsed_s > 0.0 {
            done as f64 / elapsed_s
        } else {
            0.0
        };
        self.bar.set_message(format!(
            "{} rows, {rows_per_s:.0} rows/s, {} rejected",
            snapshot.rows_read, snapshot.rows_rejected
        ));
    }

    fn end(&self, snapshot: &ProgressSnapshot) {
        self.update(snapshot);
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("backfill").chain(argv.iter().copied())).map(|cli| cli.args)
    }

    #[test]
    fn flags_map_to_options() {
        let args = parse(&[
            "log.csv",
            "--gateway-id",
            "gw-7-sd",
            "--brokers",
            "10.0.0.1:9092",
            "--topic",
            "raw",
            "--max-rate",
            "250",
            "--max-in-flight",
            "64",
            "--strict",
            "--rejects",
            "bad.csv",
            "--checkpoint",
            "cp.json",
            "--restart",
            "--depth-cm",
            "30",
            "--retention-ms",
            "604800000",
            "-X",
            "security.protocol=SSL",
            "-X",
            "linger.ms=5",
            "--json",
        ])
        .unwrap();
        let options = args.options().unwrap();
        assert_eq!(options.csv_path, PathBuf::from("log.csv"));
        assert_eq!(options.gateway_id, "gw-7-sd");
        assert_eq!(options.topic, "raw");
        assert_eq!(options.max_rate_rows_per_s, Some(250));
        assert_eq!(options.max_in_flight_rows, 64);
        assert!(options.strict && options.restart && args.json);
        assert_eq!(options.effective_rejects_path(), PathBuf::from("bad.csv"));
        assert_eq!(options.effective_checkpoint_path(), PathBuf::from("cp.json"));
        assert_eq!(options.default_depth_cm, Some(30));
        assert_eq!(options.retention_ms, Some(604_800_000));
        assert_eq!(args.brokers, "10.0.0.1:9092");
        assert_eq!(
            args.properties,
            [
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("linger.ms".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn defaults() {
        let args = parse(&["log.csv", "--gateway-id", "gw"]).unwrap();
        let options = args.options().unwrap();
        assert_eq!(options, BackfillOptions::new("log.csv", "gw"));
        assert_eq!(options.topic, "soil-moisture-raw");
        assert!(!args.json);
        assert!(parse(&["log.csv"]).is_err(), "--gateway-id is required");
        assert!(parse(&["--gateway-id", "gw"]).is_err(), "FILE is required");
    }

    #[test]
    fn bad_properties_are_refused() {
        let error = parse(&["log.csv", "--gateway-id", "gw", "-X", "novalue"]).unwrap_err();
        assert!(
            error.to_string().contains("expected KEY=VALUE, got `novalue`"),
            "{error}"
        );
        assert!(parse(&["log.csv", "--gateway-id", "gw", "-X", "=v"]).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn invalid_options_fail_before_connecting() {
        let args = parse(&["log.csv", "--gateway-id", "gw", "--max-rate", "0"]).unwrap();
        let error = run(args).await.unwrap_err();
        assert!(
            error.to_string().contains("max rate must be at least 1 row/s"),
            "{error}"
        );
    }
}
