//! Benchmarks of soilstream (run with `cargo bench -p soilstream-benches`):
//!
//! - `spool`: criterion benchmarks of spool append+commit and drain
//!   throughput on the real filesystem;
//! - `drain`: the gateway draining a spooled backlog through rdkafka to a
//!   real Tansu broker, in readings per second, for several in-flight limits;
//! - `qaqc`: qaqc's throughput against a plain consume-and-produce
//!   passthrough on the same real broker (a ratio);
//! - `archive`: the archive's throughput against a plain Parquet write of
//!   the same rows from memory (a ratio);
//! - `sim_speed`: the capstone-sized simulated world, reporting simulated
//!   seconds per wall-clock second against the 30 s target.
//!
//! This library only holds what the benchmark binaries share.

use soilstream::disk::{Disk, StdDisk};
use soilstream::model::Reading;
use soilstream::spool::{Spool, SpoolConfig};
use soilstream::transport::kafka::KafkaProducer;
use soilstream::transport::{LogProducer, OutboundRecord, ProduceError};
use soilstream_containers::{FixtureError, TansuBroker, TansuConfig};
use std::path::Path;
use std::rc::Rc;

/// The probes the benchmark readings come from (round-robin).
pub const BENCH_SENSORS: [&str; 8] = [
    "probe-01", "probe-02", "probe-03", "probe-04", "probe-05", "probe-06", "probe-07", "probe-08",
];

/// Gateway id of the benchmark readings.
pub const BENCH_GATEWAY_ID: &str = "gw-bench";

/// A plausible reading of `sensor` with sequence number `seq`, one minute
/// after the previous one.
pub fn bench_reading(sensor: &str, seq: u64) -> Reading {
    Reading {
        gateway_id: BENCH_GATEWAY_ID.into(),
        sensor_id: sensor.into(),
        seq,
        event_time_ms: 1_700_000_000_000 + seq as i64 * 60_000,
        moisture_vwc: 0.25 + (seq % 100) as f64 / 1000.0,
        soil_temp_c: Some(14.0 + (seq % 10) as f64 / 10.0),
        bulk_ec_ds_m: Some(0.4),
        depth_cm: 30,
        battery_v: Some(3.6),
        source_flag: None,
    }
}

/// The spool configuration of the benchmarks: the defaults, in `dir`, with
/// a large sequence reservation so reservations stay out of the numbers.
pub fn bench_spool_config(dir: &Path) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir.to_path_buf());
    config.seq_reservation_block = 100_000;
    config
}

/// Opens (creating) the spool of [`bench_spool_config`] on the real
/// filesystem.
pub fn open_bench_spool(dir: &Path) -> Spool {
    let disk: Rc<dyn Disk> = Rc::new(StdDisk);
    Spool::open(disk, bench_spool_config(dir))
        .unwrap_or_else(|e| panic!("opening the benchmark spool in {}: {e}", dir.display()))
        .0
}

/// Appends `count` readings round-robin over [`BENCH_SENSORS`], committing
/// (one `sync_data`) every `batch` records and at the end.
pub fn fill_spool(spool: &mut Spool, count: u64, batch: u64) {
    assert!(batch > 0, "a commit batch holds at least one record");
    for i in 0..count {
        let sensor = BENCH_SENSORS[(i % BENCH_SENSORS.len() as u64) as usize];
        let seq = spool.next_seq(sensor).expect("seq");
        spool.append(&bench_reading(sensor, seq)).expect("append");
        if (i + 1) % batch == 0 {
            spool.commit().expect("commit");
        }
    }
    spool.commit().expect("commit");
}

/// Formats a rate with thousands separators, e.g. `12 345`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Starts Tansu for the benchmark `bench`; without a `tansu` binary it says
/// how to install one and returns `None` (the benchmark is skipped).
pub fn start_bench_broker(bench: &str, config: TansuConfig) -> Option<TansuBroker> {
    match TansuBroker::start(config) {
        Ok(broker) => Some(broker),
        Err(error @ FixtureError::TansuMissing { .. }) => {
            println!("{bench} benchmark skipped: {error}");
            None
        }
        Err(error) => panic!("starting the broker: {error}"),
    }
}

/// Times a component run: polls `done` every 5 ms; when it holds, asks
/// the component to stop (`trigger`) and returns the time since `started`.
/// Panics with `progress()` after `timeout_ms`.
pub async fn time_until_done(
    started: std::time::Instant,
    timeout_ms: u64,
    trigger: &soilstream::component::ShutdownTrigger,
    done: impl Fn() -> bool,
    progress: impl Fn() -> String,
) -> std::time::Duration {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(
            started.elapsed() < std::time::Duration::from_millis(timeout_ms),
            "timed out: {}",
            progress()
        );
        if done() {
            let elapsed = started.elapsed();
            trigger.trigger();
            return elapsed;
        }
    }
}

/// Produces every record and waits for every acknowledgement, waiting
/// whenever the producer's queue is full.
pub async fn produce_all(producer: &KafkaProducer, records: impl Iterator<Item = OutboundRecord>) {
    let mut pending = Vec::new();
    for record in records {
        loop {
            match producer.enqueue(record.clone()) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(ProduceError::QueueFull) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => panic!("producing the backlog: {e}"),
            }
        }
    }
    for delivery in pending {
        delivery.await.expect("backlog delivered");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_filled_spool_holds_every_reading_durably() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = super::open_bench_spool(dir.path());
        super::fill_spool(&mut spool, 21, 10);
        assert_eq!(spool.stats().committed_total, 21);
        let records = spool.read_next(100).unwrap();
        assert_eq!(records.len(), 21);
        assert_eq!(records[8].reading.sensor_id, super::BENCH_SENSORS[0]);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0.0), "0");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(1234567.4), "1 234 567");
    }
}
