//! Schema compatibility: which schema changes a subject accepts, decided by
//! Avro's schema-resolution rules, with messages that name the field at fault.
//!
//! The core is [`can_read`]: can data written with a writer schema be read with
//! a reader schema? It follows the Avro specification's resolution rules as
//! Java's `SchemaCompatibility` (and so Confluent's registry) applies them:
//! numeric and string/bytes promotions, record fields matched by name or
//! reader alias and filled from reader defaults, enum symbols (or a reader enum
//! default), fixed sizes, named types matched by name or alias, unions branch by
//! branch, logical types by their underlying type.
//!
//! apache-avro ships a checker too (`apache_avro::schema_compatibility`), and
//! the tests use it as an oracle: on generated schema pairs in the part of
//! Avro where it is right, both must agree. It is not the decision maker here
//! because (a) its errors do not say where a change is (a type change reports
//! only "Field 'x' ... does not match" with a list of type kinds, and a nested
//! record's problem is reported as the outer field), and (b) it departs from the
//! resolution rules in a few places, each pinned by a test below: a writer
//! union read by a non-union reader is rejected even when every branch
//! promotes, an enum default in the reader is ignored, and a `long` written as
//! `timestamp-millis` and read as `timestamp-micros` is rejected.
//!
//! [`CompatibilityLevel`] maps the Confluent levels onto reader/writer roles:
//! BACKWARD means the new schema reads data written with old ones, FORWARD the
//! other way round, FULL both; the `_TRANSITIVE` forms check every live
//! version instead of only the latest.

use apache_avro::Schema;
use apache_avro::schema::{Alias, Name, RecordSchema, ResolvedSchema, UnionSchema};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Most incompatibilities reported for one reader/writer pair; the rest are
/// summarised by count so that a pathological schema cannot produce an
/// unbounded error message.
pub const INCOMPATIBILITIES_MAX_REPORTED: usize = 32;

/// A subject's (or the registry's) compatibility level, as in Confluent's
/// registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum CompatibilityLevel {
    /// No checks.
    None,
    /// The new schema can read data written with the latest version.
    #[default]
    Backward,
    /// The new schema can read data written with every live version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every live version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every live version.
    FullTransitive,
}

/// A compatibility level name that is not one of Confluent's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid compatibility level `{0}`; valid levels are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct InvalidCompatibilityLevel(pub String);

impl CompatibilityLevel {
    /// Every level, in Confluent's order.
    pub const ALL: [CompatibilityLevel; 7] = [
        Self::None,
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
    ];

    /// The name Confluent uses (`BACKWARD_TRANSITIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema must read data written with old versions.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether old versions must read data written with the new schema.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether every live version is checked, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = InvalidCompatibilityLevel;

    /// Parses a level name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| InvalidCompatibilityLevel(s.chars().take(64).collect()))
    }
}

impl serde::Serialize for CompatibilityLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CompatibilityLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One reason why a reader schema cannot read data written with a writer
/// schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Where: the dotted field path from the top-level record (`location.lat`;
    /// `tags[]` for array items, `attrs{}` for map values); empty for the top
    /// level itself.
    pub path: String,
    /// What.
    pub kind: IncompatibilityKind,
}

/// The kinds of [`Incompatibility`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncompatibilityKind {
    /// The reader's type cannot read the writer's type.
    TypeMismatch {
        /// The writer's type, e.g. `double` or `union [null, double]`.
        writer_type: String,
        /// The reader's type.
        reader_type: String,
    },
    /// The reader has a field (named by the path) that the writer does not
    /// write, and no default for it.
    ReaderFieldMissingDefault,
    /// Named types (record, enum, fixed) whose names do not match.
    NameMismatch {
        /// The writer's full name.
        writer_name: String,
        /// The reader's full name.
        reader_name: String,
    },
    /// Fixed types of different sizes.
    FixedSizeMismatch {
        /// The writer's size, bytes.
        writer_size_bytes: usize,
        /// The reader's size, bytes.
        reader_size_bytes: usize,
    },
    /// Enum symbols the writer may write that the reader does not know, and
    /// the reader has no enum default.
    MissingEnumSymbols {
        /// The symbols the reader lacks.
        symbols: Vec<String>,
    },
    /// More incompatibilities were found than [`INCOMPATIBILITIES_MAX_REPORTED`].
    More {
        /// How many were not reported.
        count: usize,
    },
}

