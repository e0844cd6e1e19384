//! The HTTP face of the registry: Confluent Schema Registry's REST API over a
//! [`Store`], as an axum [`Router`] that runs on any [`Listener`].
//!
//! Requests may carry `application/vnd.schemaregistry.v1+json`,
//! `application/vnd.schemaregistry+json`, `application/json` or
//! `application/octet-stream` bodies (or no content type); every answer is
//! `application/vnd.schemaregistry.v1+json`. Errors are Confluent's
//! `{"error_code": ..., "message": ...}` with the HTTP status the code
//! implies. Query flags take Java's boolean parsing: `true` in any case is
//! true, anything else false (Python's client sends `False`).
//!
//! Store operations run synchronously under a mutex, `fdatasync` included: a
//! registry sees few writes, and blocking the (single) runtime thread for a
//! sync keeps the server usable inside the deterministic simulator, where
//! `spawn_blocking` is not available.

use super::compat::CompatibilityLevel;
use super::schema::ParsedSchema;
use super::store::{
    CompatibilityReport, DeletedFilter, OpenReport, ServiceError, Store, StoreLimits, StoreOpenError,
    VersionInfo, VersionSpec, http_status_of,
};
use crate::disk::Disk;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::Listener;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The content type of every answer.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";
/// Request content types accepted (parameters such as `charset` aside).
pub const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    CONTENT_TYPE_V1,
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];
/// Default limit on a request body, bytes: a schema at its size limit with
/// JSON escaping fits.
pub const REQUEST_BODY_DEFAULT_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Default time limit for handling one request, body reading included.
pub const REQUEST_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request body, bytes; larger ones get HTTP 413.
    pub request_body_max_bytes: usize,
    /// Time limit for one request; slower ones get error 50002.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            request_body_max_bytes: REQUEST_BODY_DEFAULT_MAX_BYTES,
            request_timeout: REQUEST_DEFAULT_TIMEOUT,
        }
    }
}

/// An error answer: HTTP status plus Confluent's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Confluent error code (or the HTTP status for errors without one).
    pub error_code: u32,
    /// Message.
    pub message: String,
}

impl ApiError {
    fn new(error_code: u32, message: impl Into<String>) -> Self {
        Self {
            error_code,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self::new(e.error_code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(http_status_of(self.error_code))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error_code = self.error_code, message = %self.message, "registry request failed");
        }
        let body = json!({"error_code": self.error_code, "message": self.message});
        (status, v1_json(body.to_string())).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// A JSON body with the registry content type.
fn v1_json(body: String) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1))],
        body,
    )
}

fn ok_json(value: Value) -> ApiResult {
    Ok(v1_json(value.to_string()).into_response())
}

/// Shared state of the handlers.
struct App<D: Disk> {
    store: Mutex<Store<D>>,
    limits: ApiLimits,
}

type Shared<D> = Arc<App<D>>;

impl<D: Disk> App<D> {
    fn store(&self) -> Result<MutexGuard<'_, Store<D>>, ApiError> {
        self.store.lock().map_err(|_| {
            ApiError::from(ServiceError::Store(
                "store lock poisoned by an earlier failure".into(),
            ))
        })
    }
}

/// Opens the store in `dir` and builds the router serving it.
pub fn open_router<D: Disk + Send + 'static>(
    disk: D,
    dir: &FsPath,
    store_limits: StoreLimits,
    api_limits: ApiLimits,
) -> Result<(Router, OpenReport), StoreOpenError> {
    let (store, report) = Store::open(disk, dir, store_limits)?;
    Ok((router(store, api_limits), report))
}

