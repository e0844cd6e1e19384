//! The state of one input partition, and every decision qaqc makes about
//! its records.
//!
//! State is a fold of the outputs: everything here can be rebuilt by reading
//! back what the partition's outputs hold (the `fold_*` methods), and live
//! processing changes state only as the outputs it decides say. So after a
//! crash, the rebuilt state is exactly "what is durable in the outputs",
//! and the derived outputs are then *reconciled* against it:
//!
//! - a window whose readings (from the clean topic) differ from its last
//!   emitted revision (from the aggregates topic) is dirty and is emitted
//!   again when due;
//! - a reading whose flags by the rules (over the series from the clean
//!   topic) differ from the flags last written (clean record, then flag
//!   revisions) gets a revision;
//! - window alerts the machines derive from the emitted windows, beyond the
//!   ones the alerts topic holds, are emitted.
//!
//! Raw records are deduplicated by identity: a repeat (`seq` at or below the
//! highest seen for its gateway and sensor) with the same values is dropped,
//! with different values it goes to quarantine as `identity_conflict`.

use super::alerts::{AlertEvent, AlertKind, SilentState, Transition, WindowAlertState, WindowEmission};
use super::checks::{QuarantineReason, Rejection, identity_checks, value_checks};
use super::config::QaqcSettings;
use super::flags::FlagSet;
use super::metrics::QaqcMetrics;
use super::records::{AlertRecord, CleanReading, FlagRevision, WindowAggregate};
use super::series::{EmittedFlags, Point, SensorSeries};
use super::window::{EmittedWindow, SensorWindows, WindowValues};
use crate::model::Reading;
use crate::transport::ConsumedRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Digest of a reading's identity and values (floats bit for bit).
pub fn payload_digest(r: &Reading) -> u64 {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(r.gateway_id.as_bytes());
    field(r.sensor_id.as_bytes());
    field(&r.seq.to_be_bytes());
    field(&r.event_time_ms.to_be_bytes());
    field(&r.moisture_vwc.to_bits().to_be_bytes());
    for optional in [r.soil_temp_c, r.bulk_ec_ds_m, r.battery_v] {
        match optional {
            Some(v) => field(&v.to_bits().to_be_bytes()),
            None => field(&[]),
        }
    }
    field(&r.depth_cm.to_be_bytes());
    if let Some(flag) = &r.source_flag {
        field(flag.as_bytes());
    }
    let out = hash.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

/// What decoding a raw record gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A reading and the id of the schema it was written with.
    Reading {
        /// The reading.
        reading: Reading,
        /// Writer schema id.
        schema_id: u32,
    },
    /// Not a reading: quarantine it.
    Failed(Rejection),
}

/// The payload of an output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputBody {
    /// A clean reading and its payload digest.
    Clean(CleanReading, u64),
    /// A quarantined raw record.
    Quarantine(QuarantineOut),
    /// A flag revision.
    Flags(FlagRevision),
    /// A window aggregate.
    Aggregate(WindowAggregate),
    /// An alert.
    Alert(AlertRecord),
}

/// A quarantine output: the raw record, unchanged, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineOut {
    /// The raw key.
    pub key: Option<Vec<u8>>,
    /// The raw value.
    pub value: Option<Vec<u8>>,
    /// The raw timestamp.
    pub timestamp_ms: i64,
    /// The raw headers.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    /// Reason code.
    pub reason: QuarantineReason,
    /// Detail.
    pub detail: String,
    /// Processor clock at the decision, ms.
    pub decided_at_ms: i64,
    /// The sensor's high-water at the decision (for `too_late`), ms.
    pub sensor_watermark_ms: Option<i64>,
    /// Identity and payload digest, when the record decoded to a reading.
    pub identity: Option<(String, String, u64, u64)>,
}

/// One output record, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Offset of the raw record behind it (or the last one processed, for
    /// outputs of timers and reconciliation).
    pub src_offset: i64,
    /// The payload.
    pub body: OutputBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AlertLedger {
    /// Transitions the alerts topic holds.
    emitted: u64,
    /// Transitions the machine produced.
    produced: u64,
    /// Produced and not emitted yet (rebuild found them missing).
    pending: VecDeque<AlertEvent>,
}

/// One sensor's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorState {
    series: SensorSeries,
    windows: SensorWindows,
    window_alerts: WindowAlertState,
    alert_ledgers: BTreeMap<(AlertKind, bool), AlertLedger>,
    silent: SilentState,
    /// Highest event time of the sensor's clean readings, ms.
    high_water_ms: Option<i64>,
    depth_cm: i32,
    gateway_id: String,
    /// Processor clock of the last activity (for the sensor limit), ms.
    last_active_ms: i64,
}

/// The outputs and counters of one step.
#[derive(Debug, Default)]
pub struct StepOutputs {
    /// Outputs, in production order.
    pub outputs: Vec<Output>,
}

/// Where a step's clock and configuration come from.
pub struct Ctx<'a> {
    /// Settings.
    pub settings: &'a QaqcSettings,
    /// Processor clock, ms.
    pub now_ms: i64,
    /// Metrics to count into.
    pub metrics: &'a QaqcMetrics,
}

/// A snapshot of a partition state's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Sensors with state.
    pub sensors: usize,
    /// Windows with readings not emitted.
    pub dirty_windows: usize,
    /// Readings kept.
    pub points: usize,
    /// Alert transitions found missing and not emitted yet.
    pub pending_alerts: usize,
}