/// Checks whether data written with `writer` can be read with `reader`;
/// returns every reason it cannot (empty: it can).
pub fn can_read(writer: &Schema, reader: &Schema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        writer_names: NameTable::new(writer),
        reader_names: NameTable::new(reader),
        in_progress: BTreeSet::new(),
        memo: BTreeMap::new(),
        found: Vec::new(),
        unreported: 0,
    };
    let mut path = Vec::new();
    checker.check(writer, reader, &mut path);
    let mut found = checker.found;
    if checker.unreported > 0 {
        found.push(Incompatibility {
            path: String::new(),
            kind: IncompatibilityKind::More {
                count: checker.unreported,
            },
        });
    }
    found
}

/// Which schema is the one being added, so that messages can say "added" or
/// "removed" and "from old to new".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The new schema is the reader, the old one the writer (BACKWARD).
    NewReadsOld,
    /// The old schema is the reader, the new one the writer (FORWARD).
    OldReadsNew,
}

/// Renders an incompatibility between a new schema and an old one as a
/// sentence naming the field, e.g. "field `moisture_vwc`: type changed from
/// double to string" or "field `x` removed without default".
pub fn describe(incompatibility: &Incompatibility, direction: Direction) -> String {
    let subject = if incompatibility.path.is_empty() {
        "top-level schema".to_owned()
    } else {
        format!("field `{}`", incompatibility.path)
    };
    let new_reads_old = direction == Direction::NewReadsOld;
    match &incompatibility.kind {
        IncompatibilityKind::TypeMismatch {
            writer_type,
            reader_type,
        } => {
            let (old, new) = if new_reads_old {
                (writer_type, reader_type)
            } else {
                (reader_type, writer_type)
            };
            format!("{subject}: type changed from {old} to {new}")
        }
        IncompatibilityKind::ReaderFieldMissingDefault => {
            if new_reads_old {
                format!("{subject} added without default")
            } else {
                format!("{subject} removed without default")
            }
        }
        IncompatibilityKind::NameMismatch {
            writer_name,
            reader_name,
        } => {
            let (old, new) = if new_reads_old {
                (writer_name, reader_name)
            } else {
                (reader_name, writer_name)
            };
            format!("{subject}: type name changed from {old} to {new} (and no alias covers it)")
        }
        IncompatibilityKind::FixedSizeMismatch {
            writer_size_bytes,
            reader_size_bytes,
        } => {
            let (old, new) = if new_reads_old {
                (writer_size_bytes, reader_size_bytes)
            } else {
                (reader_size_bytes, writer_size_bytes)
            };
            format!("{subject}: fixed size changed from {old} to {new} bytes")
        }
        IncompatibilityKind::MissingEnumSymbols { symbols } => {
            let list = symbols.join(", ");
            if new_reads_old {
                format!("{subject}: enum symbols [{list}] removed and the new enum has no default")
            } else {
                format!("{subject}: enum symbols [{list}] added and the old enum has no default")
            }
        }
        IncompatibilityKind::More { count } => format!("and {count} more incompatibilities"),
    }
}

/// Named types of one schema, by full name.
struct NameTable<'s> {
    by_fullname: BTreeMap<String, &'s Schema>,
}

impl<'s> NameTable<'s> {
    fn new(schema: &'s Schema) -> Self {
        let mut by_fullname = BTreeMap::new();
        // Schemas reaching the checker were resolved when parsed; should one
        // not resolve, its references stay unresolved and are reported as
        // type mismatches instead of failing the check.
        if let Ok(resolved) = ResolvedSchema::try_from(schema) {
            for (name, definition) in resolved.get_names() {
                by_fullname.insert(name.fullname(None), *definition);
            }
        }
        Self { by_fullname }
    }

    /// Follows a reference to its definition; other schemas are returned as
    /// they are. `None` for a reference that does not resolve.
    fn deref(&self, schema: &'s Schema) -> Option<&'s Schema> {
        match schema {
            Schema::Ref { name } => self.by_fullname.get(&name.fullname(None)).copied(),
            other => Some(other),
        }
    }
}

/// A path segment, for messages.
#[derive(Debug, Clone)]
enum Segment {
    Field(String),
    Items,
    Values,
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Segment::Items => out.push_str("[]"),
            Segment::Values => out.push_str("{}"),
        }
    }
    out
}

