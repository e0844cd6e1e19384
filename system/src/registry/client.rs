//! [`HttpRegistryClient`]: the [`SchemaRegistry`] seam over HTTP to a
//! Confluent-compatible registry (this crate's service or Confluent's).
//!
//! Transport: hyper's HTTP/1 client connection API over a byte stream from a
//! [`Connector`]. [`TcpConnector`] opens tokio TCP streams; the simulator
//! plugs in its own connector (turmoil's `TcpStream` implements the same
//! tokio I/O traits). Each request uses a fresh connection, driven inside the
//! request's own future (no spawned task, nothing `Send` required), and every
//! request, connecting included, is bounded by
//! [`HttpRegistryClientConfig::request_timeout`].
//!
//! Caching: schemas by id, and ids by (subject, schema text), are cached for
//! the life of the client. Both are immutable facts in a registry whose ids
//! are never reused. The caches are bounded; the smallest ids are evicted
//! first.
//!
//! Errors: connection failures, timeouts, HTTP 5xx, 408 and 429 are
//! [`RegistryError::Unavailable`], which callers retry with backoff; the
//! registry's error codes map onto the other variants.

use super::api::CONTENT_TYPE_V1;
use super::compat::CompatibilityLevel;
use super::{RegistryError, SchemaRegistry};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Default time limit of one request, connecting included.
pub const CLIENT_DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on a response body, bytes.
pub const CLIENT_DEFAULT_RESPONSE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Default limit on each cache, entries.
pub const CLIENT_DEFAULT_CACHE_MAX_ENTRIES: usize = 1024;
/// Longest part of an unparseable error body quoted in an error, bytes.
const ERROR_BODY_QUOTE_MAX_BYTES: usize = 200;

/// Opens byte streams to a registry.
pub trait Connector {
    /// The stream type.
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;

    /// Connects to `authority` (`host:port`).
    fn connect<'a>(&'a self, authority: &'a str) -> LocalBoxFuture<'a, io::Result<Self::Stream>>;
}

/// Connects over TCP with tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    fn connect<'a>(&'a self, authority: &'a str) -> LocalBoxFuture<'a, io::Result<Self::Stream>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }
}

/// Settings of an [`HttpRegistryClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRegistryClientConfig {
    /// Time limit of one request, connecting included.
    pub request_timeout: Duration,
    /// Largest response body accepted, bytes.
    pub response_max_bytes: usize,
    /// Largest number of entries in each cache.
    pub cache_max_entries: usize,
}

impl Default for HttpRegistryClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: CLIENT_DEFAULT_REQUEST_TIMEOUT,
            response_max_bytes: CLIENT_DEFAULT_RESPONSE_MAX_BYTES,
            cache_max_entries: CLIENT_DEFAULT_CACHE_MAX_ENTRIES,
        }
    }
}

/// A registry URL this client cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid registry URL `{}`: {reason}", crate::redact::redact_url(url))]
pub struct InvalidRegistryUrl {
    /// The URL.
    pub url: String,
    /// Why.
    pub reason: &'static str,
}

/// A subject-version as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    /// Subject.
    pub subject: String,
    /// Version number.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// The answer to a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibilityCheck {
    /// Whether the schema is compatible.
    pub is_compatible: bool,
    /// The registry's explanation (empty when compatible).
    pub messages: Vec<String>,
}

/// A raw answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct Cache {
    schemas_by_id: BTreeMap<u32, String>,
    ids_by_subject_schema: BTreeMap<(String, String), u32>,
}

/// What a request was about, to pick the right error variant.
enum Target<'a> {
    Subject(&'a str),
    Id(u32),
    Other,
}

/// A client of a Confluent-compatible registry over HTTP/1.
#[derive(Debug)]
pub struct HttpRegistryClient<C: Connector> {
    connector: C,
    authority: String,
    base_path: String,
    config: HttpRegistryClientConfig,
    cache: RefCell<Cache>,
}

