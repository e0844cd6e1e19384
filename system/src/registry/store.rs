//! The registry's state and its durable storage.
//!
//! State: schemas by global id, subjects with numbered versions (live or
//! soft-deleted), and compatibility levels. Every change is an [`Event`]; the
//! events of one change are written as one frame of the append-only log (see
//! [`super::log`]) and synced (`fdatasync`) before the change is applied in
//! memory and answered. Opening a store replays the log.
//!
//! Rules, as in Confluent's registry unless noted:
//! - ids are global: the same schema (same [identity key](super::schema)) gets
//!   the same id under every subject. An id is bound to its schema forever: a
//!   hard delete removes the subject-version, but the id is never handed to a
//!   different schema, and the same schema registered again gets its old id.
//! - versions of a subject count up from 1 and are never reused, not even
//!   after a hard delete (Confluent may reuse a hard-deleted version number;
//!   clients cache by subject and version, so this registry does not).
//! - registering a schema that is already a live version of the subject
//!   returns its id without a new version; compatibility is checked against
//!   live versions only.
//! - hard deletes (`permanent`) apply only to soft-deleted versions.
//!
//! If a write or sync fails, the store stops accepting changes until it is
//! restarted: after a failed `fdatasync` the file's durable contents are
//! unknown, and only a replay can tell what is in it (the behaviour databases
//! adopted after "fsyncgate"). Reads keep working.

use super::compat::{self, CompatibilityLevel, Direction};
use super::log::{self, LOG_FILE_NAME, LOG_HEADER, LOG_REWRITE_FILE_NAME, Tail};
use super::schema::{self, ParsedSchema};
use crate::disk::{Disk, read_exact_at};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest subject name accepted, in bytes.
pub const SUBJECT_MAX_BYTES: usize = 255;
/// Largest schema id; ids are Java ints in Confluent's clients.
pub const SCHEMA_ID_MAX: u32 = i32::MAX as u32;
/// Largest version number (a Java int in Confluent's clients).
pub const VERSION_MAX: u32 = i32::MAX as u32;
/// Default limit on the size of the log file, bytes.
pub const LOG_DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Limits of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest size the log may grow to, bytes. Changes that would grow it
    /// further are refused (error 50001); the log is also read whole into
    /// memory when the store opens, so this bounds that too.
    pub log_max_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            log_max_bytes: LOG_DEFAULT_MAX_BYTES,
        }
    }
}

/// An error of a registry operation, with Confluent's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// The version asked for.
        version: String,
    },
    /// 40403.
    #[error("{0}")]
    SchemaNotFound(String),
    /// 40404.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40407.
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    /// 409.
    #[error("{0}")]
    Incompatible(String),
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error("{0}")]
    InvalidCompatibilityLevel(String),
    /// 42208.
    #[error("Invalid subject: {0}")]
    InvalidSubject(String),
    /// 50001.
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl ServiceError {
    /// Confluent's error code.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound(_) => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::SubjectNotSoftDeleted(_) => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectLevelNotConfigured(_) => 40408,
            Self::Incompatible(_) => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibilityLevel(_) => 42203,
            Self::InvalidSubject(_) => 42208,
            Self::Store(_) => 50001,
        }
    }

    /// The HTTP status that goes with the error code.
    pub fn http_status(&self) -> u16 {
        http_status_of(self.error_code())
    }
}

/// The HTTP status of a Confluent error code: its first three digits for the
/// five-digit codes, the code itself otherwise.
pub fn http_status_of(error_code: u32) -> u16 {
    let status = if error_code >= 10_000 {
        error_code / 100
    } else {
        error_code
    };
    u16::try_from(status).unwrap_or(500)
}

/// A version as named in a request: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The highest version (among the visible ones).
    Latest,
    /// A version number, 1 or more.
    Number(u32),
}

