//! Archive metrics (`soilstream_archive_` prefix), in the same registry
//! style and endpoint shape as the gateway's and qaqc's.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LabelReason {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LabelAction {
    action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LabelPartition {
    partition: String,
}

/// Every metric an archive instance exposes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArchiveMetrics {
    registry: Arc<Registry>,
    /// Records consumed.
    pub records_in: Counter,
    /// Rows in committed files.
    pub rows_written: Counter,
    /// Data files in committed batches.
    pub files_written: Counter,
    /// Bytes of data files written.
    pub bytes_written: Counter,
    /// Batches committed.
    pub batches_committed: Counter,
    /// Committed files under `small_file_rows` rows.
    pub small_files: Counter,
    cuts: Family<LabelReason, Counter>,
    skipped: Family<LabelReason, Counter>,
    recovery_actions: Family<LabelAction, Counter>,
    /// Batches this instance lost to another writer's marker.
    pub fenced: Counter,
    /// Store operations that failed and were retried.
    pub store_retries: Counter,
    /// Distinct event dates in open batches.
    pub open_dates: Gauge,
    /// Rows held in open batches.
    pub open_rows: Gauge,
    lag: Family<LabelPartition, Gauge>,
    /// Group changes seen.
    pub rebalances: Counter,
}

impl Default for ArchiveMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveMetrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("soilstream_archive");
        let m = Self {
            registry: Arc::new(Registry::default()),
            records_in: Counter::default(),
            rows_written: Counter::default(),
            files_written: Counter::default(),
            bytes_written: Counter::default(),
            batches_committed: Counter::default(),
            small_files: Counter::default(),
            cuts: Family::default(),
            skipped: Family::default(),
            recovery_actions: Family::default(),
            fenced: Counter::default(),
            store_retries: Counter::default(),
            open_dates: Gauge::default(),
            open_rows: Gauge::default(),
            lag: Family::default(),
            rebalances: Counter::default(),
        };
        registry.register("records_in", "Records consumed", m.records_in.clone());
        registry.register("rows_written", "Rows in committed files", m.rows_written.clone());
        registry.register(
            "files_written",
            "Data files of committed batches",
            m.files_written.clone(),
        );
        registry.register(
            "bytes_written",
            "Bytes of data files written",
            m.bytes_written.clone(),
        );
        registry.register(
            "batches_committed",
            "Batches committed",
            m.batches_committed.clone(),
        );
        registry.register(
            "small_files",
            "Committed files under rotation.small_file_rows rows",
            m.small_files.clone(),
        );
        registry.register("batch_cuts", "Batches cut, by reason", m.cuts.clone());
        registry.register(
            "records_skipped",
            "Records in no file (listed in the manifest), by reason",
            m.skipped.clone(),
        );
        registry.register(
            "recovery_actions",
            "Recovery actions, by action",
            m.recovery_actions.clone(),
        );
        registry.register(
            "fenced",
            "Batches lost to another writer's marker",
            m.fenced.clone(),
        );
        registry.register(
            "store_retries",
            "Store or registry operations retried",
            m.store_retries.clone(),
        );
        registry.register(
            "open_dates",
            "Distinct event dates in open batches",
            m.open_dates.clone(),
        );
        registry.register("open_rows", "Rows held in open batches", m.open_rows.clone());
        registry.register(
            "lag_records",
            "Records not yet archived, by partition",
            m.lag.clone(),
        );
        registry.register("rebalances", "Group changes seen", m.rebalances.clone());
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Counts a batch cut for `reason`.
    pub fn count_cut(&self, reason: &str) {
        self.cuts
            .get_or_create(&LabelReason {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a skipped record.
    pub fn count_skipped(&self, reason: &str) {
        self.skipped
            .get_or_create(&LabelReason {
                reason: reason.into(),
            })
            .inc();
    }

    /// Records skipped for `reason` so far.
    pub fn skipped(&self, reason: &str) -> u64 {
        self.skipped
            .get_or_create(&LabelReason {
                reason: reason.into(),
            })
            .get()
    }

    /// Adds `n` recovery actions of kind `action`.
    pub fn count_recovery(&self, action: &str, n: u64) {
        self.recovery_actions
            .get_or_create(&LabelAction {
                action: action.into(),
            })
            .inc_by(n);
    }

    /// Recovery actions of kind `action` so far.
    pub fn recovery(&self, action: &str) -> u64 {
        self.recovery_actions
            .get_or_create(&LabelAction {
                action: action.into(),
            })
            .get()
    }

    /// Sets the lag of a partition.
    pub fn set_lag(&self, partition: i32, records: i64) {
        self.lag
            .get_or_create(&LabelPartition {
                partition: partition.to_string(),
            })
            .set(records);
    }

    /// Forgets the lag of a released partition.
    pub fn clear_lag(&self, partition: i32) {
        self.lag.remove(&LabelPartition {
            partition: partition.to_string(),
        });
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
            "in={} rows={} files={} small_files={} batches={} open_rows={} open_dates={} fenced={} retries={} rebalances={}",
            self.records_in.get(),
            self.rows_written.get(),
            self.files_written.get(),
            self.small_files.get(),
            self.batches_committed.get(),
            self.open_rows.get(),
            self.open_dates.get(),
            self.fenced.get(),
            self.store_retries.get(),
            self.rebalances.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_labelled_families() {
        let m = ArchiveMetrics::new();
        m.rows_written.inc_by(3);
        m.count_cut("dates");
        m.count_skipped("undecodable");
        m.count_recovery("attempt_aborted", 2);
        m.set_lag(1, 5);
        let text = m.render();
        for needle in [
            "soilstream_archive_rows_written_total 3",
            "soilstream_archive_batch_cuts_total{reason=\"dates\"} 1",
            "soilstream_archive_records_skipped_total{reason=\"undecodable\"} 1",
            "soilstream_archive_recovery_actions_total{action=\"attempt_aborted\"} 2",
            "soilstream_archive_lag_records{partition=\"1\"} 5",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        m.clear_lag(1);
        assert!(!m.render().contains("lag_records{partition=\"1\"}"));
    }
}
