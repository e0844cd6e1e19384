//! The edge gateway: a sampler filling the durable spool and a forwarder
//! draining it to the broker, running concurrently on one task.
//!
//! The gateway knows nothing of the world it runs in: disk, clock, sensor
//! source, registry and producer all come in through [`GatewayParts`]. The
//! `soilstream gateway` command wires real implementations; the simulator
//! wires simulated ones.

pub mod config;
mod forwarder;
pub mod observer;
pub mod reject_log;
mod sampler;

pub use forwarder::{HEADER_GATEWAY_ID, HEADER_SEQ, ProducerFactory, outbound_record};

use crate::clock::Clock;
use crate::disk::Disk;
use crate::metrics::GatewayMetrics;
use crate::registry::SchemaRegistry;
use crate::source::SensorSource;
use crate::spool::{RecoveryReport, Spool, SpoolConfig, SpoolError, Verdict};
use config::{ForwarderConfig, SamplerConfig};
use observer::GatewayObserver;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::sync::Notify;

pub use crate::component::{Shutdown, ShutdownTrigger};

/// The world-specific parts a gateway runs with.
pub struct GatewayParts {
    /// Where the spool lives.
    pub disk: Rc<dyn Disk>,
    /// The gateway's wall clock (stamps event times).
    pub clock: Rc<dyn Clock>,
    /// The probes.
    pub source: Box<dyn SensorSource>,
    /// Where the schema id comes from.
    pub registry: Rc<dyn SchemaRegistry>,
    /// Creates the producer (again after fatal errors).
    pub producer_factory: ProducerFactory,
    /// Receives reading life events (ledgers, tests).
    pub observer: Rc<dyn GatewayObserver>,
    /// Metrics to update.
    pub metrics: GatewayMetrics,
}

/// What a gateway is configured with (the world-independent part).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Gateway identifier.
    pub gateway_id: String,
    /// Sampling cadence and sync policy.
    pub sampler: SamplerConfig,
    /// The spool.
    pub spool: SpoolConfig,
    /// The forwarder.
    pub forwarder: ForwarderConfig,
    /// Interval between metric summary log lines, ms (0 = none).
    pub log_interval_ms: u64,
}

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The spool could not be opened (its directory is unusable).
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Opens the spool (recovering it), then samples and forwards until
/// `shutdown` fires; returns the recovery report of the spool it opened.
pub async fn run_gateway(
    settings: GatewaySettings,
    parts: GatewayParts,
    shutdown: Shutdown,
) -> Result<RecoveryReport, GatewayError> {
    let (spool, recovery) = Spool::open(parts.disk.clone(), settings.spool.clone())?;
    log_recovery(&recovery);
    parts
        .metrics
        .spool_damaged_records
        .inc_by(durable_records_lost_to_damage(&recovery));
    let spool = Rc::new(RefCell::new(spool));
    let durable = Rc::new(Notify::new());
    let sampler_stopped = Rc::new(std::cell::Cell::new(false));
    // Anything recovered is ready to forward.
    durable.notify_one();

    let sampler = sampler::Sampler {
        gateway_id: settings.gateway_id.clone(),
        config: settings.sampler.clone(),
        source: parts.source,
        clock: parts.clock.clone(),
        spool: spool.clone(),
        metrics: parts.metrics.clone(),
        observer: parts.observer.clone(),
        durable: durable.clone(),
        stopped: sampler_stopped.clone(),
        reject_log: reject_log::RejectLog::new(
            parts.disk.clone(),
            settings.sampler.reject_log.clone(),
            settings.sampler.reject_log_max_bytes,
        ),
    };
    let forwarder = forwarder::Forwarder {
        config: settings.forwarder.clone(),
        spool: spool.clone(),
        producer_factory: parts.producer_factory,
        registry: parts.registry,
        clock: parts.clock,
        metrics: parts.metrics.clone(),
        observer: parts.observer,
        durable,
        sampler_stopped,
        // Damage found by recovery is counted above (without crash debris);
        // only damage met while reading is added from here on.
        counted: std::cell::Cell::new(forwarder::CountedSpoolTotals {
            damaged_records: spool.borrow().stats().damaged_records_total,
            dropped_records: 0,
        }),
    };
    tracing::info!(gateway = %settings.gateway_id, "gateway running");
    tokio::join!(
        sampler.run(shutdown.clone()),
        forwarder.run(shutdown.clone()),
        log_metrics(parts.metrics, settings.log_interval_ms, shutdown),
    );
    tracing::info!(gateway = %settings.gateway_id, "gateway stopped");
    Ok(recovery)
}

/// Records recovery found destroyed by damage other than crash debris (a
/// torn tail or unsynced writes are expected after a power cut and were
/// never acknowledged).
fn durable_records_lost_to_damage(report: &RecoveryReport) -> u64 {
    report
        .damage
        .ranges
        .iter()
        .filter(|range| !range.kind.is_crash_debris())
        .filter_map(|range| range.missing_indexes.map(|m| m.count()))
        .sum()
}

fn log_recovery(report: &RecoveryReport) {
    if report.damage.verdict() != Verdict::Damaged && !report.state_degraded() {
        tracing::info!(%report, "spool opened");
    } else {
        tracing::warn!(%report, "spool recovered with damage; damaged records will not be delivered");
    }
}

async fn log_metrics(metrics: GatewayMetrics, interval_ms: u64, mut shutdown: Shutdown) {
    if interval_ms == 0 {
        return;
    }
    let interval = tokio::time::Duration::from_millis(interval_ms);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(interval) => tracing::info!(metrics = %metrics.summary(), "gateway status"),
        }
    }
    tracing::info!(metrics = %metrics.summary(), "gateway final status");
}