/// The type a schema has on the wire, logical types reduced to their
/// underlying type (as the resolution rules treat them).
enum Physical<'s> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(&'s RecordSchema),
    Enum(&'s apache_avro::schema::EnumSchema),
    Fixed {
        name: Option<&'s Name>,
        aliases: &'s Option<Vec<Alias>>,
        size_bytes: usize,
    },
    Array(&'s Schema),
    Map(&'s Schema),
    Union(&'s UnionSchema),
}

const NO_ALIASES: Option<Vec<Alias>> = None;
/// Size of the Avro `duration` logical type's fixed, bytes.
const DURATION_SIZE_BYTES: usize = 12;

fn physical(schema: &Schema) -> Option<Physical<'_>> {
    Some(match schema {
        Schema::Null => Physical::Null,
        Schema::Boolean => Physical::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Physical::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Physical::Long,
        Schema::Float => Physical::Float,
        Schema::Double => Physical::Double,
        Schema::Bytes | Schema::BigDecimal => Physical::Bytes,
        Schema::String | Schema::Uuid => Physical::String,
        Schema::Decimal(decimal) => return physical(&decimal.inner),
        Schema::Duration => Physical::Fixed {
            name: None,
            aliases: &NO_ALIASES,
            size_bytes: DURATION_SIZE_BYTES,
        },
        Schema::Record(record) => Physical::Record(record),
        Schema::Enum(e) => Physical::Enum(e),
        Schema::Fixed(fixed) => Physical::Fixed {
            name: Some(&fixed.name),
            aliases: &fixed.aliases,
            size_bytes: fixed.size,
        },
        Schema::Array(array) => Physical::Array(&array.items),
        Schema::Map(map) => Physical::Map(&map.types),
        Schema::Union(union) => Physical::Union(union),
        Schema::Ref { .. } => return None,
    })
}

/// Whether the reader's name (or one of its aliases) matches the writer's
/// name, as the resolution rules require for named types.
fn names_match(writer: &Name, reader: &Name, reader_aliases: &Option<Vec<Alias>>) -> bool {
    if writer.name == reader.name {
        return true;
    }
    let writer_full = writer.fullname(None);
    reader_aliases
        .iter()
        .flatten()
        .any(|alias| alias.fullname(reader.namespace.clone()) == writer_full || alias.name() == writer.name)
}

/// A short human-readable name of a type, for messages.
fn type_name(names: &NameTable<'_>, schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(array) => format!("array<{}>", type_name(names, &array.items)),
        Schema::Map(map) => format!("map<{}>", type_name(names, &map.types)),
        Schema::Union(union) => {
            let branches: Vec<String> = union.variants().iter().map(|b| type_name(names, b)).collect();
            format!("union [{}]", branches.join(", "))
        }
        Schema::Record(record) => format!("record {}", record.name.name),
        Schema::Enum(e) => format!("enum {}", e.name.name),
        Schema::Fixed(fixed) => format!("fixed {}({})", fixed.name.name, fixed.size),
        Schema::Decimal(decimal) => format!(
            "decimal({},{}) on {}",
            decimal.precision,
            decimal.scale,
            type_name(names, &decimal.inner)
        ),
        Schema::BigDecimal => "big-decimal".into(),
        Schema::Uuid => "uuid".into(),
        Schema::Date => "date".into(),
        Schema::TimeMillis => "time-millis".into(),
        Schema::TimeMicros => "time-micros".into(),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos => "timestamp-nanos".into(),
        Schema::LocalTimestampMillis => "local-timestamp-millis".into(),
        Schema::LocalTimestampMicros => "local-timestamp-micros".into(),
        Schema::LocalTimestampNanos => "local-timestamp-nanos".into(),
        Schema::Duration => "duration".into(),
        Schema::Ref { name } => match names.deref(schema) {
            Some(definition) if !matches!(definition, Schema::Ref { .. }) => type_name(names, definition),
            _ => format!("unresolved {}", name.fullname(None)),
        },
    }
}

/// The name of a named type, for matching union branches by name.
fn named_type_name(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Record(record) => Some(&record.name),
        Schema::Enum(e) => Some(&e.name),
        Schema::Fixed(fixed) => Some(&fixed.name),
        _ => None,
    }
}

