//! The fault timeline: scenario faults and backfills expanded into timed
//! actions.

use crate::scenario::{Fault, OutageMode, Scenario, Stage};
use soilstream::archive::protocol::CrashPoint;

/// One thing the runner does to the world at a point in simulated time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Cut both directions between a gateway and the broker.
    Partition(u32),
    /// Cut one direction (`to_gateway`: broker-to-gateway).
    PartitionOneWay(u32, bool),
    /// Restore both directions.
    Repair(u32),
    /// Hold messages between a gateway and the broker.
    Hold(u32),
    /// Release held messages.
    Release(u32),
    /// Set a gateway link's latency, ms (None = back to the scenario's).
    Latency(u32, Option<u64>),
    /// Power cut: partition, crash (unsynced data lost).
    PowerOff(u32),
    /// Power back: jump the clock, repair, restart.
    PowerOn(u32, i64),
    /// Clean crash.
    Crash(u32),
    /// Restart after a crash.
    Restart(u32),
    /// Broker crash.
    BrokerCrash,
    /// Broker restart.
    BrokerRestart,
    /// Broker drops acks with this probability (0 heals).
    AckLoss(f64),
    /// Broker answers with retriable errors with this probability (0 heals).
    RequestErrors(f64),
    /// Limit a gateway's disk to used bytes + headroom (None heals).
    DiskFull(u32, Option<u64>),
    /// I/O error probability on a gateway's disk (0 heals).
    IoErrors(u32, f64),
    /// Read corruption probability on a gateway's disk (0 heals).
    ReadCorruption(u32, f64),
    /// Flip bits in a gateway's spool files.
    BitFlips(u32, u32),
    /// Jump a gateway's clock, ms.
    ClockJump(u32, i64),
    /// Cut the registry off from every gateway and backfill host.
    RegistryPartition,
    /// Reconnect the registry.
    RegistryRepair,
    /// Crash the registry host.
    RegistryCrash,
    /// Restart the registry host.
    RegistryRestart,
    /// Crash a stage host (clean: sockets close).
    StageCrash(Stage, u32),
    /// Power cut of a stage host (partitioned, crashed, unsynced writes lost).
    StagePowerOff(Stage, u32),
    /// Start a stage host again (after a crash, power cut or stop).
    StageStart(Stage, u32),
    /// Cut a stage host off from every service it uses.
    StagePartition(Stage, u32),
    /// Reconnect a stage host.
    StageRepair(Stage, u32),
    /// Stop a stage host cleanly (it leaves its group).
    StageStop(Stage, u32),
    /// Arm an archive host's crash hook at a crash point.
    ArchiveArmCrash(u32, CrashPoint),
    /// End of a crash-at window: restart the host if it crashed, else
    /// report that the point was never reached.
    ArchiveCrashWindowEnd(u32, CrashPoint),
    /// Cut the object store off from every archive host.
    StorePartition,
    /// Reconnect the object store.
    StoreRepair,
    /// Power cut of the object store host.
    StoreCrash,
    /// Restart the object store host.
    StoreRestart,
    /// Write this many hostile records to the raw topic.
    HostileRecords(u32),
    /// Start backfill number `n` of the scenario (its index in `[[backfill]]`).
    BackfillStart(usize),
    /// Power cut of a backfill host (the run is killed halfway).
    BackfillPowerOff(usize),
    /// Power back on a backfill host: the backfill resumes from its checkpoint.
    BackfillPowerOn(usize),
}

/// An action at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedAction {
    /// When, ms of simulated time.
    pub at_ms: u64,
    /// What.
    pub action: Action,
}

