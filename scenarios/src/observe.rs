//! What a run looked like over time: the observations a resilience report
//! draws, world-agnostic.
//!
//! While a scenario plays, a [`Recorder`] samples the world at a fixed
//! simulated interval: every gateway's spool depth, the high watermark of
//! every partition of the observed topics (raw, clean, quarantine,
//! aggregates), and how far the archive's commit markers reach. After the
//! run, [`Observations::build`] joins those samples with what the checker
//! read (the topics, the ledger) into per-record facts: when each raw record
//! was appended (the first sample from which its partition's high
//! watermark stayed above its offset, so a tail a broker crash lost and a
//! producer wrote again is timed by its second write), its event time, and
//! whether it came from a live gateway or an SD-card backfill.
//!
//! Append times have the resolution of the sampling interval; the report
//! says so. Nothing here reads a clock of its own: the same seed gives the
//! same observations.

use crate::ledger::{Fate, Ledger};
use crate::scenario::Scenario;
use serde::Serialize;
use soilstream::model::{Reading, ReadingId};
use soilstream::transport::ConsumedRecord;
use std::collections::{BTreeMap, BTreeSet};

/// Most samples a run keeps; the interval grows with the run's length so
/// that a run stays under it (a longer run keeps its last samples coarser:
/// every other one is dropped when the limit is reached).
pub const SAMPLES_MAX: usize = 4_096;

/// The interval for a run of `duration_ms` ticking every `tick_ms`: about
/// 1,440 samples over the scripted duration, at least one tick, at most a
/// minute.
pub fn sample_interval_ms(duration_ms: u64, tick_ms: u64) -> u64 {
    let tick_ms = tick_ms.max(1);
    let wanted_ms = (duration_ms / 1_440).clamp(tick_ms, 60_000);
    wanted_ms.div_ceil(tick_ms) * tick_ms
}

/// The world at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Time since the start, ms.
    pub at_ms: u64,
    /// Readings spooled and not yet acknowledged, per gateway (in
    /// [`Observations::gateways`] order).
    pub spool_depth_records: Vec<u64>,
    /// Boots so far, per gateway.
    pub gateway_boots: Vec<u32>,
    /// Per observed topic (in [`Observations::topics`] order), per
    /// partition: the high watermark (the last known one while the broker
    /// is down).
    pub high_watermarks: Vec<Vec<i64>>,
    /// Per clean partition: the next offset the archive's commit markers
    /// make durable (0 without an archive).
    pub archived_next: Vec<i64>,
}

impl Sample {
    /// Sum of the high watermarks of observed topic `topic`.
    pub fn topic_total(&self, topic: usize) -> i64 {
        self.high_watermarks.get(topic).map_or(0, |p| p.iter().sum())
    }

    /// Readings spooled over every gateway.
    pub fn spool_depth_total(&self) -> u64 {
        self.spool_depth_records.iter().sum()
    }

    /// Clean records archived (committed).
    pub fn archived_total(&self) -> i64 {
        self.archived_next.iter().sum()
    }
}

/// Samples the world at a fixed interval while a run plays.
#[derive(Debug, Clone)]
pub struct Recorder {
    interval_ms: u64,
    next_at_ms: u64,
    samples: Vec<Sample>,
}

impl Recorder {
    /// A recorder sampling every `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        assert!(interval_ms > 0, "a sample interval of 0 ms never advances");
        Self {
            interval_ms,
            next_at_ms: 0,
            samples: Vec::new(),
        }
    }

    /// The sampling interval, ms.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Whether a sample is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_at_ms
    }

    /// Records `sample` (taken at `sample.at_ms`, which must not go back).
    /// Missing high watermarks (broker down) carry the previous sample's.
    pub fn record(&mut self, mut sample: Sample) {
        if let Some(last) = self.samples.last() {
            assert!(sample.at_ms >= last.at_ms, "samples go forward in time");
            for (topic, partitions) in sample.high_watermarks.iter_mut().enumerate() {
                if partitions.is_empty() {
                    partitions.clone_from(&last.high_watermarks[topic]);
                }
            }
        }
        self.next_at_ms = sample.at_ms + self.interval_ms;
        self.samples.push(sample);
        if self.samples.len() >= SAMPLES_MAX {
            // Keep the first sample and every other one after it; the
            // interval doubles from here on.
            let kept: Vec<Sample> = self.samples.iter().step_by(2).cloned().collect();
            self.samples = kept;
            self.interval_ms *= 2;
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// The topics a run observes, in sample order: raw always, the qaqc
/// outputs only in a world with qaqc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedTopic {
    /// The raw topic.
    Raw,
    /// qaqc's clean readings.
    Clean,
    /// qaqc's quarantine.
    Quarantine,
    /// qaqc's window aggregates.
    Aggregates,
}

impl ObservedTopic {
    /// Every observed topic, in sample order.
    pub const ALL: [ObservedTopic; 4] = [
        ObservedTopic::Raw,
        ObservedTopic::Clean,
        ObservedTopic::Quarantine,
        ObservedTopic::Aggregates,
    ];

    /// Its index in a sample's `high_watermarks`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The names of the topics a world observes, in sample order: the raw
    /// topic `raw`, and qaqc's outputs named by `qaqc` when it has qaqc.
    pub fn names(raw: &str, qaqc: Option<&soilstream::qaqc::config::TopicNames>) -> Vec<String> {
        let observed = if qaqc.is_some() {
            &Self::ALL[..]
        } else {
            &Self::ALL[..1]
        };
        observed
            .iter()
            .map(|topic| match (topic, qaqc) {
                (ObservedTopic::Raw, _) | (_, None) => raw.to_owned(),
                (ObservedTopic::Clean, Some(q)) => q.clean.clone(),
                (ObservedTopic::Quarantine, Some(q)) => q.quarantine.clone(),
                (ObservedTopic::Aggregates, Some(q)) => q.aggregates.clone(),
            })
            .collect()
    }
}

/// Where a raw record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A live gateway's spool.
    Live,
    /// An SD-card backfill.
    Backfill,
}

