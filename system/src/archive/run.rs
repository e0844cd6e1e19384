//! The archive component: group membership, recovery, batching, commit.
//! Shaped like the gateway and qaqc: [`run_archive`] takes the
//! world-independent [`ArchiveSettings`], the world-specific
//! [`ArchiveParts`] and a [`Shutdown`]; the CLI wires rdkafka and
//! `object_store`, the simulator wires turmoil hosts.
//!
//! Store work (a recovery or a batch commit) runs one at a time while the
//! member keeps polling the group with fetching paused, so a slow or
//! unreachable store never costs the membership. Records are taken only
//! when no store work is waiting, so memory is bounded by the open batches
//! and one batch being written.

use super::batch::{CutReason, OpenBatch};
use super::columns::{ArchiveSchema, ColumnsError};
use super::config::ArchiveSettings;
use super::layout::{Manifest, event_date};
use super::metrics::ArchiveMetrics;
use super::protocol::{
    BatchPlan, Committed, CrashHook, CrashPoint, ProtocolError, Recovery, commit_batch, recover,
};
use super::store::ArchiveStore;
use crate::clock::Clock;
use crate::codec::from_wire;
use crate::component::{Backoff, Shutdown};
use crate::registry::{RegistryError, SchemaRegistry};
use crate::transport::{ConsumedRecord, GroupConsumer, GroupEvent, LogConsumer};
use futures::future::LocalBoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use tokio::time::{Duration, Instant, sleep, sleep_until};

/// Builds a plain consumer (for the lag gauge).
pub type ReaderFactory = crate::transport::ConsumerFactory;

/// Lag is measured this often, ms.
const LAG_INTERVAL_MS: u64 = 10_000;

/// Hooks through which the archive reports what it does (harness, tests).
pub trait ArchiveObserver {
    /// Partitions were assigned.
    fn on_assigned(&self, _partitions: &[i32]) {}
    /// A partition was recovered; archiving resumes at `recovery.next_offset`.
    fn on_recovered(&self, _partition: i32, _recovery: &Recovery) {}
    /// A batch was committed (its marker is durable).
    fn on_committed(&self, _manifest: &Manifest) {}
    /// A batch lost to another writer's marker.
    fn on_fenced(&self, _partition: i32, _position: i64) {}
    /// Partitions were released.
    fn on_released(&self, _partitions: &[i32], _lost: bool) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoArchiveObserver;

impl ArchiveObserver for NoArchiveObserver {}

/// The world-specific parts an archive instance runs with.
pub struct ArchiveParts {
    /// Where the files go.
    pub store: Rc<dyn ArchiveStore>,
    /// The archive's clock (batch age).
    pub clock: Rc<dyn Clock>,
    /// Writer schemas by id.
    pub registry: Rc<dyn SchemaRegistry>,
    /// Membership of the archive group on the clean topic.
    pub group: Box<dyn GroupConsumer>,
    /// Plain consumers for the lag gauge (none: no lag gauge).
    pub reader_factory: Option<ReaderFactory>,
    /// Test-only crash points.
    pub crash: Rc<dyn CrashHook>,
    /// Receives progress events.
    pub observer: Rc<dyn ArchiveObserver>,
    /// Metrics to update.
    pub metrics: ArchiveMetrics,
}

/// Why the archive stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The settings are invalid.
    #[error("invalid archive settings: {0}")]
    Settings(String),
    /// The consumer group could not be joined.
    #[error("cannot subscribe to `{topic}`: {reason}")]
    Subscribe {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The archive's manifests contradict the protocol; an operator must look.
    #[error("the archive cannot continue: {0}")]
    Protocol(ProtocolError),
    /// A batch could not be encoded (a bug: rows were checked on decode).
    #[error("cannot encode a batch: {0}")]
    Encode(ColumnsError),
}

/// What an instance did, when it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Batches committed.
    pub batches_committed: u64,
    /// Rows in them.
    pub rows_written: u64,
    /// Partitions recovered.
    pub recoveries: u64,
    /// Batches fenced.
    pub fenced: u64,
}