impl VersionSpec {
    /// Parses `latest`, `-1` (Confluent's alias for latest) or a number in
    /// 1..=2^31-1; anything else is error 42202.
    pub fn parse(text: &str) -> Result<Self, ServiceError> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(Self::Latest);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=VERSION_MAX).contains(&n) => Ok(Self::Number(n)),
            _ => Err(ServiceError::InvalidVersion(text.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Whether soft-deleted entries are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeletedFilter {
    /// Live entries only.
    #[default]
    Exclude,
    /// Live and soft-deleted entries.
    Include,
    /// Soft-deleted entries only.
    Only,
}

impl DeletedFilter {
    fn admits(self, deleted: bool) -> bool {
        match self {
            Self::Exclude => !deleted,
            Self::Include => true,
            Self::Only => deleted,
        }
    }
}

/// A subject-version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Subject.
    pub subject: String,
    /// Version number.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text as first registered.
    pub schema: String,
    /// Whether the version is soft-deleted.
    pub deleted: bool,
}

/// The outcome of a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibilityReport {
    /// The level that was applied.
    pub level: CompatibilityLevel,
    /// One message per problem, each naming the field and the version; empty
    /// when compatible.
    pub messages: Vec<String>,
}

impl CompatibilityReport {
    /// Whether the schema passed.
    pub fn is_compatible(&self) -> bool {
        self.messages.is_empty()
    }
}

/// What opening a store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Whether the log was created now.
    pub created: bool,
    /// Frames replayed.
    pub frames_replayed: usize,
    /// A torn tail that was cut off: (offset, bytes).
    pub torn_tail: Option<(u64, u64)>,
    /// Schema ids allocated so far.
    pub schemas: usize,
    /// Subjects with at least one live or soft-deleted version.
    pub subjects: usize,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// An I/O error.
    #[error("registry store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log file is not a registry log.
    #[error("{path}: {source}")]
    NotALog {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: log::NotARegistryLog,
    },
    /// The log is larger than the configured limit.
    #[error("registry log {path} is {size_bytes} bytes, more than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, bytes.
        size_bytes: u64,
        /// The limit, bytes.
        limit_bytes: u64,
    },
    /// Synced data is damaged. The store refuses to open: skipping a record
    /// could hand an id out a second time.
    #[error(
        "registry log {path} is damaged at byte {offset}: {reason}; {intact_frames_after} intact records follow, so this is not an interrupted write. Refusing to start (ids could be reused); restore the data directory from a backup"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// Intact records after it (0 when the record is intact but its
        /// content contradicts the records before it).
        intact_frames_after: usize,
    },
}

/// One change to the registry, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A schema got an id.
    SchemaCreated {
        /// The id (always the next one).
        id: u32,
        /// The schema text as first registered.
        schema: String,
    },
    /// A subject got a new version.
    VersionRegistered {
        /// Subject.
        subject: String,
        /// Version number (greater than every earlier one of the subject).
        version: u32,
        /// Schema id.
        id: u32,
    },
    /// A live version was soft-deleted.
    VersionSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// A soft-deleted version was removed.
    VersionHardDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// A compatibility level was set (`level` present) or removed.
    ConfigSet {
        /// Subject, or none for the global level.
        subject: Option<String>,
        /// The level; none resets to the default (global) or removes the
        /// subject's own level.
        level: Option<CompatibilityLevel>,
    },
}

/// The payload of one log frame: the events of one change.
#[derive(Debug, Serialize, Deserialize)]
struct LogRecord {
    events: Vec<Event>,
}

#[derive(Debug, Clone)]
struct SchemaEntry {
    text: String,
}

#[derive(Debug, Clone, Copy)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

#[derive(Debug, Clone, Default)]
struct SubjectEntry {
    versions: BTreeMap<u32, VersionEntry>,
    /// Highest version ever registered (versions are never reused).
    last_version: u32,
    level: Option<CompatibilityLevel>,
}

impl SubjectEntry {
    fn latest(&self, include_deleted: bool) -> Option<(u32, VersionEntry)> {
        self.versions
            .iter()
            .rev()
            .find(|(_, v)| include_deleted || !v.deleted)
            .map(|(n, v)| (*n, *v))
    }