/// One raw record, as the report draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RawPoint {
    /// When the broker appended it, ms since the start (at the sampling
    /// resolution); `None` if no sample saw it (appended after the last).
    pub appended_at_ms: Option<u64>,
    /// Its event time, ms since the start (negative: before the run).
    pub event_ms: i64,
    /// Live or backfilled.
    pub origin: Origin,
    /// The first copy of its identity (later ones are duplicates).
    pub first_copy: bool,
}

/// One window written again by a later revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RevisedWindow {
    /// When the revision was appended, ms since the start.
    pub appended_at_ms: Option<u64>,
    /// The window's start, ms since the start.
    pub window_start_ms: i64,
    /// The revision (2 and up).
    pub revision: i32,
}

/// One sensor's readings of one hour of event time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HourCell {
    /// Readings sampled (or read from the SD card).
    pub sampled: u64,
    /// Of those, in the raw topic.
    pub delivered: u64,
    /// Lost where the design allows it and counted: not yet durable at a
    /// power cut, refused by a full spool or by validation.
    pub allowed_loss: u64,
    /// Durable, not delivered, on a gateway that reported damage or drops
    /// (counted losses the scenario bounds).
    pub reported_loss: u64,
    /// Durable, not delivered, and nothing reported: a real loss.
    pub unexplained_loss: u64,
}

/// The observations of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observations {
    /// The sampling interval at the end of the run, ms.
    pub interval_ms: u64,
    /// The world's epoch (time 0 of every series), ms since the Unix epoch.
    pub epoch_ms: i64,
    /// Live gateways, in sample order.
    pub gateways: Vec<String>,
    /// Observed topics' names, in [`ObservedTopic::ALL`] order (the raw
    /// topic only, without qaqc).
    pub topics: Vec<String>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Every raw record, in (partition, offset) order.
    pub raw: Vec<RawPoint>,
    /// When each live reading was sampled, ms since the start, sorted.
    pub sampled_at_ms: Vec<u64>,
    /// Windows corrected by a later revision.
    pub revised_windows: Vec<RevisedWindow>,
    /// Per sensor (`gateway/probe`), per hour of event time since the
    /// start: what became of its readings.
    pub completeness: BTreeMap<String, BTreeMap<i64, HourCell>>,
    /// Rows of every SD-card log (good ones).
    pub backfill_rows: u64,
}

/// How event times map onto a run's time axis (ms since the run's start).
///
/// In the simulator the axis is simulated time and an event time is simply
/// its distance from the epoch. The real world plays a scenario faster than
/// scripted: `compression` axis ms pass per wall-clock ms, so a live
/// reading's distance from the start is stretched by that factor. Event
/// times before the start (an SD card's day-before rows) are written at
/// their calendar times in both worlds and are not stretched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeAxis {
    /// Time 0 of the axis, ms since the Unix epoch.
    pub epoch_ms: i64,
    /// Axis ms per wall-clock ms after the start (1 in the simulator).
    pub compression: u32,
}

impl TimeAxis {
    /// The simulator's axis: no compression.
    pub fn uncompressed(epoch_ms: i64) -> Self {
        Self {
            epoch_ms,
            compression: 1,
        }
    }

    /// Where `event_time_ms` (ms since the Unix epoch) lies on the axis.
    pub fn axis_ms(&self, event_time_ms: i64) -> i64 {
        let since_ms = event_time_ms - self.epoch_ms;
        if since_ms >= 0 {
            since_ms.saturating_mul(i64::from(self.compression.max(1)))
        } else {
            since_ms
        }
    }