struct Checker<'s> {
    writer_names: NameTable<'s>,
    reader_names: NameTable<'s>,
    /// Record pairs (writer full name, reader full name) being compared
    /// further up the stack: a recursive type meeting itself again is assumed
    /// compatible, as in the resolution rules' fixpoint.
    in_progress: BTreeSet<(String, String)>,
    /// Results of [`Checker::readable`] by schema addresses, so that unions of
    /// records of unions cannot make the check exponential.
    memo: BTreeMap<(usize, usize), bool>,
    found: Vec<Incompatibility>,
    unreported: usize,
}

impl<'s> Checker<'s> {
    fn report(&mut self, path: &[Segment], kind: IncompatibilityKind) {
        if self.found.len() < INCOMPATIBILITIES_MAX_REPORTED {
            self.found.push(Incompatibility {
                path: render_path(path),
                kind,
            });
        } else {
            self.unreported += 1;
        }
    }

    fn type_mismatch(&mut self, path: &[Segment], writer: &'s Schema, reader: &'s Schema) {
        let kind = IncompatibilityKind::TypeMismatch {
            writer_type: type_name(&self.writer_names, writer),
            reader_type: type_name(&self.reader_names, reader),
        };
        self.report(path, kind);
    }

    /// Whether `reader` reads `writer`, without reporting anything.
    fn readable(&mut self, writer: &'s Schema, reader: &'s Schema) -> bool {
        let key = (writer as *const Schema as usize, reader as *const Schema as usize);
        if let Some(known) = self.memo.get(&key) {
            return *known;
        }
        let saved_found = std::mem::take(&mut self.found);
        let saved_unreported = std::mem::replace(&mut self.unreported, 0);
        self.check(writer, reader, &mut Vec::new());
        let ok = self.found.is_empty() && self.unreported == 0;
        self.found = saved_found;
        self.unreported = saved_unreported;
        self.memo.insert(key, ok);
        ok
    }

    fn check(&mut self, writer: &'s Schema, reader: &'s Schema, path: &mut Vec<Segment>) {
        let (Some(w), Some(r)) = (self.writer_names.deref(writer), self.reader_names.deref(reader)) else {
            self.type_mismatch(path, writer, reader);
            return;
        };
        let (Some(wp), Some(rp)) = (physical(w), physical(r)) else {
            self.type_mismatch(path, w, r);
            return;
        };
        match (wp, rp) {
            (Physical::Union(wu), Physical::Union(_)) => {
                // Every branch the writer may write must be readable.
                for branch in wu.variants() {
                    if !self.readable(branch, r) {
                        self.explain_unreadable(branch, w, r, path);
                        return;
                    }
                }
            }
            (Physical::Union(wu), _) => {
                for branch in wu.variants() {
                    if !self.readable(branch, r) {
                        // Detail the branch when it is the reader's own type
                        // (same named type), else report the whole change.
                        if same_named_type(&self.writer_names, branch, r) {
                            self.check(branch, r, path);
                        } else {
                            self.type_mismatch(path, w, r);
                        }
                        return;
                    }
                }
            }
            (_, Physical::Union(ru)) => {
                if !ru.variants().iter().any(|branch| self.readable(w, branch)) {
                    self.explain_unreadable(w, w, r, path);
                }
            }
            (Physical::Record(wr), Physical::Record(rr)) => self.check_records(wr, rr, path),
            (Physical::Enum(we), Physical::Enum(re)) => {
                if !names_match(&we.name, &re.name, &re.aliases) {
                    self.report(
                        path,
                        IncompatibilityKind::NameMismatch {
                            writer_name: we.name.fullname(None),
                            reader_name: re.name.fullname(None),
                        },
                    );
                    return;
                }
                if re.default.is_none() {
                    let missing: Vec<String> = we
                        .symbols
                        .iter()
                        .filter(|s| !re.symbols.contains(s))
                        .cloned()
                        .collect();
                    if !missing.is_empty() {
                        self.report(path, IncompatibilityKind::MissingEnumSymbols { symbols: missing });
                    }
                }
            }
            (
                Physical::Fixed {
                    name: wn,
                    size_bytes: ws,
                    ..
                },
                Physical::Fixed {
                    name: rn,
                    aliases: ra,
                    size_bytes: rs,
                },
            ) => {
                if let (Some(wn), Some(rn)) = (wn, rn)
                    && !names_match(wn, rn, ra)
                {
                    self.report(
                        path,
                        IncompatibilityKind::NameMismatch {
                            writer_name: wn.fullname(None),
                            reader_name: rn.fullname(None),
                        },
                    );
                    return;
                }
                if ws != rs {
                    self.report(
                        path,
                        IncompatibilityKind::FixedSizeMismatch {
                            writer_size_bytes: ws,
                            reader_size_bytes: rs,
                        },
                    );
                }
            }
            (Physical::Array(wi), Physical::Array(ri)) => {
                path.push(Segment::Items);
                self.check(wi, ri, path);
                path.pop();
            }
            (Physical::Map(wv), Physical::Map(rv)) => {
                path.push(Segment::Values);
                self.check(wv, rv, path);
                path.pop();
            }
            (wp, rp) => {
                if !primitive_promotes(&wp, &rp) {
                    self.type_mismatch(path, w, r);
                }
            }
        }
    }

