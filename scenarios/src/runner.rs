//! The scenario runner: builds the world, plays the fault timeline, waits for
//! the system to drain, stops it, reads the raw topic and checks it.
//!
//! Everything that shapes the outcome is derived from the scenario and the
//! seed, so a run replays byte for byte; only the wall-clock speed measure
//! differs between runs and it is kept out of the summary and the digest.

use crate::checker::{CheckOptions, CheckReport, check_topic};
use crate::scenario::Scenario;
use crate::timeline::{Action, TimedAction, expand};
use crate::world::{self, BROKER_HOST, PlantedBug, RAW_TOPIC, World, build, consumer_config};
use soilstream::codec::{ReadingCodec, from_wire};
use soilstream::model::Reading;
use soilstream::transport::{ConsumedRecord, read_topic_to_end};
use soilstream_sim::SimConsumer;
use soilstream_sim::digest::Digest;
use soilstream_sim::disk::{BitFlip, DamageAt};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

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
    /// Everything that failed: checker anomalies, expectations, liveness.
    pub failures: Vec<String>,
    /// Digest of the run's outcome (topic contents, tallies, drain time,
    /// broker state): equal for equal seeds.
    pub digest: u64,
    /// Wall-clock time of the run, ms (not deterministic; not in the summary).
    pub wall_ms: u64,
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
        let _ = write!(out, "{}", self.check);
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

/// Decodes a raw-topic value with the shipped schema.
pub fn decode_raw(value: &[u8]) -> Result<Reading, String> {
    let (_id, body) = from_wire(value).map_err(|e| e.to_string())?;
    ReadingCodec::v1().decode_body(body).map_err(|e| e.to_string())
}

fn apply(world: &mut World<'_>, scenario: &Scenario, timed: &TimedAction, events: &mut Vec<(u64, String)>) {
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
    }
}

fn all_drained(world: &mut World<'_>) -> bool {
    let World { sim, gateways, .. } = world;
    gateways
        .iter()
        .all(|g| sim.is_host_running(g.name.as_str()) && g.metrics.spool_depth_records.get() == 0)
        && sim.is_host_running(BROKER_HOST)
}

/// Runs `scenario` with `options` and judges it.
pub fn run_scenario(scenario: &Scenario, options: RunOptions) -> RunResult {
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

    // Phase 1: run the timeline, then wait for the drain.
    loop {
        let elapsed_ms = world.sim.elapsed().as_millis() as u64;
        world.ledger.borrow_mut().set_now_ms(elapsed_ms);
        while next_action < actions.len() && actions[next_action].at_ms <= elapsed_ms {
            apply(&mut world, scenario, &actions[next_action], &mut events);
            next_action += 1;
        }
        if next_action == actions.len()
            && elapsed_ms >= healed_at_ms
            && drained_at_ms.is_none()
            && all_drained(&mut world)
        {
            drained_at_ms = Some(elapsed_ms);
        }
        if elapsed_ms >= run_until_ms && next_action == actions.len() {
            if drained_at_ms.is_some() && all_drained(&mut world) {
                break;
            }
            if elapsed_ms >= run_until_ms.max(healed_at_ms + drain_bound_ms) + drain_bound_ms {
                failures.push(format!(
                    "liveness: spools not drained {} s after the last fault healed",
                    (elapsed_ms - healed_at_ms) / 1_000
                ));
                break;
            }
            if drained_at_ms.is_some() {
                // Drained once, refilled by sampling since: wait for the next drain.
                drained_at_ms = drained_at_ms.filter(|_| all_drained(&mut world));
            }
        }
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

    // Phase 3: read the raw topic to its end.
    type TopicRead = Option<Result<Vec<ConsumedRecord>, String>>;
    let read: Rc<RefCell<TopicRead>> = Rc::new(RefCell::new(None));
    {
        let read = read.clone();
        let config = consumer_config(tick_ms);
        let stall_ms = (tick_ms * 300).max(60_000);
        world.sim.client("checker", async move {
            let result = match SimConsumer::new(config) {
                Ok(mut consumer) => read_topic_to_end(&mut consumer, RAW_TOPIC, stall_ms)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            *read.borrow_mut() = Some(result);
            Ok(())
        });
    }
    if let Err(e) = world.sim.run() {
        failures.push(format!("simulation error while reading the topic: {e}"));
    }
    let records = match read.borrow_mut().take() {
        Some(Ok(records)) => records,
        Some(Err(e)) => {
            failures.push(format!("cannot read the raw topic: {e}"));
            Vec::new()
        }
        None => {
            failures.push("the checker client did not finish".into());
            Vec::new()
        }
    };

    // Phase 4: judge.
    let check = check_topic(
        &world.ledger.borrow(),
        &records,
        scenario.topology.partitions,
        &decode_raw,
        CheckOptions::default(),
    );
    if !check.valid {
        for (kind, list) in &check.anomalies {
            if *kind != crate::checker::AnomalyKind::Duplicate {
                failures.push(format!(
                    "{} {}: {}",
                    list.count,
                    kind.name(),
                    list.examples.join("; ")
                ));
            }
        }
    }
    let t = &check.tally;
    let e = &scenario.expect;
    if t.lost_before_durable > e.max_lost_before_durable {
        failures.push(format!(
            "{} readings lost before durable, expected at most {}",
            t.lost_before_durable, e.max_lost_before_durable
        ));
    }
    let rejected = t.rejected_spool_full + t.rejected_invalid + t.rejected_io;
    if rejected > e.max_rejected_or_dropped {
        failures.push(format!(
            "{rejected} readings rejected, expected at most {}",
            e.max_rejected_or_dropped
        ));
    }
    if t.lost_to_reported_damage_or_drop > e.max_lost_to_reported_damage + e.max_rejected_or_dropped {
        failures.push(format!(
            "{} durable readings lost to reported damage or drops, expected at most {}",
            t.lost_to_reported_damage_or_drop,
            e.max_lost_to_reported_damage + e.max_rejected_or_dropped
        ));
    }
    if t.never_committed > 0 {
        failures.push(format!(
            "{} readings neither durable nor lost at a crash (sampler lost track)",
            t.never_committed
        ));
    }

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
    digest.u64(world.broker.observer.state_digest().unwrap_or(0));
    let simulated_ms = world.sim.elapsed().as_millis() as u64;
    RunResult {
        scenario: scenario.name.clone(),
        seed: options.seed,
        planted: options.planted,
        check,
        drain_ms,
        simulated_ms,
        events,
        failures,
        digest: digest.finish(),
        wall_ms: wall_start.elapsed().as_millis() as u64,
    }
}

/// The world's epoch (for reports).
pub fn epoch() -> std::time::SystemTime {
    world::epoch()
}