    fn has_versions(&self, include_deleted: bool) -> bool {
        self.latest(include_deleted).is_some()
    }
}

/// The in-memory state, rebuilt from the log.
#[derive(Debug, Clone, Default)]
struct State {
    schemas: BTreeMap<u32, SchemaEntry>,
    ids_by_key: BTreeMap<String, u32>,
    subjects: BTreeMap<String, SubjectEntry>,
    global_level: CompatibilityLevel,
    last_id: u32,
}

impl State {
    /// Applies one event, checking that it fits the state. An event that does
    /// not fit is an invariant violation: damage on replay, a bug at runtime.
    fn apply(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::SchemaCreated { id, schema } => {
                if id != self.last_id + 1 || id > SCHEMA_ID_MAX {
                    return Err(format!(
                        "schema id {id} is not the next id ({})",
                        self.last_id + 1
                    ));
                }
                let key = schema::identity_key(&schema).map_err(|e| format!("schema {id}: {e}"))?;
                if let Some(existing) = self.ids_by_key.get(&key) {
                    return Err(format!("schema {id} is the same schema as id {existing}"));
                }
                self.ids_by_key.insert(key, id);
                self.schemas.insert(id, SchemaEntry { text: schema });
                self.last_id = id;
            }
            Event::VersionRegistered { subject, version, id } => {
                if !self.schemas.contains_key(&id) {
                    return Err(format!(
                        "subject `{subject}` version {version}: unknown schema id {id}"
                    ));
                }
                let entry = self.subjects.entry(subject.clone()).or_default();
                if version <= entry.last_version || version > VERSION_MAX {
                    return Err(format!(
                        "subject `{subject}` version {version} does not follow version {}",
                        entry.last_version
                    ));
                }
                if entry.versions.values().any(|v| !v.deleted && v.id == id) {
                    return Err(format!("subject `{subject}` already has schema id {id} live"));
                }
                entry
                    .versions
                    .insert(version, VersionEntry { id, deleted: false });
                entry.last_version = version;
            }
            Event::VersionSoftDeleted { subject, version } => {
                let entry = self
                    .subjects
                    .get_mut(&subject)
                    .and_then(|s| s.versions.get_mut(&version))
                    .filter(|v| !v.deleted)
                    .ok_or_else(|| format!("soft delete of missing live version {subject}/{version}"))?;
                entry.deleted = true;
            }
            Event::VersionHardDeleted { subject, version } => {
                let entry = self
                    .subjects
                    .get_mut(&subject)
                    .ok_or_else(|| format!("hard delete in unknown subject `{subject}`"))?;
                match entry.versions.get(&version) {
                    Some(v) if v.deleted => {
                        entry.versions.remove(&version);
                    }
                    _ => return Err(format!("hard delete of {subject}/{version}, not soft-deleted")),
                }
            }
            Event::ConfigSet { subject, level } => match subject {
                None => self.global_level = level.unwrap_or_default(),
                Some(subject) => self.subjects.entry(subject).or_default().level = level,
            },
        }
        Ok(())
    }

    fn subject(&self, name: &str, include_deleted: bool) -> Option<&SubjectEntry> {
        self.subjects
            .get(name)
            .filter(|s| s.has_versions(include_deleted))
    }

    fn level_for(&self, subject: &str) -> CompatibilityLevel {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .unwrap_or(self.global_level)
    }

    fn info(&self, subject: &str, version: u32, entry: VersionEntry) -> Result<VersionInfo, ServiceError> {
        let schema = self.schemas.get(&entry.id).ok_or_else(|| {
            ServiceError::Store(format!(
                "schema id {} of {subject}/{version} is missing",
                entry.id
            ))
        })?;
        Ok(VersionInfo {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema: schema.text.clone(),
            deleted: entry.deleted,
        })
    }
}

