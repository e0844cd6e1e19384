//! The sampler: reads the sensor source on a fixed cadence, gives each
//! measurement its identity, appends it to the spool and makes it durable
//! (group commit) according to the sync policy.

use super::Shutdown;
use super::config::{SamplerConfig, SyncPolicy};
use super::observer::GatewayObserver;
use super::reject_log::RejectLog;
use crate::clock::Clock;
use crate::metrics::{GatewayMetrics, RejectReason};
use crate::model::Reading;
use crate::source::SensorSource;
use crate::spool::{Spool, SpoolError};
use std::cell::RefCell;
use std::rc::Rc;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant, sleep_until};

/// Everything the sampler works with.
pub(crate) struct Sampler {
    pub gateway_id: String,
    pub config: SamplerConfig,
    pub source: Box<dyn SensorSource>,
    pub clock: Rc<dyn Clock>,
    pub spool: Rc<RefCell<Spool>>,
    pub metrics: GatewayMetrics,
    pub observer: Rc<dyn GatewayObserver>,
    /// Woken whenever new readings became durable.
    pub durable: Rc<Notify>,
    /// Set once the sampler has stopped and made its last readings durable.
    pub stopped: Rc<std::cell::Cell<bool>>,
    /// Where invalid readings go.
    pub reject_log: RejectLog,
}

impl Sampler {
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) {
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut next_round = Instant::now();
        let mut commit_due: Option<Instant> = None;
        loop {
            let wake_at = match commit_due {
                Some(due) if due < next_round => due,
                _ => next_round,
            };
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                _ = sleep_until(wake_at) => {}
            }
            let now = Instant::now();
            if now >= next_round {
                self.sample_round();
                next_round += interval;
                if next_round <= now {
                    // The host was paused or starved: skip the missed rounds
                    // instead of sampling in a burst.
                    let missed = (now - next_round).as_millis() / interval.as_millis().max(1) + 1;
                    tracing::warn!(
                        missed_rounds = missed as u64,
                        "sampler fell behind; skipping rounds"
                    );
                    next_round = now + interval;
                }
                match self.config.sync {
                    SyncPolicy::EveryBatch => self.commit(),
                    SyncPolicy::IntervalMs(ms) => {
                        if commit_due.is_none() {
                            commit_due = Some(now + Duration::from_millis(ms));
                        }
                    }
                }
            }
            if let Some(due) = commit_due
                && Instant::now() >= due
            {
                self.commit();
                commit_due = None;
            }
        }
        // Make whatever was appended durable before stopping, then tell the
        // forwarder that nothing more will come.
        self.commit();
        self.stopped.set(true);
        self.durable.notify_one();
    }

    fn sample_round(&mut self) {
        let event_time_ms = self.clock.now_ms();
        let measurements = self.source.sample(event_time_ms);
        let mut spool = self.spool.borrow_mut();
        for m in measurements {
            let seq = match spool.next_seq(&m.sensor_id) {
                Ok(seq) => seq,
                Err(e) => {
                    // Without a durable sequence reservation the reading has
                    // no identity that is safe to use.
                    tracing::error!(sensor = %m.sensor_id, error = %e, "cannot reserve a sequence number");
                    self.metrics.count_rejected(RejectReason::Io);
                    continue;
                }
            };
            let reading = Reading {
                gateway_id: self.gateway_id.clone(),
                sensor_id: m.sensor_id,
                seq,
                event_time_ms,
                moisture_vwc: m.moisture_vwc,
                // The gateway's probes always measure a temperature, and
                // its spool holds schema v1, which requires one.
                soil_temp_c: Some(m.soil_temp_c),
                bulk_ec_ds_m: m.bulk_ec_ds_m,
                depth_cm: m.depth_cm,
                battery_v: m.battery_v,
                source_flag: None,
            };
            self.metrics.readings_sampled.inc();
            self.observer.on_sampled(&reading);
            if let Err(e) = spool.append(&reading) {
                let reason = reject_reason(&e);
                tracing::warn!(
                    sensor = %reading.sensor_id,
                    seq = reading.seq,
                    reason = reason.as_str(),
                    error = %e,
                    "reading not spooled"
                );
                self.metrics.count_rejected(reason);
                self.observer.on_rejected(&reading, reason);
                if reason == RejectReason::Invalid
                    && let Err(log_error) = self.reject_log.append(&reading, &e.to_string(), event_time_ms)
                {
                    tracing::error!(
                        path = %self.reject_log.path().display(),
                        error = %log_error,
                        sensor = %reading.sensor_id,
                        seq = reading.seq,
                        reason = %e,
                        "cannot write the reject log; the rejected reading is only in this log line"
                    );
                }
            }
        }
    }

    fn commit(&mut self) {
        let mut spool = self.spool.borrow_mut();
        if !spool.has_uncommitted() {
            return;
        }
        match spool.commit() {
            Ok(committed) => {
                if !committed.is_empty() {
                    let readings: Vec<Reading> = committed.records.into_iter().map(|r| r.reading).collect();
                    tracing::debug!(
                        readings = readings.len(),
                        first_seq = readings[0].seq,
                        "readings durable"
                    );
                    self.metrics.readings_durable.inc_by(readings.len() as u64);
                    self.observer.on_durable(&readings);
                    self.durable.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed; readings not acknowledged");
                let reason = reject_reason(&e);
                if let SpoolError::CommitFailed { unacknowledged, .. } = &e {
                    for record in unacknowledged {
                        self.metrics.count_rejected(reason);
                        self.observer.on_rejected(&record.reading, reason);
                    }
                }
            }
        }
    }
}

fn reject_reason(error: &SpoolError) -> RejectReason {
    if error.is_full() {
        RejectReason::SpoolFull
    } else if matches!(
        error,
        SpoolError::InvalidReading { .. }
            | SpoolError::RecordTooLarge { .. }
            | SpoolError::SeqNotIncreasing { .. }
    ) {
        RejectReason::Invalid
    } else {
        RejectReason::Io
    }
}
