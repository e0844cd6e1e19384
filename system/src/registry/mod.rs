//! The `SchemaRegistry` seam: where writers get a schema id for the schema
//! they write with, and readers get the writer schema for an id.
//!
//! Implementations: [`InProcessRegistry`] (a registry living inside the
//! process, for tests and single-process tools) and [`HttpRegistryClient`]
//! (HTTP to a Confluent-compatible registry).
//!
//! The module also holds the registry service itself, `soilstream registry
//! serve`: a Confluent-compatible Schema Registry.
//!
//! | module | what |
//! |---|---|
//! | [`schema`] | schema parsing, validation, identity |
//! | [`compat`] | compatibility levels and the resolution-rule checker |
//! | [`log`] | framing of the durable event log |
//! | [`store`] | registry state, rules and durable storage on a [`crate::disk::Disk`] |
//! | [`api`] | the REST API (axum), runnable on any listener |
//! | [`client`] | [`HttpRegistryClient`] over a [`Connector`] |

pub mod api;
pub mod client;
pub mod compat;
pub mod log;
pub mod schema;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;

pub use api::{ApiLimits, open_router, router, serve};
pub use client::{Connector, HttpRegistryClient, HttpRegistryClientConfig, TcpConnector};
pub use compat::CompatibilityLevel;
pub use store::{Store, StoreLimits};

use futures::future::LocalBoxFuture;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// No schema has this id.
    #[error("schema id {0} not found")]
    SchemaNotFound(u32),
    /// No such subject.
    #[error("subject `{0}` not found")]
    SubjectNotFound(String),
    /// The schema is not valid Avro.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// The schema is incompatible with the subject's earlier versions.
    #[error("incompatible schema: {0}")]
    Incompatible(String),
    /// The registry could not be reached; retry with backoff.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Any other error the registry reported.
    #[error("registry error {code}: {message}")]
    Other {
        /// Confluent error code (or HTTP status).
        code: u32,
        /// Message from the registry.
        message: String,
    },
}

/// Registers schemas and resolves schema ids.
pub trait SchemaRegistry {
    /// Registers `schema` (Avro JSON) under `subject` if it is not there yet
    /// and returns its id. Registering the same schema twice gives the same id.
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> LocalBoxFuture<'a, Result<u32, RegistryError>>;
    /// The schema (Avro JSON) with this id.
    fn schema_by_id(&self, id: u32) -> LocalBoxFuture<'_, Result<String, RegistryError>>;
}

/// The Confluent subject name for the values of `topic` (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[derive(Debug, Default)]
struct InProcessState {
    /// Schema identity key -> id.
    ids_by_schema: BTreeMap<String, u32>,
    /// id -> schema text as registered.
    schemas_by_id: BTreeMap<u32, String>,
    /// subject -> ids in registration order.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// A registry that lives inside the process. Ids start at 1 and are shared
/// across subjects for identical schemas, as in Confluent's registry. It does
/// not check compatibility; it is for tests and single-process tools, not a
/// stand-in for the registry service.
#[derive(Debug, Clone, Default)]
pub struct InProcessRegistry {
    state: Rc<RefCell<InProcessState>>,
}

impl InProcessRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn register_now(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        // The same notion of "same schema" as the registry service.
        let parsed =
            schema::ParsedSchema::parse(schema).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let key = parsed.key().to_owned();
        let mut state = self.state.borrow_mut();
        let next_id = state.schemas_by_id.len() as u32 + 1;
        let id = *state.ids_by_schema.entry(key).or_insert(next_id);
        state.schemas_by_id.entry(id).or_insert_with(|| schema.to_owned());
        let versions = state.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }
}

impl SchemaRegistry for InProcessRegistry {
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> LocalBoxFuture<'a, Result<u32, RegistryError>> {
        let result = self.register_now(subject, schema);
        Box::pin(async move { result })
    }

    fn schema_by_id(&self, id: u32) -> LocalBoxFuture<'_, Result<String, RegistryError>> {
        let result = self
            .state
            .borrow()
            .schemas_by_id
            .get(&id)
            .cloned()
            .ok_or(RegistryError::SchemaNotFound(id));
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SOIL_READING_SCHEMA_V1;

    #[tokio::test(flavor = "current_thread")]
    async fn same_schema_same_id_across_subjects() {
        let registry = InProcessRegistry::new();
        let a = registry
            .register("a-value", SOIL_READING_SCHEMA_V1)
            .await
            .unwrap();
        let b = registry
            .register("b-value", SOIL_READING_SCHEMA_V1)
            .await
            .unwrap();
        assert_eq!(a, 1);
        assert_eq!(a, b);
        assert_eq!(registry.schema_by_id(a).await.unwrap(), SOIL_READING_SCHEMA_V1);
        assert_eq!(
            registry.schema_by_id(9).await,
            Err(RegistryError::SchemaNotFound(9))
        );
        assert!(matches!(
            registry.register("c", "{not json").await,
            Err(RegistryError::InvalidSchema(_))
        ));
    }
}