impl<C: Connector> HttpRegistryClient<C> {
    /// A client of the registry at `base_url` (`http://host:port`, optionally
    /// with a path prefix). TLS is not supported.
    pub fn new(
        connector: C,
        base_url: &str,
        config: HttpRegistryClientConfig,
    ) -> Result<Self, InvalidRegistryUrl> {
        let invalid = |reason| InvalidRegistryUrl {
            url: base_url.to_owned(),
            reason,
        };
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
            return Err(invalid("expected http://host:port"));
        }
        if path.contains(['?', '#']) {
            return Err(invalid("no query or fragment allowed"));
        }
        Ok(Self {
            connector,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
            config,
            cache: RefCell::new(Cache::default()),
        })
    }

    /// The `host:port` the client connects to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends one request and returns the raw answer, for endpoints without a
    /// typed method. `path_and_query` starts with `/`; `body` is sent as
    /// `application/vnd.schemaregistry.v1+json`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse, RegistryError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base_path, path_and_query))
            .header(HOST, &self.authority)
            .header(ACCEPT, format!("{CONTENT_TYPE_V1}, application/json"))
            .header(USER_AGENT, concat!("soilstream/", env!("CARGO_PKG_VERSION")));
        let body = match body {
            Some(value) => {
                builder = builder.header(CONTENT_TYPE, CONTENT_TYPE_V1);
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| RegistryError::Other {
            code: 0,
            message: format!("cannot build a request for {path_and_query}: {e}"),
        })?;
        let timeout = self.config.request_timeout;
        match tokio::time::timeout(
            timeout,
            exchange(
                &self.connector,
                &self.authority,
                request,
                self.config.response_max_bytes,
            ),
        )
        .await
        {
            Ok(result) => result.map_err(|e| RegistryError::Unavailable(format!("{}: {e}", self.authority))),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "{}: no answer within {} ms",
                self.authority,
                timeout.as_millis()
            ))),
        }
    }

    /// Sends a request and parses a successful JSON answer, mapping error
    /// answers to [`RegistryError`].
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        target: Target<'_>,
    ) -> Result<T, RegistryError> {
        let response = self.send(method, path_and_query, body).await?;
        if !response.status.is_success() {
            return Err(error_from(&response, target));
        }
        serde_json::from_slice(&response.body).map_err(|e| RegistryError::Other {
            code: u32::from(response.status.as_u16()),
            message: format!("unexpected answer to {path_and_query}: {e}"),
        })
    }

    /// Looks `schema` up under `subject` without registering it: `None` if
    /// the subject does not have it.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<RegisteredSchema>, RegistryError> {
        let path = format!("/subjects/{}", encode_segment(subject));
        let body = json!({"schema": schema, "schemaType": "AVRO"});
        match self
            .call::<RegisteredSchema>(Method::POST, &path, Some(&body), Target::Subject(subject))
            .await
        {
            Ok(found) => {
                self.remember_id(subject, schema, found.id);
                self.remember_schema(found.id, &found.schema);
                Ok(Some(found))
            }
            Err(RegistryError::SubjectNotFound(_)) => Ok(None),
            Err(RegistryError::Other { code: 40403, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The latest live version of a subject.
    pub async fn latest_version(&self, subject: &str) -> Result<RegisteredSchema, RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_segment(subject));
        let found: RegisteredSchema = self
            .call(Method::GET, &path, None, Target::Subject(subject))
            .await?;
        self.remember_schema(found.id, &found.schema);
        Ok(found)
    }

    /// Checks `schema` against a version of `subject` (`None`: the latest)
    /// under the subject's compatibility level.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: Option<u32>,
    ) -> Result<CompatibilityCheck, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        let version = version.map_or_else(|| "latest".to_owned(), |v| v.to_string());
        let path = format!(
            "/compatibility/subjects/{}/versions/{version}?verbose=true",
            encode_segment(subject)
        );
        let body = json!({"schema": schema, "schemaType": "AVRO"});
        let answer: Answer = self
            .call(Method::POST, &path, Some(&body), Target::Subject(subject))
            .await?;
        Ok(CompatibilityCheck {
            is_compatible: answer.is_compatible,
            messages: answer.messages,
        })
    }

    /// Sets the compatibility level of a subject, or the global one.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        let path = match subject {
            Some(s) => format!("/config/{}", encode_segment(s)),
            None => "/config".to_owned(),
        };
        let body = json!({"compatibility": level.as_str()});
        let _: Value = self.call(Method::PUT, &path, Some(&body), Target::Other).await?;
        Ok(())
    }

    /// Number of cached (schemas by id, ids by subject and schema).
    pub fn cached_entries(&self) -> (usize, usize) {
        let cache = self.cache.borrow();
        (cache.schemas_by_id.len(), cache.ids_by_subject_schema.len())
    }

    fn remember_schema(&self, id: u32, schema: &str) {
        let mut cache = self.cache.borrow_mut();
        if !cache.schemas_by_id.contains_key(&id)
            && cache.schemas_by_id.len() >= self.config.cache_max_entries
        {
            cache.schemas_by_id.pop_first();
        }
        cache.schemas_by_id.insert(id, schema.to_owned());
    }

    fn remember_id(&self, subject: &str, schema: &str, id: u32) {
        let mut cache = self.cache.borrow_mut();
        let key = (subject.to_owned(), schema.to_owned());
        if !cache.ids_by_subject_schema.contains_key(&key)
            && cache.ids_by_subject_schema.len() >= self.config.cache_max_entries
        {
            cache.ids_by_subject_schema.pop_first();
        }
        cache.ids_by_subject_schema.insert(key, id);
    }

    async fn register_uncached(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            id: u32,
        }
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let body = json!({"schema": schema, "schemaType": "AVRO"});
        let answer: Answer = self
            .call(Method::POST, &path, Some(&body), Target::Subject(subject))
            .await?;
        self.remember_id(subject, schema, answer.id);
        self.remember_schema(answer.id, schema);
        tracing::debug!(subject, id = answer.id, "registered schema");
        Ok(answer.id)
    }

    async fn schema_by_id_uncached(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            schema: String,
        }
        let answer: Answer = self
            .call(Method::GET, &format!("/schemas/ids/{id}"), None, Target::Id(id))
            .await?;
        self.remember_schema(id, &answer.schema);
        Ok(answer.schema)
    }
}