/// The state of one input partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    partition: i32,
    sensors: BTreeMap<String, SensorState>,
    /// (gateway, sensor) -> highest seq written to clean or quarantine.
    dedup: BTreeMap<(String, String), u64>,
    /// Identities in quarantine -> payload digest, oldest first.
    quarantined: BTreeMap<(String, String, u64), u64>,
    quarantined_order: VecDeque<(String, String, u64)>,
    /// Raw offsets (at or after the resume point) whose record is in
    /// quarantine already: skipped when re-read.
    quarantined_offsets: BTreeSet<i64>,
    /// Identities written for raw offsets at or after the resume point, by
    /// offset. Outputs of different topics become durable independently, so
    /// beyond the committed offset the written identities need not be a
    /// prefix of the sensor's sequence: they are remembered exactly, and
    /// folded into `dedup` once the commit passes them.
    uncommitted_identities: BTreeMap<i64, Vec<(String, String, u64)>>,
    /// Where input resumes; outputs of raw offsets below it are durable.
    resume_offset: i64,
    /// Flag revisions read back whose clean record is not durable (yet):
    /// the replayed reading continues their revision numbers.
    orphan_flags: BTreeMap<(String, String, u64), EmittedFlags>,
    /// Offset of the last raw record processed.
    last_src_offset: i64,
    /// Planted bug state: the partition's newest event time.
    stream_time_ms: i64,
}