    /// Reports why the reader union `reader` cannot read `branch` (a branch
    /// of `writer`, or `writer` itself): the details of the reader branch of
    /// the same named type when there is one, else the type change.
    fn explain_unreadable(
        &mut self,
        branch: &'s Schema,
        writer: &'s Schema,
        reader: &'s Schema,
        path: &mut Vec<Segment>,
    ) {
        let branch = self.writer_names.deref(branch).unwrap_or(branch);
        if let Schema::Union(reader_union) = reader
            && let Some(branch_name) = named_type_name(branch)
        {
            let same = reader_union.variants().iter().find(|candidate| {
                self.reader_names
                    .deref(candidate)
                    .and_then(named_type_name)
                    .is_some_and(|n| n.name == branch_name.name)
            });
            if let Some(same) = same {
                self.check(branch, same, path);
                return;
            }
        }
        self.type_mismatch(path, writer, reader);
    }

    fn check_records(&mut self, writer: &'s RecordSchema, reader: &'s RecordSchema, path: &mut Vec<Segment>) {
        if !names_match(&writer.name, &reader.name, &reader.aliases) {
            self.report(
                path,
                IncompatibilityKind::NameMismatch {
                    writer_name: writer.name.fullname(None),
                    reader_name: reader.name.fullname(None),
                },
            );
            return;
        }
        let pair = (writer.name.fullname(None), reader.name.fullname(None));
        if !self.in_progress.insert(pair.clone()) {
            return;
        }
        for reader_field in &reader.fields {
            let writer_field = writer
                .lookup
                .get(&reader_field.name)
                .or_else(|| {
                    reader_field
                        .aliases
                        .iter()
                        .flatten()
                        .find_map(|alias| writer.lookup.get(alias))
                })
                .and_then(|&position| writer.fields.get(position));
            path.push(Segment::Field(reader_field.name.clone()));
            match writer_field {
                Some(writer_field) => self.check(&writer_field.schema, &reader_field.schema, path),
                None => {
                    if reader_field.default.is_none() {
                        self.report(path, IncompatibilityKind::ReaderFieldMissingDefault);
                    }
                }
            }
            path.pop();
        }
        self.in_progress.remove(&pair);
    }
}

/// Whether a writer union branch and a non-union reader are the same named
/// type (so the branch's details are worth reporting).
fn same_named_type(writer_names: &NameTable<'_>, branch: &Schema, reader: &Schema) -> bool {
    let branch = writer_names.deref(branch).unwrap_or(branch);
    match (named_type_name(branch), named_type_name(reader)) {
        (Some(b), Some(r)) => b.name == r.name,
        _ => false,
    }
}

/// Primitive resolution: equal types, or one of Avro's promotions.
fn primitive_promotes(writer: &Physical<'_>, reader: &Physical<'_>) -> bool {
    use Physical as P;
    matches!(
        (writer, reader),
        (P::Null, P::Null)
            | (P::Boolean, P::Boolean)
            | (P::Int, P::Int | P::Long | P::Float | P::Double)
            | (P::Long, P::Long | P::Float | P::Double)
            | (P::Float, P::Float | P::Double)
            | (P::Double, P::Double)
            | (P::String, P::String | P::Bytes)
            | (P::Bytes, P::Bytes | P::String)
    )
}

#[cfg(test)]
mod tests;