/// Expands the scenario's faults and backfills into actions sorted by time
/// (stable: faults at the same time keep their file order, and come before
/// backfill steps at that time).
pub fn expand(scenario: &Scenario) -> Vec<TimedAction> {
    let mut actions = Vec::new();
    let mut push = |at_s: u64, action: Action| {
        actions.push(TimedAction {
            at_ms: at_s * 1_000,
            action,
        })
    };
    for fault in &scenario.faults {
        match *fault {
            Fault::NetworkOutage {
                gateway,
                at_s,
                duration_s,
            } => {
                push(at_s, Action::Partition(gateway));
                push(at_s + duration_s, Action::Repair(gateway));
            }
            Fault::OneWayOutage {
                gateway,
                at_s,
                duration_s,
                to_gateway,
            } => {
                push(at_s, Action::PartitionOneWay(gateway, to_gateway));
                push(at_s + duration_s, Action::Repair(gateway));
            }
            Fault::Hold {
                gateway,
                at_s,
                duration_s,
            } => {
                push(at_s, Action::Hold(gateway));
                push(at_s + duration_s, Action::Release(gateway));
            }
            Fault::LatencySpike {
                gateway,
                at_s,
                duration_s,
                latency_ms,
            } => {
                push(at_s, Action::Latency(gateway, Some(latency_ms)));
                push(at_s + duration_s, Action::Latency(gateway, None));
            }
            Fault::FlappingLink {
                gateway,
                at_s,
                down_s,
                up_s,
                cycles,
            } => {
                for cycle in 0..u64::from(cycles) {
                    let start = at_s + cycle * (down_s + up_s);
                    push(start, Action::Partition(gateway));
                    push(start + down_s, Action::Repair(gateway));
                }
            }
            Fault::PowerLoss {
                gateway,
                at_s,
                duration_s,
                clock_jump_ms,
            } => {
                push(at_s, Action::PowerOff(gateway));
                push(at_s + duration_s, Action::PowerOn(gateway, clock_jump_ms));
            }
            Fault::Crash {
                gateway,
                at_s,
                duration_s,
            } => {
                push(at_s, Action::Crash(gateway));
                push(at_s + duration_s, Action::Restart(gateway));
            }
            Fault::RebootLoop {
                gateway,
                at_s,
                up_s,
                down_s,
                cycles,
            } => {
                for cycle in 0..u64::from(cycles) {
                    let start = at_s + cycle * (down_s + up_s) + up_s;
                    push(start, Action::PowerOff(gateway));
                    push(start + down_s, Action::PowerOn(gateway, 0));
                }
            }
            Fault::BrokerCrash { at_s, duration_s } => {
                push(at_s, Action::BrokerCrash);
                push(at_s + duration_s, Action::BrokerRestart);
            }
            Fault::AckLoss {
                at_s,
                duration_s,
                probability,
            } => {
                push(at_s, Action::AckLoss(probability));
                push(at_s + duration_s, Action::AckLoss(0.0));
            }
            Fault::RequestErrors {
                at_s,
                duration_s,
                probability,
            } => {
                push(at_s, Action::RequestErrors(probability));
                push(at_s + duration_s, Action::RequestErrors(0.0));
            }
            Fault::DiskFull {
                gateway,
                at_s,
                duration_s,
                headroom_bytes,
            } => {
                push(at_s, Action::DiskFull(gateway, Some(headroom_bytes)));
                push(at_s + duration_s, Action::DiskFull(gateway, None));
            }
            Fault::IoErrors {
                gateway,
                at_s,
                duration_s,
                probability,
            } => {
                push(at_s, Action::IoErrors(gateway, probability));
                push(at_s + duration_s, Action::IoErrors(gateway, 0.0));
            }
            Fault::ReadCorruption {
                gateway,
                at_s,
                duration_s,
                probability,
            } => {
                push(at_s, Action::ReadCorruption(gateway, probability));
                push(at_s + duration_s, Action::ReadCorruption(gateway, 0.0));
            }
            Fault::BitFlips { gateway, at_s, flips } => push(at_s, Action::BitFlips(gateway, flips)),
            Fault::ClockJump {
                gateway,
                at_s,
                jump_ms,
            } => push(at_s, Action::ClockJump(gateway, jump_ms)),
            Fault::QaqcCrash {
                instance,
                at_s,
                duration_s,
            }
            | Fault::ArchiveCrash {
                instance,
                at_s,
                duration_s,
            } => {
                let stage = stage_of(fault);
                push(at_s, Action::StageCrash(stage, instance));
                push(at_s + duration_s, Action::StageStart(stage, instance));
            }
            Fault::QaqcPowerLoss {
                instance,
                at_s,
                duration_s,
            }
            | Fault::ArchivePowerLoss {
                instance,
                at_s,
                duration_s,
            } => {
                let stage = stage_of(fault);
                push(at_s, Action::StagePowerOff(stage, instance));
                push(at_s + duration_s, Action::StageStart(stage, instance));
            }
            Fault::QaqcOutage {
                instance,
                at_s,
                duration_s,
            }
            | Fault::ArchiveOutage {
                instance,
                at_s,
                duration_s,
            } => {
                let stage = stage_of(fault);
                push(at_s, Action::StagePartition(stage, instance));
                push(at_s + duration_s, Action::StageRepair(stage, instance));
            }
            Fault::QaqcStop {
                instance,
                at_s,
                duration_s,
            }
            | Fault::ArchiveStop {
                instance,
                at_s,
                duration_s,
            } => {
                let stage = stage_of(fault);
                push(at_s, Action::StageStop(stage, instance));
                push(at_s + duration_s, Action::StageStart(stage, instance));
            }
            Fault::ArchiveCrashAt {
                instance,
                ref point,
                at_s,
                duration_s,
            } => {
                let point = CrashPoint::from_name(point).expect("validated crash point");
                push(at_s, Action::ArchiveArmCrash(instance, point));
                push(at_s + duration_s, Action::ArchiveCrashWindowEnd(instance, point));
            }
            Fault::StoreOutage {
                at_s,
                duration_s,
                mode,
            } => match mode {
                OutageMode::Partition => {
                    push(at_s, Action::StorePartition);
                    push(at_s + duration_s, Action::StoreRepair);
                }
                OutageMode::Crash => {
                    push(at_s, Action::StoreCrash);
                    push(at_s + duration_s, Action::StoreRestart);
                }
            },
            Fault::HostileRecords { at_s, count } => push(at_s, Action::HostileRecords(count)),
            Fault::RegistryOutage {
                at_s,
                duration_s,
                mode,
            } => match mode {
                OutageMode::Partition => {
                    push(at_s, Action::RegistryPartition);
                    push(at_s + duration_s, Action::RegistryRepair);
                }
                OutageMode::Crash => {
                    push(at_s, Action::RegistryCrash);
                    push(at_s + duration_s, Action::RegistryRestart);
                }
            },
        }
    }
    for (index, backfill) in scenario.backfills.iter().enumerate() {
        push(backfill.at_s, Action::BackfillStart(index));
        if let (Some(after_s), Some(restart_s)) = (backfill.crash_after_s, backfill.restart_at_s()) {
            push(backfill.at_s + after_s, Action::BackfillPowerOff(index));
            push(restart_s, Action::BackfillPowerOn(index));
        }
    }
    actions.sort_by_key(|a| a.at_ms);
    actions
}