/// One owned partition.
struct Slot {
    /// Bumped on every (re)assignment and fence, so late work results of an
    /// older ownership are told apart.
    epoch: u64,
    /// Recovered and sought.
    ready: bool,
    /// Position of the next batch (`None`: nothing committed, the first
    /// record starts it).
    next_position: Option<i64>,
    /// Last offset taken (into a batch, or committed).
    last_taken: i64,
    /// Attempt for the next batch.
    attempt: u32,
    batch: Option<OpenBatch>,
}

#[derive(Clone)]
enum Work {
    Recover {
        partition: i32,
        epoch: u64,
    },
    Commit {
        partition: i32,
        epoch: u64,
        plan: Rc<BatchPlan>,
    },
}

enum WorkDone {
    Recovered {
        partition: i32,
        epoch: u64,
        result: Result<Recovery, ProtocolError>,
    },
    Committed {
        partition: i32,
        epoch: u64,
        plan: Rc<BatchPlan>,
        result: Result<Committed, ProtocolError>,
    },
}

struct Engine {
    settings: ArchiveSettings,
    store: Rc<dyn ArchiveStore>,
    clock: Rc<dyn Clock>,
    registry: Rc<dyn SchemaRegistry>,
    group: Box<dyn GroupConsumer>,
    reader_factory: Option<ReaderFactory>,
    lag_reader: Option<Box<dyn LogConsumer>>,
    crash: Rc<dyn CrashHook>,
    observer: Rc<dyn ArchiveObserver>,
    metrics: ArchiveMetrics,
    owned: BTreeMap<i32, Slot>,
    next_epoch: u64,
    schemas: BTreeMap<u32, Result<Rc<ArchiveSchema>, String>>,
    queue: VecDeque<Work>,
    in_flight: Option<LocalBoxFuture<'static, WorkDone>>,
    retry_at: Option<Instant>,
    store_backoff: Backoff,
    backlog: VecDeque<ConsumedRecord>,
    registry_blocked_until: Option<Instant>,
    /// Planted bug only: group commits issued at the cut.
    early_group_commits: Vec<(i32, i64)>,
    report: ArchiveReport,
}

/// Runs an archive instance until `shutdown` (open batches are committed
/// first) or an error an operator must fix.
pub async fn run_archive(
    settings: ArchiveSettings,
    parts: ArchiveParts,
    mut shutdown: Shutdown,
) -> Result<ArchiveReport, ArchiveError> {
    settings.validate().map_err(ArchiveError::Settings)?;
    let ArchiveParts {
        store,
        clock,
        registry,
        mut group,
        reader_factory,
        crash,
        observer,
        metrics,
    } = parts;
    group
        .subscribe(&settings.archive.topic)
        .map_err(|e| ArchiveError::Subscribe {
            topic: settings.archive.topic.clone(),
            reason: e.to_string(),
        })?;
    let a = &settings.archive;
    let store_backoff = Backoff::new(a.retry_initial_ms, a.retry_max_ms);
    let mut engine = Engine {
        settings: settings.clone(),
        store,
        clock,
        registry,
        group,
        reader_factory,
        lag_reader: None,
        crash,
        observer,
        metrics,
        owned: BTreeMap::new(),
        next_epoch: 1,
        schemas: BTreeMap::new(),
        queue: VecDeque::new(),
        in_flight: None,
        retry_at: None,
        store_backoff,
        backlog: VecDeque::new(),
        registry_blocked_until: None,
        early_group_commits: Vec::new(),
        report: ArchiveReport::default(),
    };
    tracing::info!(instance = %a.instance_id, group = %a.group_id, topic = %a.topic, "archive running");
    let result = engine.run(&mut shutdown).await;
    tracing::info!(instance = %engine.settings.archive.instance_id, report = ?engine.report, "archive stopped");
    result.map(|()| engine.report)
}

