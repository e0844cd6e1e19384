//! The real world's archive parts: rdkafka group membership and a plain
//! consumer for the lag gauge, the system clock, and the crash hook of the
//! kill tests. The `soilstream archive` command and the benchmarks wire
//! the archive with this; the simulator wires its own parts.

use super::metrics::ArchiveMetrics;
use super::protocol::{CrashHook, CrashPoint, NoCrash};
use super::run::{ArchiveObserver, ArchiveParts, NoArchiveObserver, ReaderFactory};
use super::store::ArchiveStore;
use crate::clock::SystemClock;
use crate::registry::SchemaRegistry;
use crate::transport::kafka::{KafkaClientConfig, KafkaConsumer, KafkaSetupError};
use crate::transport::kafka_group::{KafkaGroupConfig, KafkaGroupConsumer};
use crate::transport::{ConsumeError, LogConsumer};
use futures::future::LocalBoxFuture;
use std::rc::Rc;

/// The environment variable naming a crash point (test-only): the process
/// aborts when the protocol reaches it (after `SOILSTREAM_ARCHIVE_CRASH_AFTER`
/// passes, default 0, so a test can let a few batches commit first).
pub const CRASH_AT_ENV: &str = "SOILSTREAM_ARCHIVE_CRASH_AT";
/// How many times the crash point is passed before the crash.
pub const CRASH_AFTER_ENV: &str = "SOILSTREAM_ARCHIVE_CRASH_AFTER";

/// Aborts the process (as `kill -9` would stop it) at a crash point.
#[derive(Debug)]
pub struct AbortAt {
    point: CrashPoint,
    passes_left: std::cell::Cell<u64>,
}

impl CrashHook for AbortAt {
    fn reached(&self, partition: i32, point: CrashPoint) -> LocalBoxFuture<'_, ()> {
        if point == self.point {
            let left = self.passes_left.get();
            if left == 0 {
                eprintln!(
                    "soilstream archive: crash hook: aborting at {} (partition {partition})",
                    point.name()
                );
                std::process::abort();
            }
            self.passes_left.set(left - 1);
        }
        Box::pin(async {})
    }
}

/// The crash hook the environment asks for (none when unset).
pub fn crash_hook_from_env() -> Result<Rc<dyn CrashHook>, String> {
    let Ok(name) = std::env::var(CRASH_AT_ENV) else {
        return Ok(Rc::new(NoCrash));
    };
    let point = CrashPoint::from_name(&name).ok_or_else(|| {
        let names: Vec<&str> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
        format!(
            "{CRASH_AT_ENV}={name} is not a crash point; one of {}",
            names.join(", ")
        )
    })?;
    let passes: u64 = match std::env::var(CRASH_AFTER_ENV) {
        Ok(n) => n
            .parse()
            .map_err(|_| format!("{CRASH_AFTER_ENV}={n} is not a count"))?,
        Err(_) => 0,
    };
    tracing::warn!(point = point.name(), passes, "test crash hook armed");
    Ok(Rc::new(AbortAt {
        point,
        passes_left: std::cell::Cell::new(passes),
    }))
}

/// The archive's parts against the broker of `kafka`, as a member of
/// `group_id`, writing to `store`. Must be called inside a tokio runtime.
#[allow(clippy::too_many_arguments)] // one per seam part, as ArchiveParts has
pub fn kafka_parts(
    kafka: &KafkaClientConfig,
    group_id: &str,
    group_config: KafkaGroupConfig,
    store: Rc<dyn ArchiveStore>,
    registry: Rc<dyn SchemaRegistry>,
    crash: Rc<dyn CrashHook>,
    metrics: ArchiveMetrics,
    observer: Option<Rc<dyn ArchiveObserver>>,
) -> Result<ArchiveParts, KafkaSetupError> {
    let group = KafkaGroupConsumer::new(kafka, group_id, group_config)?;
    let reader_kafka = kafka.clone();
    let reader_group = format!("{group_id}-lag");
    let reader_factory: ReaderFactory = Box::new(move || {
        KafkaConsumer::new(&reader_kafka, &reader_group)
            .map(|c| Box::new(c) as Box<dyn LogConsumer>)
            .map_err(|e| ConsumeError::Other(e.to_string()))
    });
    Ok(ArchiveParts {
        store,
        clock: Rc::new(SystemClock),
        registry,
        group: Box::new(group),
        reader_factory: Some(reader_factory),
        crash,
        observer: observer.unwrap_or_else(|| Rc::new(NoArchiveObserver)),
        metrics,
    })
}