/// The stage a stage fault hits.
fn stage_of(fault: &Fault) -> Stage {
    fault
        .stage_instance()
        .map(|(stage, _)| stage)
        .expect("called for stage faults only")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The actions of a one-gateway, one-probe world of 1 000 s whose
    /// faults and backfills are `sections` (TOML), as `(second, action)`.
    fn expanded(sections: &str) -> Vec<(u64, Action)> {
        let text = format!(
            "name = \"t\"\nduration_s = 1000\n[topology]\ngateways = 1\nsensors_per_gateway = 1\n{sections}"
        );
        let scenario = Scenario::parse(&text, "t").unwrap();
        expand(&scenario)
            .iter()
            .map(|a| (a.at_ms / 1000, a.action.clone()))
            .collect()
    }

    #[test]
    fn reboot_loop_expands_in_order() {
        let at = expanded(
            r#"
[[fault]]
kind = "reboot_loop"
gateway = 0
at_s = 100
up_s = 10
down_s = 20
cycles = 2
"#,
        );
        assert_eq!(
            at,
            vec![
                (110, Action::PowerOff(0)),
                (130, Action::PowerOn(0, 0)),
                (140, Action::PowerOff(0)),
                (160, Action::PowerOn(0, 0)),
            ]
        );
    }

    #[test]
    fn registry_outages_and_backfills_expand() {
        let at = expanded(
            r#"
[[fault]]
kind = "registry_outage"
at_s = 0
duration_s = 30
mode = "crash"
[[fault]]
kind = "registry_outage"
at_s = 500
duration_s = 40
[[backfill]]
gateway = 0
at_s = 400
log_from_s = 100
log_to_s = 300
crash_after_s = 20
down_s = 10
"#,
        );
        assert_eq!(
            at,
            vec![
                (0, Action::RegistryCrash),
                (30, Action::RegistryRestart),
                (400, Action::BackfillStart(0)),
                (420, Action::BackfillPowerOff(0)),
                (430, Action::BackfillPowerOn(0)),
                (500, Action::RegistryPartition),
                (540, Action::RegistryRepair),
            ]
        );
    }
}
