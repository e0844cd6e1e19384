//! The scenario runner: builds the world, plays the fault timeline (and the
//! backfills), waits for the system to drain, stops it, reads the raw topic,
//! decodes it with writer schemas fetched from the registry host, and checks
//! it.
//!
//! Everything that shapes the outcome is derived from the scenario and the
//! seed, so a run replays byte for byte; only the wall-clock speed measure
//! differs between runs and it is kept out of the summary and the digest.

use crate::archived::{ArchiveCheckOptions, ArchiveCheckReport, check_archive};
use crate::backfill::{self, BackfillReport};
use crate::checker::CheckReport;
use crate::downstream::{DownstreamReport, DownstreamTopics};
use crate::judge::{Evidence, Judgement, judge};
use crate::observe::{
    Observations, ObservedRun, ObservedTopic, Recorder, Sample, TimeAxis, sample_interval_ms,
};
use crate::scenario::{Scenario, Stage};
use crate::stage::StageHost;
use crate::timeline::{Action, TimedAction, expand};
use crate::world::{
    self, BROKER_HOST, PlantedBug, RAW_TOPIC, REGISTRY_HOST, STORE_HOST, World, build, consumer_config,
    registry_client,
};
use soilstream::codec::{ReadingCodec, from_wire};
use soilstream::decode::{DecodeError, ReadingDecoder};
use soilstream::model::Reading;
use soilstream::transport::{ConsumedRecord, read_topic_to_end};
use soilstream_sim::SimConsumer;
use soilstream_sim::digest::Digest;
use soilstream_sim::disk::{BitFlip, DamageAt};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

/// What the qaqc hosts did over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QaqcActivity {
    /// Hosts.
    pub instances: u32,
    /// Boots of every host.
    pub boots: u32,
    /// Partition states rebuilt from the outputs.
    pub rebuilds: u64,
    /// Group changes the hosts saw.
    pub rebalances: u64,
    /// Output records read back by rebuilds.
    pub records_read_back: u64,
    /// Raw records read again after a restart and skipped.
    pub replayed_skipped: u64,
    /// Raw repeats dropped by dedup.
    pub duplicates_dropped: u64,
    /// Hostile records written.
    pub hostile_records: u64,
}

/// What the archive hosts and the store host did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveActivity {
    /// Hosts.
    pub instances: u32,
    /// Boots of every host.
    pub boots: u32,
    /// Group changes the hosts saw.
    pub rebalances: u64,
    /// What the stage did (batches, recoveries, aborts, fences).
    pub progress: crate::archive::ArchiveProgress,
    /// Store operations retried after a failure.
    pub store_retries: u64,
    /// Boots of the store host.
    pub store_boots: u32,
}

/// How to run a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// A bug to plant (to prove the checker catches it).
    pub planted: PlantedBug,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Planted bug, if any.
    pub planted: PlantedBug,
    /// The checker's verdict.
    pub check: CheckReport,
    /// Time from the last fault healing to every spool being empty, ms.
    pub drain_ms: Option<u64>,
    /// Simulated time run, ms.
    pub simulated_ms: u64,
    /// Fault actions applied, with their times (ms).
    pub events: Vec<(u64, String)>,
    /// One report per backfill of the scenario.
    pub backfills: Vec<BackfillReport>,
    /// Starts of the registry host that ran (a start cut short by a crash
    /// before it ran is not counted).
    pub registry_boots: u32,
    /// Simulated time of the first delivery report of any reading, ms.
    pub first_delivery_ms: Option<u64>,
    /// The downstream checker's verdict (when the world has a QA/QC stage).
    pub downstream: Option<DownstreamReport>,
    /// qaqc hosts: boots, rebuilds and rebalances over the run.
    pub qaqc_activity: QaqcActivity,
    /// The archive checker's verdict (when the world has an archive stage).
    pub archive: Option<ArchiveCheckReport>,
    /// Archive hosts: boots, recoveries, aborts, fences over the run.
    pub archive_activity: ArchiveActivity,
    /// Everything that failed: checker anomalies, expectations, liveness.
    pub failures: Vec<String>,
    /// Digest of the run's outcome (topic contents, tallies, drain time,
    /// broker state): equal for equal seeds.
    pub digest: u64,
    /// Wall-clock time of the run, ms (not deterministic; not in the summary).
    pub wall_ms: u64,
    /// What the run looked like over time (for reports).
    pub observations: Observations,
}

impl RunResult {
    /// Whether every invariant and expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Simulated seconds per wall-clock second.
    pub fn speed(&self) -> f64 {
        self.simulated_ms as f64 / self.wall_ms.max(1) as f64
    }