impl PartitionState {
    /// An empty state for `partition`.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            sensors: BTreeMap::new(),
            dedup: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            quarantined_order: VecDeque::new(),
            quarantined_offsets: BTreeSet::new(),
            uncommitted_identities: BTreeMap::new(),
            resume_offset: 0,
            orphan_flags: BTreeMap::new(),
            last_src_offset: -1,
            stream_time_ms: i64::MIN,
        }
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Sizes, for metrics and the harness.
    pub fn status(&self) -> PartitionStatus {
        PartitionStatus {
            sensors: self.sensors.len(),
            dirty_windows: self.sensors.values().map(|s| s.windows.dirty_count()).sum(),
            points: self.sensors.values().map(|s| s.series.len()).sum(),
            pending_alerts: self
                .sensors
                .values()
                .flat_map(|s| s.alert_ledgers.values())
                .map(|l| l.pending.len())
                .sum(),
        }
    }

    /// Highest seq written for (gateway, sensor).
    pub fn high_seq(&self, gateway_id: &str, sensor_id: &str) -> Option<u64> {
        self.dedup
            .get(&(gateway_id.to_string(), sensor_id.to_string()))
            .copied()
    }

    /// Forgets the dedup high-waters (the planted bug `skip_dedup_rebuild`).
    pub fn forget_dedup(&mut self) {
        self.dedup.clear();
        self.quarantined.clear();
        self.quarantined_order.clear();
        self.quarantined_offsets.clear();
        self.uncommitted_identities.clear();
    }

    /// Input offsets below `committed` will never be read again: forget
    /// their quarantined offsets and fold their identities into the
    /// high-waters.
    pub fn committed(&mut self, committed: i64) {
        self.quarantined_offsets = self.quarantined_offsets.split_off(&committed);
        let later = self.uncommitted_identities.split_off(&committed);
        let passed = std::mem::replace(&mut self.uncommitted_identities, later);
        for (gateway, sensor, seq) in passed.into_values().flatten() {
            let high = self.dedup.entry((gateway, sensor)).or_insert(seq);
            *high = (*high).max(seq);
        }
        self.resume_offset = self.resume_offset.max(committed);
    }

    /// Sets where input resumes, before folding outputs back.
    pub fn set_resume_offset(&mut self, resume_offset: i64) {
        self.resume_offset = resume_offset;
    }

    /// Whether an identity was written: at or below its high-water, or
    /// among those remembered exactly beyond the resume point.
    fn written(&self, gateway_id: &str, sensor_id: &str, seq: u64) -> bool {
        let key = (gateway_id.to_string(), sensor_id.to_string());
        if self.dedup.get(&key).is_some_and(|high| seq <= *high) {
            return true;
        }
        self.uncommitted_identities
            .values()
            .flatten()
            .any(|(g, s, q)| *q == seq && g == gateway_id && s == sensor_id)
    }

    /// Records an identity read back from an output of raw offset `src`.
    fn fold_identity(
        &mut self,
        gateway_id: &str,
        sensor_id: &str,
        seq: u64,
        src: Option<i64>,
        ctx: &Ctx<'_>,
    ) {
        match src {
            Some(src) if src >= self.resume_offset => self
                .uncommitted_identities
                .entry(src)
                .or_default()
                .push((gateway_id.to_string(), sensor_id.to_string(), seq)),
            _ => {
                let high = self
                    .dedup
                    .entry((gateway_id.to_string(), sensor_id.to_string()))
                    .or_insert(seq);
                *high = (*high).max(seq);
                self.bound_dedup(ctx);
            }
        }
    }

    // ----- live processing -------------------------------------------------

    /// Decides and applies the outputs of a batch of raw records (offset
    /// order) and of the windows they make due.
    pub fn process_batch(&mut self, batch: Vec<(ConsumedRecord, Decoded)>, ctx: &Ctx<'_>) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut pending_clean: Vec<PendingClean> = Vec::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for (record, decoded) in batch {
            debug_assert_eq!(record.partition, self.partition);
            ctx.metrics.records_in.inc();
            if record.offset <= self.last_src_offset {
                // Read again after a rebuild from a checkpoint newer than the
                // group's commit (the commit failed as the broker went away,
                // the checkpoint was already written): the checkpoint holds
                // this record's effect, and a checkpoint is written only once
                // every output of the records it holds is acknowledged.
                ctx.metrics.replayed_skipped.inc();
                continue;
            }
            self.last_src_offset = record.offset;
            if self.quarantined_offsets.contains(&record.offset) {
                ctx.metrics.replayed_skipped.inc();
                continue;
            }
            match decoded {
                Decoded::Failed(rejection) => {
                    outputs.push(self.quarantine(&record, rejection, None, None, ctx));
                }
                Decoded::Reading { reading, schema_id } => self.ingest(
                    &record,
                    reading,
                    schema_id,
                    ctx,
                    &mut outputs,
                    &mut pending_clean,
                    &mut touched,
                ),
            }
        }
        self.finish_clean(pending_clean, ctx, &mut outputs);
        for sensor_id in &touched {
            self.emit_due_windows(sensor_id, ctx, &mut outputs);
            self.evict(sensor_id, ctx);
        }
        outputs
    }

    #[allow(clippy::too_many_arguments)]
    fn ingest(
        &mut self,
        record: &ConsumedRecord,
        reading: Reading,
        schema_id: u32,
        ctx: &Ctx<'_>,
        outputs: &mut Vec<Output>,
        pending_clean: &mut Vec<PendingClean>,
        touched: &mut BTreeSet<String>,
    ) {
        let s = ctx.settings;
        if let Err(rejection) = identity_checks(&reading, record.key.as_deref()) {
            outputs.push(self.quarantine(record, rejection, None, None, ctx));
            return;
        }
        let digest = payload_digest(&reading);
        let dedup_key = (reading.gateway_id.clone(), reading.sensor_id.clone());
        if self.written(&reading.gateway_id, &reading.sensor_id, reading.seq) {
            self.arrival(&reading.sensor_id, reading.event_time_ms, ctx, outputs);
            let known = self
                .sensors
                .get(&reading.sensor_id)
                .and_then(|sensor| sensor.series.digest_of(&reading.gateway_id, reading.seq))
                .or_else(|| {
                    self.quarantined
                        .get(&(reading.gateway_id.clone(), reading.sensor_id.clone(), reading.seq))
                        .copied()
                });
            match known {
                Some(d) if d == digest => {
                    ctx.metrics.duplicates_dropped.inc();
                }
                Some(_) => {
                    let rejection = Rejection::new(
                        QuarantineReason::IdentityConflict,
                        format!(
                            "identity ({}, {}, {}) was already written with other values",
                            reading.gateway_id, reading.sensor_id, reading.seq
                        ),
                    );
                    // Not a new identity: the high-water stays.
                    outputs.push(self.quarantine(record, rejection, None, None, ctx));
                }
                None => {
                    ctx.metrics.duplicates_unverifiable.inc();
                }
            }
            return;
        }
        if let Err(rejection) = value_checks(&reading, ctx.now_ms, &s.checks) {
            let identity = Some((
                reading.gateway_id.clone(),
                reading.sensor_id.clone(),
                reading.seq,
                digest,
            ));
            self.arrival(&reading.sensor_id, reading.event_time_ms, ctx, outputs);
            outputs.push(self.quarantine(record, rejection, identity, None, ctx));
            return;
        }
        let high_water = self.sensors.get(&reading.sensor_id).and_then(|x| x.high_water_ms);
        if let Some(high) = high_water
            && reading.event_time_ms < high.saturating_sub(s.windows.state_horizon_ms)
        {
            let rejection = Rejection::new(
                QuarantineReason::TooLate,
                format!(
                    "event time {} is more than the state horizon of {} h behind the sensor's newest event time {}",
                    reading.event_time_ms,
                    s.windows.state_horizon_ms / 3_600_000,
                    high
                ),
            );
            let identity = Some((
                reading.gateway_id.clone(),
                reading.sensor_id.clone(),
                reading.seq,
                digest,
            ));
            self.arrival(&reading.sensor_id, reading.event_time_ms, ctx, outputs);
            outputs.push(self.quarantine(record, rejection, identity, Some(high), ctx));
            return;
        }
        if s.planted.drop_late_readings {
            // Per-partition stream time, one hour of grace: what mainstream
            // engines do, and what loses backfilled data.
            let stream = self.stream_time_ms;
            self.stream_time_ms = stream.max(reading.event_time_ms);
            if stream != i64::MIN && reading.event_time_ms < stream - 3_600_000 {
                return;
            }
        }
        self.dedup.insert(dedup_key, reading.seq);
        self.bound_dedup(ctx);
        self.ensure_sensor(&reading.sensor_id, ctx);
        let moisture_pct = reading.moisture_vwc * 100.0;
        let windows_size_ms = s.windows.size_ms;
        let arrival_time_windows = s.planted.windows_on_arrival_time;
        let sensor = self.sensors.get_mut(&reading.sensor_id).expect("created above");
        let inserted = sensor.series.insert(Point {
            event_time_ms: reading.event_time_ms,
            gateway_id: reading.gateway_id.clone(),
            seq: reading.seq,
            moisture_pct,
            soil_temp_c: reading.soil_temp_c,
            battery_v: reading.battery_v,
            payload_digest: digest,
        });
        // Only the planted `skip_dedup_rebuild` bug gets an identity past
        // dedup that the series holds already.
        debug_assert!(inserted.is_some() || s.planted.skip_dedup_rebuild);
        let start = super::window::window_start(reading.event_time_ms, windows_size_ms);
        let emitted_already = sensor.windows.get(start).is_some_and(|w| w.emitted.is_some());
        if inserted.is_some() && !(arrival_time_windows && emitted_already) {
            sensor.windows.add(
                reading.event_time_ms,
                windows_size_ms,
                reading.depth_cm,
                moisture_pct,
                reading.soil_temp_c,
                reading.bulk_ec_ds_m,
            );
        }
        sensor.high_water_ms = Some(
            sensor
                .high_water_ms
                .map_or(reading.event_time_ms, |h| h.max(reading.event_time_ms)),
        );
        sensor.depth_cm = reading.depth_cm;
        sensor.gateway_id = reading.gateway_id.clone();
        self.arrival(&reading.sensor_id, reading.event_time_ms, ctx, outputs);
        touched.insert(reading.sensor_id.clone());
        pending_clean.push(PendingClean {
            src_offset: record.offset,
            reading,
            schema_id,
            digest,
        });
    }

    /// A reading of `sensor_id` arrived: clears its silent alert.
    fn arrival(&mut self, sensor_id: &str, event_time_ms: i64, ctx: &Ctx<'_>, outputs: &mut Vec<Output>) {
        let src = self.last_src_offset;
        let Some(sensor) = self.sensors.get_mut(sensor_id) else {
            return;
        };
        sensor.last_active_ms = ctx.now_ms;
        if let Some(event) = sensor.silent.arrived(ctx.now_ms, event_time_ms)
            && ctx.settings.alerts.silent.enabled
        {
            outputs.push(alert_output(sensor_id, sensor, &event, src, ctx));
        }
    }

    fn ensure_sensor(&mut self, sensor_id: &str, ctx: &Ctx<'_>) {
        if self.sensors.contains_key(sensor_id) {
            return;
        }
        let limit = ctx.settings.limits.max_sensors_per_partition;
        if self.sensors.len() >= limit {
            // Drop the least recently active sensor's series and windows;
            // its dedup high-water stays in `dedup`.
            if let Some(oldest) = self
                .sensors
                .iter()
                .min_by_key(|(id, s)| (s.last_active_ms, (*id).clone()))
                .map(|(id, _)| id.clone())
            {
                tracing::warn!(sensor = %oldest, limit, "sensor limit reached; dropping the least active sensor's state");
                ctx.metrics.count_limit_hit("max_sensors_per_partition");
                self.sensors.remove(&oldest);
            }
        }
        self.sensors.insert(
            sensor_id.to_string(),
            SensorState {
                silent: SilentState {
                    last_arrival_ms: ctx.now_ms,
                    ..SilentState::default()
                },
                last_active_ms: ctx.now_ms,
                ..SensorState::default()
            },
        );
    }

    fn bound_dedup(&mut self, ctx: &Ctx<'_>) {
        let limit = ctx.settings.limits.max_dedup_entries_per_partition;
        if self.dedup.len() > limit {
            // Forget the identity with the smallest key (deterministic);
            // its repeats can no longer be recognised.
            ctx.metrics.count_limit_hit("max_dedup_entries_per_partition");
            self.dedup.pop_first();
        }
    }

    fn remember_quarantined(&mut self, identity: (String, String, u64), digest: u64, ctx: &Ctx<'_>) {
        if self.quarantined.insert(identity.clone(), digest).is_none() {
            self.quarantined_order.push_back(identity);
        }
        let limit = ctx.settings.limits.max_quarantined_identities_per_partition;
        while self.quarantined_order.len() > limit {
            if let Some(old) = self.quarantined_order.pop_front() {
                self.quarantined.remove(&old);
            }
        }
    }

    fn quarantine(
        &mut self,
        record: &ConsumedRecord,
        rejection: Rejection,
        identity: Option<(String, String, u64, u64)>,
        sensor_watermark_ms: Option<i64>,
        ctx: &Ctx<'_>,
    ) -> Output {
        ctx.metrics.count_quarantined(rejection.reason);
        let out = QuarantineOut {
            key: record.key.clone(),
            value: record.value.clone(),
            timestamp_ms: record.timestamp_ms,
            raw_headers: record.headers.clone(),
            reason: rejection.reason,
            detail: rejection.detail,
            decided_at_ms: ctx.now_ms,
            sensor_watermark_ms,
            identity,
        };
        self.apply_quarantine(&out, record.offset, false, ctx);
        Output {
            src_offset: record.offset,
            body: OutputBody::Quarantine(out),
        }
    }

    fn apply_quarantine(&mut self, out: &QuarantineOut, src_offset: i64, folding: bool, ctx: &Ctx<'_>) {
        self.quarantined_offsets.insert(src_offset);
        if let Some((gateway, sensor, seq, digest)) = &out.identity {
            if folding {
                self.fold_identity(gateway, sensor, *seq, Some(src_offset), ctx);
            } else {
                let key = (gateway.clone(), sensor.clone());
                let high = self.dedup.entry(key).or_insert(*seq);
                *high = (*high).max(*seq);
                self.bound_dedup(ctx);
            }
            self.remember_quarantined((gateway.clone(), sensor.clone(), *seq), *digest, ctx);
        }
    }

    /// Computes flags for the new readings and their neighbours, writes the
    /// clean records (input order) and the revisions of older readings.
    fn finish_clean(&mut self, pending: Vec<PendingClean>, ctx: &Ctx<'_>, outputs: &mut Vec<Output>) {
        if pending.is_empty() {
            return;
        }
        let s = ctx.settings;
        let saturation = s.checks.saturation_pct();
        let mut by_sensor: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in pending.iter().enumerate() {
            by_sensor.entry(p.reading.sensor_id.clone()).or_default().push(i);
        }
        let mut new_flags: BTreeMap<usize, (FlagSet, bool)> = BTreeMap::new();
        let src = self.last_src_offset;
        for (sensor_id, indexes) in by_sensor {
            let sensor = self
                .sensors
                .get_mut(&sensor_id)
                .expect("pending readings have a sensor");
            let mut positions = Vec::with_capacity(indexes.len());
            for &i in &indexes {
                let r = &pending[i].reading;
                let index = sensor
                    .series
                    .find(r.event_time_ms, &r.gateway_id, r.seq)
                    .expect("inserted in this batch");
                positions.push((i, index));
            }
            let changed: Vec<usize> = positions.iter().map(|(_, index)| *index).collect();
            let by_index: BTreeMap<usize, usize> = positions.iter().map(|(i, index)| (*index, *i)).collect();
            {
                for current in sensor.series.changed_flags(&changed, &s.flags, saturation) {
                    if let Some(&i) = by_index.get(&current.index) {
                        new_flags.insert(i, (current.flags, current.lookahead_complete));
                        let (gateway_id, seq) = sensor.series.identity(current.index);
                        let orphan =
                            self.orphan_flags
                                .remove(&(gateway_id.to_string(), sensor_id.clone(), seq));
                        let emitted = match orphan {
                            // A revision of an earlier incarnation is durable
                            // while this clean record was not: continue it.
                            Some(orphan) if orphan.flags != current.flags => {
                                let revision = orphan.revision + 1;
                                ctx.metrics.flag_revisions.inc();
                                outputs.push(Output {
                                    src_offset: src,
                                    body: OutputBody::Flags(FlagRevision {
                                        gateway_id: gateway_id.to_string(),
                                        sensor_id: sensor_id.clone(),
                                        seq: seq as i64,
                                        event_time: sensor.series.time_ms(current.index),
                                        flags: current.flags.codes(),
                                        revision: revision as i32,
                                        lookahead_complete: current.lookahead_complete,
                                    }),
                                });
                                EmittedFlags {
                                    flags: current.flags,
                                    lookahead_complete: current.lookahead_complete,
                                    revision,
                                }
                            }
                            Some(orphan) => orphan,
                            None => EmittedFlags {
                                flags: current.flags,
                                lookahead_complete: current.lookahead_complete,
                                revision: 0,
                            },
                        };
                        sensor.series.set_emitted(current.index, emitted);
                        continue;
                    }
                    // A reading of an earlier batch always has its clean
                    // record written: every batch writes its own.
                    outputs.extend(revise_flags(&mut sensor.series, &sensor_id, &current, src, ctx));
                }
            }
        }
        for (i, p) in pending.into_iter().enumerate() {
            let (flags, lookahead_complete) = new_flags
                .get(&i)
                .copied()
                .expect("flags computed for every new reading");
            for flag in flags.iter() {
                ctx.metrics.count_flagged(flag);
            }
            let r = p.reading;
            outputs.push(Output {
                src_offset: p.src_offset,
                body: OutputBody::Clean(
                    CleanReading::of_reading(r, flags.codes(), lookahead_complete, p.schema_id),
                    p.digest,
                ),
            });
        }
    }

    /// Emits the sensor's due dirty windows (and the alerts they decide).
    fn emit_due_windows(&mut self, sensor_id: &str, ctx: &Ctx<'_>, outputs: &mut Vec<Output>) {
        let s = ctx.settings;
        let size = s.windows.size_ms;
        let src = self.last_src_offset;
        let Some(sensor) = self.sensors.get_mut(sensor_id) else {
            return;
        };
        let Some(high) = sensor.high_water_ms else {
            return;
        };
        let idle = ctx.now_ms - sensor.silent.last_arrival_ms >= s.windows.idle_close_ms;
        let closed_until = if s.planted.windows_on_arrival_time {
            Some(ctx.now_ms)
        } else if idle {
            None
        } else {
            Some(high)
        };
        for start in sensor.windows.due(size, closed_until) {
            let slot = sensor.windows.get(start).expect("due windows exist");
            let values = slot.acc.values();
            let depth_cm = slot.depth_cm;
            let revision = slot.emitted.map_or(1, |e| e.revision + 1);
            let end = start + size;
            let historical = end < high - s.windows.historical_after_ms;
            if revision > 1 {
                ctx.metrics.late_window_revisions.inc();
            }
            let record = aggregate_record(
                sensor_id, depth_cm, start, end, revision, &values, high, historical,
            );
            sensor.windows.record_emitted(
                record.window_start,
                record.depth_cm,
                EmittedWindow {
                    revision,
                    values: WindowValues::of_record(&record),
                },
            );
            outputs.push(Output {
                src_offset: src,
                body: OutputBody::Aggregate(record),
            });
        }
    }

    /// An aggregate this instance wrote was acknowledged: the window alert
    /// machines run over it now, so an alert is never durable before the
    /// window it was decided on (acknowledgements arrive in write order per
    /// partition; the caller keeps that order).
    pub fn aggregate_acknowledged(&mut self, record: &WindowAggregate, ctx: &Ctx<'_>) -> Vec<Output> {
        let src = self.last_src_offset;
        let Some(sensor) = self.sensors.get_mut(&record.sensor_id) else {
            return Vec::new();
        };
        let events = Self::step_alert_machines(sensor, record, ctx, false);
        events
            .iter()
            .map(|event| alert_output(&record.sensor_id, sensor, event, src, ctx))
            .collect()
    }

    /// Runs the window alert machines over a durable window revision;
    /// returns the alerts to emit now (live) or queues the ones the alerts
    /// topic lacks (rebuild).
    fn step_alert_machines(
        sensor: &mut SensorState,
        record: &WindowAggregate,
        ctx: &Ctx<'_>,
        rebuilding: bool,
    ) -> Vec<AlertEvent> {
        let emission = WindowEmission {
            start_ms: record.window_start,
            end_ms: record.window_end,
            depth_cm: record.depth_cm,
            moisture_mean_pct: record.moisture_pct_mean,
            ec_mean_ds_m: record.bulk_ec_ds_m_mean,
            historical: record.historical,
        };
        let events = sensor
            .window_alerts
            .step(&emission, ctx.settings.windows.size_ms, &ctx.settings.alerts);
        let mut now = Vec::new();
        for event in events {
            let ledger = sensor
                .alert_ledgers
                .entry((event.kind, event.historical))
                .or_default();
            ledger.produced += 1;
            if ledger.produced > ledger.emitted {
                if rebuilding {
                    ledger.pending.push_back(event);
                } else {
                    now.push(event);
                }
            }
        }
        now
    }

    fn evict(&mut self, sensor_id: &str, ctx: &Ctx<'_>) {
        let s = ctx.settings;
        let Some(sensor) = self.sensors.get_mut(sensor_id) else {
            return;
        };
        let Some(high) = sensor.high_water_ms else {
            return;
        };
        let horizon = s.windows.state_horizon_ms;
        // Keep the rules' reach beyond the horizon, so a late reading just
        // inside it is judged with all its neighbours.
        let keep_from = high - horizon - 2 * s.flags.radius_ms();
        let series = &mut sensor.series;
        let cut = series.view().times_ms.partition_point(|&t| t < keep_from);
        let cut = cut.saturating_sub(2 * s.flags.radius_points());
        if cut > 0 {
            let before = series.time_ms(cut);
            series.evict_before(before);
        }
        let over = series.len().saturating_sub(s.limits.max_points_per_sensor);
        if over > 0 {
            ctx.metrics.count_limit_hit("max_points_per_sensor");
            let before = series.time_ms(over);
            series.evict_before(before);
        }
        sensor.windows.evict_before(high - horizon, s.windows.size_ms);
        let windows_over = sensor
            .windows
            .len()
            .saturating_sub(s.limits.max_windows_per_sensor);
        if windows_over > 0 {
            ctx.metrics.count_limit_hit("max_windows_per_sensor");
            let oldest: Vec<i64> = sensor
                .windows
                .iter()
                .take(windows_over + 1)
                .map(|(start, _)| start)
                .collect();
            if let Some(&keep) = oldest.last() {
                sensor
                    .windows
                    .evict_before(keep + s.windows.size_ms, s.windows.size_ms);
            }
        }
    }

    /// Timers: silent sensors and idle windows.
    pub fn on_timer(&mut self, ctx: &Ctx<'_>) -> Vec<Output> {
        let mut outputs = Vec::new();
        let src = self.last_src_offset;
        let ids: Vec<String> = self.sensors.keys().cloned().collect();
        for sensor_id in &ids {
            let sensor = self.sensors.get_mut(sensor_id).expect("listed");
            if ctx.settings.alerts.silent.enabled {
                let last_event = sensor.high_water_ms.unwrap_or(0);
                if let Some(event) = sensor
                    .silent
                    .check(ctx.now_ms, last_event, &ctx.settings.alerts.silent)
                {
                    outputs.push(alert_output(sensor_id, sensor, &event, src, ctx));
                }
            }
            self.emit_due_windows(sensor_id, ctx, &mut outputs);
        }
        outputs
    }

    // ----- rebuild: folding the outputs back in ------------------------------

    /// Folds a quarantine record read back from partition `self.partition`.
    pub fn fold_quarantine(
        &mut self,
        record: &ConsumedRecord,
        decoded_identity: Option<(Reading, u64)>,
        ctx: &Ctx<'_>,
    ) {
        let Some(src) = super::records::header_i64(&record.headers, super::records::HEADER_SRC_OFFSET) else {
            return;
        };
        let reason = super::records::header_str(&record.headers, super::records::HEADER_REASON)
            .and_then(QuarantineReason::from_code);
        let identity = match (reason, decoded_identity) {
            (Some(reason), Some((reading, digest))) if reason.carries_identity() => Some((
                reading.gateway_id.clone(),
                reading.sensor_id.clone(),
                reading.seq,
                digest,
            )),
            _ => None,
        };
        let out = QuarantineOut {
            key: None,
            value: None,
            timestamp_ms: record.timestamp_ms,
            raw_headers: Vec::new(),
            reason: reason.unwrap_or(QuarantineReason::Undecodable),
            detail: String::new(),
            decided_at_ms: 0,
            sensor_watermark_ms: None,
            identity,
        };
        self.apply_quarantine(&out, src, true, ctx);
    }

    /// Folds a clean record read back.
    /// `src_offset`: the record's `qaqc.src.offset` header.
    pub fn fold_clean(&mut self, clean: &CleanReading, digest: u64, src_offset: Option<i64>, ctx: &Ctx<'_>) {
        let s = ctx.settings;
        let seq = clean.seq.max(0) as u64;
        self.fold_identity(&clean.gateway_id, &clean.sensor_id, seq, src_offset, ctx);
        self.ensure_sensor(&clean.sensor_id, ctx);
        let sensor = self.sensors.get_mut(&clean.sensor_id).expect("created above");
        let flags = FlagSet::from_codes(&clean.flags).unwrap_or_default();
        if let Some(index) = sensor.series.insert(Point {
            event_time_ms: clean.event_time,
            gateway_id: clean.gateway_id.clone(),
            seq,
            moisture_pct: clean.moisture_pct,
            soil_temp_c: clean.soil_temp_c,
            battery_v: clean.battery_v,
            payload_digest: digest,
        }) {
            sensor.series.set_emitted(
                index,
                EmittedFlags {
                    flags,
                    lookahead_complete: clean.lookahead_complete,
                    revision: 0,
                },
            );
            sensor.windows.add(
                clean.event_time,
                s.windows.size_ms,
                clean.depth_cm,
                clean.moisture_pct,
                clean.soil_temp_c,
                clean.bulk_ec_ds_m,
            );
        }
        sensor.high_water_ms = Some(
            sensor
                .high_water_ms
                .map_or(clean.event_time, |h| h.max(clean.event_time)),
        );
        sensor.depth_cm = clean.depth_cm;
        sensor.gateway_id = clean.gateway_id.clone();
        let sensor_id = clean.sensor_id.clone();
        self.evict(&sensor_id, ctx);
    }

    /// Folds a flag revision read back.
    pub fn fold_flag_revision(&mut self, revision: &FlagRevision) {
        let seq = revision.seq.max(0) as u64;
        let Some(sensor) = self.sensors.get_mut(&revision.sensor_id) else {
            let key = (revision.gateway_id.clone(), revision.sensor_id.clone(), seq);
            let number = revision.revision.max(0) as u32;
            if self.orphan_flags.get(&key).is_none_or(|e| e.revision < number) {
                self.orphan_flags.insert(
                    key,
                    EmittedFlags {
                        flags: FlagSet::from_codes(&revision.flags).unwrap_or_default(),
                        lookahead_complete: revision.lookahead_complete,
                        revision: number,
                    },
                );
            }
            return;
        };
        let number = revision.revision.max(0) as u32;
        let Some(index) = sensor.series.find(revision.event_time, &revision.gateway_id, seq) else {
            // Evicted, or its clean record is not durable: remember the
            // revision so the replayed reading continues its numbering.
            let emitted = EmittedFlags {
                flags: FlagSet::from_codes(&revision.flags).unwrap_or_default(),
                lookahead_complete: revision.lookahead_complete,
                revision: number,
            };
            let key = (revision.gateway_id.clone(), revision.sensor_id.clone(), seq);
            if self.orphan_flags.get(&key).is_none_or(|e| e.revision < number) {
                self.orphan_flags.insert(key, emitted);
            }
            return;
        };
        if sensor.series.emitted(index).is_some_and(|e| e.revision >= number) {
            return;
        }
        sensor.series.set_emitted(
            index,
            EmittedFlags {
                flags: FlagSet::from_codes(&revision.flags).unwrap_or_default(),
                lookahead_complete: revision.lookahead_complete,
                revision: number,
            },
        );
    }

    /// Folds an alert read back (fold alerts before aggregates).
    pub fn fold_alert(&mut self, alert: &AlertRecord, ctx: &Ctx<'_>) {
        let Some(kind) = AlertKind::from_name(&alert.alert) else {
            return;
        };
        self.ensure_sensor(&alert.sensor_id, ctx);
        let sensor = self.sensors.get_mut(&alert.sensor_id).expect("created above");
        let episode = alert.episode.max(0) as u64;
        if kind == AlertKind::SensorSilent {
            sensor.silent.episodes = sensor.silent.episodes.max(episode);
            sensor.silent.raised = alert.transition == Transition::Raise.name();
            return;
        }
        sensor
            .alert_ledgers
            .entry((kind, alert.historical))
            .or_default()
            .emitted += 1;
    }

    /// Folds a window aggregate read back (after the alerts).
    pub fn fold_aggregate(&mut self, record: &WindowAggregate, ctx: &Ctx<'_>) {
        self.ensure_sensor(&record.sensor_id, ctx);
        let sensor = self.sensors.get_mut(&record.sensor_id).expect("created above");
        sensor.windows.record_emitted(
            record.window_start,
            record.depth_cm,
            EmittedWindow {
                revision: record.revision.max(0) as u32,
                values: WindowValues::of_record(record),
            },
        );
        Self::step_alert_machines(sensor, record, ctx, true);
    }

    /// After a rebuild, or whenever the state may be ahead of the outputs:
    /// writes every flag revision, due window and alert the outputs lack.
    /// `resume_offset`: where input resumes (committed offset).
    pub fn reconcile(&mut self, resume_offset: i64, ctx: &Ctx<'_>) -> Vec<Output> {
        let s = ctx.settings;
        self.last_src_offset = self.last_src_offset.max(resume_offset - 1);
        let src = self.last_src_offset;
        let saturation = s.checks.saturation_pct();
        let mut outputs = Vec::new();
        let ids: Vec<String> = self.sensors.keys().cloned().collect();
        for sensor_id in &ids {
            let sensor = self.sensors.get_mut(sensor_id).expect("listed");
            let n = sensor.series.len();
            for current in sensor.series.current_flags(0..n, &s.flags, saturation) {
                outputs.extend(revise_flags(&mut sensor.series, sensor_id, &current, src, ctx));
            }
            let pending: Vec<AlertEvent> = sensor
                .alert_ledgers
                .values_mut()
                .flat_map(|l| std::mem::take(&mut l.pending))
                .collect();
            for event in pending {
                outputs.push(alert_output(sensor_id, sensor, &event, src, ctx));
            }
            self.emit_due_windows(sensor_id, ctx, &mut outputs);
        }
        outputs
    }

    /// Counts an alert as emitted (live path).
    fn count_emitted_alert(sensor: &mut SensorState, event: &AlertEvent) {
        if event.kind == AlertKind::SensorSilent {
            return;
        }
        sensor
            .alert_ledgers
            .entry((event.kind, event.historical))
            .or_default()
            .emitted += 1;
    }

    /// Every sensor's windows with readings not emitted yet.
    pub fn dirty_windows(&self) -> usize {
        self.sensors.values().map(|s| s.windows.dirty_count()).sum()
    }
}

