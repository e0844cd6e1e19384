//! qaqc metrics, in the same registry style and endpoint as the gateway's
//! (`soilstream_qaqc_` prefix).

use super::alerts::AlertKind;
use super::checks::QuarantineReason;
use super::flags::Flag;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FlagLabel {
    flag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlertLabel {
    alert: String,
    transition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabel {
    partition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

/// Every metric a qaqc instance exposes. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct QaqcMetrics {
    registry: Arc<Registry>,
    /// Raw records consumed.
    pub records_in: Counter,
    records_out: Family<TopicLabel, Counter>,
    quarantined: Family<ReasonLabel, Counter>,
    flagged: Family<FlagLabel, Counter>,
    alerts: Family<AlertLabel, Counter>,
    /// Raw repeats of an identity with the same values, dropped.
    pub duplicates_dropped: Counter,
    /// Raw repeats whose first copy is older than the state kept: dropped
    /// without comparing values.
    pub duplicates_unverifiable: Counter,
    /// Raw records re-read after a restart whose outputs already exist.
    pub replayed_skipped: Counter,
    /// Flag revisions written.
    pub flag_revisions: Counter,
    /// Window revisions after the first (corrections by late data).
    pub late_window_revisions: Counter,
    /// Windows with readings not emitted yet.
    pub open_windows: Gauge,
    /// Sensors with state.
    pub sensors: Gauge,
    lag: Family<PartitionLabel, Gauge>,
    /// Partitions assigned, revoked or lost (rebalances seen by this member).
    pub rebalances: Counter,
    /// Partition states rebuilt from the output topics.
    pub rebuilds: Counter,
    /// Output records read back by rebuilds.
    pub rebuild_records_read: Counter,
    limit_hits: Family<LimitLabel, Counter>,
    /// Commits refused or failed.
    pub commit_failures: Counter,
    /// Outputs whose delivery failed (the partitions are rebuilt).
    pub delivery_failures: Counter,
    /// Outputs enqueued and not yet acknowledged.
    pub in_flight_outputs: Gauge,
    /// Checkpoints written.
    pub checkpoints_written: Counter,
}

impl Default for QaqcMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl QaqcMetrics {
    /// A fresh set of metrics under the `soilstream_qaqc` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("soilstream_qaqc");
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            records_in: Counter::default(),
            records_out: Family::default(),
            quarantined: Family::default(),
            flagged: Family::default(),
            alerts: Family::default(),
            duplicates_dropped: Counter::default(),
            duplicates_unverifiable: Counter::default(),
            replayed_skipped: Counter::default(),
            flag_revisions: Counter::default(),
            late_window_revisions: Counter::default(),
            open_windows: Gauge::default(),
            sensors: Gauge::default(),
            lag: Family::default(),
            rebalances: Counter::default(),
            rebuilds: Counter::default(),
            rebuild_records_read: Counter::default(),
            limit_hits: Family::default(),
            commit_failures: Counter::default(),
            delivery_failures: Counter::default(),
            in_flight_outputs: Gauge::default(),
            checkpoints_written: Counter::default(),
        };
        registry.register("records_in", "Raw records consumed", metrics.records_in.clone());
        registry.register(
            "records_out",
            "Records written, by topic",
            metrics.records_out.clone(),
        );
        registry.register(
            "quarantined",
            "Records sent to quarantine, by reason",
            metrics.quarantined.clone(),
        );
        registry.register(
            "flagged",
            "Clean readings written with a soft flag, by flag",
            metrics.flagged.clone(),
        );
        registry.register(
            "alerts",
            "Alert transitions written, by alert and transition",
            metrics.alerts.clone(),
        );
        registry.register(
            "duplicates_dropped",
            "Raw repeats of an identity with the same values, dropped",
            metrics.duplicates_dropped.clone(),
        );
        registry.register(
            "duplicates_unverifiable",
            "Raw repeats older than the kept state, dropped without comparing values",
            metrics.duplicates_unverifiable.clone(),
        );
        registry.register(
            "replayed_skipped",
            "Raw records re-read after a restart whose outputs already exist",
            metrics.replayed_skipped.clone(),
        );
        registry.register(
            "flag_revisions",
            "Flag revisions written",
            metrics.flag_revisions.clone(),
        );
        registry.register(
            "late_window_revisions",
            "Window revisions after the first (corrections by late data)",
            metrics.late_window_revisions.clone(),
        );
        registry.register(
            "open_windows",
            "Windows with readings not emitted yet",
            metrics.open_windows.clone(),
        );
        registry.register("sensors", "Sensors with state", metrics.sensors.clone());
        registry.register(
            "lag_records",
            "Raw records not yet consumed, by partition",
            metrics.lag.clone(),
        );
        registry.register(
            "rebalances",
            "Group changes seen (assignments, revocations, losses)",
            metrics.rebalances.clone(),
        );
        registry.register(
            "rebuilds",
            "Partition states rebuilt from the output topics",
            metrics.rebuilds.clone(),
        );
        registry.register(
            "rebuild_records_read",
            "Output records read back by rebuilds",
            metrics.rebuild_records_read.clone(),
        );
        registry.register(
            "state_limit_hits",
            "Times a state limit dropped state, by limit",
            metrics.limit_hits.clone(),
        );
        registry.register(
            "commit_failures",
            "Input offset commits refused or failed",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "delivery_failures",
            "Outputs whose delivery failed",
            metrics.delivery_failures.clone(),
        );
        registry.register(
            "in_flight_outputs",
            "Outputs enqueued and not yet acknowledged",
            metrics.in_flight_outputs.clone(),
        );
        registry.register(
            "checkpoints_written",
            "Local checkpoints written",
            metrics.checkpoints_written.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Counts a record written to `topic`.
    pub fn count_out(&self, topic: &str) {
        self.records_out
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    /// Records written to `topic` so far.
    pub fn out(&self, topic: &str) -> u64 {
        self.records_out
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .get()
    }

    /// Counts a quarantined record.
    pub fn count_quarantined(&self, reason: QuarantineReason) {
        self.quarantined
            .get_or_create(&ReasonLabel {
                reason: reason.code().to_owned(),
            })
            .inc();
    }

    /// Records quarantined for `reason` so far.
    pub fn quarantined(&self, reason: QuarantineReason) -> u64 {
        self.quarantined
            .get_or_create(&ReasonLabel {
                reason: reason.code().to_owned(),
            })
            .get()
    }

    /// Counts a clean reading written with `flag`.
    pub fn count_flagged(&self, flag: Flag) {
        self.flagged
            .get_or_create(&FlagLabel {
                flag: flag.code().to_owned(),
            })
            .inc();
    }

    /// Counts an alert transition.
    pub fn count_alert(&self, kind: AlertKind, transition: &str) {
        self.alerts
            .get_or_create(&AlertLabel {
                alert: kind.name().to_owned(),
                transition: transition.to_owned(),
            })
            .inc();
    }

    /// Sets the lag of a partition.
    pub fn set_lag(&self, partition: i32, records: i64) {
        self.lag
            .get_or_create(&PartitionLabel {
                partition: partition.to_string(),
            })
            .set(records);
    }

    /// Forgets the lag of a partition this instance no longer owns (so a
    /// released partition does not keep reporting a stale lag).
    pub fn clear_lag(&self, partition: i32) {
        self.lag.remove(&PartitionLabel {
            partition: partition.to_string(),
        });
    }

    /// Counts a state limit that dropped state.
    pub fn count_limit_hit(&self, limit: &str) {
        self.limit_hits
            .get_or_create(&LimitLabel {
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A one-line summary for periodic log lines.
    pub fn summary(&self) -> String {
        format!(
            "in={} duplicates={} unverifiable={} replayed={} flag_revisions={} late_revisions={} open_windows={} sensors={} \
             rebalances={} rebuilds={} in_flight={} commit_failures={} delivery_failures={}",
            self.records_in.get(),
            self.duplicates_dropped.get(),
            self.duplicates_unverifiable.get(),
            self.replayed_skipped.get(),
            self.flag_revisions.get(),
            self.late_window_revisions.get(),
            self.open_windows.get(),
            self.sensors.get(),
            self.rebalances.get(),
            self.rebuilds.get(),
            self.in_flight_outputs.get(),
            self.commit_failures.get(),
            self.delivery_failures.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_labelled_families() {
        let m = QaqcMetrics::new();
        m.records_in.inc();
        m.count_out("soil-moisture-clean");
        m.count_quarantined(QuarantineReason::C01);
        m.count_flagged(Flag::D06);
        m.count_alert(AlertKind::SensorSilent, "raise");
        m.set_lag(2, 17);
        let text = m.render();
        for needle in [
            "soilstream_qaqc_records_in_total 1",
            "soilstream_qaqc_records_out_total{topic=\"soil-moisture-clean\"} 1",
            "soilstream_qaqc_quarantined_total{reason=\"C01\"} 1",
            "soilstream_qaqc_flagged_total{flag=\"D06\"} 1",
            "soilstream_qaqc_alerts_total{alert=\"sensor_silent\",transition=\"raise\"} 1",
            "soilstream_qaqc_lag_records{partition=\"2\"} 17",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(m.quarantined(QuarantineReason::C01), 1);
        m.clear_lag(2);
        assert!(!m.render().contains("lag_records{partition=\"2\"}"));
    }
}