impl Engine {
    async fn run(&mut self, shutdown: &mut Shutdown) -> Result<(), ArchiveError> {
        let poll_wait_ms = self.settings.archive.poll_wait_ms;
        let log_interval_ms = self.settings.archive.log_interval_ms;
        let mut next_log = Instant::now() + Duration::from_millis(log_interval_ms.max(1));
        let mut next_lag = Instant::now() + Duration::from_millis(LAG_INTERVAL_MS);
        let mut poll_backoff = Backoff::new(poll_wait_ms, 30_000);
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.start_work();
            let busy = self.in_flight.is_some() || !self.queue.is_empty() || !self.backlog.is_empty();
            self.group.set_fetching(!busy);
            let event = {
                let retry_at = self.retry_at;
                let in_flight = &mut self.in_flight;
                let group = &mut self.group;
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => break,
                    done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                        *in_flight = None;
                        Err(done)
                    }
                    _ = async { sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {
                        self.retry_at = None;
                        continue;
                    }
                    event = group.poll(poll_wait_ms) => Ok(event),
                }
            };
            match event {
                Err(done) => self.finish_work(done).await?,
                Ok(Ok(GroupEvent::Records(records))) => {
                    poll_backoff.reset();
                    self.backlog.extend(records);
                }
                Ok(Ok(GroupEvent::Assigned {
                    generation,
                    partitions,
                })) => {
                    tracing::info!(generation, ?partitions, "partitions assigned");
                    self.metrics.rebalances.inc();
                    self.observer.on_assigned(&partitions);
                    for partition in partitions {
                        self.assign(partition);
                    }
                }
                Ok(Ok(GroupEvent::Revoked(partitions))) => {
                    tracing::info!(
                        ?partitions,
                        "partitions revoked; open batches dropped (the next owner re-reads them)"
                    );
                    self.metrics.rebalances.inc();
                    self.release(&partitions, false);
                }
                Ok(Ok(GroupEvent::Lost(partitions))) => {
                    tracing::warn!(?partitions, "partitions lost (session expired or fenced)");
                    self.metrics.rebalances.inc();
                    self.release(&partitions, true);
                }
                Ok(Err(error)) => {
                    let delay = poll_backoff.next_delay();
                    tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "poll failed");
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => break,
                        _ = sleep(delay) => {}
                    }
                }
            }
            if self.in_flight.is_none() && self.queue.is_empty() {
                self.take_backlog().await?;
            }
            self.cut_expired()?;
            self.flush_early_group_commits().await;
            let now = Instant::now();
            if now >= next_lag {
                next_lag = now + Duration::from_millis(LAG_INTERVAL_MS);
                self.measure_lag().await;
            }
            if log_interval_ms > 0 && now >= next_log {
                next_log = now + Duration::from_millis(log_interval_ms);
                tracing::info!(metrics = %self.metrics.summary(), "archive status");
            }
        }
        self.shutdown_flush().await?;
        self.group.leave().await;
        Ok(())
    }

    fn assign(&mut self, partition: i32) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.owned.insert(
            partition,
            Slot {
                epoch,
                ready: false,
                next_position: None,
                last_taken: -1,
                attempt: 0,
                batch: None,
            },
        );
        self.queue.push_back(Work::Recover { partition, epoch });
    }

    fn release(&mut self, partitions: &[i32], lost: bool) {
        for partition in partitions {
            if let Some(slot) = self.owned.remove(partition)
                && let Some(batch) = &slot.batch
            {
                self.metrics.open_rows.dec_by(batch.rows() as i64);
                self.metrics.open_dates.dec_by(batch.open_dates() as i64);
            }
            self.metrics.clear_lag(*partition);
        }
        self.queue.retain(|w| match w {
            Work::Recover { partition, .. } | Work::Commit { partition, .. } => {
                !partitions.contains(partition)
            }
        });
        self.backlog.retain(|r| !partitions.contains(&r.partition));
        self.observer.on_released(partitions, lost);
    }

    /// Starts the next store work if none runs.
    fn start_work(&mut self) {
        if self.in_flight.is_some() || self.retry_at.is_some() {
            return;
        }
        // The work stays at the head until it succeeds: a retry finds it there.
        let Some(work) = self.queue.front().cloned() else {
            return;
        };
        let store = self.store.clone();
        let crash = self.crash.clone();
        let topic = self.settings.archive.topic.clone();
        let writer_id = self.settings.archive.instance_id.clone();
        let keep_uncommitted = self.settings.planted.recovery_keeps_uncommitted;
        let future: LocalBoxFuture<'static, WorkDone> = match work {
            Work::Recover { partition, epoch } => Box::pin(async move {
                let result = recover(&*store, &*crash, &topic, partition, &writer_id, keep_uncommitted).await;
                WorkDone::Recovered {
                    partition,
                    epoch,
                    result,
                }
            }),
            Work::Commit {
                partition,
                epoch,
                plan,
            } => Box::pin(async move {
                let result = commit_batch(store, crash, plan.clone()).await;
                WorkDone::Committed {
                    partition,
                    epoch,
                    plan,
                    result,
                }
            }),
        };
        self.in_flight = Some(future);
    }

    fn current(&self, partition: i32, epoch: u64) -> bool {
        self.owned.get(&partition).is_some_and(|s| s.epoch == epoch)
    }

    async fn finish_work(&mut self, done: WorkDone) -> Result<(), ArchiveError> {
        match done {
            WorkDone::Recovered {
                partition,
                epoch,
                result,
            } => match result {
                Ok(recovery) => {
                    self.pop_done(partition, epoch);
                    self.store_backoff.reset();
                    self.recovered(partition, epoch, recovery).await;
                }
                Err(error) if matches!(error, ProtocolError::Corrupt { .. }) => {
                    return Err(ArchiveError::Protocol(error));
                }
                Err(error) => self.retry_later("recovery", partition, &error),
            },
            WorkDone::Committed {
                partition,
                epoch,
                plan,
                result,
            } => match result {
                Ok(committed) => {
                    self.pop_done(partition, epoch);
                    self.store_backoff.reset();
                    self.committed(partition, epoch, &plan, committed).await;
                }
                Err(ProtocolError::Fenced { position, by, .. }) => {
                    self.pop_done(partition, epoch);
                    tracing::warn!(partition, position, %by, "batch fenced by another writer; recovering the partition");
                    self.metrics.fenced.inc();
                    self.report.fenced += 1;
                    self.observer.on_fenced(partition, position);
                    if self.current(partition, epoch) {
                        self.refence(partition);
                    }
                }
                Err(error) if matches!(error, ProtocolError::Corrupt { .. }) => {
                    return Err(ArchiveError::Protocol(error));
                }
                Err(error) => self.retry_later("batch commit", partition, &error),
            },
        }
        Ok(())
    }

    /// Removes the finished work from the head of the queue, unless a
    /// release or a fence dropped it meanwhile (then the head is other work).
    fn pop_done(&mut self, partition: i32, epoch: u64) {
        let head_is_done = match self.queue.front() {
            Some(Work::Recover {
                partition: p,
                epoch: e,
            })
            | Some(Work::Commit {
                partition: p,
                epoch: e,
                ..
            }) => *p == partition && *e == epoch,
            None => false,
        };
        if head_is_done {
            self.queue.pop_front();
        }
    }

    fn retry_later(&mut self, what: &str, partition: i32, error: &ProtocolError) {
        let delay = self.store_backoff.next_delay();
        self.metrics.store_retries.inc();
        tracing::warn!(partition, %error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
        self.retry_at = Some(Instant::now() + delay);
    }

    /// The partition's batches after `position` are void: drop them and
    /// recover again.
    fn refence(&mut self, partition: i32) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        if let Some(slot) = self.owned.get_mut(&partition) {
            if let Some(batch) = slot.batch.take() {
                self.metrics.open_rows.dec_by(batch.rows() as i64);
                self.metrics.open_dates.dec_by(batch.open_dates() as i64);
            }
            slot.epoch = epoch;
            slot.ready = false;
        }
        self.queue
            .retain(|w| !matches!(w, Work::Commit { partition: p, .. } if *p == partition));
        self.backlog.retain(|r| r.partition != partition);
        self.queue.push_back(Work::Recover { partition, epoch });
    }

    async fn recovered(&mut self, partition: i32, epoch: u64, recovery: Recovery) {
        if !self.current(partition, epoch) {
            return;
        }
        self.report.recoveries += 1;
        self.metrics
            .count_recovery("attempt_aborted", recovery.attempts_aborted);
        self.metrics
            .count_recovery("file_removed", recovery.files_removed);
        self.metrics
            .count_recovery("intent_removed", recovery.intents_removed);
        tracing::info!(
            partition,
            next_offset = ?recovery.next_offset,
            attempt = recovery.next_attempt,
            aborted = recovery.attempts_aborted,
            files_removed = recovery.files_removed,
            "partition recovered from the archive's markers"
        );
        let mut resume = recovery.next_offset;
        if self.settings.planted.commit_offsets_before_marker {
            // Planted bug: trust the group offset instead of the markers.
            if let Ok(committed) = self.group.committed(&[partition]).await
                && let Some((_, Some(offset))) = committed.iter().find(|(p, _)| *p == partition)
            {
                resume = Some(*offset);
            }
        }
        let seek_to = resume.unwrap_or(0);
        if let Err(error) = self.group.seek(partition, seek_to) {
            tracing::warn!(partition, %error, "cannot seek; recovering again");
            self.refence(partition);
            return;
        }
        let slot = self
            .owned
            .get_mut(&partition)
            .expect("current partition is owned");
        slot.ready = true;
        slot.next_position = resume;
        slot.last_taken = seek_to - 1;
        slot.attempt = recovery.next_attempt;
        slot.batch = None;
        self.observer.on_recovered(partition, &recovery);
    }

    async fn committed(&mut self, partition: i32, epoch: u64, plan: &BatchPlan, committed: Committed) {
        let manifest = plan.manifest();
        let rows: u64 = manifest.files.iter().map(|f| f.rows).sum();
        self.metrics.batches_committed.inc();
        self.metrics.rows_written.inc_by(rows);
        self.metrics.files_written.inc_by(manifest.files.len() as u64);
        self.metrics.bytes_written.inc_by(committed.bytes_written);
        let small = self.settings.rotation.small_file_rows;
        self.metrics
            .small_files
            .inc_by(manifest.files.iter().filter(|f| f.rows < small).count() as u64);
        if committed.leftovers_replaced > 0 {
            self.metrics
                .count_recovery("leftover_replaced", committed.leftovers_replaced);
        }
        self.report.batches_committed += 1;
        self.report.rows_written += rows;
        tracing::debug!(
            partition,
            first = plan.first,
            last = plan.last,
            files = manifest.files.len(),
            rows,
            "batch committed"
        );
        self.observer.on_committed(&manifest);
        if !self.current(partition, epoch) {
            return;
        }
        if let Some(slot) = self.owned.get_mut(&partition)
            && slot.next_position.is_none_or(|p| p <= plan.last)
        {
            slot.next_position = Some(plan.last + 1);
        }
        if !self.settings.planted.commit_offsets_before_marker {
            // For lag metrics only: resumption reads the markers.
            if let Err(error) = self.group.commit(&[(partition, plan.last + 1)]).await {
                tracing::debug!(partition, %error, "group offset commit failed (lag metrics only)");
            }
        }
        self.crash.reached(partition, CrashPoint::AfterGroupCommit).await;
    }

    /// Takes buffered records into batches, cutting them as needed.
    async fn take_backlog(&mut self) -> Result<(), ArchiveError> {
        if self.registry_blocked_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.registry_blocked_until = None;
        while let Some(record) = self.backlog.pop_front() {
            if !self.queue.is_empty() {
                // A cut queued store work: the rest waits for it.
                self.backlog.push_front(record);
                break;
            }
            let Some(slot) = self.owned.get(&record.partition) else {
                continue;
            };
            if !slot.ready || record.offset <= slot.last_taken {
                continue;
            }
            let schema = match self.schema_for(&record).await {
                Ok(schema) => schema,
                Err(()) => {
                    self.backlog.push_front(record);
                    self.registry_blocked_until = Some(Instant::now() + self.store_backoff.next_delay());
                    break;
                }
            };
            self.metrics.records_in.inc();
            self.take(record, schema)?;
        }
        Ok(())
    }

    /// The writer schema of `record`: `Ok(Err(reason))` when it cannot be
    /// archived, `Err(())` when the registry is unreachable.
    async fn schema_for(&mut self, record: &ConsumedRecord) -> Result<Result<Rc<ArchiveSchema>, String>, ()> {
        let Some(value) = record.value.as_deref() else {
            return Ok(Err("no value (tombstone)".into()));
        };
        let schema_id = match from_wire(value) {
            Ok((id, _)) => id,
            Err(e) => return Ok(Err(format!("undecodable: {e}"))),
        };
        if let Some(known) = self.schemas.get(&schema_id) {
            return Ok(known.clone());
        }
        let mapped = match self.registry.schema_by_id(schema_id).await {
            Ok(text) => ArchiveSchema::new(schema_id, &text, &self.settings.archive.event_time_field)
                .map(Rc::new)
                .map_err(|e| format!("unsupported schema: {e}")),
            Err(RegistryError::SchemaNotFound(_)) => Err(format!("unknown schema id {schema_id}")),
            Err(error) => {
                tracing::warn!(%error, schema_id, "registry unreachable; waiting");
                self.metrics.store_retries.inc();
                return Err(());
            }
        };
        self.schemas.insert(schema_id, mapped.clone());
        Ok(mapped)
    }

    fn take(
        &mut self,
        record: ConsumedRecord,
        schema: Result<Rc<ArchiveSchema>, String>,
    ) -> Result<(), ArchiveError> {
        let partition = record.partition;
        let now_ms = self.clock.now_ms();
        let row = schema.and_then(|schema| {
            let value = record.value.as_deref().unwrap_or_default();
            schema
                .row(partition, record.offset, record.key.as_deref(), value)
                .map(|row| (schema, row))
                .map_err(|e| e.to_string())
        });
        let limits = self.settings.rotation;
        if let Ok((_, row)) = &row {
            let slot = self.owned.get(&partition).expect("checked by the caller");
            if let Some(reason) = slot.batch.as_ref().and_then(|b| b.cut_before(row, &limits)) {
                self.cut(partition, reason)?;
            }
        }
        let slot = self.owned.get_mut(&partition).expect("checked by the caller");
        let position = *slot.next_position.get_or_insert(record.offset);
        let batch = slot.batch.get_or_insert_with(|| OpenBatch::new(position, now_ms));
        let dates_before = batch.open_dates();
        match row {
            Ok((schema, row)) => {
                batch.push(&schema, row);
                self.metrics.open_rows.inc();
            }
            Err(reason) => {
                tracing::warn!(partition, offset = record.offset, %reason, "record skipped (listed in the batch manifest)");
                let label = reason.split(':').next().unwrap_or("other").to_string();
                batch.skip(record.offset, reason);
                self.metrics.count_skipped(&label);
            }
        }
        self.metrics
            .open_dates
            .inc_by((batch.open_dates() - dates_before) as i64);
        slot.last_taken = record.offset;
        if let Some(reason) = batch.full(&limits) {
            self.cut(partition, reason)?;
        }
        Ok(())
    }

    /// Closes the open batch of `partition` and queues its commit.
    fn cut(&mut self, partition: i32, reason: CutReason) -> Result<(), ArchiveError> {
        let topic = self.settings.archive.topic.clone();
        let writer_id = self.settings.archive.instance_id.clone();
        let wall_date = self
            .settings
            .planted
            .wall_clock_file_names
            .then(|| event_date(self.clock.now_ms()));
        let Some(slot) = self.owned.get_mut(&partition) else {
            return Ok(());
        };
        let Some(batch) = slot.batch.take() else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.metrics.open_rows.dec_by(batch.rows() as i64);
        self.metrics.open_dates.dec_by(batch.open_dates() as i64);
        self.metrics.count_cut(reason.label());
        let plan = batch
            .plan(&topic, partition, slot.attempt, &writer_id, wall_date.as_deref())
            .map_err(ArchiveError::Encode)?;
        // The next batch starts after this one, at attempt 0 (its intent
        // is its lock; a fenced attempt makes recovery pick the number).
        slot.next_position = Some(plan.last + 1);
        slot.attempt = 0;
        let epoch = slot.epoch;
        let next_offset = plan.last + 1;
        self.queue.push_back(Work::Commit {
            partition,
            epoch,
            plan: Rc::new(plan),
        });
        if self.settings.planted.commit_offsets_before_marker {
            // Planted bug: the group offset moves before the batch is durable.
            self.group_commit_now(partition, next_offset);
        }
        Ok(())
    }

    fn group_commit_now(&mut self, partition: i32, next_offset: i64) {
        self.early_group_commits.push((partition, next_offset));
    }

    /// Planted bug only: issues the group commits queued by cuts, before
    /// the batches' store work starts.
    async fn flush_early_group_commits(&mut self) {
        for (partition, next_offset) in std::mem::take(&mut self.early_group_commits) {
            if let Err(error) = self.group.commit(&[(partition, next_offset)]).await {
                tracing::debug!(partition, %error, "group offset commit failed");
            }
        }
    }

    /// Cuts batches older than `max_age_ms`.
    fn cut_expired(&mut self) -> Result<(), ArchiveError> {
        let now_ms = self.clock.now_ms();
        let limits = self.settings.rotation;
        let expired: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, s)| s.batch.as_ref().is_some_and(|b| b.expired(now_ms, &limits)))
            .map(|(p, _)| *p)
            .collect();
        for partition in expired {
            self.cut(partition, CutReason::Age)?;
        }
        Ok(())
    }

    /// On a clean stop: cut every open batch and write them (bounded).
    async fn shutdown_flush(&mut self) -> Result<(), ArchiveError> {
        let partitions: Vec<i32> = self.owned.keys().copied().collect();
        for partition in partitions {
            self.cut(partition, CutReason::Shutdown)?;
        }
        let deadline = Instant::now() + Duration::from_millis(30_000);
        self.retry_at = None;
        loop {
            self.start_work();
            let Some(in_flight) = self.in_flight.as_mut() else {
                break;
            };
            match tokio::time::timeout_at(deadline, in_flight).await {
                Ok(done) => {
                    self.in_flight = None;
                    self.finish_work(done).await?;
                    if let Some(at) = self.retry_at.take() {
                        if at >= deadline {
                            break;
                        }
                        sleep_until(at).await;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        "open batches not written before the shutdown deadline; the next owner re-reads them"
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    async fn measure_lag(&mut self) {
        let Some(factory) = &self.reader_factory else {
            return;
        };
        if self.lag_reader.is_none() {
            match factory() {
                Ok(reader) => self.lag_reader = Some(reader),
                Err(error) => {
                    tracing::debug!(%error, "cannot create the lag reader");
                    return;
                }
            }
        }
        let Some(reader) = self.lag_reader.as_ref() else {
            return;
        };
        let positions: Vec<(i32, i64)> = self
            .owned
            .iter()
            .filter_map(|(p, s)| s.next_position.map(|n| (*p, n)))
            .collect();
        for (partition, archived_to) in positions {
            match reader.watermarks(&self.settings.archive.topic, partition).await {
                Ok((_, high)) => self.metrics.set_lag(partition, (high - archived_to).max(0)),
                Err(error) => {
                    tracing::debug!(partition, %error, "cannot measure the lag");
                    return;
                }
            }
        }
    }
}