    /// The deterministic summary (same seed, same text).
    pub fn summary(&self) -> String {
        let t = &self.check.tally;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} seed {}{}",
            self.scenario,
            self.seed,
            match self.planted {
                PlantedBug::None => String::new(),
                bug => format!(" planted-bug {}", bug.name()),
            }
        );
        let _ = writeln!(
            out,
            "readings: sampled={} durable={} delivered={} lost_before_durable={} duplicates={} \
             rejected={} lost_to_reported_damage_or_drop={} delivered_unacknowledged={}",
            t.sampled,
            t.durable,
            t.delivered_unique,
            t.lost_before_durable,
            t.duplicates,
            t.rejected_spool_full + t.rejected_invalid + t.rejected_io,
            t.lost_to_reported_damage_or_drop,
            t.delivered_unacknowledged,
        );
        let _ = writeln!(
            out,
            "drain: {} after the last fault healed; simulated {:.1} h",
            self.drain_ms
                .map_or("never".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            self.simulated_ms as f64 / 3_600_000.0
        );
        let _ = writeln!(out, "faults applied: {}", self.events.len());
        let _ = writeln!(
            out,
            "registry: boots={}; first delivery at {}",
            self.registry_boots,
            self.first_delivery_ms
                .map_or("never".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
        );
        for backfill in &self.backfills {
            let _ = writeln!(out, "{backfill}");
        }
        let _ = write!(out, "{}", self.check);
        if let Some(downstream) = &self.downstream {
            let q = &self.qaqc_activity;
            let _ = writeln!(
                out,
                "qaqc: instances={} boots={} rebuilds={} rebalances={} read_back={} replayed_skipped={} duplicates_dropped={} hostile={}",
                q.instances,
                q.boots,
                q.rebuilds,
                q.rebalances,
                q.records_read_back,
                q.replayed_skipped,
                q.duplicates_dropped,
                q.hostile_records
            );
            let _ = write!(out, "{downstream}");
        }
        if let Some(archive) = &self.archive {
            let a = &self.archive_activity;
            let p = &a.progress;
            let _ = writeln!(
                out,
                "archive hosts: instances={} boots={} rebalances={} batches={} recoveries={} aborted={} files_removed={} fenced={} store_retries={} store_boots={}",
                a.instances,
                a.boots,
                a.rebalances,
                p.batches_committed,
                p.recoveries,
                p.attempts_aborted,
                p.files_removed,
                p.fenced,
                a.store_retries,
                a.store_boots
            );
            let _ = write!(out, "{archive}");
        }
        let _ = writeln!(out, "digest: {:016x}", self.digest);
        if self.passed() {
            let _ = writeln!(out, "result: PASS");
        } else {
            let _ = writeln!(out, "result: FAIL");
            for failure in &self.failures {
                let _ = writeln!(out, "  - {failure}");
            }
        }
        out
    }
}

/// Decodes a raw-topic value written with one of the shipped schemas
/// soilstream producers write (v1 by the gateway, v3 by the backfill),
/// whatever its schema id ([`soilstream::decode::decode_shipped_body`]): for
/// worlds whose registry ids the caller does not track (the simulator's
/// runner fetches writer schemas from its registry host instead).
pub fn decode_raw(value: &[u8]) -> Result<Reading, String> {
    let (_id, body) = from_wire(value).map_err(|e| e.to_string())?;
    soilstream::decode::decode_shipped_body(body).map_err(|e| e.to_string())
}

/// Attempts to reach the registry for one schema id before its records are
/// reported undecodable.
const REGISTRY_FETCH_ATTEMPTS_MAX: u32 = 10;

/// Decodes every record with the writer schema its id names, fetched from
/// the registry host (and cached). Must run inside a turmoil client. A
/// schema id the registry stays unreachable for is given up after
/// [`REGISTRY_FETCH_ATTEMPTS_MAX`] attempts; its records are undecodable
/// (the checker's `corrupt`).
async fn decode_with_registry(records: &[ConsumedRecord], tick_ms: u64) -> Vec<Result<Reading, String>> {
    let decoder = ReadingDecoder::with_registry(Rc::new(registry_client(tick_ms)), ReadingCodec::reader());
    let retry_delay = Duration::from_millis(tick_ms.max(1_000));
    let mut given_up: BTreeSet<u32> = BTreeSet::new();
    let mut decoded = Vec::with_capacity(records.len());
    for record in records {
        let value = record.value.as_deref();
        let mut attempts = 0;
        let result = loop {
            if let Some((id, _)) = value.and_then(|v| from_wire(v).ok())
                && given_up.contains(&id)
            {
                break Err(format!("schema id {id}: registry unreachable"));
            }
            attempts += 1;
            match decoder.decode(value).await {
                Ok((_, reading)) => break Ok(reading),
                Err(DecodeError::RegistryUnavailable { id, reason }) => {
                    if attempts >= REGISTRY_FETCH_ATTEMPTS_MAX {
                        given_up.insert(id);
                        break Err(format!("schema id {id}: registry unavailable: {reason}"));
                    }
                    tokio::time::sleep(retry_delay).await;
                }
                Err(other) => break Err(other.to_string()),
            }
        };
        decoded.push(result);
    }
    decoded
}

