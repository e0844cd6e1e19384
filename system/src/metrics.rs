//! Gateway metrics: counters and gauges in a Prometheus registry, rendered in
//! the OpenMetrics text format for the `/metrics` endpoint and summarised in
//! log lines.
//!
//! The metrics are plain values shared by the components; how they are exposed
//! (an HTTP endpoint in the real world, direct reads in the simulator) is the
//! caller's business.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Why a reading did not enter the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The spool's disk budget is exhausted and the policy rejects new readings.
    SpoolFull,
    /// The reading failed validation against the schema.
    Invalid,
    /// The disk failed (I/O error) and the reading could not be made durable.
    Io,
}

impl RejectReason {
    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::SpoolFull => "spool_full",
            RejectReason::Invalid => "invalid",
            RejectReason::Io => "io_error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Every metric a gateway exposes. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    registry: Arc<Registry>,
    /// Readings taken from the sensor source.
    pub readings_sampled: Counter,
    /// Readings acknowledged durable by the spool.
    pub readings_durable: Counter,
    /// Readings whose delivery the broker acknowledged.
    pub readings_delivered: Counter,
    rejected: Family<ReasonLabel, Counter>,
    /// Undelivered readings dropped by the `drop_oldest` full-spool policy.
    pub readings_dropped: Counter,
    /// Damaged spool records found (never delivered).
    pub spool_damaged_records: Counter,
    /// Times the forwarder rewound to the cursor and resent after a failure.
    pub forwarder_retries: Counter,
    /// Produce requests retried by the client library.
    pub producer_request_retries: Gauge,
    /// Whether the producer currently reaches the broker (1) or not (0).
    pub broker_up: Gauge,
    /// Undelivered readings in the spool.
    pub spool_depth_records: Gauge,
    /// Bytes of spool segment files.
    pub spool_depth_bytes: Gauge,
    /// Age of the oldest undelivered reading (gateway clock minus its event time), ms.
    pub oldest_undelivered_age_ms: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// A fresh set of metrics, registered under the `soilstream` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("soilstream");
        let readings_sampled = Counter::default();
        let readings_durable = Counter::default();
        let readings_delivered = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let readings_dropped = Counter::default();
        let spool_damaged_records = Counter::default();
        let forwarder_retries = Counter::default();
        let producer_request_retries = Gauge::default();
        let broker_up = Gauge::default();
        let spool_depth_records = Gauge::default();
        let spool_depth_bytes = Gauge::default();
        let oldest_undelivered_age_ms = Gauge::default();
        registry.register(
            "readings_sampled",
            "Readings taken from the sensor source",
            readings_sampled.clone(),
        );
        registry.register(
            "readings_durable",
            "Readings acknowledged durable by the spool (after fsync)",
            readings_durable.clone(),
        );
        registry.register(
            "readings_delivered",
            "Readings acknowledged by the broker (acks=all)",
            readings_delivered.clone(),
        );
        registry.register(
            "readings_rejected",
            "Readings that did not enter the spool, by reason",
            rejected.clone(),
        );
        registry.register(
            "readings_dropped",
            "Undelivered readings dropped by the drop_oldest full-spool policy",
            readings_dropped.clone(),
        );
        registry.register(
            "spool_damaged_records",
            "Damaged spool records found by recovery or reads (never delivered)",
            spool_damaged_records.clone(),
        );
        registry.register(
            "forwarder_retries",
            "Forwarder rewinds to the delivery cursor after a failed delivery",
            forwarder_retries.clone(),
        );
        registry.register(
            "producer_request_retries",
            "Produce requests retried by the Kafka client",
            producer_request_retries.clone(),
        );
        registry.register(
            "broker_up",
            "1 when the producer reaches the broker, else 0",
            broker_up.clone(),
        );
        registry.register(
            "spool_depth_records",
            "Undelivered readings in the spool",
            spool_depth_records.clone(),
        );
        registry.register(
            "spool_depth_bytes",
            "Bytes of spool segment files",
            spool_depth_bytes.clone(),
        );
        registry.register(
            "oldest_undelivered_age_ms",
            "Age of the oldest undelivered reading in ms (gateway clock minus event time)",
            oldest_undelivered_age_ms.clone(),
        );
        Self {
            registry: Arc::new(registry),
            readings_sampled,
            readings_durable,
            readings_delivered,
            rejected,
            readings_dropped,
            spool_damaged_records,
            forwarder_retries,
            producer_request_retries,
            broker_up,
            spool_depth_records,
            spool_depth_bytes,
            oldest_undelivered_age_ms,
        }
    }

    /// Counts a reading that did not enter the spool.
    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Readings rejected for `reason` so far.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .get()
    }

    /// The metrics in the OpenMetrics text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A one-line summary for periodic log output.
    pub fn summary(&self) -> String {
        format!(
            "sampled={} durable={} delivered={} rejected_full={} rejected_invalid={} rejected_io={} dropped={} damaged={} \
             spool_records={} spool_bytes={} oldest_age_ms={} broker_up={} forwarder_retries={} request_retries={}",
            self.readings_sampled.get(),
            self.readings_durable.get(),
            self.readings_delivered.get(),
            self.rejected(RejectReason::SpoolFull),
            self.rejected(RejectReason::Invalid),
            self.rejected(RejectReason::Io),
            self.readings_dropped.get(),
            self.spool_damaged_records.get(),
            self.spool_depth_records.get(),
            self.spool_depth_bytes.get(),
            self.oldest_undelivered_age_ms.get(),
            self.broker_up.get(),
            self.forwarder_retries.get(),
            self.producer_request_retries.get(),
        )
    }
}

/// Serves `GET /metrics` (OpenMetrics text) and `GET /healthz` on `listener`
/// until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: GatewayMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_metrics_text(listener, Arc::new(move || metrics.render()), shutdown).await
}

/// Renders a component's metrics in the OpenMetrics text format.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` (what `render` gives, OpenMetrics text) and `GET
/// /healthz` on `listener` until `shutdown` resolves: the one endpoint every
/// component (gateway, qaqc, archive) exposes.
pub async fn serve_metrics_text(
    listener: tokio::net::TcpListener,
    render: MetricsRenderer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_contains_every_metric() {
        let m = GatewayMetrics::new();
        m.readings_sampled.inc();
        m.count_rejected(RejectReason::SpoolFull);
        m.spool_depth_records.set(7);
        let text = m.render();
        for name in [
            "soilstream_readings_sampled_total 1",
            "soilstream_readings_rejected_total{reason=\"spool_full\"} 1",
            "soilstream_spool_depth_records 7",
            "soilstream_oldest_undelivered_age_ms",
            "soilstream_broker_up",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(m.summary().contains("rejected_full=1"));
    }
}
