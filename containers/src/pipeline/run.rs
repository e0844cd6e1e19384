//! Plays a scenario against real processes and judges it with the
//! simulator's checkers: see the [module docs](super).

use super::component::{Component, ComponentKind, RegistryComponent};
use super::kafka::{BrokerQueries, block_on, read_topic};
use super::metrics::Metrics;
use super::plan::{Endpoints, Plan};
use crate::{FixtureError, TansuBroker, TansuConfig, free_loopback_port};
use soilstream::archive::config::StoreConfig;
use soilstream::archive::objstore::ObjectStoreArchive;
use soilstream::backfill::BackfillSummary;
use soilstream::model::Reading;
use soilstream::qaqc::config::{QaqcFileConfig, QaqcSettings};
use soilstream::transport::ConsumedRecord;
use soilstream::transport::kafka::KafkaClientConfig;
use soilstream_scenarios::archive::{ARCHIVE_GROUP, ArchiveProgress};
use soilstream_scenarios::archived::{ArchiveCheckOptions, ArchiveCheckReport, check_archive};
use soilstream_scenarios::backfill::{BackfillRun, BackfillStatus, sd_card_spec};
use soilstream_scenarios::downstream::{DownstreamTopics, window_revisions};
use soilstream_scenarios::judge::{Evidence, Judgement, judge};
use soilstream_scenarios::ledger::Ledger;
use soilstream_scenarios::observe::{
    AppendTimes, Observations, ObservedRun, ObservedTopic, Recorder, Sample, TimeAxis,
};
use soilstream_scenarios::qaqc::QAQC_GROUP;
use soilstream_scenarios::runner::{
    ArchiveActivity, Phase, QaqcActivity, RunProgress, RunResult, decode_raw,
};
use soilstream_scenarios::scenario::{Scenario, Stage};
use soilstream_scenarios::sdcard::{SdCardLog, generate_mapped};
use soilstream_scenarios::timeline::Action;
use soilstream_scenarios::world::{PlantedBug, RAW_TOPIC, gateway_name};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a watermark or committed-offsets request may take while the
/// world is sampled, ms (a sample must not stall on a dead broker).
const SAMPLE_REQUEST_TIMEOUT_MS: u64 = 500;

/// How long qaqc and the archive may take to catch up once their input
/// stopped growing, wall-clock ms.
const CATCH_UP_TIMEOUT_MS: u64 = 180_000;

/// How long a component may take to exit after SIGTERM, wall-clock ms.
const EXIT_TIMEOUT_MS: u64 = 90_000;

/// Most rows per wall-clock second a real backfill is asked for: a
/// scenario's rate times the compression would saturate a small machine's
/// broker (group sessions then expire), so the card takes longer on the
/// script's axis than in the simulator.
pub const REAL_BACKFILL_ROWS_PER_S_MAX: u64 = 400;

/// A stage instance that owns no partition this long (wall clock) is
/// restarted, as an orchestrator's liveness probe would: Tansu 0.6.0 can
/// leave a group with nothing assigned after a session expired (see
/// `soilstream::transport::kafka_group`).
const UNASSIGNED_RESTART_AFTER_MS: u64 = 30_000;

/// How the real world runs.
#[derive(Debug, Clone)]
pub struct RealWorldOptions {
    /// The `soilstream` binary every component runs as.
    pub program: PathBuf,
    /// Where each process gets its directory (configuration, state, log).
    pub work_dir: PathBuf,
    /// Scenario ms per wall-clock ms (60: an hour of the script takes a
    /// minute).
    pub compression: u32,
    /// The seed (probe values, SD-card logs): the same as the simulator's.
    pub seed: u64,
    /// A planted bug the real components can carry
    /// ([`super::plan::REAL_PLANTED_BUGS`]).
    pub planted: PlantedBug,
    /// Wall-clock ms between two samples of the world.
    pub sample_interval_ms: u64,
}

/// Why the real world could not run (failures of the run itself are the
/// run's verdict, not errors).
#[derive(Debug, thiserror::Error)]
pub enum RealWorldError {
    /// The scenario needs something real processes cannot do.
    #[error("the real world cannot play scenario `{scenario}`:\n  - {}", .reasons.join("\n  - "))]
    Unsupported {
        /// The scenario.
        scenario: String,
        /// Every reason.
        reasons: Vec<String>,
    },
    /// A fixture (the broker, a component) could not be set up.
    #[error("{what}: {source}")]
    Fixture {
        /// What was being set up.
        what: String,
        /// Why it failed.
        #[source]
        source: FixtureError,
    },
    /// Anything else that stopped the run before it could be judged.
    #[error("{0}")]
    Setup(String),
}

impl RealWorldError {
    fn fixture(what: impl Into<String>) -> impl FnOnce(FixtureError) -> Self {
        let what = what.into();
        move |source| RealWorldError::Fixture { what, source }
    }
}

/// A judged real run.
#[derive(Debug, Clone)]
pub struct RealRun {
    /// The verdict and observations, as the simulator's runner gives them
    /// (times on the scenario's axis).
    pub result: RunResult,
    /// When the run's time 0 was, ms since the Unix epoch (wall clock).
    pub started_at_ms: i64,
    /// Scenario ms per wall-clock ms.
    pub compression: u32,
    /// Where every process's directory and log are.
    pub work_dir: PathBuf,
}

/// A stage instance: started when due, then a [`Component`].
struct StageSlot {
    stage: Stage,
    instance: u32,
    start_at_ms: u64,
    dir: PathBuf,
    config_toml: String,
    component: Option<Component>,
    counters: CounterCarry,
    /// Since when (wall clock) the running instance owns no partition.
    unassigned_since: Option<Instant>,
}

impl StageSlot {
    fn name(&self) -> String {
        self.stage.host(self.instance)
    }