    /// The event time (ms since the Unix epoch) of axis time `axis_ms`: the
    /// inverse of [`TimeAxis::axis_ms`] (to the millisecond).
    pub fn event_time_ms(&self, axis_ms: i64) -> i64 {
        if axis_ms >= 0 {
            self.epoch_ms + axis_ms / i64::from(self.compression.max(1))
        } else {
            self.epoch_ms + axis_ms
        }
    }
}

/// What [`Observations::build`] joins.
pub struct ObservedRun<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// How event times map onto the run's axis.
    pub axis: TimeAxis,
    /// Live gateways' ids, in sample order.
    pub gateways: Vec<String>,
    /// Observed topics' names, in [`ObservedTopic::ALL`] order.
    pub topics: Vec<String>,
    /// The recorder of the run.
    pub recorder: Recorder,
    /// The raw topic as read, and each record decoded.
    pub raw: &'a [ConsumedRecord],
    /// Decoded raw records (same order).
    pub decoded: &'a [Result<Reading, String>],
    /// The aggregates topic, decoded into (record, window start, revision).
    pub aggregates: Vec<(&'a ConsumedRecord, i64, i32)>,
    /// The ledger.
    pub ledger: &'a Ledger,
}

impl Observations {
    /// The index of `topic` in the samples, if the run observed it.
    pub fn topic_index(&self, topic: ObservedTopic) -> Option<usize> {
        (topic.index() < self.topics.len()).then_some(topic.index())
    }

    /// Joins the samples with the topics and the ledger.
    pub fn build(run: ObservedRun<'_>) -> Self {
        let samples = run.recorder.samples().to_vec();
        let times = AppendTimes::new(&samples);
        let backfill_ids: BTreeSet<String> = run.scenario.backfills.iter().map(|b| b.gateway_id()).collect();
        let mut seen: BTreeSet<ReadingId> = BTreeSet::new();
        let mut raw = Vec::with_capacity(run.raw.len());
        for (record, decoded) in run.raw.iter().zip(run.decoded) {
            let Ok(reading) = decoded else { continue };
            let origin = if backfill_ids.contains(&reading.gateway_id) {
                Origin::Backfill
            } else {
                Origin::Live
            };
            raw.push(RawPoint {
                appended_at_ms: times.at(ObservedTopic::Raw.index(), record.partition, record.offset),
                event_ms: run.axis.axis_ms(reading.event_time_ms),
                origin,
                first_copy: seen.insert(reading.id()),
            });
        }
        let aggregates_topic = (ObservedTopic::Aggregates.index() < run.topics.len())
            .then_some(ObservedTopic::Aggregates.index());
        let revised_windows = run
            .aggregates
            .iter()
            .filter(|(_, _, revision)| *revision > 1)
            .map(|(record, window_start, revision)| RevisedWindow {
                appended_at_ms: aggregates_topic.and_then(|t| times.at(t, record.partition, record.offset)),
                window_start_ms: run.axis.axis_ms(*window_start),
                revision: *revision,
            })
            .collect();
        let reported: BTreeSet<&String> = run
            .ledger
            .damage_reports()
            .iter()
            .chain(run.ledger.reported_losses())
            .filter(|(_, n)| **n > 0)
            .map(|(g, _)| g)
            .collect();
        let mut completeness: BTreeMap<String, BTreeMap<i64, HourCell>> = BTreeMap::new();
        let mut sampled_at_ms = Vec::new();
        let mut backfill_rows = 0;
        for (id, entry) in run.ledger.entries() {
            let backfill = backfill_ids.contains(&id.gateway_id);
            if backfill {
                backfill_rows += 1;
            } else {
                sampled_at_ms.push(entry.sampled_at_ms);
            }
            let hour = run
                .axis
                .axis_ms(entry.reading.event_time_ms)
                .div_euclid(3_600_000);
            let cell = completeness
                .entry(format!("{}/{}", id.gateway_id, id.sensor_id))
                .or_default()
                .entry(hour)
                .or_default();
            cell.sampled += 1;
            if seen.contains(id) {
                cell.delivered += 1;
            } else {
                match entry.fate {
                    Fate::LostBeforeDurable | Fate::Rejected(_) => cell.allowed_loss += 1,
                    Fate::Durable | Fate::Sampled if reported.contains(&id.gateway_id) => {
                        cell.reported_loss += 1
                    }
                    Fate::Durable | Fate::Sampled => cell.unexplained_loss += 1,
                }
            }
        }
        sampled_at_ms.sort_unstable();
        Self {
            interval_ms: run.recorder.interval_ms(),
            epoch_ms: run.axis.epoch_ms,
            gateways: run.gateways,
            topics: run.topics,
            samples,
            raw,
            sampled_at_ms,
            revised_windows,
            completeness,
            backfill_rows,
        }
    }
}