fn apply(
    world: &mut World<'_>,
    scenario: &Scenario,
    seed: u64,
    timed: &TimedAction,
    events: &mut Vec<(u64, String)>,
) {
    let gw_name = |g: u32| world.gateways[g as usize].name.clone();
    let base_latency = Duration::from_millis(scenario.topology.latency_ms);
    events.push((timed.at_ms, format!("{:?}", timed.action)));
    tracing::debug!(at_ms = timed.at_ms, action = ?timed.action, "fault");
    match &timed.action {
        Action::Partition(g) => world.sim.partition(gw_name(*g), BROKER_HOST),
        Action::PartitionOneWay(g, to_gateway) => {
            if *to_gateway {
                world.sim.partition_oneway(BROKER_HOST, gw_name(*g));
            } else {
                world.sim.partition_oneway(gw_name(*g), BROKER_HOST);
            }
        }
        Action::Repair(g) => world.sim.repair(gw_name(*g), BROKER_HOST),
        Action::Hold(g) => world.sim.hold(gw_name(*g), BROKER_HOST),
        Action::Release(g) => world.sim.release(gw_name(*g), BROKER_HOST),
        Action::Latency(g, latency_ms) => {
            let latency = latency_ms.map_or(base_latency, Duration::from_millis);
            world.sim.set_link_latency(gw_name(*g), BROKER_HOST, latency);
        }
        Action::PowerOff(g) => {
            let name = gw_name(*g);
            world.sim.partition(name.as_str(), BROKER_HOST);
            world.sim.crash(name.as_str());
            world.ledger.borrow_mut().gateway_crashed(&name);
        }
        Action::PowerOn(g, clock_jump_ms) => {
            let name = gw_name(*g);
            if *clock_jump_ms != 0 {
                world.gateways[*g as usize].clock.jump_ms(*clock_jump_ms);
            }
            world.sim.repair(name.as_str(), BROKER_HOST);
            world.sim.bounce(name.as_str());
        }
        Action::Crash(g) => {
            let name = gw_name(*g);
            world.sim.crash(name.as_str());
            world.ledger.borrow_mut().gateway_crashed(&name);
        }
        Action::Restart(g) => world.sim.bounce(gw_name(*g)),
        Action::BrokerCrash => world.sim.crash(BROKER_HOST),
        Action::BrokerRestart => world.sim.bounce(BROKER_HOST),
        Action::AckLoss(p) => {
            let p = *p;
            world
                .broker
                .faults
                .update(|f| f.drop_ack_probability = p)
                .expect("validated probability");
        }
        Action::RequestErrors(p) => {
            let p = *p;
            world
                .broker
                .faults
                .update(|f| f.error_probability = p)
                .expect("validated probability");
        }
        Action::DiskFull(g, headroom) => {
            let headroom = *headroom;
            world.gateways[*g as usize]
                .disk_faults
                .update(|f| f.full_headroom_bytes = headroom)
                .expect("valid headroom");
        }
        Action::IoErrors(g, p) => {
            let p = *p;
            world.gateways[*g as usize]
                .disk_faults
                .update(|f| {
                    f.read_error_probability = p;
                    f.write_error_probability = p;
                    f.sync_error_probability = p;
                })
                .expect("validated probability");
        }
        Action::ReadCorruption(g, p) => {
            let p = *p;
            world.gateways[*g as usize]
                .disk_faults
                .update(|f| f.read_corruption_probability = p)
                .expect("validated probability");
        }
        Action::BitFlips(g, flips) => {
            for _ in 0..*flips {
                world.gateways[*g as usize]
                    .disk_faults
                    .schedule_bit_flip(BitFlip {
                        path: "/spool".into(),
                        name_prefix: Some("seg-".into()),
                        at: DamageAt::Random,
                        xor_mask: 0x10,
                    })
                    .expect("valid bit flip");
            }
        }
        Action::ClockJump(g, jump_ms) => world.gateways[*g as usize].clock.jump_ms(*jump_ms),
        Action::RegistryPartition => {
            for name in world.registry_clients() {
                world.sim.partition(REGISTRY_HOST, name.as_str());
            }
            world.registry_cut_off = true;
        }
        Action::RegistryRepair => {
            for name in world.registry_clients() {
                world.sim.repair(REGISTRY_HOST, name.as_str());
            }
            world.registry_cut_off = false;
        }
        Action::RegistryCrash => world.sim.crash(REGISTRY_HOST),
        Action::RegistryRestart => world.sim.bounce(REGISTRY_HOST),
        Action::StageCrash(stage, i) => world.sim.crash(stage.host(*i)),
        Action::StagePowerOff(stage, i) => {
            let name = stage.host(*i);
            for peer in stage_peers(*stage) {
                world.sim.partition(name.as_str(), *peer);
            }
            world.sim.crash(name.as_str());
        }
        Action::StageStart(stage, i) => {
            let name = stage.host(*i);
            stage_host(world, *stage, *i).stopping.set(false);
            repair_stage_host(world, *stage, &name);
            world.sim.bounce(name.as_str());
        }
        Action::StagePartition(stage, i) => {
            let name = stage.host(*i);
            for peer in stage_peers(*stage) {
                // A cut-off archive is a zombie: still reaching the store.
                if *peer != STORE_HOST {
                    world.sim.partition(name.as_str(), *peer);
                }
            }
        }
        Action::StageRepair(stage, i) => {
            let name = stage.host(*i);
            repair_stage_host(world, *stage, &name);
        }
        Action::StageStop(stage, i) => stage_host(world, *stage, *i).stop(),
        Action::ArchiveArmCrash(i, point) => {
            let mut arm = world.archive[*i as usize].crash.borrow_mut();
            arm.armed = Some(*point);
            arm.fired = None;
        }
        Action::ArchiveCrashWindowEnd(i, point) => {
            let name = Stage::Archive.host(*i);
            let crashed = {
                let mut arm = world.archive[*i as usize].crash.borrow_mut();
                let crashed = arm.armed.is_none();
                arm.armed = None;
                crashed
            };
            if crashed {
                world.archive[*i as usize].host.stopping.set(false);
                repair_stage_host(world, Stage::Archive, &name);
                world.sim.bounce(name.as_str());
            } else {
                world.archive[*i as usize]
                    .host
                    .failures
                    .borrow_mut()
                    .push(format!(
                        "crash point {} was not reached in its window (ending at {} s)",
                        point.name(),
                        timed.at_ms / 1_000
                    ));
            }
        }
        Action::StorePartition => {
            let names: Vec<String> = world.archive.iter().map(|a| a.host.name.clone()).collect();
            for name in names {
                world.sim.partition(STORE_HOST, name.as_str());
            }
            world.store_cut_off = true;
        }
        Action::StoreRepair => {
            let names: Vec<String> = world.archive.iter().map(|a| a.host.name.clone()).collect();
            for name in names {
                world.sim.repair(STORE_HOST, name.as_str());
            }
            world.store_cut_off = false;
        }
        Action::StoreCrash => world.sim.crash(STORE_HOST),
        Action::StoreRestart => world.sim.bounce(STORE_HOST),
        Action::HostileRecords(count) => {
            let count = *count;
            let first_seq = u64::from(world.hostile_writers) * 100_000;
            world.hostile_writers += 1;
            let written = world.hostile.clone();
            let failures = world.hostile_failures.clone();
            let now_ms = world::since_epoch_ms(world.sim.elapsed());
            let tick_ms = scenario.tick_ms;
            world
                .sim
                .client(format!("hostile-{}", world.hostile_writers), async move {
                    if let Err(e) = crate::hostile::write(count, first_seq, now_ms, tick_ms, written).await {
                        failures.borrow_mut().push(e);
                    }
                    Ok(())
                });
        }
        Action::BackfillStart(index) => {
            backfill::start(world, scenario, seed, *index, timed.at_ms);
            if world.registry_cut_off {
                let name = scenario.backfills[*index].gateway_id();
                world.sim.partition(REGISTRY_HOST, name.as_str());
            }
        }
        Action::BackfillPowerOff(index) => {
            let name = scenario.backfills[*index].gateway_id();
            world.sim.partition(name.as_str(), BROKER_HOST);
            world.sim.crash(name.as_str());
        }
        Action::BackfillPowerOn(index) => {
            let name = scenario.backfills[*index].gateway_id();
            world.sim.repair(name.as_str(), BROKER_HOST);
            world.sim.bounce(name.as_str());
        }
    }
}