/// The router of the REST API over `store`.
pub fn router<D: Disk + Send + 'static>(store: Store<D>, limits: ApiLimits) -> Router {
    let app: Shared<D> = Arc::new(App {
        store: Mutex::new(store),
        limits,
    });
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id::<D>))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id::<D>))
        .route("/schemas/ids/{id}/versions", get(id_versions::<D>))
        .route("/schemas/ids/{id}/subjects", get(id_subjects::<D>))
        .route("/subjects", get(list_subjects::<D>))
        .route(
            "/subjects/{subject}",
            post(lookup::<D>).delete(delete_subject::<D>),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions::<D>).post(register::<D>),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version::<D>).delete(delete_version::<D>),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_version_schema::<D>),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by::<D>),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all::<D>),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version::<D>),
        )
        .route(
            "/config",
            get(get_global_config::<D>)
                .put(put_global_config::<D>)
                .delete(delete_global_config::<D>),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config::<D>)
                .put(put_subject_config::<D>)
                .delete(delete_subject_config::<D>),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            deadline,
        ))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes
/// the requests in flight. Works with any [`Listener`]: tokio's TCP listener
/// in the real world, a simulated one in the simulator.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Bounds the time of every request and logs it.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => {
            tracing::debug!(%method, %path, status = response.status().as_u16(), "registry request");
            response
        }
        Err(_) => {
            tracing::warn!(%method, %path, timeout_ms = timeout.as_millis() as u64, "registry request timed out");
            ApiError::new(
                50002,
                format!("Operation timed out after {} ms", timeout.as_millis()),
            )
            .into_response()
        }
    }
}

async fn not_found() -> Response {
    ApiError::new(404, "HTTP 404 Not Found").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(405, "HTTP 405 Method Not Allowed").into_response()
}

// ----- request parsing -----

type Params = BTreeMap<String, String>;

fn params(query: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|e| ApiError::new(400, format!("malformed query string: {e}")))
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    extracted
        .map(|Path(p)| p)
        .map_err(|e| ApiError::new(404, format!("HTTP 404 Not Found: {e}")))
}

/// Java's `Boolean.parseBoolean`: `true` in any case, else false.
fn flag(params: &Params, name: &str) -> bool {
    params.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn deleted_filter(params: &Params) -> DeletedFilter {
    if flag(params, "deletedOnly") || flag(params, "deleted_only") {
        DeletedFilter::Only
    } else if flag(params, "deleted") {
        DeletedFilter::Include
    } else {
        DeletedFilter::Exclude
    }
}

/// Applies `offset` and `limit` (negative or absent: no limit).
fn paginate<T>(items: Vec<T>, params: &Params) -> Vec<T> {
    let offset = params
        .get("offset")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = params
        .get("limit")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|l| *l >= 0)
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    items.into_iter().skip(offset).take(limit).collect()
}

fn schema_id(text: &str) -> Result<u32, ApiError> {
    text.parse::<u32>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| ApiError::from(ServiceError::SchemaNotFound(format!("Schema {text} not found"))))
}

/// Reads a JSON request body within the size limit, after checking its
/// content type.
async fn json_body<T: serde::de::DeserializeOwned>(
    request: Request,
    limit_bytes: usize,
) -> Result<T, ApiError> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !ACCEPTED_CONTENT_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::new(
                415,
                format!(
                    "HTTP 415 Unsupported Media Type: {essence}; send {}",
                    ACCEPTED_CONTENT_TYPES.join(", ")
                ),
            ));
        }
    }
    let bytes: Bytes = Limited::new(request.into_body(), limit_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::new(413, format!("request body larger than {limit_bytes} bytes"))
            } else {
                ApiError::new(400, format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(422, format!("Unprocessable entity: {e}")),
        _ => ApiError::new(400, format!("malformed JSON body: {e}")),
    })
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
    metadata: Option<Value>,
    #[serde(rename = "ruleSet")]
    rule_set: Option<Value>,
    id: Option<i64>,
}