/// Append times from high-watermark samples: per (topic, partition), the
/// suffix minimum of the watermark over the samples, so an offset is timed
/// by the first sample after which the watermark never fell back below it.
pub struct AppendTimes<'s> {
    samples: &'s [Sample],
    suffix_min: BTreeMap<(usize, i32), Vec<i64>>,
}

impl<'s> AppendTimes<'s> {
    /// The append times `samples` tell.
    pub fn new(samples: &'s [Sample]) -> Self {
        let mut suffix_min = BTreeMap::new();
        let topics = samples.last().map_or(0, |s| s.high_watermarks.len());
        for topic in 0..topics {
            let partitions = samples.last().map_or(0, |s| s.high_watermarks[topic].len());
            for partition in 0..partitions {
                let mut mins: Vec<i64> = samples
                    .iter()
                    .map(|s| {
                        s.high_watermarks
                            .get(topic)
                            .and_then(|p| p.get(partition))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                for i in (0..mins.len().saturating_sub(1)).rev() {
                    mins[i] = mins[i].min(mins[i + 1]);
                }
                suffix_min.insert((topic, partition as i32), mins);
            }
        }
        Self { samples, suffix_min }
    }

    /// When observed topic `topic`'s record at (`partition`, `offset`) was
    /// appended, ms since the start; `None` if no sample held it.
    pub fn at(&self, topic: usize, partition: i32, offset: i64) -> Option<u64> {
        let mins = self.suffix_min.get(&(topic, partition))?;
        let index = mins.partition_point(|high| *high <= offset);
        self.samples.get(index).map(|s| s.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, high: i64) -> Sample {
        Sample {
            at_ms,
            spool_depth_records: vec![0],
            gateway_boots: vec![1],
            high_watermarks: vec![vec![high]],
            archived_next: vec![],
        }
    }

    #[test]
    fn an_offset_is_timed_by_the_sample_that_first_held_it_for_good() {
        // 0..3 appended by 10 s; a crash loses 2 and 3; they are written
        // again by 30 s.
        let samples = vec![
            sample(0, 0),
            sample(10_000, 4),
            sample(20_000, 2),
            sample(30_000, 5),
        ];
        let times = AppendTimes::new(&samples);
        assert_eq!(times.at(0, 0, 0), Some(10_000));
        assert_eq!(times.at(0, 0, 1), Some(10_000));
        assert_eq!(times.at(0, 0, 2), Some(30_000));
        assert_eq!(times.at(0, 0, 4), Some(30_000));
        assert_eq!(times.at(0, 0, 5), None);
        assert_eq!(times.at(0, 1, 0), None);
    }

    #[test]
    fn a_missing_watermark_carries_the_last_and_the_sample_count_stays_bounded() {
        let mut recorder = Recorder::new(1_000);
        recorder.record(sample(0, 7));
        let mut down = sample(1_000, 0);
        down.high_watermarks = vec![vec![]];
        recorder.record(down);
        assert_eq!(recorder.samples()[1].high_watermarks, vec![vec![7]]);
        for i in 2..(SAMPLES_MAX as u64 * 3) {
            recorder.record(sample(i * 1_000, 7));
        }
        assert!(recorder.samples().len() < SAMPLES_MAX);
        assert!(recorder.interval_ms() > 1_000);
    }

    #[test]
    fn a_compressed_axis_stretches_the_run_and_keeps_the_calendar_before_it() {
        let axis = TimeAxis {
            epoch_ms: 1_000_000,
            compression: 60,
        };
        assert_eq!(axis.axis_ms(1_000_000), 0);
        assert_eq!(axis.axis_ms(1_001_000), 60_000);
        assert_eq!(axis.axis_ms(999_000), -1_000);
        for axis_ms in [-86_400_000, -1, 0, 60_000, 7_200_000] {
            assert_eq!(axis.axis_ms(axis.event_time_ms(axis_ms)), axis_ms);
        }
        let plain = TimeAxis::uncompressed(5);
        assert_eq!(plain.axis_ms(17), 12);
        assert_eq!(plain.event_time_ms(12), 17);
    }

    #[test]
    fn the_interval_fits_the_run() {
        assert_eq!(sample_interval_ms(86_400_000, 1_000), 60_000);
        assert_eq!(sample_interval_ms(600_000, 1_000), 1_000);
        assert_eq!(sample_interval_ms(3_600_000, 1_000), 3_000);
        assert_eq!(sample_interval_ms(3_600_000, 7_000), 7_000);
    }
}