/// Checks a subject name: 1 to [`SUBJECT_MAX_BYTES`] bytes, no control
/// characters.
pub fn validate_subject(subject: &str) -> Result<(), ServiceError> {
    if subject.is_empty() {
        return Err(ServiceError::InvalidSubject("empty subject name".into()));
    }
    if subject.len() > SUBJECT_MAX_BYTES {
        return Err(ServiceError::InvalidSubject(format!(
            "subject name longer than {SUBJECT_MAX_BYTES} bytes"
        )));
    }
    if subject.chars().any(char::is_control) {
        return Err(ServiceError::InvalidSubject(
            "subject name contains control characters".into(),
        ));
    }
    Ok(())
}

/// The registry's state over a durable log on a [`Disk`].
pub struct Store<D: Disk> {
    disk: D,
    dir: PathBuf,
    log_path: PathBuf,
    log_len_bytes: u64,
    limits: StoreLimits,
    state: State,
    /// Why writes are refused, after a failed write or sync.
    failed: Option<String>,
}

impl<D: Disk> fmt::Debug for Store<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("log_path", &self.log_path)
            .field("log_len_bytes", &self.log_len_bytes)
            .field("schemas", &self.state.schemas.len())
            .field("subjects", &self.state.subjects.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl<D: Disk> Store<D> {
    /// Opens (creating if needed) the store in `dir`: replays the log, cuts
    /// off a torn tail, refuses damaged logs.
    pub fn open(disk: D, dir: &Path, limits: StoreLimits) -> Result<(Self, OpenReport), StoreOpenError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreOpenError::Io { path, source }
        };
        let log_path = dir.join(LOG_FILE_NAME);
        disk.create_dir_all(dir).map_err(io(dir))?;
        let mut created = false;
        let bytes = if disk.exists(&log_path).map_err(io(&log_path))? {
            let file = disk.open(&log_path).map_err(io(&log_path))?;
            let size_bytes = file.len().map_err(io(&log_path))?;
            if size_bytes > limits.log_max_bytes {
                return Err(StoreOpenError::TooLarge {
                    path: log_path,
                    size_bytes,
                    limit_bytes: limits.log_max_bytes,
                });
            }
            let mut bytes = vec![0; size_bytes as usize];
            let read = read_exact_at(file.as_ref(), 0, &mut bytes).map_err(io(&log_path))?;
            bytes.truncate(read);
            bytes
        } else {
            Vec::new()
        };
        if log::is_partial_header(&bytes) {
            // New, or a creation a crash interrupted: (re)write the header.
            let mut file = disk.create_truncate(&log_path).map_err(io(&log_path))?;
            file.append(LOG_HEADER).map_err(io(&log_path))?;
            file.sync_data().map_err(io(&log_path))?;
            disk.sync_dir(dir).map_err(io(dir))?;
            created = true;
        }
        let bytes = if created { LOG_HEADER.to_vec() } else { bytes };
        let scanned = log::scan(&bytes).map_err(|source| StoreOpenError::NotALog {
            path: log_path.clone(),
            source,
        })?;
        let damaged = |offset: u64, reason: String, intact_frames_after: usize| StoreOpenError::Damaged {
            path: log_path.clone(),
            offset,
            reason,
            intact_frames_after,
        };
        if let Tail::Damaged {
            offset,
            reason,
            intact_frames_after,
        } = &scanned.tail
        {
            return Err(damaged(*offset, reason.clone(), *intact_frames_after));
        }
        let mut state = State::default();
        for frame in &scanned.frames {
            let record: LogRecord = serde_json::from_slice(frame.payload)
                .map_err(|e| damaged(frame.offset, format!("undecodable record: {e}"), 0))?;
            for event in record.events {
                state
                    .apply(event)
                    .map_err(|reason| damaged(frame.offset, reason, 0))?;
            }
        }
        let torn_tail = match scanned.tail {
            Tail::Torn { offset, bytes: torn } => {
                tracing::warn!(
                    path = %log_path.display(),
                    offset,
                    torn_bytes = torn,
                    "registry log ends in an interrupted write; cutting it off"
                );
                Self::rewrite_prefix(&disk, dir, &log_path, &bytes[..scanned.valid_len as usize])
                    .map_err(io(&log_path))?;
                Some((offset, torn))
            }
            _ => None,
        };
        let report = OpenReport {
            created,
            frames_replayed: scanned.frames.len(),
            torn_tail,
            schemas: state.schemas.len(),
            subjects: state.subjects.values().filter(|s| s.has_versions(true)).count(),
        };
        let store = Self {
            disk,
            dir: dir.to_owned(),
            log_path,
            log_len_bytes: scanned.valid_len,
            limits,
            state,
            failed: None,
        };
        Ok((store, report))
    }

    /// Replaces the log with its valid prefix (through a synced temporary
    /// file and an atomic rename), so that new frames never follow torn bytes.
    fn rewrite_prefix(disk: &D, dir: &Path, log_path: &Path, prefix: &[u8]) -> std::io::Result<()> {
        let rewrite_path = dir.join(LOG_REWRITE_FILE_NAME);
        let mut file = disk.create_truncate(&rewrite_path)?;
        file.append(prefix)?;
        file.sync_data()?;
        drop(file);
        disk.rename(&rewrite_path, log_path)?;
        disk.sync_dir(dir)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Size of the log, bytes.
    pub fn log_len_bytes(&self) -> u64 {
        self.log_len_bytes
    }

    /// Whether the store refuses writes after a failed write or sync.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Writes one change durably, then applies it.
    fn commit(&mut self, events: Vec<Event>) -> Result<(), ServiceError> {
        assert!(!events.is_empty(), "a change has at least one event");
        if let Some(reason) = &self.failed {
            return Err(ServiceError::Store(format!(
                "the store refuses changes since a write failed ({reason}); restart the registry"
            )));
        }
        let record = LogRecord { events };
        let payload = serde_json::to_vec(&record)
            .map_err(|e| ServiceError::Store(format!("cannot encode a log record: {e}")))?;
        if payload.len() > log::FRAME_PAYLOAD_MAX_BYTES {
            return Err(ServiceError::Store(format!(
                "log record of {} bytes exceeds {} bytes",
                payload.len(),
                log::FRAME_PAYLOAD_MAX_BYTES
            )));
        }
        let frame = log::encode_frame(&payload);
        let new_len = self.log_len_bytes + frame.len() as u64;
        if new_len > self.limits.log_max_bytes {
            return Err(ServiceError::Store(format!(
                "the registry log is full ({} of {} bytes)",
                self.log_len_bytes, self.limits.log_max_bytes
            )));
        }
        let written = self.disk.open(&self.log_path).and_then(|mut file| {
            file.append(&frame)?;
            file.sync_data()
        });
        if let Err(e) = written {
            let reason = format!("writing {}: {e}", self.log_path.display());
            tracing::error!(%reason, "registry store write failed; refusing further changes until restart");
            self.failed = Some(reason.clone());
            return Err(ServiceError::Store(reason));
        }
        self.log_len_bytes = new_len;
        for event in record.events {
            if let Err(reason) = self.state.apply(event) {
                // The change was validated before it was written: this is a bug.
                let reason = format!("logged change does not apply: {reason}");
                tracing::error!(%reason, "registry store invariant violated");
                self.failed = Some(reason.clone());
                return Err(ServiceError::Store(reason));
            }
        }
        Ok(())
    }

    // ----- reads -----

    /// The schema text with this id. Known while at least one subject-version
    /// (live or soft-deleted) refers to it; 40403 otherwise.
    pub fn schema_by_id(&self, id: u32) -> Result<&str, ServiceError> {
        let referenced = self
            .state
            .subjects
            .values()
            .any(|s| s.versions.values().any(|v| v.id == id));
        match self.state.schemas.get(&id) {
            Some(entry) if referenced => Ok(&entry.text),
            _ => Err(ServiceError::SchemaNotFound(format!("Schema {id} not found"))),
        }
    }

    /// The subject-versions that use schema `id`.
    pub fn id_usages(&self, id: u32, filter: DeletedFilter) -> Result<Vec<(String, u32)>, ServiceError> {
        self.schema_by_id(id)?;
        let mut usages = Vec::new();
        for (name, subject) in &self.state.subjects {
            for (version, entry) in &subject.versions {
                if entry.id == id && filter.admits(entry.deleted) {
                    usages.push((name.clone(), *version));
                }
            }
        }
        Ok(usages)
    }

    /// Subject names, sorted.
    pub fn subjects(&self, filter: DeletedFilter) -> Vec<String> {
        self.state
            .subjects
            .iter()
            .filter(|(_, s)| match filter {
                DeletedFilter::Exclude => s.has_versions(false),
                DeletedFilter::Include => s.has_versions(true),
                DeletedFilter::Only => s.has_versions(true) && !s.has_versions(false),
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Version numbers of a subject that the filter admits, ascending. 40401
    /// if the subject has no live version (no version at all when
    /// soft-deleted ones are asked for).
    pub fn versions(&self, subject: &str, filter: DeletedFilter) -> Result<Vec<u32>, ServiceError> {
        let include_deleted = filter != DeletedFilter::Exclude;
        let entry = self
            .state
            .subject(subject, include_deleted)
            .ok_or_else(|| ServiceError::SubjectNotFound(subject.to_owned()))?;
        Ok(entry
            .versions
            .iter()
            .filter(|(_, v)| filter.admits(v.deleted))
            .map(|(n, _)| *n)
            .collect())
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        version: VersionSpec,
        include_deleted: bool,
    ) -> Result<VersionInfo, ServiceError> {
        let entry = self
            .state
            .subject(subject, include_deleted)
            .ok_or_else(|| ServiceError::SubjectNotFound(subject.to_owned()))?;
        let found = match version {
            VersionSpec::Latest => entry.latest(include_deleted),
            VersionSpec::Number(n) => entry
                .versions
                .get(&n)
                .filter(|v| include_deleted || !v.deleted)
                .map(|v| (n, *v)),
        };
        let (number, v) = found.ok_or_else(|| ServiceError::VersionNotFound {
            version: version.to_string(),
        })?;
        self.state.info(subject, number, v)
    }

    /// The version of `subject` holding `schema`, if any (40401 / 40403).
    pub fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<VersionInfo, ServiceError> {
        let entry = self
            .state
            .subject(subject, include_deleted)
            .ok_or_else(|| ServiceError::SubjectNotFound(subject.to_owned()))?;
        let id = self.state.ids_by_key.get(schema.key()).copied();
        let found = entry
            .versions
            .iter()
            .rev()
            .find(|(_, v)| Some(v.id) == id && (include_deleted || !v.deleted));
        match found {
            Some((number, v)) => self.state.info(subject, *number, *v),
            None => Err(ServiceError::SchemaNotFound("Schema not found".into())),
        }
    }

    /// The global compatibility level.
    pub fn global_level(&self) -> CompatibilityLevel {
        self.state.global_level
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.state.subjects.get(subject).and_then(|s| s.level)
    }

    /// The level that applies to a subject: its own, else the global one.
    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.state.level_for(subject)
    }

    /// Checks `schema` against the subject under its level: against `version`
    /// when given (a missing numbered version is 40402; a missing `latest`
    /// passes), else against the latest live version, or every live version
    /// for transitive levels.
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        version: Option<VersionSpec>,
    ) -> Result<CompatibilityReport, ServiceError> {
        let level = self.state.level_for(subject);
        let against: Vec<(u32, u32)> = match version {
            Some(spec) => match self.version(subject, spec, false) {
                Ok(info) => vec![(info.version, info.id)],
                Err(ServiceError::SubjectNotFound(_) | ServiceError::VersionNotFound { .. })
                    if spec == VersionSpec::Latest =>
                {
                    Vec::new()
                }
                Err(ServiceError::SubjectNotFound(_)) => {
                    return Err(ServiceError::VersionNotFound {
                        version: spec.to_string(),
                    });
                }
                Err(other) => return Err(other),
            },
            None => self.versions_to_check(subject, level),
        };
        let messages = self.compatibility_messages(level, schema, &against)?;
        Ok(CompatibilityReport { level, messages })
    }

    /// (version, id) of the live versions a new schema is checked against.
    fn versions_to_check(&self, subject: &str, level: CompatibilityLevel) -> Vec<(u32, u32)> {
        let Some(entry) = self.state.subject(subject, false) else {
            return Vec::new();
        };
        let mut live = entry.versions.iter().filter(|(_, v)| !v.deleted);
        if level.is_transitive() {
            live.map(|(n, v)| (*n, v.id)).collect()
        } else {
            live.next_back().map(|(n, v)| (*n, v.id)).into_iter().collect()
        }
    }

    fn compatibility_messages(
        &self,
        level: CompatibilityLevel,
        new: &ParsedSchema,
        against: &[(u32, u32)],
    ) -> Result<Vec<String>, ServiceError> {
        let mut messages = Vec::new();
        if level == CompatibilityLevel::None {
            return Ok(messages);
        }
        for &(version, id) in against {
            let text = &self
                .state
                .schemas
                .get(&id)
                .ok_or_else(|| ServiceError::Store(format!("schema id {id} is missing")))?
                .text;
            let old = ParsedSchema::parse(text)
                .map_err(|e| ServiceError::Store(format!("stored schema id {id} no longer parses: {e}")))?;
            // description -> (new cannot read old, old cannot read new)
            let mut found: BTreeMap<String, (bool, bool)> = BTreeMap::new();
            if level.checks_backward() {
                for i in compat::can_read(old.avro(), new.avro()) {
                    found
                        .entry(compat::describe(&i, Direction::NewReadsOld))
                        .or_default()
                        .0 = true;
                }
            }
            if level.checks_forward() {
                for i in compat::can_read(new.avro(), old.avro()) {
                    found
                        .entry(compat::describe(&i, Direction::OldReadsNew))
                        .or_default()
                        .1 = true;
                }
            }
            for (description, (backward, forward)) in found {
                let consequence = match (backward, forward) {
                    (true, true) => {
                        format!("neither the new schema nor version {version} can read the other's data")
                    }
                    (true, false) => {
                        format!("the new schema cannot read data written with version {version}")
                    }
                    _ => format!(
                        "readers using version {version} cannot read data written with the new schema"
                    ),
                };
                messages.push(format!("{description} ({consequence})"));
            }
        }
        Ok(messages)
    }

    // ----- changes -----

    /// Registers `schema` under `subject`; returns its id. Returns the
    /// existing id when the schema is already a live version of the subject.
    pub fn register(&mut self, subject: &str, schema: &ParsedSchema) -> Result<u32, ServiceError> {
        validate_subject(subject)?;
        let known_id = self.state.ids_by_key.get(schema.key()).copied();
        if let (Some(id), Some(entry)) = (known_id, self.state.subject(subject, false))
            && entry.versions.values().any(|v| !v.deleted && v.id == id)
        {
            return Ok(id);
        }
        let level = self.state.level_for(subject);
        let against = self.versions_to_check(subject, level);
        let messages = self.compatibility_messages(level, schema, &against)?;
        if !messages.is_empty() {
            return Err(ServiceError::Incompatible(format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" (compatibility level {level}); details: [{}]",
                messages.join("; ")
            )));
        }
        let last_version = self.state.subjects.get(subject).map_or(0, |s| s.last_version);
        if last_version >= VERSION_MAX {
            return Err(ServiceError::Store(format!(
                "subject `{subject}` has no version numbers left"
            )));
        }
        let mut events = Vec::with_capacity(2);
        let id = match known_id {
            Some(id) => id,
            None => {
                if self.state.last_id >= SCHEMA_ID_MAX {
                    return Err(ServiceError::Store("no schema ids left".into()));
                }
                let id = self.state.last_id + 1;
                events.push(Event::SchemaCreated {
                    id,
                    schema: schema.text().to_owned(),
                });
                id
            }
        };
        let version = last_version + 1;
        events.push(Event::VersionRegistered {
            subject: subject.to_owned(),
            version,
            id,
        });
        self.commit(events)?;
        tracing::info!(subject, version, id, "registered schema");
        Ok(id)
    }

    /// Deletes every version of a subject: soft (live versions become
    /// soft-deleted) or permanent (soft-deleted versions are removed, and the
    /// subject's level with them). Returns the versions deleted.
    pub fn delete_subject(&mut self, subject: &str, permanent: bool) -> Result<Vec<u32>, ServiceError> {
        let entry = self
            .state
            .subject(subject, true)
            .ok_or_else(|| ServiceError::SubjectNotFound(subject.to_owned()))?;
        let live: Vec<u32> = entry
            .versions
            .iter()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, _)| *n)
            .collect();
        let mut events = Vec::new();
        let deleted = if permanent {
            if !live.is_empty() {
                return Err(ServiceError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            let all: Vec<u32> = entry.versions.keys().copied().collect();
            for &version in &all {
                events.push(Event::VersionHardDeleted {
                    subject: subject.to_owned(),
                    version,
                });
            }
            if entry.level.is_some() {
                events.push(Event::ConfigSet {
                    subject: Some(subject.to_owned()),
                    level: None,
                });
            }
            all
        } else {
            if live.is_empty() {
                return Err(ServiceError::SubjectSoftDeleted(subject.to_owned()));
            }
            for &version in &live {
                events.push(Event::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version,
                });
            }
            live
        };
        self.commit(events)?;
        tracing::info!(subject, permanent, versions = ?deleted, "deleted subject");
        Ok(deleted)
    }

    /// Deletes one version: soft (a live version) or permanent (a
    /// soft-deleted version). Returns the version number.
    pub fn delete_version(
        &mut self,
        subject: &str,
        version: VersionSpec,
        permanent: bool,
    ) -> Result<u32, ServiceError> {
        // The subject counts as existing while it has any version, so that a
        // second soft delete of a version says 40406, not 40401.
        let entry = self
            .state
            .subject(subject, true)
            .ok_or_else(|| ServiceError::SubjectNotFound(subject.to_owned()))?;
        let found = match version {
            VersionSpec::Latest => entry.latest(permanent),
            VersionSpec::Number(n) => entry.versions.get(&n).map(|v| (n, *v)),
        };
        let (number, v) = found.ok_or_else(|| ServiceError::VersionNotFound {
            version: version.to_string(),
        })?;
        let event = match (permanent, v.deleted) {
            (false, true) => {
                return Err(ServiceError::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            (true, false) => {
                return Err(ServiceError::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            (false, false) => Event::VersionSoftDeleted {
                subject: subject.to_owned(),
                version: number,
            },
            (true, true) => Event::VersionHardDeleted {
                subject: subject.to_owned(),
                version: number,
            },
        };
        self.commit(vec![event])?;
        tracing::info!(subject, version = number, permanent, "deleted version");
        Ok(number)
    }

    /// Sets the global level (`subject` none) or a subject's level.
    pub fn set_level(
        &mut self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<(), ServiceError> {
        if let Some(subject) = subject {
            validate_subject(subject)?;
        }
        self.commit(vec![Event::ConfigSet {
            subject: subject.map(str::to_owned),
            level: Some(level),
        }])?;
        tracing::info!(subject = subject.unwrap_or("<global>"), %level, "set compatibility level");
        Ok(())
    }

    /// Removes a subject's own level (40408 if it has none), or resets the
    /// global level to BACKWARD. Returns the level that was in force.
    pub fn delete_level(&mut self, subject: Option<&str>) -> Result<CompatibilityLevel, ServiceError> {
        let old = match subject {
            Some(name) => self
                .subject_level(name)
                .ok_or_else(|| ServiceError::SubjectLevelNotConfigured(name.to_owned()))?,
            None => self.global_level(),
        };
        self.commit(vec![Event::ConfigSet {
            subject: subject.map(str::to_owned),
            level: None,
        }])?;
        tracing::info!(
            subject = subject.unwrap_or("<global>"),
            "removed compatibility level"
        );
        Ok(old)
    }
}

#[cfg(test)]
mod tests;