impl SchemaRequest {
    /// Validates the request and parses its schema.
    fn parse(self) -> Result<ParsedSchema, ApiError> {
        match self.schema_type.as_deref() {
            None => {}
            Some(t) if t.eq_ignore_ascii_case("AVRO") => {}
            Some(t) if t.eq_ignore_ascii_case("JSON") || t.eq_ignore_ascii_case("PROTOBUF") => {
                return Err(ServiceError::InvalidSchema(format!(
                    "schemaType {t} is not supported; this registry stores AVRO schemas only"
                ))
                .into());
            }
            Some(t) => {
                return Err(ServiceError::InvalidSchema(format!(
                    "unknown schemaType `{}`",
                    t.chars().take(32).collect::<String>()
                ))
                .into());
            }
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(ServiceError::InvalidSchema("schema references are not supported".into()).into());
        }
        if self.metadata.as_ref().is_some_and(|m| !m.is_null()) {
            return Err(ServiceError::InvalidSchema("schema metadata is not supported".into()).into());
        }
        if self.rule_set.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(ServiceError::InvalidSchema("rule sets are not supported".into()).into());
        }
        if self.id.is_some() {
            return Err(ApiError::new(
                42205,
                "Operation not permitted: this registry assigns ids itself (IMPORT mode is not supported)",
            ));
        }
        let text = self.schema.unwrap_or_default();
        ParsedSchema::parse(&text).map_err(|e| ServiceError::InvalidSchema(e.to_string()).into())
    }
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(self) -> Result<CompatibilityLevel, ApiError> {
        let text = self
            .compatibility
            .or(self.compatibility_level)
            .ok_or_else(|| ServiceError::InvalidCompatibilityLevel("missing `compatibility`".into()))?;
        text.parse::<CompatibilityLevel>()
            .map_err(|e| ServiceError::InvalidCompatibilityLevel(e.to_string()).into())
    }
}

// ----- responses -----

fn version_json(info: &VersionInfo) -> Value {
    json!({"subject": info.subject, "version": info.version, "id": info.id, "schema": info.schema})
}

/// The schema text as the body itself (for the `/schema` endpoints).
fn raw_schema(text: String) -> ApiResult {
    Ok(v1_json(text).into_response())
}

fn compatibility_json(report: &CompatibilityReport, params: &Params) -> ApiResult {
    if flag(params, "verbose") {
        ok_json(json!({"is_compatible": report.is_compatible(), "messages": report.messages}))
    } else {
        ok_json(json!({"is_compatible": report.is_compatible()}))
    }
}

// ----- handlers -----

async fn root() -> ApiResult {
    ok_json(json!({}))
}

async fn schema_types() -> ApiResult {
    ok_json(json!(["AVRO"]))
}

async fn schema_by_id<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = schema_id(&path(id)?)?;
    let store = app.store()?;
    ok_json(json!({"schema": store.schema_by_id(id)?}))
}

async fn raw_schema_by_id<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = schema_id(&path(id)?)?;
    let text = app.store()?.schema_by_id(id)?.to_owned();
    raw_schema(text)
}

async fn id_versions<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let id = schema_id(&path(id)?)?;
    let params = params(query)?;
    let usages = app.store()?.id_usages(id, deleted_filter(&params))?;
    let usages: Vec<Value> = usages
        .into_iter()
        .filter(|(s, _)| params.get("subject").is_none_or(|wanted| wanted == s))
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok_json(Value::Array(paginate(usages, &params)))
}

async fn id_subjects<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let id = schema_id(&path(id)?)?;
    let params = params(query)?;
    let usages = app.store()?.id_usages(id, deleted_filter(&params))?;
    let mut subjects: Vec<String> = usages
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| params.get("subject").is_none_or(|wanted| wanted == s))
        .collect();
    subjects.dedup();
    ok_json(json!(paginate(subjects, &params)))
}

async fn list_subjects<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let params = params(query)?;
    let prefix = params.get("subjectPrefix").cloned().unwrap_or_default();
    let subjects: Vec<String> = app
        .store()?
        .subjects(deleted_filter(&params))
        .into_iter()
        .filter(|s| s.starts_with(&prefix))
        .collect();
    ok_json(json!(paginate(subjects, &params)))
}

async fn list_versions<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let subject = path(subject)?;
    let params = params(query)?;
    let versions = app.store()?.versions(&subject, deleted_filter(&params))?;
    ok_json(json!(paginate(versions, &params)))
}

async fn register<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let subject = path(subject)?;
    let body: SchemaRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let schema = body.parse()?;
    let id = app.store()?.register(&subject, &schema)?;
    ok_json(json!({"id": id}))
}