/// The hosts a stage's instances talk to.
fn stage_peers(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Qaqc => &[BROKER_HOST, REGISTRY_HOST],
        Stage::Archive => &[BROKER_HOST, REGISTRY_HOST, STORE_HOST],
    }
}

fn stage_host<'w>(world: &'w World<'_>, stage: Stage, instance: u32) -> &'w StageHost {
    match stage {
        Stage::Qaqc => &world.qaqc[instance as usize].host,
        Stage::Archive => &world.archive[instance as usize].host,
    }
}

/// Whether a service outage cuts `peer` off from its clients now.
fn peer_cut_off(world: &World<'_>, peer: &str) -> bool {
    (peer == REGISTRY_HOST && world.registry_cut_off) || (peer == STORE_HOST && world.store_cut_off)
}

/// Reconnects a stage host to its peers, except those a service outage
/// still cuts off.
fn repair_stage_host(world: &mut World<'_>, stage: Stage, name: &str) {
    for peer in stage_peers(stage) {
        if !peer_cut_off(world, peer) {
            world.sim.repair(name, *peer);
        }
    }
}

/// Adds the stage hosts whose start time has come to the simulation, cut
/// off from the services an outage cuts off now.
fn start_due_stage_hosts(world: &mut World<'_>, scenario: &Scenario, planted: PlantedBug, elapsed_ms: u64) {
    let due = |host: &StageHost| !host.started.get() && host.start_at_ms <= elapsed_ms;
    let mut started: Vec<(Stage, String)> = Vec::new();
    for (i, handles) in world.qaqc.iter().enumerate().filter(|(_, h)| due(&h.host)) {
        crate::qaqc::start_host(
            &mut world.sim,
            handles,
            scenario,
            i as u32,
            planted,
            world::EPOCH_MS,
        );
        started.push((Stage::Qaqc, handles.host.name.clone()));
    }
    for (i, handles) in world.archive.iter().enumerate().filter(|(_, h)| due(&h.host)) {
        crate::archive::start_host(
            &mut world.sim,
            handles,
            scenario,
            i as u32,
            planted,
            world::EPOCH_MS,
        );
        started.push((Stage::Archive, handles.host.name.clone()));
    }
    for (stage, name) in started {
        for peer in stage_peers(stage) {
            if peer_cut_off(world, peer) {
                world.sim.partition(*peer, name.as_str());
            }
        }
    }
}

/// Whether every backfill of the scenario has started and ran to an end.
fn backfills_finished(world: &World<'_>, scenario: &Scenario) -> bool {
    world.backfills.len() == scenario.backfills.len() && world.backfills.iter().all(|b| b.is_finished())
}

fn all_drained(world: &mut World<'_>) -> bool {
    let World { sim, gateways, .. } = world;
    gateways
        .iter()
        .all(|g| sim.is_host_running(g.name.as_str()) && g.metrics.spool_depth_records.get() == 0)
        && sim.is_host_running(BROKER_HOST)
}

/// Watches a run: samples the world into the recorder at its interval
/// (spool depths and boots, the observed topics' high watermarks, the
/// archive's reach) and reports progress at each sample.
struct Watch<'p> {
    recorder: Recorder,
    topics: Vec<String>,
    partitions: u32,
    planned_ms: u64,
    progress: &'p mut dyn FnMut(RunProgress),
}