impl<C: Connector> SchemaRegistry for HttpRegistryClient<C> {
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> LocalBoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let cached = self
                .cache
                .borrow()
                .ids_by_subject_schema
                .get(&(subject.to_owned(), schema.to_owned()))
                .copied();
            match cached {
                Some(id) => Ok(id),
                None => self.register_uncached(subject, schema).await,
            }
        })
    }

    fn schema_by_id(&self, id: u32) -> LocalBoxFuture<'_, Result<String, RegistryError>> {
        Box::pin(async move {
            let cached = self.cache.borrow().schemas_by_id.get(&id).cloned();
            match cached {
                Some(schema) => Ok(schema),
                None => self.schema_by_id_uncached(id).await,
            }
        })
    }
}

/// Maps an error answer to a [`RegistryError`].
fn error_from(response: &RawResponse, target: Target<'_>) -> RegistryError {
    #[derive(Deserialize)]
    struct ErrorBody {
        error_code: u32,
        #[serde(default)]
        message: String,
    }
    let status = response.status;
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => (body.error_code, body.message),
        Err(_) => {
            let quoted = &response.body[..response.body.len().min(ERROR_BODY_QUOTE_MAX_BYTES)];
            (
                u32::from(status.as_u16()),
                String::from_utf8_lossy(quoted).into_owned(),
            )
        }
    };
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return RegistryError::Unavailable(format!("HTTP {status}, error {code}: {message}"));
    }
    match (code, target) {
        (40401, Target::Subject(subject)) => RegistryError::SubjectNotFound(subject.to_owned()),
        (40403, Target::Id(id)) => RegistryError::SchemaNotFound(id),
        (409, _) => RegistryError::Incompatible(message),
        (42201, _) => RegistryError::InvalidSchema(message),
        (code, _) => RegistryError::Other { code, message },
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved
/// characters).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why one HTTP exchange failed below the HTTP level.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("connect: {0}")]
    Connect(#[from] io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("response body: {0}")]
    Body(String),
}

/// One request over one fresh connection. The connection is driven in this
/// future alongside the request; it is dropped (closed) once the response
/// body has been read.
async fn exchange<C: Connector>(
    connector: &C,
    authority: &str,
    request: Request<Full<Bytes>>,
    response_max_bytes: usize,
) -> Result<RawResponse, TransportError> {
    let stream = connector.connect(authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let mut connection = std::pin::pin!(connection);
    let response = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), response_max_bytes)
            .collect()
            .await
            .map_err(|e| TransportError::Body(e.to_string()))?
            .to_bytes();
        Ok(RawResponse {
            status,
            content_type,
            body,
        })
    };
    let mut response = std::pin::pin!(response);
    tokio::select! {
        biased;
        result = &mut response => return result,
        closed = &mut connection => closed?,
    }
    // The connection ended cleanly: whatever answer it carried has been
    // handed over, so the request future finishes (or fails) without it.
    response.await
}

#[cfg(test)]
mod tests;
