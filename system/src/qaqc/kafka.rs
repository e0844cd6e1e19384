//! The real world's qaqc parts: rdkafka group membership, read-back
//! consumers and producers against a Kafka-protocol broker, the system
//! clock and the local filesystem. The `soilstream qaqc` command and the
//! benchmarks wire qaqc with this; the simulator wires its own parts.

use super::metrics::QaqcMetrics;
use super::run::{NoQaqcObserver, QaqcObserver, QaqcParts, ReaderFactory};
use crate::clock::SystemClock;
use crate::disk::StdDisk;
use crate::gateway::ProducerFactory;
use crate::registry::SchemaRegistry;
use crate::transport::kafka::{KafkaClientConfig, KafkaConsumer, KafkaProducer, KafkaSetupError};
use crate::transport::kafka_group::{KafkaGroupConfig, KafkaGroupConsumer};
use crate::transport::{ConsumeError, LogConsumer, LogProducer, ProduceError};
use std::rc::Rc;

/// qaqc's parts against the broker of `kafka`, as a member of `group_id`.
/// Must be called inside a tokio runtime (the group consumer starts there).
pub fn kafka_parts(
    kafka: &KafkaClientConfig,
    group_id: &str,
    group_config: KafkaGroupConfig,
    registry: Rc<dyn SchemaRegistry>,
    metrics: QaqcMetrics,
    observer: Option<Rc<dyn QaqcObserver>>,
) -> Result<QaqcParts, KafkaSetupError> {
    // Fail fast on a configuration librdkafka refuses.
    drop(KafkaProducer::new(kafka)?);
    let group = KafkaGroupConsumer::new(kafka, group_id, group_config)?;
    let reader_kafka = kafka.clone();
    // Read-back consumers never join a group; the id only names them.
    let reader_group = format!("{group_id}-readback");
    let reader_factory: ReaderFactory = Box::new(move || {
        KafkaConsumer::new(&reader_kafka, &reader_group)
            .map(|c| Box::new(c) as Box<dyn LogConsumer>)
            .map_err(|e| ConsumeError::Other(e.to_string()))
    });
    let producer_kafka = kafka.clone();
    let producer_factory: ProducerFactory = Box::new(move || {
        KafkaProducer::new(&producer_kafka)
            .map(|p| Rc::new(p) as Rc<dyn LogProducer>)
            .map_err(|e| ProduceError::Fatal(e.to_string()))
    });
    Ok(QaqcParts {
        disk: Rc::new(StdDisk),
        clock: Rc::new(SystemClock),
        registry,
        group: Box::new(group),
        reader_factory,
        producer_factory,
        observer: observer.unwrap_or_else(|| Rc::new(NoQaqcObserver)),
        metrics,
    })
}