impl Watch<'_> {
    /// Samples the world if a sample is due, and reports progress then.
    fn tick(&mut self, world: &World<'_>, phase: Phase) {
        let now_ms = world.sim.elapsed().as_millis() as u64;
        if !self.recorder.due(now_ms) {
            return;
        }
        self.sample_now(world);
        (self.progress)(RunProgress {
            phase,
            simulated_ms: now_ms,
            planned_ms: self.planned_ms,
        });
    }

    /// Samples the world now (once per instant).
    fn sample_now(&mut self, world: &World<'_>) {
        let now_ms = world.sim.elapsed().as_millis() as u64;
        if self.recorder.samples().last().is_some_and(|s| s.at_ms == now_ms) {
            return;
        }
        let partitions = self.partitions as i32;
        let high_watermarks = self
            .topics
            .iter()
            .map(|topic| {
                world
                    .broker
                    .observer
                    .with_core(|core| {
                        (0..partitions)
                            .map(|p| core.high_watermark(topic, p))
                            .collect::<Option<Vec<i64>>>()
                    })
                    .flatten()
                    .unwrap_or_default()
            })
            .collect();
        let archived_next = match world.archive.first() {
            Some(handles) => {
                let progress = handles.progress.borrow();
                (0..partitions)
                    .map(|p| progress.archived_next.get(&p).copied().unwrap_or(0))
                    .collect()
            }
            None => Vec::new(),
        };
        self.recorder.record(Sample {
            at_ms: now_ms,
            spool_depth_records: world
                .gateways
                .iter()
                .map(|g| g.metrics.spool_depth_records.get().max(0) as u64)
                .collect(),
            gateway_boots: world.gateways.iter().map(|g| g.boots.get()).collect(),
            high_watermarks,
            archived_next,
        });
    }
}

/// What a run is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Playing the fault timeline and waiting for the drain.
    Timeline,
    /// Stopping the gateways (their spools drain).
    GatewaysStopping,
    /// qaqc catching up with the raw topic.
    QaqcCatchingUp,
    /// The archive catching up with the clean topic.
    ArchiveCatchingUp,
}

impl Phase {
    /// A short description.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Timeline => "timeline",
            Phase::GatewaysStopping => "gateways stopping",
            Phase::QaqcCatchingUp => "qaqc catching up",
            Phase::ArchiveCatchingUp => "archive catching up",
        }
    }
}

/// Progress of a run, reported at every sample of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    /// What the run is doing.
    pub phase: Phase,
    /// Simulated time so far, ms.
    pub simulated_ms: u64,
    /// The scenario's scripted duration, ms (a run goes on past it until
    /// everything drained).
    pub planned_ms: u64,
}

/// Runs `scenario` with `options` and judges it.
pub fn run_scenario(scenario: &Scenario, options: RunOptions) -> RunResult {
    run_scenario_with_progress(scenario, options, &mut |_| {})
}