    fn kind(&self) -> ComponentKind {
        match self.stage {
            Stage::Qaqc => ComponentKind::Qaqc,
            Stage::Archive => ComponentKind::Archive,
        }
    }
}

/// Counters summed over the incarnations of one component (each restart
/// starts its counters at 0; what a killed incarnation counted after its
/// last scrape is not seen).
#[derive(Debug, Default)]
struct CounterCarry {
    carried: BTreeMap<String, f64>,
    last: Metrics,
}

impl CounterCarry {
    fn observe(&mut self, metrics: Metrics) {
        self.last = metrics;
    }

    fn incarnation_ended(&mut self) {
        for (name, value) in std::mem::take(&mut self.last.0) {
            *self.carried.entry(name).or_default() += value;
        }
    }

    fn total(&self, family: &str) -> u64 {
        let carried: f64 = self
            .carried
            .iter()
            .filter(|(name, _)| {
                name.as_str() == family || name.strip_prefix(family).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum();
        (carried + self.last.sum_family(family)).max(0.0) as u64
    }
}

/// One SD-card backfill as a `soilstream backfill` process.
struct RealBackfill {
    index: usize,
    name: String,
    live_gateway_id: String,
    log: SdCardLog,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    status: BackfillStatus,
    started_at_ms: u64,
}

impl RealBackfill {
    fn spawn(&mut self, program: &Path) -> Result<(), String> {
        let stdout = std::fs::File::create(self.dir.join("summary.json"))
            .map_err(|e| format!("{}: creating summary.json: {e}", self.name))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("backfill.log"))
            .map_err(|e| format!("{}: opening backfill.log: {e}", self.name))?;
        let child = Command::new(program)
            .args(&self.args)
            .env("SOILSTREAM_LOG", "info")
            .env_remove("SOILSTREAM_BROKERS")
            .env_remove("SOILSTREAM_REGISTRY_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("{}: starting soilstream backfill: {e}", self.name))?;
        self.child = Some(child);
        self.status.boots += 1;
        self.status.outcome = None;
        self.status.finished_at_ms = None;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Notes the outcome if the process exited.
    fn poll(&mut self, now_ms: u64) {
        let Some(child) = self.child.as_mut() else { return };
        let Ok(Some(status)) = child.try_wait() else {
            return;
        };
        self.child = None;
        self.status.finished_at_ms = Some(now_ms);
        let summary = std::fs::read_to_string(self.dir.join("summary.json")).unwrap_or_default();
        let parsed = serde_json::from_str::<BackfillSummary>(summary.trim());
        self.status.outcome = Some(match (status.success(), parsed) {
            (true, Ok(summary)) => Ok(summary),
            (true, Err(e)) => Err(format!("exited 0 but its JSON summary does not parse: {e}")),
            (false, _) => Err(format!(
                "exited with {status}; log tail:\n{}",
                tail(&self.dir.join("backfill.log"), 2_000)
            )),
        });
    }

    fn is_finished(&self) -> bool {
        self.status.outcome.is_some()
    }
}

/// The running world.
struct World {
    broker: TansuBroker,
    broker_down: bool,
    registry: RegistryComponent,
    gateways: Vec<Component>,
    gateway_counters: Vec<CounterCarry>,
    gateway_depths: Vec<u64>,
    stages: Vec<StageSlot>,
    backfills: Vec<RealBackfill>,
    queries: BrokerQueries,
    archive_offsets: BrokerQueries,
    client: KafkaClientConfig,
    topics: Vec<String>,
    partitions: u32,
    events: Vec<(u64, String)>,
    failures: Vec<String>,
    /// Components the timeline stopped (any other that exits failed).
    down_on_purpose: BTreeSet<String>,
}

impl World {
    /// Notes every component that exited without the timeline stopping it
    /// (a crash of ours: a failure, with its log tail), once.
    fn note_unexpected_exits(&mut self) {
        let mut exited = Vec::new();
        let components = self
            .gateways
            .iter_mut()
            .chain(self.stages.iter_mut().filter_map(|s| s.component.as_mut()));
        for component in components {
            if self.down_on_purpose.contains(component.name()) {
                continue;
            }
            if let Some(status) = component.exit_status() {
                exited.push((component.name().to_owned(), status, component.log_tail()));
            }
        }
        for (name, status, log_tail) in exited {
            self.failures.push(format!(
                "{name} exited on its own ({status}); log tail:\n{log_tail}"
            ));
            self.down_on_purpose.insert(name);
        }
    }

    /// The liveness probe of the stages: an instance that has owned no
    /// partition for [`UNASSIGNED_RESTART_AFTER_MS`] is restarted (an
    /// event of the run, in the report's timeline).
    fn probe_stage_liveness(&mut self, now_ms: u64) {
        for slot in self.stages.iter_mut() {
            let name = slot.name();
            if self.down_on_purpose.contains(&name) || self.broker_down {
                slot.unassigned_since = None;
                continue;
            }
            let Some(component) = slot.component.as_mut() else {
                continue;
            };
            if !owns_partitions(component.log_path()) {
                let since = *slot.unassigned_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(UNASSIGNED_RESTART_AFTER_MS) {
                    slot.counters.incarnation_ended();
                    let restarted = component.kill9().and_then(|()| component.restart());
                    slot.unassigned_since = None;
                    self.events.push((
                        now_ms,
                        format!(
                            "liveness probe restarted {name}: it owned no partition for {} s",
                            UNASSIGNED_RESTART_AFTER_MS / 1_000
                        ),
                    ));
                    if let Err(e) = restarted {
                        self.failures
                            .push(format!("{name}: the liveness probe could not restart it: {e}"));
                    }
                }
            } else {
                slot.unassigned_since = None;
            }
        }
    }

    /// Keeps the broker's log with the others (its data directory goes
    /// when the broker does).
    fn keep_broker_log(&self, work_dir: &Path) {
        let _ = std::fs::copy(self.broker.log_path(), work_dir.join("broker.log"));
    }
}

/// Plays `scenario` in the real world and judges it; `progress` is called
/// at every sample.
pub fn run_real_world(
    scenario: &Scenario,
    options: &RealWorldOptions,
    progress: &mut dyn FnMut(RunProgress),
) -> Result<RealRun, RealWorldError> {
    let plan = Plan::new(scenario, options.compression, options.planted).map_err(|reasons| {
        RealWorldError::Unsupported {
            scenario: scenario.name.clone(),
            reasons,
        }
    })?;
    assert!(
        options.sample_interval_ms > 0,
        "a sample interval of 0 ms never advances"
    );
    let wall_start = Instant::now();
    let work_dir = &options.work_dir;
    std::fs::create_dir_all(work_dir)
        .map_err(|e| RealWorldError::Setup(format!("creating {}: {e}", work_dir.display())))?;
    let t = &scenario.topology;
    let qaqc_topics = QaqcFileConfig::embedded_defaults().topics;
    let with_qaqc = scenario.qaqc.instances > 0;
    let with_archive = scenario.archive.instances > 0;
    let mut broker_config = TansuConfig::default().topic(RAW_TOPIC, t.partitions).with_proxy();
    if with_qaqc {
        for topic in qaqc_topics.outputs() {
            broker_config = broker_config.topic(topic, t.partitions);
        }
    }
    tracing::info!("starting the Tansu broker");
    let broker = TansuBroker::start(broker_config).map_err(RealWorldError::fixture("starting the broker"))?;
    let bootstrap = broker.bootstrap_servers();
    let registry_port =
        free_loopback_port().map_err(RealWorldError::fixture("finding a port for the registry"))?;
    let registry = RegistryComponent::start(&options.program, &work_dir.join("registry"), registry_port)
        .map_err(RealWorldError::fixture("starting the registry"))?;
    let client = KafkaClientConfig::new(bootstrap.clone());
    let endpoints = Endpoints {
        bootstrap_servers: bootstrap.clone(),
        registry_url: registry.url().to_owned(),
    };
    let queries =
        BrokerQueries::new(&client, "soilstream-real-world-sampler").map_err(RealWorldError::Setup)?;
    let archive_offsets = BrokerQueries::new(&client, ARCHIVE_GROUP).map_err(RealWorldError::Setup)?;
    let topics = ObservedTopic::names(RAW_TOPIC, with_qaqc.then_some(&qaqc_topics));
    let mut stages = Vec::new();
    for instance in 0..scenario.qaqc.instances {
        let dir = work_dir.join(Stage::Qaqc.host(instance));
        let config = plan.qaqc_config(scenario, instance, &dir.join("state"), &endpoints);
        stages.push(StageSlot {
            stage: Stage::Qaqc,
            instance,
            start_at_ms: scenario
                .qaqc
                .start_at_s
                .get(instance as usize)
                .copied()
                .unwrap_or(0)
                * 1_000,
            dir,
            config_toml: toml_text(&config)?,
            component: None,
            counters: CounterCarry::default(),
            unassigned_since: None,
        });
    }
    for instance in 0..scenario.archive.instances {
        let dir = work_dir.join(Stage::Archive.host(instance));
        let config = plan.archive_config(
            scenario,
            instance,
            &qaqc_topics.clean,
            &work_dir.join("archive-store"),
            &endpoints,
        );
        stages.push(StageSlot {
            stage: Stage::Archive,
            instance,
            start_at_ms: scenario
                .archive
                .start_at_s
                .get(instance as usize)
                .copied()
                .unwrap_or(0)
                * 1_000,
            dir,
            config_toml: toml_text(&config)?,
            component: None,
            counters: CounterCarry::default(),
            unassigned_since: None,
        });
    }
    std::fs::create_dir_all(work_dir.join("archive-store"))
        .map_err(|e| RealWorldError::Setup(format!("creating the archive's store: {e}")))?;
    let mut world = World {
        broker,
        broker_down: false,
        registry,
        gateways: Vec::new(),
        gateway_counters: Vec::new(),
        gateway_depths: Vec::new(),
        stages,
        backfills: Vec::new(),
        queries,
        archive_offsets,
        client,
        topics,
        partitions: t.partitions,
        events: Vec::new(),
        failures: Vec::new(),
        down_on_purpose: BTreeSet::new(),
    };
    start_due_stages(&mut world, &options.program, 0)?;
    let started_at_ms = wall_clock_ms();
    let origin = Instant::now();
    let axis = TimeAxis {
        epoch_ms: started_at_ms,
        compression: plan.compression,
    };
    for index in 0..t.gateways {
        let name = gateway_name(index);
        let dir = work_dir.join(&name);
        let config = plan.gateway_config(
            scenario,
            options.seed,
            options.planted,
            index,
            &dir.join("spool"),
            &endpoints,
        );
        let ledger = dir.join("ledger.jsonl");
        let ledger_arg = ledger.display().to_string();
        let gateway = Component::start(
            &options.program,
            ComponentKind::Gateway,
            &name,
            &dir,
            &toml_text(&config)?,
            &["--ledger", &ledger_arg],
            "info",
        )
        .map_err(RealWorldError::fixture(format!("starting gateway {name}")))?;
        world.gateways.push(gateway);
        world.gateway_counters.push(CounterCarry::default());
        world.gateway_depths.push(0);
    }
    let now_axis_ms = |origin: Instant| -> u64 {
        (origin.elapsed().as_millis() as u64).saturating_mul(u64::from(plan.compression))
    };

    // Phase 1: the timeline, then the drain.
    let run_until_ms = scenario.duration_s * 1_000;
    let healed_at_ms = scenario.faults_healed_at_s() * 1_000;
    let drain_bound_ms = scenario.expect.drain_within_s * 1_000;
    let interval_axis_ms = options.sample_interval_ms * u64::from(plan.compression);
    let mut recorder = Recorder::new(interval_axis_ms);
    let mut next_action = 0;
    let mut drained_at_ms: Option<u64> = None;
    loop {
        let now_ms = now_axis_ms(origin);
        start_due_stages(&mut world, &options.program, now_ms)?;
        while next_action < plan.actions.len() && plan.actions[next_action].at_ms <= now_ms {
            let timed = &plan.actions[next_action];
            apply(
                &mut world,
                scenario,
                options,
                &plan,
                axis,
                &timed.action,
                timed.at_ms,
            );
            next_action += 1;
        }
        for backfill in &mut world.backfills {
            backfill.poll(now_ms);
        }
        sample(&mut world, &mut recorder, now_ms);
        world.note_unexpected_exits();
        world.probe_stage_liveness(now_ms);
        progress(RunProgress {
            phase: Phase::Timeline,
            simulated_ms: now_ms,
            planned_ms: run_until_ms,
        });
        let drained = !world.broker_down && world.gateway_depths.iter().all(|d| *d == 0);
        if now_ms >= healed_at_ms && drained_at_ms.is_none() && drained {
            drained_at_ms = Some(now_ms);
        }
        if now_ms >= run_until_ms && next_action == plan.actions.len() {
            let backfills_done = world.backfills.len() == scenario.backfills.len()
                && world.backfills.iter().all(RealBackfill::is_finished);
            if drained_at_ms.is_some() && drained && backfills_done {
                break;
            }
            if now_ms >= run_until_ms.max(healed_at_ms + drain_bound_ms) + drain_bound_ms {
                if drained_at_ms.is_none() || !drained {
                    world.failures.push(format!(
                        "liveness: spools not drained {} s after the last fault healed",
                        (now_ms - healed_at_ms) / 1_000
                    ));
                }
                if !backfills_done {
                    world.failures.push(format!(
                        "liveness: backfills not finished {} s after the last fault healed",
                        (now_ms - healed_at_ms) / 1_000
                    ));
                }
                break;
            }
            if drained_at_ms.is_some() && !drained {
                // Drained once, refilled by sampling since: wait for the next drain.
                drained_at_ms = None;
            }
        }
        std::thread::sleep(Duration::from_millis(options.sample_interval_ms));
    }
    let drain_ms = drained_at_ms.map(|at| at.saturating_sub(healed_at_ms));
    if let Some(ms) = drain_ms
        && ms > drain_bound_ms
    {
        world.failures.push(format!(
            "liveness: drained {:.1} s after the last fault healed, bound {} s",
            ms as f64 / 1000.0,
            scenario.expect.drain_within_s
        ));
    }

    // Phase 2: stop the gateways (sampling stops, the spools drain).
    for (gateway, counters) in world.gateways.iter_mut().zip(&mut world.gateway_counters) {
        world.down_on_purpose.insert(gateway.name().to_owned());
        if let Ok(metrics) = gateway.metrics() {
            counters.observe(metrics);
        }
        match gateway.terminate(EXIT_TIMEOUT_MS) {
            Ok(t) if !t.forced && t.status.success() => {}
            Ok(t) => world.failures.push(format!(
                "{}: did not exit cleanly on SIGTERM ({}{}); log tail:\n{}",
                gateway.name(),
                t.status,
                if t.forced { ", killed" } else { "" },
                gateway.log_tail()
            )),
            Err(e) => world.failures.push(format!("{}: stopping: {e}", gateway.name())),
        }
    }
    let now_ms = now_axis_ms(origin);
    sample(&mut world, &mut recorder, now_ms);

    // Phase 2b and 2c: qaqc catches up with the raw topic, then the archive
    // with the clean topic; each then stops cleanly.
    let mut phase_failures = Vec::new();
    for (stage, group, input, phase) in [
        (Stage::Qaqc, QAQC_GROUP, RAW_TOPIC, Phase::QaqcCatchingUp),
        (
            Stage::Archive,
            ARCHIVE_GROUP,
            qaqc_topics.clean.as_str(),
            Phase::ArchiveCatchingUp,
        ),
    ] {
        if !world.stages.iter().any(|s| s.stage == stage) {
            continue;
        }
        let offsets = BrokerQueries::new(&world.client, group).map_err(RealWorldError::Setup)?;
        let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        loop {
            let now_ms = now_axis_ms(origin);
            sample(&mut world, &mut recorder, now_ms);
            progress(RunProgress {
                phase,
                simulated_ms: now_ms,
                planned_ms: run_until_ms,
            });
            let failed_before = world.failures.len();
            world.note_unexpected_exits();
            if world.failures.len() > failed_before {
                phase_failures.push(format!(
                    "{} stopped before it caught up with {input}",
                    stage.name()
                ));
                break;
            }
            world.probe_stage_liveness(now_ms);
            let waiting = catch_up_waits(&mut world, stage, &offsets, input);
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                phase_failures.push(format!(
                    "liveness: {} did not catch up with {input} within {} s after its input stopped: {}",
                    stage.name(),
                    CATCH_UP_TIMEOUT_MS / 1_000,
                    waiting.join("; ")
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(options.sample_interval_ms));
        }
        for slot in world.stages.iter_mut().filter(|s| s.stage == stage) {
            let name = slot.name();
            let Some(component) = slot.component.as_mut() else {
                continue;
            };
            if !world.down_on_purpose.insert(name.clone()) {
                continue;
            }
            if let Ok(metrics) = component.metrics() {
                slot.counters.observe(metrics);
            }
            match component.terminate(EXIT_TIMEOUT_MS) {
                Ok(t) if !t.forced && t.status.success() => {}
                Ok(t) => phase_failures.push(format!(
                    "{name}: did not exit cleanly on SIGTERM ({}); log tail:\n{}",
                    t.status,
                    component.log_tail()
                )),
                Err(e) => phase_failures.push(format!("{name}: stopping: {e}")),
            }
        }
    }
    world.failures.extend(phase_failures);
    let end_ms = now_axis_ms(origin);
    sample(&mut world, &mut recorder, end_ms);
    let _ = world.registry.terminate(EXIT_TIMEOUT_MS);
    world.keep_broker_log(work_dir);
    if !world.broker.is_running() {
        return Err(RealWorldError::Setup(format!(
            "the broker exited before the topics could be read (its log: {}); panics in its log: {:?}",
            work_dir.join("broker.log").display(),
            world.broker.panics_in_log()
        )));
    }

    // Phase 3: read what the broker and the store hold.
    // A topic that cannot be read is a failure of the run (judged as read:
    // empty), not an error: the report still shows what was observed.
    let mut read_failures = Vec::new();
    let mut read = |topic: &str| {
        read_topic(&world.client, topic).unwrap_or_else(|e| {
            read_failures.push(format!("cannot read the topics to judge them: {e}"));
            Vec::new()
        })
    };
    let records = read(RAW_TOPIC);
    let decoded: Vec<Result<Reading, String>> = records
        .iter()
        .map(|r| {
            r.value
                .as_deref()
                .map_or_else(|| Err("no value".to_owned()), decode_raw)
        })
        .collect();
    let downstream_topics = with_qaqc.then(|| DownstreamTopics {
        clean: read(&qaqc_topics.clean),
        quarantine: read(&qaqc_topics.quarantine),
        flags: read(&qaqc_topics.flags),
        aggregates: read(&qaqc_topics.aggregates),
        alerts: read(&qaqc_topics.alerts),
    });
    world.failures.extend(read_failures);
    let archive = match (&downstream_topics, with_archive) {
        (Some(topics), true) => {
            match judge_archive(&work_dir.join("archive-store"), &qaqc_topics.clean, &topics.clean) {
                Ok(report) => Some(report),
                Err(e) => {
                    world.failures.push(e);
                    None
                }
            }
        }
        _ => None,
    };

    // The ledger: what each gateway acknowledged durable (its ledger file),
    // timed by event time, and every good row of every SD card, timed by
    // the backfill's start; then, as the stand-in for delivery reports, the
    // first time each identity was seen in the raw topic.
    let mut ledger = Ledger::new(false);
    for gateway in &world.gateways {
        let path = gateway.dir().join("ledger.jsonl");
        let mut loaded = Ledger::new(false);
        if let Err(e) = loaded.load_jsonl(&path) {
            world
                .failures
                .push(format!("{}: reading its ledger: {e}", gateway.name()));
            continue;
        }
        for entry in loaded.entries().values() {
            ledger.set_now_ms(axis.axis_ms(entry.reading.event_time_ms).max(0) as u64);
            ledger.durable(std::slice::from_ref(&entry.reading));
        }
    }
    for backfill in &world.backfills {
        ledger.set_now_ms(backfill.started_at_ms);
        ledger.durable(&backfill.log.readings);
    }
    let samples = recorder.samples().to_vec();
    let times = AppendTimes::new(&samples);
    for (record, reading) in records.iter().zip(&decoded) {
        if let (Ok(reading), Some(at_ms)) = (
            reading,
            times.at(ObservedTopic::Raw.index(), record.partition, record.offset),
        ) {
            ledger.first_seen_in_topic(&reading.id(), at_ms);
        }
    }
    ledger.set_now_ms(end_ms);
    for (gateway, counters) in world.gateways.iter().zip(&world.gateway_counters) {
        ledger.damage_reported(
            gateway.name(),
            counters.total("soilstream_spool_damaged_records_total"),
        );
        ledger.loss_reported(
            gateway.name(),
            counters.total("soilstream_readings_dropped_total"),
        );
    }

    let qaqc_settings = qaqc_settings(&world)?;
    let stage_total = |stage: Stage, family: &str| -> u64 {
        world
            .stages
            .iter()
            .filter(|s| s.stage == stage)
            .map(|s| s.counters.total(family))
            .sum()
    };
    let stage_boots = |stage: Stage| -> u32 {
        world
            .stages
            .iter()
            .filter(|s| s.stage == stage)
            .map(|s| s.component.as_ref().map_or(0, Component::boots))
            .sum()
    };
    let qaqc_activity = QaqcActivity {
        instances: scenario.qaqc.instances,
        boots: stage_boots(Stage::Qaqc),
        rebuilds: stage_total(Stage::Qaqc, "soilstream_qaqc_rebuilds_total"),
        rebalances: stage_total(Stage::Qaqc, "soilstream_qaqc_rebalances_total"),
        records_read_back: stage_total(Stage::Qaqc, "soilstream_qaqc_rebuild_records_read_total"),
        replayed_skipped: stage_total(Stage::Qaqc, "soilstream_qaqc_replayed_skipped_total"),
        duplicates_dropped: stage_total(Stage::Qaqc, "soilstream_qaqc_duplicates_dropped_total"),
        hostile_records: 0,
    };
    let archive_activity = ArchiveActivity {
        instances: scenario.archive.instances,
        boots: stage_boots(Stage::Archive),
        rebalances: stage_total(Stage::Archive, "soilstream_archive_rebalances_total"),
        progress: ArchiveProgress {
            archived_next: recorder
                .samples()
                .last()
                .map(|s| {
                    s.archived_next
                        .iter()
                        .enumerate()
                        .map(|(p, n)| (p as i32, *n))
                        .collect()
                })
                .unwrap_or_default(),
            batches_committed: stage_total(Stage::Archive, "soilstream_archive_batches_committed_total"),
            recoveries: stage_total(Stage::Archive, "soilstream_archive_recovery_actions_total"),
            attempts_aborted: archive.as_ref().map_or(0, |a| a.tally.aborted_attempts),
            files_removed: 0,
            fenced: stage_total(Stage::Archive, "soilstream_archive_fenced_total"),
        },
        store_retries: stage_total(Stage::Archive, "soilstream_archive_store_retries_total"),
        store_boots: 0,
    };
    let backfill_runs: Vec<BackfillRun<'_>> = world
        .backfills
        .iter()
        .map(|b| BackfillRun {
            name: &b.name,
            live_gateway_id: &b.live_gateway_id,
            log: &b.log,
            status: b.status.clone(),
            started_at_ms: b.started_at_ms,
        })
        .collect();
    // The archive files rows by the UTC date of their event time: where
    // the calendar puts the whole run and its SD cards on fewer dates than
    // the scenario expects, fewer are expected.
    let dates: BTreeSet<i64> = ledger
        .entries()
        .values()
        .map(|e| e.reading.event_time_ms.div_euclid(86_400_000))
        .collect();
    let archive_min_event_dates = scenario.archive.min_event_dates.min(dates.len() as u64);
    let Judgement {
        check,
        downstream,
        backfills,
        failures: verdict_failures,
    } = judge(&Evidence {
        scenario,
        ledger: &ledger,
        records: &records,
        decoded: &decoded,
        hostile: &[],
        downstream_topics: downstream_topics.as_ref(),
        qaqc_settings: &qaqc_settings,
        qaqc_activity: &qaqc_activity,
        archive: archive.as_ref(),
        archive_activity: &archive_activity,
        backfills: &backfill_runs,
        registry_failures: &[],
        archive_min_event_dates,
    });
    let mut failures = std::mem::take(&mut world.failures);
    failures.extend(verdict_failures);
    let first_delivery_ms = ledger
        .entries()
        .values()
        .filter_map(|e| e.first_delivered_at_ms)
        .min();
    let observations = Observations::build(ObservedRun {
        scenario,
        axis,
        gateways: world.gateways.iter().map(|g| g.name().to_owned()).collect(),
        topics: world.topics.clone(),
        recorder,
        raw: &records,
        decoded: &decoded,
        aggregates: downstream_topics
            .as_ref()
            .map(|t| window_revisions(&t.aggregates))
            .unwrap_or_default(),
        ledger: &ledger,
    });
    let digest = digest_of(&records, downstream_topics.as_ref());
    let result = RunResult {
        scenario: scenario.name.clone(),
        seed: options.seed,
        planted: options.planted,
        check,
        drain_ms,
        simulated_ms: end_ms,
        events: std::mem::take(&mut world.events),
        backfills,
        registry_boots: world.registry.boots(),
        first_delivery_ms,
        downstream,
        qaqc_activity,
        archive,
        archive_activity,
        failures,
        digest,
        wall_ms: wall_start.elapsed().as_millis() as u64,
        observations,
    };
    Ok(RealRun {
        result,
        started_at_ms,
        compression: plan.compression,
        work_dir: work_dir.clone(),
    })
}

/// Starts every stage instance due at `now_ms` that has not started yet.
fn start_due_stages(world: &mut World, program: &Path, now_ms: u64) -> Result<(), RealWorldError> {
    for slot in world.stages.iter_mut() {
        if slot.component.is_some() || slot.start_at_ms > now_ms {
            continue;
        }
        let name = slot.name();
        let component = Component::start(
            program,
            slot.kind(),
            &name,
            &slot.dir,
            &slot.config_toml,
            &[],
            "info",
        )
        .map_err(RealWorldError::fixture(format!("starting {name}")))?;
        slot.component = Some(component);
    }
    Ok(())
}

/// Applies one action of the timeline at axis time `at_ms`.
fn apply(
    world: &mut World,
    scenario: &Scenario,
    options: &RealWorldOptions,
    plan: &Plan,
    axis: TimeAxis,
    action: &Action,
    at_ms: u64,
) {
    world.events.push((at_ms, format!("{action:?}")));
    tracing::info!(at_ms, ?action, "fault");
    let outcome: Result<(), String> = match action {
        Action::BrokerCrash => {
            world.broker_down = true;
            world
                .broker
                .kill9()
                .map_err(|e| format!("killing the broker: {e}"))
        }
        Action::BrokerRestart => {
            let restarted = world
                .broker
                .restart()
                .map_err(|e| format!("restarting the broker: {e}"));
            world.broker_down = restarted.is_err();
            restarted
        }
        Action::PowerOff(g) | Action::Crash(g) => {
            world.down_on_purpose.insert(gateway_name(*g));
            gateway(world, *g).and_then(|(gw, counters)| {
                counters.incarnation_ended();
                gw.kill9().map_err(|e| format!("killing {}: {e}", gw.name()))
            })
        }
        Action::PowerOn(g, _) | Action::Restart(g) => {
            world.down_on_purpose.remove(&gateway_name(*g));
            gateway(world, *g)
                .and_then(|(gw, _)| gw.restart().map_err(|e| format!("restarting {}: {e}", gw.name())))
        }
        Action::RegistryCrash => world
            .registry
            .kill9()
            .map_err(|e| format!("killing the registry: {e}")),
        Action::RegistryRestart => world
            .registry
            .restart()
            .map_err(|e| format!("restarting the registry: {e}")),
        Action::StageCrash(stage, i) | Action::StagePowerOff(stage, i) => {
            world.down_on_purpose.insert(stage.host(*i));
            stage_slot(world, *stage, *i).and_then(|slot| {
                slot.counters.incarnation_ended();
                match slot.component.as_mut() {
                    Some(c) => c
                        .kill9()
                        .map_err(|e| format!("killing {}: {e}", slot.stage.host(slot.instance))),
                    None => Ok(()),
                }
            })
        }
        Action::StageStop(stage, i) => {
            world.down_on_purpose.insert(stage.host(*i));
            stage_slot(world, *stage, *i).and_then(|slot| {
                slot.counters.incarnation_ended();
                match slot.component.as_mut() {
                    Some(c) => c
                        .terminate(EXIT_TIMEOUT_MS)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            })
        }
        Action::StageStart(stage, i) => {
            world.down_on_purpose.remove(&stage.host(*i));
            stage_slot(world, *stage, *i).and_then(|slot| match slot.component.as_mut() {
                Some(c) => {
                    if c.is_running() {
                        Ok(())
                    } else {
                        c.restart().map_err(|e| e.to_string())
                    }
                }
                None => Ok(()),
            })
        }
        Action::BackfillStart(index) => start_backfill(world, scenario, options, plan, axis, *index, at_ms),
        Action::BackfillPowerOff(index) => {
            if let Some(b) = world.backfills.iter_mut().find(|b| b.index == *index) {
                b.kill();
            }
            Ok(())
        }
        Action::BackfillPowerOn(index) => match world.backfills.iter_mut().find(|b| b.index == *index) {
            Some(b) if b.child.is_none() && !b.is_finished() => b.spawn(&options.program),
            _ => Ok(()),
        },
        other => Err(format!(
            "{other:?} has no real-world counterpart (the plan should have refused it)"
        )),
    };
    if let Err(e) = outcome {
        world
            .failures
            .push(format!("at {} s of the script: {e}", at_ms / 1_000));
    }
}

fn gateway(world: &mut World, index: u32) -> Result<(&mut Component, &mut CounterCarry), String> {
    let i = index as usize;
    match (world.gateways.get_mut(i), world.gateway_counters.get_mut(i)) {
        (Some(g), Some(c)) => Ok((g, c)),
        _ => Err(format!("no gateway {index}")),
    }
}

fn stage_slot(world: &mut World, stage: Stage, instance: u32) -> Result<&mut StageSlot, String> {
    world
        .stages
        .iter_mut()
        .find(|s| s.stage == stage && s.instance == instance)
        .ok_or_else(|| format!("no {}", stage.host(instance)))
}

/// Writes backfill `index`'s SD-card log (the simulator's, its rows during
/// the run compressed like the run) and starts `soilstream backfill` on it.
fn start_backfill(
    world: &mut World,
    scenario: &Scenario,
    options: &RealWorldOptions,
    plan: &Plan,
    axis: TimeAxis,
    index: usize,
    at_ms: u64,
) -> Result<(), String> {
    let backfill = &scenario.backfills[index];
    let spec = sd_card_spec(scenario, options.seed, index, axis.epoch_ms);
    let log = generate_mapped(&spec, |scripted_ms| {
        axis.event_time_ms(scripted_ms - axis.epoch_ms)
    });
    let name = backfill.gateway_id();
    let dir = options.work_dir.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let extension = if log.profile.is_some() { "dat" } else { "csv" };
    let csv = dir.join(format!("{name}.{extension}"));
    std::fs::write(&csv, &log.csv).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    let mut args: Vec<String> = vec![
        "backfill".into(),
        csv.display().to_string(),
        "--gateway-id".into(),
        name.clone(),
        "--brokers".into(),
        world.broker.bootstrap_servers(),
        "--topic".into(),
        RAW_TOPIC.into(),
        "--registry".into(),
        world.registry.url().to_owned(),
        "--checkpoint".into(),
        dir.join("checkpoint").display().to_string(),
        "--rejects".into(),
        dir.join("rejects.csv").display().to_string(),
        "--json".into(),
    ];
    if let Some(profile) = &log.profile {
        // A TOA5 card: the backfill reads it with the profile it carries.
        let path = dir.join("profile.toml");
        std::fs::write(&path, profile).map_err(|e| format!("writing {}: {e}", path.display()))?;
        args.push("--profile".into());
        args.push(path.display().to_string());
    }
    if let Some(rate) = backfill.max_rate_rows_per_s {
        let per_wall_s = (u64::from(rate) * u64::from(plan.compression)).min(REAL_BACKFILL_ROWS_PER_S_MAX);
        args.push("--max-rate".into());
        args.push(per_wall_s.min(u64::from(u32::MAX)).to_string());
    }
    for (key, value) in super::plan::FAST_FAILURE_DETECTION {
        args.push("-X".into());
        args.push(format!("{key}={value}"));
    }
    let mut real = RealBackfill {
        index,
        name,
        live_gateway_id: gateway_name(backfill.gateway),
        log,
        args,
        dir,
        child: None,
        status: BackfillStatus::default(),
        started_at_ms: at_ms,
    };
    let spawned = real.spawn(&options.program);
    world.backfills.push(real);
    spawned
}

/// Samples the world: spool depths and boots, the observed topics' high
/// watermarks, the archive group's committed offsets.
fn sample(world: &mut World, recorder: &mut Recorder, now_ms: u64) {
    if recorder.samples().last().is_some_and(|s| s.at_ms >= now_ms) {
        return;
    }
    for ((gateway, counters), depth) in world
        .gateways
        .iter_mut()
        .zip(world.gateway_counters.iter_mut())
        .zip(world.gateway_depths.iter_mut())
    {
        if !gateway.is_running() {
            continue;
        }
        if let Ok(metrics) = gateway.metrics() {
            *depth = metrics.count("soilstream_spool_depth_records");
            counters.observe(metrics);
        }
    }
    for slot in world.stages.iter_mut() {
        if let Some(component) = slot.component.as_mut()
            && component.is_running()
            && let Ok(metrics) = component.metrics()
        {
            slot.counters.observe(metrics);
        }
    }
    let mut high_watermarks = vec![Vec::new(); world.topics.len()];
    if !world.broker_down {
        for (slot, topic) in high_watermarks.iter_mut().zip(&world.topics) {
            match world
                .queries
                .high_watermarks(topic, world.partitions, SAMPLE_REQUEST_TIMEOUT_MS)
            {
                Ok(highs) => *slot = highs,
                Err(_) => break,
            }
        }
    }
    let with_archive = world.stages.iter().any(|s| s.stage == Stage::Archive);
    let archived_next = if !with_archive {
        Vec::new()
    } else {
        let clean = world
            .topics
            .get(ObservedTopic::Clean.index())
            .cloned()
            .unwrap_or_default();
        let last = recorder.samples().last().map(|s| s.archived_next.clone());
        match (world.broker_down, last) {
            (true, Some(last)) => last,
            _ => match world
                .archive_offsets
                .committed(&clean, world.partitions, SAMPLE_REQUEST_TIMEOUT_MS)
            {
                Ok(committed) => (0..world.partitions as i32)
                    .map(|p| committed.get(&p).copied().flatten().unwrap_or(0))
                    .collect(),
                Err(_) => recorder
                    .samples()
                    .last()
                    .map(|s| s.archived_next.clone())
                    .unwrap_or_else(|| vec![0; world.partitions as usize]),
            },
        }
    };
    recorder.record(Sample {
        at_ms: now_ms,
        spool_depth_records: world.gateway_depths.clone(),
        gateway_boots: world.gateways.iter().map(Component::boots).collect(),
        high_watermarks,
        archived_next,
    });
}

/// What a stage is still waiting for before it caught up with `input`
/// (empty: caught up): its group committed every partition's end, and for
/// qaqc no window open and nothing in flight.
fn catch_up_waits(world: &mut World, stage: Stage, offsets: &BrokerQueries, input: &str) -> Vec<String> {
    let mut waiting = Vec::new();
    let highs = match world
        .queries
        .high_watermarks(input, world.partitions, SAMPLE_REQUEST_TIMEOUT_MS * 4)
    {
        Ok(highs) => highs,
        Err(e) => return vec![e],
    };
    match offsets.committed(input, world.partitions, SAMPLE_REQUEST_TIMEOUT_MS * 4) {
        Ok(committed) => {
            for (p, high) in highs.iter().enumerate() {
                let got = committed.get(&(p as i32)).copied().flatten();
                if got != Some(*high) && !(*high == 0 && got.is_none()) {
                    waiting.push(format!("partition {p} committed {got:?} of {high}"));
                }
            }
        }
        Err(e) => waiting.push(e),
    }
    for slot in world.stages.iter_mut().filter(|s| s.stage == stage) {
        let name = slot.name();
        let Some(component) = slot.component.as_mut() else {
            continue;
        };
        if !component.is_running() {
            waiting.push(format!("{name} is not running"));
            continue;
        }
        if stage == Stage::Qaqc {
            match component.metrics() {
                Ok(m) => {
                    let open = m.count("soilstream_qaqc_open_windows");
                    let in_flight = m.count("soilstream_qaqc_in_flight_outputs");
                    if open > 0 || in_flight > 0 {
                        waiting.push(format!("{name}: open_windows={open} in_flight={in_flight}"));
                    }
                }
                Err(e) => waiting.push(format!("{name}: {e}")),
            }
        }
    }
    waiting
}

/// The settings qaqc ran with, read back from its file (what the downstream
/// checker judges by).
fn qaqc_settings(world: &World) -> Result<QaqcSettings, RealWorldError> {
    let Some(slot) = world.stages.iter().find(|s| s.stage == Stage::Qaqc) else {
        return Ok(QaqcSettings::defaults());
    };
    let path = slot.dir.join("qaqc.toml");
    QaqcFileConfig::load(&path)
        .map(|c| c.settings())
        .map_err(|e| RealWorldError::Setup(format!("reading back {}: {e}", path.display())))
}

/// The archive checker over the local store.
fn judge_archive(
    store_dir: &Path,
    clean_topic: &str,
    clean: &[ConsumedRecord],
) -> Result<ArchiveCheckReport, String> {
    let store_config = StoreConfig {
        url: format!("file://{}", store_dir.display()),
        ..StoreConfig::default()
    };
    let store =
        ObjectStoreArchive::open(&store_config).map_err(|e| format!("opening the archive's store: {e}"))?;
    let options = ArchiveCheckOptions {
        topic: clean_topic.to_owned(),
        ..ArchiveCheckOptions::defaults()
    };
    block_on(async { check_archive(&store, clean, &options).await })?
        .map_err(|e| format!("cannot read the archive's store: {e}"))
}

/// A digest of what the run left in the topics (equal for equal contents;
/// a real run's contents differ from run to run).
fn digest_of(records: &[ConsumedRecord], downstream: Option<&DownstreamTopics>) -> u64 {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    let outputs = downstream.map(|t| [&t.clean, &t.quarantine, &t.flags, &t.aggregates, &t.alerts]);
    for r in records
        .iter()
        .chain(outputs.iter().flatten().flat_map(|t| t.iter()))
    {
        hasher.update(r.topic.as_bytes());
        hasher.update(r.partition.to_le_bytes());
        hasher.update(r.offset.to_le_bytes());
        hasher.update(r.value.as_deref().unwrap_or_default());
    }
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// Whether the current incarnation of a qaqc or archive instance owns
/// partitions, from its log: its last assignment came after its last loss
/// or revocation.
fn owns_partitions(log_path: &Path) -> bool {
    let Ok(log) = std::fs::read_to_string(log_path) else {
        return false;
    };
    let current = log.rfind(crate::START_BANNER).map_or(&log[..], |at| &log[at..]);
    let assigned = current.rfind("partitions assigned");
    let gone = [
        current.rfind("partitions lost"),
        current.rfind("partitions revoked"),
    ]
    .into_iter()
    .flatten()
    .max();
    match (assigned, gone) {
        (Some(a), Some(g)) => a > g,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn toml_text<T: serde::Serialize>(config: &T) -> Result<String, RealWorldError> {
    toml::to_string_pretty(config)
        .map_err(|e| RealWorldError::Setup(format!("rendering a configuration: {e}")))
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn tail(path: &Path, max_bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max_bytes);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}