async fn lookup<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    request: Request,
) -> ApiResult {
    let subject = path(subject)?;
    let params = params(query)?;
    let body: SchemaRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let schema = body.parse()?;
    let info = app.store()?.lookup(&subject, &schema, flag(&params, "deleted"))?;
    ok_json(version_json(&info))
}

async fn delete_subject<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let subject = path(subject)?;
    let params = params(query)?;
    let versions = app
        .store()?
        .delete_subject(&subject, flag(&params, "permanent"))?;
    ok_json(json!(versions))
}

async fn get_version<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    segments: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    ok_json(version_json(&addressed_version(&app, segments, query)?))
}

async fn raw_version_schema<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    segments: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    raw_schema(addressed_version(&app, segments, query)?.schema)
}

/// The version `/subjects/{subject}/versions/{version}` names (soft-deleted
/// ones too with `?deleted=true`).
fn addressed_version<D: Disk + Send + 'static>(
    app: &Shared<D>,
    segments: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<VersionInfo, ApiError> {
    let (subject, version) = path(segments)?;
    let params = params(query)?;
    let version = VersionSpec::parse(&version)?;
    Ok(app
        .store()?
        .version(&subject, version, flag(&params, "deleted"))?)
}

async fn referenced_by<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    segments: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (subject, version) = path(segments)?;
    let version = VersionSpec::parse(&version)?;
    // References are not supported, so nothing refers to anything; the
    // version must exist all the same.
    app.store()?.version(&subject, version, false)?;
    ok_json(json!([]))
}

async fn delete_version<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    segments: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let (subject, version) = path(segments)?;
    let params = params(query)?;
    let version = VersionSpec::parse(&version)?;
    let deleted = app
        .store()?
        .delete_version(&subject, version, flag(&params, "permanent"))?;
    ok_json(json!(deleted))
}

async fn compatibility_all<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    request: Request,
) -> ApiResult {
    let subject = path(subject)?;
    let params = params(query)?;
    let body: SchemaRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let schema = body.parse()?;
    let report = app.store()?.check_compatibility(&subject, &schema, None)?;
    compatibility_json(&report, &params)
}

async fn compatibility_version<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    segments: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    request: Request,
) -> ApiResult {
    let (subject, version) = path(segments)?;
    let params = params(query)?;
    let version = VersionSpec::parse(&version)?;
    let body: SchemaRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let schema = body.parse()?;
    let report = app
        .store()?
        .check_compatibility(&subject, &schema, Some(version))?;
    compatibility_json(&report, &params)
}

async fn get_global_config<D: Disk + Send + 'static>(State(app): State<Shared<D>>) -> ApiResult {
    let level = app.store()?.global_level();
    ok_json(json!({"compatibilityLevel": level}))
}

async fn put_global_config<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    request: Request,
) -> ApiResult {
    let body: ConfigRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let level = body.level()?;
    app.store()?.set_level(None, level)?;
    ok_json(json!({"compatibility": level}))
}

async fn delete_global_config<D: Disk + Send + 'static>(State(app): State<Shared<D>>) -> ApiResult {
    let old = app.store()?.delete_level(None)?;
    ok_json(json!({"compatibilityLevel": old}))
}

async fn get_subject_config<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
) -> ApiResult {
    let subject = path(subject)?;
    let params = params(query)?;
    let store = app.store()?;
    let level = match store.subject_level(&subject) {
        Some(level) => level,
        None if flag(&params, "defaultToGlobal") => store.global_level(),
        None => return Err(ServiceError::SubjectLevelNotConfigured(subject).into()),
    };
    ok_json(json!({"compatibilityLevel": level}))
}

async fn put_subject_config<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let subject = path(subject)?;
    let body: ConfigRequest = json_body(request, app.limits.request_body_max_bytes).await?;
    let level = body.level()?;
    app.store()?.set_level(Some(&subject), level)?;
    ok_json(json!({"compatibility": level}))
}

async fn delete_subject_config<D: Disk + Send + 'static>(
    State(app): State<Shared<D>>,
    subject: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let subject = path(subject)?;
    let old = app.store()?.delete_level(Some(&subject))?;
    ok_json(json!({"compatibilityLevel": old}))
}

#[cfg(test)]
mod tests;