/// [`run_scenario`], calling `progress` at every sample of the world.
pub fn run_scenario_with_progress(
    scenario: &Scenario,
    options: RunOptions,
    progress: &mut dyn FnMut(RunProgress),
) -> RunResult {
    let wall_start = std::time::Instant::now();
    let mut world = build(scenario, options.seed, options.planted);
    let actions = expand(scenario);
    let tick_ms = scenario.tick_ms;
    let run_until_ms = scenario.duration_s * 1_000;
    let healed_at_ms = scenario.faults_healed_at_s() * 1_000;
    let drain_bound_ms = scenario.expect.drain_within_s * 1_000;
    let mut failures = Vec::new();
    let mut events = Vec::new();
    let mut next_action = 0;
    let mut drained_at_ms: Option<u64> = None;
    let qaqc_topics = crate::qaqc::settings(scenario, 0, PlantedBug::None).topics;
    let mut watch = Watch {
        recorder: Recorder::new(sample_interval_ms(run_until_ms, tick_ms)),
        topics: ObservedTopic::names(RAW_TOPIC, (!world.qaqc.is_empty()).then_some(&qaqc_topics)),
        partitions: scenario.topology.partitions,
        planned_ms: run_until_ms,
        progress,
    };

    // Phase 1: run the timeline, then wait for the drain.
    loop {
        let elapsed_ms = world.sim.elapsed().as_millis() as u64;
        world.ledger.borrow_mut().set_now_ms(elapsed_ms);
        start_due_stage_hosts(&mut world, scenario, options.planted, elapsed_ms);
        while next_action < actions.len() && actions[next_action].at_ms <= elapsed_ms {
            apply(
                &mut world,
                scenario,
                options.seed,
                &actions[next_action],
                &mut events,
            );
            next_action += 1;
        }
        // Every fault action is at or before `healed_at_ms`, so all of them
        // have been applied here; backfill steps later on do not delay the
        // drain measure.
        if elapsed_ms >= healed_at_ms && drained_at_ms.is_none() && all_drained(&mut world) {
            drained_at_ms = Some(elapsed_ms);
        }
        if elapsed_ms >= run_until_ms && next_action == actions.len() {
            let backfills_done = backfills_finished(&world, scenario);
            if drained_at_ms.is_some() && all_drained(&mut world) && backfills_done {
                break;
            }
            if elapsed_ms >= run_until_ms.max(healed_at_ms + drain_bound_ms) + drain_bound_ms {
                if drained_at_ms.is_none() || !all_drained(&mut world) {
                    failures.push(format!(
                        "liveness: spools not drained {} s after the last fault healed",
                        (elapsed_ms - healed_at_ms) / 1_000
                    ));
                }
                if !backfills_done {
                    failures.push(format!(
                        "liveness: backfills not finished {} s after the last fault healed",
                        (elapsed_ms - healed_at_ms) / 1_000
                    ));
                }
                break;
            }
            if drained_at_ms.is_some() {
                // Drained once, refilled by sampling since: wait for the next drain.
                drained_at_ms = drained_at_ms.filter(|_| all_drained(&mut world));
            }
        }
        for handles in &world.archive {
            let fired = handles.crash.borrow_mut().fired.take();
            if let Some((point, partition)) = fired {
                events.push((
                    elapsed_ms,
                    format!(
                        "{} crashed at {} (partition {partition})",
                        handles.host.name,
                        point.name()
                    ),
                ));
                world.sim.crash(handles.host.name.as_str());
            }
        }
        watch.tick(&world, Phase::Timeline);
        if let Err(e) = world.sim.step() {
            failures.push(format!("simulation error: {e}"));
            break;
        }
    }
    let drain_ms = drained_at_ms.map(|at| at.saturating_sub(healed_at_ms));
    if let Some(ms) = drain_ms
        && ms > drain_bound_ms
    {
        failures.push(format!(
            "liveness: drained {:.1} s after the last fault healed, bound {} s",
            ms as f64 / 1000.0,
            scenario.expect.drain_within_s
        ));
    }

    // Phase 2: stop every gateway (sampling stops, the spool drains).
    for g in &world.gateways {
        g.stopping.set(true);
        if let Some(trigger) = g.shutdown.borrow().as_ref() {
            trigger.trigger();
        }
    }
    let stop_deadline_ms = world.sim.elapsed().as_millis() as u64 + 3_600_000;
    loop {
        let running: Vec<String> = world
            .gateways
            .iter()
            .map(|g| g.name.clone())
            .filter(|n| world.sim.is_host_running(n.as_str()))
            .collect();
        if running.is_empty() {
            break;
        }
        if world.sim.elapsed().as_millis() as u64 >= stop_deadline_ms {
            failures.push(format!("gateways did not stop: {running:?}"));
            break;
        }
        watch.tick(&world, Phase::GatewaysStopping);
        if let Err(e) = world.sim.step() {
            failures.push(format!("simulation error while stopping: {e}"));
            break;
        }
    }
    for g in &world.gateways {
        let depth = g.metrics.spool_depth_records.get();
        if depth != 0 {
            failures.push(format!(
                "{}: {depth} readings still spooled after shutdown",
                g.name
            ));
        }
        for failure in g.open_failures.borrow().iter() {
            failures.push(format!("{}: spool did not reopen: {failure}", g.name));
        }
        let mut ledger = world.ledger.borrow_mut();
        ledger.damage_reported(&g.name, g.metrics.spool_damaged_records.get());
        ledger.loss_reported(&g.name, g.metrics.readings_dropped.get());
    }

    // Phase 2b: the QA/QC stage catches up with the raw topic (windows of
    // silent sensors close on the idle timeout), then stops cleanly.
    if !world.qaqc.is_empty() {
        let partitions = scenario.topology.partitions as i32;
        let deadline_ms = world.sim.elapsed().as_millis() as u64 + 4 * 3_600_000;
        loop {
            let raw_high: Option<Vec<i64>> = world.broker.observer.with_core(|core| {
                (0..partitions)
                    .map(|p| core.high_watermark(RAW_TOPIC, p).unwrap_or(0))
                    .collect()
            });
            let done = raw_high
                .as_ref()
                .is_some_and(|high| crate::qaqc::caught_up(&mut world.sim, &world.qaqc, high));
            if done {
                break;
            }
            if world.sim.elapsed().as_millis() as u64 >= deadline_ms {
                let statuses: Vec<String> = world
                    .qaqc
                    .iter()
                    .map(|h| format!("{}: {:?}", h.host.name, h.status.borrow().partitions))
                    .collect();
                failures.push(format!(
                    "liveness: qaqc did not catch up with the raw topic {raw_high:?} within 4 h after the gateways stopped: {}",
                    statuses.join("; ")
                ));
                break;
            }
            watch.tick(&world, Phase::QaqcCatchingUp);
            if let Err(e) = world.sim.step() {
                failures.push(format!("simulation error while qaqc caught up: {e}"));
                break;
            }
        }
        let hosts: Vec<&StageHost> = world.qaqc.iter().map(|h| &h.host).collect();
        failures.extend(stop_stage(&mut world.sim, &hosts, "qaqc"));
        for failure in world.hostile_failures.borrow().iter() {
            failures.push(format!("hostile writer: {failure}"));
        }
    }

    // Phase 2c: the archive catches up with the (now final) clean topic,
    // then stops cleanly.
    let clean_topic = crate::archive::settings(scenario, 0, PlantedBug::None)
        .archive
        .topic;
    if !world.archive.is_empty() {
        let partitions = scenario.topology.partitions as i32;
        let deadline_ms = world.sim.elapsed().as_millis() as u64 + 4 * 3_600_000;
        loop {
            let clean_high: Option<Vec<i64>> = world.broker.observer.with_core(|core| {
                (0..partitions)
                    .map(|p| core.high_watermark(&clean_topic, p).unwrap_or(0))
                    .collect()
            });
            if clean_high
                .as_ref()
                .is_some_and(|high| crate::archive::caught_up(&world.archive, high))
            {
                break;
            }
            if world.sim.elapsed().as_millis() as u64 >= deadline_ms {
                let progress = world.archive[0].progress.borrow().archived_next.clone();
                failures.push(format!(
                    "liveness: the archive did not catch up with the clean topic {clean_high:?} within 4 h after qaqc stopped: markers cover {progress:?}"
                ));
                break;
            }
            watch.tick(&world, Phase::ArchiveCatchingUp);
            if let Err(e) = world.sim.step() {
                failures.push(format!("simulation error while the archive caught up: {e}"));
                break;
            }
        }
        let hosts: Vec<&StageHost> = world.archive.iter().map(|h| &h.host).collect();
        failures.extend(stop_stage(&mut world.sim, &hosts, "archive"));
        if let Some(store) = &world.store {
            for failure in &store.status().failures {
                failures.push(format!("object store: {failure}"));
            }
        }
    }

    // Phase 3: read the raw topic to its end and decode it with the writer
    // schemas from the registry.
    type TopicRead = Option<Result<(Vec<ConsumedRecord>, Vec<Result<Reading, String>>), String>>;
    let read: Rc<RefCell<TopicRead>> = Rc::new(RefCell::new(None));
    type DownstreamRead = Option<Result<DownstreamTopics, String>>;
    let downstream_read: Rc<RefCell<DownstreamRead>> = Rc::new(RefCell::new(None));
    type ArchiveRead = Option<Result<ArchiveCheckReport, String>>;
    let archive_read: Rc<RefCell<ArchiveRead>> = Rc::new(RefCell::new(None));
    let qaqc_settings = crate::qaqc::settings(scenario, 0, options.planted);
    {
        let read = read.clone();
        let downstream_read = downstream_read.clone();
        let archive_read = archive_read.clone();
        let with_archive = !world.archive.is_empty();
        let archive_options = ArchiveCheckOptions {
            topic: clean_topic.clone(),
            ..ArchiveCheckOptions::defaults()
        };
        let config = consumer_config(tick_ms);
        let stall_ms = (tick_ms * 300).max(60_000);
        let with_qaqc = !world.qaqc.is_empty();
        let topics = qaqc_settings.topics.clone();
        world.sim.client("checker", async move {
            let result = match SimConsumer::new(config.clone()) {
                Ok(mut consumer) => match read_topic_to_end(&mut consumer, RAW_TOPIC, stall_ms).await {
                    Ok(records) => {
                        let decoded = decode_with_registry(&records, tick_ms).await;
                        Ok((records, decoded))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            *read.borrow_mut() = Some(result);
            if with_qaqc {
                let result = async {
                    let mut consumer = SimConsumer::new(config).map_err(|e| e.to_string())?;
                    let mut out = DownstreamTopics::default();
                    for (topic, slot) in [
                        (&topics.clean, &mut out.clean),
                        (&topics.quarantine, &mut out.quarantine),
                        (&topics.flags, &mut out.flags),
                        (&topics.aggregates, &mut out.aggregates),
                        (&topics.alerts, &mut out.alerts),
                    ] {
                        *slot = read_topic_to_end(&mut consumer, topic, stall_ms)
                            .await
                            .map_err(|e| format!("{topic}: {e}"))?;
                    }
                    Ok::<_, String>(out)
                }
                .await;
                if with_archive {
                    let judged = match &result {
                        Ok(topics) => {
                            let store = crate::archive::store_client(tick_ms);
                            check_archive(&store, &topics.clean, &archive_options)
                                .await
                                .map_err(|e| format!("cannot read the archive's store: {e}"))
                        }
                        Err(e) => Err(format!("no clean topic to judge the archive by: {e}")),
                    };
                    *archive_read.borrow_mut() = Some(judged);
                }
                *downstream_read.borrow_mut() = Some(result);
            }
            Ok(())
        });
    }
    if let Err(e) = world.sim.run() {
        failures.push(format!("simulation error while reading the topic: {e}"));
    }
    let (records, decoded) = match read.borrow_mut().take() {
        Some(Ok(read)) => read,
        Some(Err(e)) => {
            failures.push(format!("cannot read the raw topic: {e}"));
            (Vec::new(), Vec::new())
        }
        None => {
            failures.push("the checker client did not finish".into());
            (Vec::new(), Vec::new())
        }
    };
    let hostile: Vec<crate::hostile::HostileRecord> = world.hostile.borrow().clone();
    let downstream_topics = match downstream_read.borrow_mut().take() {
        Some(Ok(topics)) => Some(topics),
        Some(Err(e)) => {
            failures.push(format!("cannot read the qaqc output topics: {e}"));
            None
        }
        None if world.qaqc.is_empty() => None,
        None => {
            failures.push("the checker did not read the qaqc output topics".into());
            None
        }
    };
    let qaqc_activity = QaqcActivity {
        instances: world.qaqc.len() as u32,
        boots: world.qaqc.iter().map(|h| h.host.boots.get()).sum(),
        rebuilds: world.qaqc.iter().map(|h| h.metrics.rebuilds.get()).sum(),
        rebalances: world.qaqc.iter().map(|h| h.metrics.rebalances.get()).sum(),
        records_read_back: world
            .qaqc
            .iter()
            .map(|h| h.metrics.rebuild_records_read.get())
            .sum(),
        replayed_skipped: world.qaqc.iter().map(|h| h.metrics.replayed_skipped.get()).sum(),
        duplicates_dropped: world
            .qaqc
            .iter()
            .map(|h| h.metrics.duplicates_dropped.get())
            .sum(),
        hostile_records: hostile.len() as u64,
    };
    let archive = match archive_read.borrow_mut().take() {
        Some(Ok(report)) => Some(report),
        Some(Err(e)) => {
            failures.push(e);
            None
        }
        None if world.archive.is_empty() => None,
        None => {
            failures.push("the checker did not judge the archive".into());
            None
        }
    };
    let archive_activity = ArchiveActivity {
        instances: world.archive.len() as u32,
        boots: world.archive.iter().map(|h| h.host.boots.get()).sum(),
        rebalances: world.archive.iter().map(|h| h.metrics.rebalances.get()).sum(),
        progress: world
            .archive
            .first()
            .map(|h| h.progress.borrow().clone())
            .unwrap_or_default(),
        store_retries: world.archive.iter().map(|h| h.metrics.store_retries.get()).sum(),
        store_boots: world.store.as_ref().map_or(0, |s| s.status().boots),
    };
    let registry_status = world.registry.status();
    let first_delivery_ms = world
        .ledger
        .borrow()
        .entries()
        .values()
        .filter_map(|e| e.first_delivered_at_ms)
        .min();
    // Phase 4: judge.
    let backfill_runs: Vec<backfill::BackfillRun<'_>> = world.backfills.iter().map(|b| b.run()).collect();
    let ledger = world.ledger.borrow();
    let Judgement {
        check,
        downstream,
        backfills: backfill_reports,
        failures: verdict_failures,
    } = judge(&Evidence {
        scenario,
        ledger: &ledger,
        records: &records,
        decoded: &decoded,
        hostile: &hostile,
        downstream_topics: downstream_topics.as_ref(),
        qaqc_settings: &qaqc_settings,
        qaqc_activity: &qaqc_activity,
        archive: archive.as_ref(),
        archive_activity: &archive_activity,
        backfills: &backfill_runs,
        registry_failures: &registry_status.failures,
        archive_min_event_dates: scenario.archive.min_event_dates,
    });
    drop(ledger);
    failures.extend(verdict_failures);
    let t = &check.tally;
    let rejected = t.rejected_spool_full + t.rejected_invalid + t.rejected_io;

    let mut digest = Digest::new();
    for r in &records {
        digest
            .i64(i64::from(r.partition))
            .i64(r.offset)
            .field(r.key.as_deref().unwrap_or_default())
            .field(r.value.as_deref().unwrap_or_default())
            .i64(r.timestamp_ms);
    }
    for value in [
        t.sampled,
        t.durable,
        t.delivered_unique,
        t.duplicates,
        t.lost_before_durable,
        rejected,
        t.lost_to_reported_damage_or_drop,
        drain_ms.unwrap_or(u64::MAX),
    ] {
        digest.u64(value);
    }
    for (at_ms, event) in &events {
        digest.u64(*at_ms).field(event.as_bytes());
    }
    digest
        .u64(u64::from(registry_status.boots))
        .u64(first_delivery_ms.unwrap_or(u64::MAX));
    for report in &backfill_reports {
        digest.field(report.to_string().as_bytes());
    }
    if let Some(topics) = &downstream_topics {
        for r in topics
            .clean
            .iter()
            .chain(&topics.quarantine)
            .chain(&topics.flags)
            .chain(&topics.aggregates)
            .chain(&topics.alerts)
        {
            digest
                .field(r.topic.as_bytes())
                .i64(i64::from(r.partition))
                .i64(r.offset)
                .field(r.value.as_deref().unwrap_or_default());
        }
    }
    if let Some(report) = &archive {
        digest.field(report.to_string().as_bytes());
    }
    digest.u64(world.broker.observer.state_digest().unwrap_or(0));
    let simulated_ms = world.sim.elapsed().as_millis() as u64;
    // A last sample: the state the checker read.
    watch.sample_now(&world);
    let observations = Observations::build(ObservedRun {
        scenario,
        axis: TimeAxis::uncompressed(world::EPOCH_MS),
        gateways: world.gateways.iter().map(|g| g.name.clone()).collect(),
        topics: watch.topics,
        recorder: watch.recorder,
        raw: &records,
        decoded: &decoded,
        aggregates: downstream_topics
            .as_ref()
            .map(|t| crate::downstream::window_revisions(&t.aggregates))
            .unwrap_or_default(),
        ledger: &world.ledger.borrow(),
    });
    RunResult {
        scenario: scenario.name.clone(),
        seed: options.seed,
        planted: options.planted,
        check,
        drain_ms,
        simulated_ms,
        events,
        backfills: backfill_reports,
        registry_boots: registry_status.boots,
        first_delivery_ms,
        downstream,
        qaqc_activity,
        archive,
        archive_activity,
        failures,
        digest: digest.finish(),
        wall_ms: wall_start.elapsed().as_millis() as u64,
        observations,
    }
}

/// Stops every started host of a stage cleanly (each leaves its group),
/// waits up to 10 simulated minutes, and returns what failed: hosts that
/// did not stop, and every boot that ended with an error.
fn stop_stage(sim: &mut turmoil::Sim<'_>, hosts: &[&StageHost], stage: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for h in hosts {
        h.stop();
    }
    let stop_deadline_ms = sim.elapsed().as_millis() as u64 + 600_000;
    loop {
        let running = hosts
            .iter()
            .filter(|h| h.started.get())
            .any(|h| sim.is_host_running(h.name.as_str()));
        if !running {
            break;
        }
        if sim.elapsed().as_millis() as u64 >= stop_deadline_ms {
            failures.push(format!("{stage} hosts did not stop within 10 min"));
            break;
        }
        if let Err(e) = sim.step() {
            failures.push(format!("simulation error while stopping {stage}: {e}"));
            break;
        }
    }
    for h in hosts {
        for failure in h.failures.borrow().iter() {
            failures.push(format!("{}: {failure}", h.name));
        }
    }
    failures
}

/// The world's epoch (for reports).
pub fn epoch() -> std::time::SystemTime {
    world::epoch()
}