struct PendingClean {
    src_offset: i64,
    reading: Reading,
    schema_id: u32,
    digest: u64,
}

#[allow(clippy::too_many_arguments)]
fn aggregate_record(
    sensor_id: &str,
    depth_cm: i32,
    start: i64,
    end: i64,
    revision: u32,
    values: &WindowValues,
    high_water_ms: i64,
    historical: bool,
) -> WindowAggregate {
    WindowAggregate {
        sensor_id: sensor_id.to_string(),
        depth_cm,
        window_start: start,
        window_end: end,
        revision: revision as i32,
        count: values.count as i32,
        moisture_pct_mean: values.moisture_mean_pct,
        moisture_pct_min: values.moisture_min_pct,
        moisture_pct_max: values.moisture_max_pct,
        soil_temp_c_mean: values.temp_mean_c,
        soil_temp_c_min: values.temp_min_c,
        soil_temp_c_max: values.temp_max_c,
        bulk_ec_ds_m_mean: values.ec_mean_ds_m,
        sensor_watermark: high_water_ms,
        historical,
    }
}

/// A flag revision for a reading whose flags by the rules (`current`) differ
/// from the ones last written, recorded as written; `None` when they agree
/// (or nothing was written for it yet).
fn revise_flags(
    series: &mut SensorSeries,
    sensor_id: &str,
    current: &super::series::CurrentFlags,
    src: i64,
    ctx: &Ctx<'_>,
) -> Option<Output> {
    let emitted = series.emitted(current.index)?;
    if emitted.flags == current.flags {
        return None;
    }
    let revision = emitted.revision + 1;
    series.set_emitted(
        current.index,
        EmittedFlags {
            flags: current.flags,
            lookahead_complete: current.lookahead_complete,
            revision,
        },
    );
    let (gateway_id, seq) = series.identity(current.index);
    ctx.metrics.flag_revisions.inc();
    Some(Output {
        src_offset: src,
        body: OutputBody::Flags(FlagRevision {
            gateway_id: gateway_id.to_string(),
            sensor_id: sensor_id.to_string(),
            seq: seq as i64,
            event_time: series.time_ms(current.index),
            flags: current.flags.codes(),
            revision: revision as i32,
            lookahead_complete: current.lookahead_complete,
        }),
    })
}

fn alert_output(
    sensor_id: &str,
    sensor: &mut SensorState,
    event: &AlertEvent,
    src: i64,
    ctx: &Ctx<'_>,
) -> Output {
    PartitionState::count_emitted_alert(sensor, event);
    ctx.metrics.count_alert(event.kind, event.transition.name());
    Output {
        src_offset: src,
        body: OutputBody::Alert(AlertRecord {
            alert: event.kind.name().to_string(),
            transition: event.transition.name().to_string(),
            sensor_id: sensor_id.to_string(),
            gateway_id: sensor.gateway_id.clone(),
            depth_cm: sensor.depth_cm,
            episode: event.episode as i64,
            historical: event.historical,
            event_time: event.event_time_ms,
            value: event.value,
            threshold: event.threshold,
            detail: event.detail.clone(),
        }),
    }
}
