//! The forwarder: drains the spool oldest-first to the raw topic and advances
//! the delivery cursor only on delivery reports.
//!
//! Order and loss rules it keeps:
//! - records are enqueued in spool order; the producer never reorders within a
//!   partition, so per sensor the topic order is the spool order, backlog
//!   first and live readings behind it;
//! - the cursor moves over a record only after the broker acknowledged it
//!   (`acks=all`); a crash before that resends it (a duplicate, removed
//!   downstream by identity), never loses it;
//! - on a failed delivery nothing further is enqueued; once every in-flight
//!   record has resolved, reading restarts at the cursor (possibly resending
//!   records that did arrive: duplicates, never gaps or reordering of first
//!   copies).

use super::Shutdown;
use super::config::ForwarderConfig;
use super::observer::GatewayObserver;
use crate::clock::Clock;
use crate::codec::{SOIL_READING_SCHEMA_V1, to_wire};
use crate::component::{Backoff, retry_until_shutdown};
use crate::metrics::GatewayMetrics;
use crate::model::Reading;
use crate::registry::{SchemaRegistry, value_subject};
use crate::spool::{Spool, SpooledRecord};
use crate::transport::{DeliveryFuture, LogProducer, OutboundRecord, ProduceError, RecordPosition};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant, sleep, sleep_until};

/// Header carrying the gateway id of a reading.
pub const HEADER_GATEWAY_ID: &str = "gateway_id";
/// Header carrying the per-sensor sequence number (decimal ASCII).
pub const HEADER_SEQ: &str = "seq";

/// Builds producers: a new one at start and after a fatal producer error.
pub type ProducerFactory = Box<dyn Fn() -> Result<Rc<dyn LogProducer>, ProduceError>>;

type InFlight = LocalBoxFuture<'static, (u64, Reading, Result<RecordPosition, ProduceError>)>;

/// Everything the forwarder works with.
pub(crate) struct Forwarder {
    pub config: ForwarderConfig,
    pub spool: Rc<RefCell<Spool>>,
    pub producer_factory: ProducerFactory,
    pub registry: Rc<dyn SchemaRegistry>,
    pub clock: Rc<dyn Clock>,
    pub metrics: GatewayMetrics,
    pub observer: Rc<dyn GatewayObserver>,
    pub durable: Rc<Notify>,
    /// Set by the sampler once it has stopped: after shutdown the spool is
    /// drained only when this is set and nothing is left.
    pub sampler_stopped: Rc<std::cell::Cell<bool>>,
    /// Spool counters already carried into the metrics (the spool's count
    /// from its open; metrics count across restarts).
    pub counted: std::cell::Cell<CountedSpoolTotals>,
}

/// Spool totals already added to the metrics counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CountedSpoolTotals {
    pub damaged_records: u64,
    pub dropped_records: u64,
}

impl Forwarder {
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(
            self.config.retry_backoff_initial_ms,
            self.config.retry_backoff_max_ms,
        );
        // The schema id: readings keep spooling while the registry is away.
        let subject = value_subject(&self.config.topic);
        let Some(schema_id) =
            retry_until_shutdown("schema registration", &mut backoff, &mut shutdown, || {
                self.registry.register(&subject, SOIL_READING_SCHEMA_V1)
            })
            .await
        else {
            return;
        };
        tracing::info!(schema_id, subject = %subject, "schema registered");
        let Some(mut producer) =
            retry_until_shutdown("producer creation", &mut backoff, &mut shutdown, || {
                std::future::ready((self.producer_factory)())
            })
            .await
        else {
            return;
        };

        let cursor_interval = Duration::from_millis(self.config.cursor_persist_interval_ms.max(1));
        let mut next_cursor_persist = Instant::now() + cursor_interval;
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut unsent: VecDeque<SpooledRecord> = VecDeque::new();
        let mut failed: Option<ProduceError> = None;

        // After shutdown: keep draining (no new samples arrive) until the
        // spool is empty or the grace period ends.
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.update_gauges(&*producer);
            if let Some(deadline) = drain_deadline {
                let drained = self.sampler_stopped.get()
                    && in_flight.is_empty()
                    && unsent.is_empty()
                    && self.spool.borrow().stats().depth_records == 0;
                if drained {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        in_flight = in_flight.len(),
                        undelivered = self.spool.borrow().stats().depth_records,
                        "shutdown grace elapsed; undelivered readings stay spooled"
                    );
                    break;
                }
            }
            // Fill the window, unless a failure is being recovered from.
            if failed.is_none() {
                self.fill_window(schema_id, &*producer, &mut in_flight, &mut unsent);
            } else if in_flight.is_empty() {
                // Every in-flight record has resolved: restart from the cursor.
                let error = failed.take().expect("checked above");
                self.metrics.forwarder_retries.inc();
                unsent.clear();
                self.persist_cursor_if_moved();
                self.spool.borrow_mut().rewind_to_cursor();
                let delay = backoff.next_delay();
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; resending from the cursor");
                if drain_deadline.is_some() {
                    sleep(delay).await;
                } else {
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => drain_deadline = Some(self.grace_deadline()),
                        _ = sleep(delay) => {}
                    }
                }
                if matches!(error, ProduceError::Fatal(_)) {
                    match (self.producer_factory)() {
                        Ok(p) => producer = p,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot recreate producer");
                            failed = Some(e);
                            continue;
                        }
                    }
                }
                continue;
            }
            let window_full = in_flight.len() >= self.config.max_in_flight_records;
            let queue_blocked = !unsent.is_empty();
            let draining = drain_deadline.is_some();
            let wake_at = match drain_deadline {
                Some(deadline) => deadline.min(next_cursor_persist),
                None => next_cursor_persist,
            };
            tokio::select! {
                biased;
                _ = shutdown.wait(), if !draining => {
                    drain_deadline = Some(self.grace_deadline());
                }
                Some((index, reading, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    match result {
                        Ok(position) => {
                            if !self.config.planted_advance_cursor_before_delivery {
                                self.spool.borrow_mut().mark_delivered(index);
                            }
                            self.metrics.readings_delivered.inc();
                            self.observer.on_delivered(&reading, position);
                            backoff.reset();
                        }
                        Err(e) => {
                            if failed.is_none() {
                                failed = Some(e);
                            }
                        }
                    }
                }
                _ = self.durable.notified(), if (!window_full && !queue_blocked && failed.is_none()) || (draining && !self.sampler_stopped.get()) => {}
                _ = sleep(Duration::from_millis(50)), if queue_blocked => {}
                _ = sleep_until(wake_at) => {
                    if Instant::now() >= next_cursor_persist {
                        self.persist_cursor_if_moved();
                        next_cursor_persist = Instant::now() + cursor_interval;
                    }
                }
            }
        }
        self.persist_cursor();
        self.update_gauges(&*producer);
    }

    fn grace_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.shutdown_grace_ms)
    }

    /// Reads durable records from the spool and enqueues them until the
    /// window is full, the spool has nothing more, or the producer queue is full.
    fn fill_window(
        &self,
        schema_id: u32,
        producer: &dyn LogProducer,
        in_flight: &mut FuturesUnordered<InFlight>,
        unsent: &mut VecDeque<SpooledRecord>,
    ) {
        loop {
            let room = self.config.max_in_flight_records.saturating_sub(in_flight.len());
            if room == 0 {
                return;
            }
            if unsent.is_empty() {
                let batch = match self
                    .spool
                    .borrow_mut()
                    .read_next(room.min(self.config.read_batch_records))
                {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the spool");
                        return;
                    }
                };
                if batch.is_empty() {
                    return;
                }
                tracing::debug!(
                    records = batch.len(),
                    first_index = batch[0].index,
                    "read from the spool"
                );
                unsent.extend(batch);
            }
            while let Some(record) = unsent.front() {
                if in_flight.len() >= self.config.max_in_flight_records {
                    return;
                }
                let outbound = outbound_record(&self.config.topic, schema_id, record);
                match producer.enqueue(outbound) {
                    Ok(delivery) => {
                        let record = unsent.pop_front().expect("front exists");
                        if self.config.planted_advance_cursor_before_delivery {
                            self.spool.borrow_mut().mark_delivered(record.index);
                        }
                        in_flight.push(track(record.index, record.reading, delivery));
                    }
                    Err(ProduceError::QueueFull) => return,
                    Err(e) => {
                        // Treat like a failed delivery of this record.
                        let record = unsent.pop_front().expect("front exists");
                        in_flight.push(Box::pin(async move { (record.index, record.reading, Err(e)) }));
                        return;
                    }
                }
            }
        }
    }

    /// Persists the cursor when it moved since it was last persisted.
    fn persist_cursor_if_moved(&self) {
        let moved = {
            let spool = self.spool.borrow();
            spool.cursor() != spool.persisted_cursor()
        };
        if moved {
            self.persist_cursor();
        }
    }

    fn persist_cursor(&self) {
        if let Err(e) = self.spool.borrow_mut().persist_cursor() {
            tracing::error!(error = %e, "cannot persist the delivery cursor; it will be retried");
        }
    }

    fn update_gauges(&self, producer: &dyn LogProducer) {
        let stats = self.spool.borrow().stats();
        self.metrics.spool_depth_records.set(stats.depth_records as i64);
        self.metrics.spool_depth_bytes.set(stats.depth_bytes as i64);
        let age_ms = stats
            .oldest_undelivered_event_time_ms
            .map_or(0, |t| self.clock.now_ms().saturating_sub(t).max(0));
        self.metrics.oldest_undelivered_age_ms.set(age_ms);
        let counted = self.counted.get();
        self.metrics.spool_damaged_records.inc_by(
            stats
                .damaged_records_total
                .saturating_sub(counted.damaged_records),
        );
        self.metrics
            .readings_dropped
            .inc_by(stats.dropped_full_total.saturating_sub(counted.dropped_records));
        self.counted.set(CountedSpoolTotals {
            damaged_records: stats.damaged_records_total.max(counted.damaged_records),
            dropped_records: stats.dropped_full_total.max(counted.dropped_records),
        });
        let producer_stats = producer.stats();
        self.metrics
            .producer_request_retries
            .set(producer_stats.request_retries as i64);
        self.metrics.broker_up.set(i64::from(producer_stats.broker_up));
    }
}

/// Calls `attempt` until it succeeds, sleeping with `backoff` after each
/// failure; `None` if shutdown comes first. Resets the backoff on success.
fn track(index: u64, reading: Reading, delivery: DeliveryFuture) -> InFlight {
    Box::pin(async move { (index, reading, delivery.await) })
}

/// The Kafka record for a spooled reading: key = sensor id, value = Confluent
/// wire format, timestamp = event time, headers = gateway id and seq.
pub fn outbound_record(topic: &str, schema_id: u32, record: &SpooledRecord) -> OutboundRecord {
    let reading = &record.reading;
    OutboundRecord {
        topic: topic.to_owned(),
        key: reading.sensor_id.as_bytes().to_vec(),
        partition: None,
        value: to_wire(schema_id, &record.body),
        timestamp_ms: reading.event_time_ms,
        headers: vec![
            (
                HEADER_GATEWAY_ID.to_owned(),
                reading.gateway_id.as_bytes().to_vec(),
            ),
            (HEADER_SEQ.to_owned(), reading.seq.to_string().into_bytes()),
        ],
    }
}
