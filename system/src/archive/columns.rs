//! Clean records as Parquet columns, and back.
//!
//! The columns come from the record's Avro writer schema, field by field
//! (so a schema evolution shows up as a new column, never as a hand-kept
//! list going stale), followed by where the record came from:
//!
//! | Avro | Arrow / Parquet |
//! |---|---|
//! | `boolean`, `int`, `long`, `float`, `double` | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `enum` | `Utf8` |
//! | `bytes` | `Binary` |
//! | `long` + `timestamp-millis` / `timestamp-micros` | `Timestamp(ms / µs, "UTC")` |
//! | `["null", T]` (either order) | `T`, nullable |
//! | `array` of any of the above | `List<T>` |
//!
//! then `kafka_partition` (int32), `kafka_offset` (int64), `kafka_key`
//! (binary), `schema_id` (int32) and `raw_value` (binary, nullable). A
//! record's columns re-encoded with its writer schema give back the bytes
//! the topic held; where they would not (an Avro encoding that is valid but
//! not canonical), `raw_value` keeps the original bytes, so a replay is
//! always byte-exact. The writer schema and its id are in the file's
//! key-value metadata. Other Avro types (maps, nested records, fixed,
//! decimals) are refused with the field named.

use crate::codec::{from_wire, to_wire};
use apache_avro::Schema;
use apache_avro::types::Value;
use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    ListBuilder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// Key-value metadata key of the writer schema (Avro JSON).
pub const META_WRITER_SCHEMA: &str = "soilstream.avro.writer_schema";
/// Key-value metadata key of the writer schema's registry id.
pub const META_SCHEMA_ID: &str = "soilstream.avro.schema_id";
/// Key-value metadata key of the topic the rows came from.
pub const META_TOPIC: &str = "soilstream.kafka.topic";

/// Names of the columns appended after the record's fields.
pub const SOURCE_COLUMNS: [&str; 5] = [
    "kafka_partition",
    "kafka_offset",
    "kafka_key",
    "schema_id",
    "raw_value",
];

/// The time zone of timestamp columns.
const UTC: &str = "UTC";

/// Why a schema, record or file cannot be archived.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnsError {
    /// The writer schema has a shape the archive does not map.
    #[error("schema id {schema_id}: {detail}")]
    UnsupportedSchema {
        /// Registry id of the schema.
        schema_id: u32,
        /// What is not supported, naming the field.
        detail: String,
    },
    /// A record does not decode with its writer schema.
    #[error("offset {offset}: {detail}")]
    BadRecord {
        /// Kafka offset of the record.
        offset: i64,
        /// What is wrong.
        detail: String,
    },
    /// Parquet or Arrow refused the data (a bug, or a damaged file).
    #[error("parquet: {0}")]
    Parquet(String),
}

/// The Arrow shape of one Avro field type.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Utf8,
    Binary,
    Enum(Vec<String>),
    TimestampMillis,
    TimestampMicros,
    List(Box<Kind>),
}

impl Kind {
    fn from_avro(schema: &Schema, in_list: bool) -> Result<Kind, String> {
        Ok(match schema {
            Schema::Boolean => Kind::Boolean,
            Schema::Int => Kind::Int,
            Schema::Long => Kind::Long,
            Schema::Float => Kind::Float,
            Schema::Double => Kind::Double,
            Schema::String => Kind::Utf8,
            Schema::Bytes => Kind::Binary,
            Schema::Enum(e) => Kind::Enum(e.symbols.clone()),
            Schema::TimestampMillis => Kind::TimestampMillis,
            Schema::TimestampMicros => Kind::TimestampMicros,
            Schema::Array(a) if !in_list => Kind::List(Box::new(Kind::from_avro(&a.items, true)?)),
            other => {
                return Err(format!(
                    "type {other:?} is not archived (supported: primitives, enums, timestamps, [null, T] and arrays of those)"
                ));
            }
        })
    }

    fn data_type(&self) -> DataType {
        match self {
            Kind::Boolean => DataType::Boolean,
            Kind::Int => DataType::Int32,
            Kind::Long => DataType::Int64,
            Kind::Float => DataType::Float32,
            Kind::Double => DataType::Float64,
            Kind::Utf8 | Kind::Enum(_) => DataType::Utf8,
            Kind::Binary => DataType::Binary,
            Kind::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            Kind::TimestampMicros => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            Kind::List(item) => DataType::List(Arc::new(Field::new("item", item.data_type(), false))),
        }
    }
}

/// One column from one Avro field.
#[derive(Debug, Clone)]
struct FieldColumn {
    name: String,
    kind: Kind,
    /// For `["null", T]`: which union branch is null (0 or 1).
    null_branch: Option<usize>,
}

/// A writer schema, mapped to columns.
#[derive(Debug, Clone)]
pub struct ArchiveSchema {
    schema_id: u32,
    schema_text: String,
    avro: Schema,
    fields: Vec<FieldColumn>,
    event_time_index: usize,
    arrow: SchemaRef,
}

impl ArchiveSchema {
    /// Maps the writer schema `schema_text` (registry id `schema_id`);
    /// `event_time_field` names the field whose value is the event time
    /// (`long` ms, or a `timestamp-millis` / `timestamp-micros` long).
    pub fn new(schema_id: u32, schema_text: &str, event_time_field: &str) -> Result<Self, ColumnsError> {
        let unsupported = |detail: String| ColumnsError::UnsupportedSchema { schema_id, detail };
        let avro = Schema::parse_str(schema_text).map_err(|e| unsupported(format!("not Avro: {e}")))?;
        let Schema::Record(record) = &avro else {
            return Err(unsupported("the top level is not a record".into()));
        };
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            if SOURCE_COLUMNS.contains(&field.name.as_str()) {
                return Err(unsupported(format!(
                    "field `{}` collides with a column the archive adds",
                    field.name
                )));
            }
            let (inner, null_branch) = match &field.schema {
                Schema::Union(union) => {
                    let variants = union.variants();
                    match variants {
                        [Schema::Null, t] => (t, Some(0)),
                        [t, Schema::Null] => (t, Some(1)),
                        _ => {
                            return Err(unsupported(format!(
                                "field `{}`: only unions of null and one type are archived",
                                field.name
                            )));
                        }
                    }
                }
                other => (other, None),
            };
            let kind = Kind::from_avro(inner, false)
                .map_err(|e| unsupported(format!("field `{}`: {e}", field.name)))?;
            fields.push(FieldColumn {
                name: field.name.clone(),
                kind,
                null_branch,
            });
        }
        let event_time_index = fields
            .iter()
            .position(|f| f.name == event_time_field)
            .ok_or_else(|| unsupported(format!("no event-time field `{event_time_field}`")))?;
        let event_time = &fields[event_time_index];
        if event_time.null_branch.is_some()
            || !matches!(
                event_time.kind,
                Kind::Long | Kind::TimestampMillis | Kind::TimestampMicros
            )
        {
            return Err(unsupported(format!(
                "event-time field `{event_time_field}` must be a non-null long (ms) or timestamp"
            )));
        }
        let mut arrow_fields: Vec<Field> = fields
            .iter()
            .map(|f| Field::new(&f.name, f.kind.data_type(), f.null_branch.is_some()))
            .collect();
        arrow_fields.push(Field::new("kafka_partition", DataType::Int32, false));
        arrow_fields.push(Field::new("kafka_offset", DataType::Int64, false));
        arrow_fields.push(Field::new("kafka_key", DataType::Binary, true));
        arrow_fields.push(Field::new("schema_id", DataType::Int32, false));
        arrow_fields.push(Field::new("raw_value", DataType::Binary, true));
        Ok(Self {
            schema_id,
            schema_text: schema_text.to_string(),
            avro,
            fields,
            event_time_index,
            arrow: Arc::new(ArrowSchema::new(arrow_fields)),
        })
    }

    /// The text of field `name` of `row` (for identities and reports);
    /// `None` when the schema has no such field or the value is null.
    pub fn field_text(&self, row: &ArchiveRow, name: &str) -> Option<String> {
        let index = self.fields.iter().position(|f| f.name == name)?;
        match row.cells.get(index)? {
            Cell::Null => None,
            Cell::Boolean(v) => Some(v.to_string()),
            Cell::Int(v) => Some(v.to_string()),
            Cell::Long(v) | Cell::TimestampMillis(v) | Cell::TimestampMicros(v) => Some(v.to_string()),
            Cell::Float(v) => Some(v.to_string()),
            Cell::Double(v) => Some(v.to_string()),
            Cell::Utf8(v) => Some(v.clone()),
            Cell::Binary(v) => Some(v.iter().map(|b| format!("{b:02x}")).collect()),
            Cell::List(items) => Some(format!("{items:?}")),
        }
    }

    /// The registry id of the writer schema.
    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// The Arrow schema of the files.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Decodes one record of the clean topic into a row. `value` is the
    /// Confluent wire format; its schema id must be this schema's.
    pub fn row(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<ArchiveRow, ColumnsError> {
        let bad = |detail: String| ColumnsError::BadRecord { offset, detail };
        let (schema_id, body) = from_wire(value).map_err(|e| bad(e.to_string()))?;
        assert_eq!(
            schema_id, self.schema_id,
            "rows are decoded with their own writer schema"
        );
        let mut cursor = body;
        let decoded = apache_avro::from_avro_datum(&self.avro, &mut cursor, None)
            .map_err(|e| bad(format!("undecodable: {e}")))?;
        if !cursor.is_empty() {
            return Err(bad(format!("{} trailing bytes after the record", cursor.len())));
        }
        let Value::Record(pairs) = decoded else {
            return Err(bad("not a record".into()));
        };
        if pairs.len() != self.fields.len() {
            return Err(bad("field count differs from the writer schema".into()));
        }
        let mut values = Vec::with_capacity(pairs.len());
        for ((_, value), field) in pairs.into_iter().zip(&self.fields) {
            values.push(
                self.cell(field, value)
                    .map_err(|e| bad(format!("field `{}`: {e}", field.name)))?,
            );
        }
        let event_time_ms = match &values[self.event_time_index] {
            Cell::Long(v) | Cell::TimestampMillis(v) => *v,
            Cell::TimestampMicros(v) => v.div_euclid(1_000),
            _ => unreachable!("the event-time column was checked at schema build"),
        };
        let row = ArchiveRow {
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            schema_id,
            cells: values,
            raw_value: None,
            event_time_ms,
        };
        // Keep the original bytes only where the columns would not give them back.
        let reencoded = self.wire_bytes(&row)?;
        Ok(if reencoded == value {
            row
        } else {
            ArchiveRow {
                raw_value: Some(value.to_vec()),
                ..row
            }
        })
    }

    fn cell(&self, field: &FieldColumn, value: Value) -> Result<Cell, String> {
        let value = match (field.null_branch, value) {
            (Some(_), Value::Union(_, inner)) => match *inner {
                Value::Null => return Ok(Cell::Null),
                v => v,
            },
            (Some(_), Value::Null) => return Ok(Cell::Null),
            (None, v) => v,
            (Some(_), v) => v,
        };
        Cell::from_value(&field.kind, value)
    }

    /// The record's Confluent wire bytes, as the topic held them.
    pub fn wire_bytes(&self, row: &ArchiveRow) -> Result<Vec<u8>, ColumnsError> {
        if let Some(raw) = &row.raw_value {
            return Ok(raw.clone());
        }
        let pairs = self
            .fields
            .iter()
            .zip(&row.cells)
            .map(|(field, cell)| {
                let value = cell.to_value(&field.kind);
                let value = match (field.null_branch, cell) {
                    (Some(branch), Cell::Null) => Value::Union(branch as u32, Box::new(Value::Null)),
                    (Some(branch), _) => Value::Union(1 - branch as u32, Box::new(value)),
                    (None, _) => value,
                };
                (field.name.clone(), value)
            })
            .collect();
        let body = apache_avro::to_avro_datum(&self.avro, Value::Record(pairs)).map_err(|e| {
            ColumnsError::BadRecord {
                offset: row.offset,
                detail: format!("does not re-encode: {e}"),
            }
        })?;
        Ok(to_wire(self.schema_id, &body))
    }

    /// Encodes rows (one writer schema, offset order) as a Parquet file,
    /// Snappy-compressed, the writer schema in its metadata.
    pub fn encode(&self, topic: &str, rows: &[ArchiveRow]) -> Result<Vec<u8>, ColumnsError> {
        let parquet_error = |e: &dyn std::fmt::Display| ColumnsError::Parquet(e.to_string());
        debug_assert!(
            rows.windows(2).all(|w| w[0].offset < w[1].offset),
            "rows are in offset order"
        );
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.arrow.fields().len());
        for (index, field) in self.fields.iter().enumerate() {
            let mut builder = ColumnBuilder::new(&field.kind, rows.len());
            for row in rows {
                assert_eq!(row.schema_id, self.schema_id, "a file holds one writer schema");
                builder.append(&row.cells[index]);
            }
            columns.push(builder.finish());
        }
        columns.push(Arc::new(rows.iter().map(|r| r.partition).collect::<Int32Array>()));
        columns.push(Arc::new(rows.iter().map(|r| r.offset).collect::<Int64Array>()));
        columns.push(Arc::new(
            rows.iter().map(|r| r.key.as_deref()).collect::<BinaryArray>(),
        ));
        columns.push(Arc::new(
            rows.iter().map(|r| r.schema_id as i32).collect::<Int32Array>(),
        ));
        columns.push(Arc::new(
            rows.iter()
                .map(|r| r.raw_value.as_deref())
                .collect::<BinaryArray>(),
        ));
        let batch = RecordBatch::try_new(self.arrow.clone(), columns).map_err(|e| parquet_error(&e))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![
                KeyValue::new(META_WRITER_SCHEMA.to_string(), self.schema_text.clone()),
                KeyValue::new(META_SCHEMA_ID.to_string(), self.schema_id.to_string()),
                KeyValue::new(META_TOPIC.to_string(), topic.to_string()),
            ]))
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), self.arrow.clone(), Some(properties))
            .map_err(|e| parquet_error(&e))?;
        writer.write(&batch).map_err(|e| parquet_error(&e))?;
        writer.into_inner().map_err(|e| parquet_error(&e))
    }
}

/// One archived record.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveRow {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka key.
    pub key: Option<Vec<u8>>,
    /// Writer schema id.
    pub schema_id: u32,
    /// The record's field values, in schema order.
    cells: Vec<Cell>,
    /// The original bytes, when the columns do not re-encode to them.
    pub raw_value: Option<Vec<u8>>,
    /// The event time, ms since the Unix epoch.
    pub event_time_ms: i64,
}

impl ArchiveRow {
    /// Approximate bytes the row holds in memory (for rotation by size).
    pub fn approx_bytes(&self) -> u64 {
        let cells: usize = self.cells.iter().map(Cell::approx_bytes).sum();
        (64 + cells + self.key.as_ref().map_or(0, Vec::len) + self.raw_value.as_ref().map_or(0, Vec::len))
            as u64
    }
}

/// One field value of a row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Utf8(String),
    Binary(Vec<u8>),
    TimestampMillis(i64),
    TimestampMicros(i64),
    List(Vec<Cell>),
}

impl Cell {
    fn from_value(kind: &Kind, value: Value) -> Result<Cell, String> {
        Ok(match (kind, value) {
            (Kind::Boolean, Value::Boolean(v)) => Cell::Boolean(v),
            (Kind::Int, Value::Int(v)) => Cell::Int(v),
            (Kind::Long, Value::Long(v)) => Cell::Long(v),
            (Kind::Float, Value::Float(v)) => Cell::Float(v),
            (Kind::Double, Value::Double(v)) => Cell::Double(v),
            (Kind::Utf8, Value::String(v)) => Cell::Utf8(v),
            (Kind::Binary, Value::Bytes(v)) => Cell::Binary(v),
            (Kind::Enum(_), Value::Enum(_, symbol)) => Cell::Utf8(symbol),
            (Kind::TimestampMillis, Value::TimestampMillis(v)) => Cell::TimestampMillis(v),
            (Kind::TimestampMicros, Value::TimestampMicros(v)) => Cell::TimestampMicros(v),
            (Kind::List(item), Value::Array(items)) => Cell::List(
                items
                    .into_iter()
                    .map(|v| Cell::from_value(item, v))
                    .collect::<Result<_, _>>()?,
            ),
            (kind, value) => return Err(format!("value {value:?} does not fit {kind:?}")),
        })
    }

    fn to_value(&self, kind: &Kind) -> Value {
        match (self, kind) {
            (Cell::Null, _) => Value::Null,
            (Cell::Boolean(v), _) => Value::Boolean(*v),
            (Cell::Int(v), _) => Value::Int(*v),
            (Cell::Long(v), _) => Value::Long(*v),
            (Cell::Float(v), _) => Value::Float(*v),
            (Cell::Double(v), _) => Value::Double(*v),
            (Cell::Utf8(v), Kind::Enum(symbols)) => {
                let index = symbols.iter().position(|s| s == v).unwrap_or(0);
                Value::Enum(index as u32, v.clone())
            }
            (Cell::Utf8(v), _) => Value::String(v.clone()),
            (Cell::Binary(v), _) => Value::Bytes(v.clone()),
            (Cell::TimestampMillis(v), _) => Value::TimestampMillis(*v),
            (Cell::TimestampMicros(v), _) => Value::TimestampMicros(*v),
            (Cell::List(items), Kind::List(item)) => {
                Value::Array(items.iter().map(|c| c.to_value(item)).collect())
            }
            (Cell::List(items), _) => Value::Array(items.iter().map(|c| c.to_value(kind)).collect()),
        }
    }

    fn approx_bytes(&self) -> usize {
        match self {
            Cell::Utf8(s) => 24 + s.len(),
            Cell::Binary(b) => 24 + b.len(),
            Cell::List(items) => 24 + items.iter().map(Cell::approx_bytes).sum::<usize>(),
            _ => 16,
        }
    }
}

/// Builds one Arrow column.
enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    TimestampMillis(TimestampMillisecondBuilder),
    TimestampMicros(TimestampMicrosecondBuilder),
    List(ListBuilder<Box<ColumnBuilder>>),
}

impl ColumnBuilder {
    fn new(kind: &Kind, capacity: usize) -> Self {
        match kind {
            Kind::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            Kind::Int => Self::Int(Int32Builder::with_capacity(capacity)),
            Kind::Long => Self::Long(Int64Builder::with_capacity(capacity)),
            Kind::Float => Self::Float(Float32Builder::with_capacity(capacity)),
            Kind::Double => Self::Double(Float64Builder::with_capacity(capacity)),
            Kind::Utf8 | Kind::Enum(_) => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
            Kind::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 8)),
            Kind::TimestampMillis => {
                Self::TimestampMillis(TimestampMillisecondBuilder::with_capacity(capacity).with_timezone(UTC))
            }
            Kind::TimestampMicros => {
                Self::TimestampMicros(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC))
            }
            Kind::List(item) => {
                let field = Field::new("item", item.data_type(), false);
                Self::List(
                    ListBuilder::new(Box::new(ColumnBuilder::new(item, capacity)))
                        .with_field(Arc::new(field)),
                )
            }
        }
    }

    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (Self::Boolean(b), Cell::Boolean(v)) => b.append_value(*v),
            (Self::Int(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Long(b), Cell::Long(v)) => b.append_value(*v),
            (Self::Float(b), Cell::Float(v)) => b.append_value(*v),
            (Self::Double(b), Cell::Double(v)) => b.append_value(*v),
            (Self::Utf8(b), Cell::Utf8(v)) => b.append_value(v),
            (Self::Binary(b), Cell::Binary(v)) => b.append_value(v),
            (Self::TimestampMillis(b), Cell::TimestampMillis(v)) => b.append_value(*v),
            (Self::TimestampMicros(b), Cell::TimestampMicros(v)) => b.append_value(*v),
            (Self::List(b), Cell::List(items)) => {
                for item in items {
                    b.values().append(item);
                }
                b.append(true);
            }
            (this, Cell::Null) => this.append_null(),
            (_, cell) => unreachable!("cells were checked against their kind on decode: {cell:?}"),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Long(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::TimestampMillis(b) => b.append_null(),
            Self::TimestampMicros(b) => b.append_null(),
            Self::List(b) => b.append(false),
        }
    }

    fn inner(&mut self) -> &mut dyn ArrayBuilder {
        match self {
            Self::Boolean(b) => b,
            Self::Int(b) => b,
            Self::Long(b) => b,
            Self::Float(b) => b,
            Self::Double(b) => b,
            Self::Utf8(b) => b,
            Self::Binary(b) => b,
            Self::TimestampMillis(b) => b,
            Self::TimestampMicros(b) => b,
            Self::List(b) => b,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        self.inner().finish()
    }
}

impl ArrayBuilder for Box<ColumnBuilder> {
    fn len(&self) -> usize {
        match &**self {
            ColumnBuilder::Boolean(b) => b.len(),
            ColumnBuilder::Int(b) => b.len(),
            ColumnBuilder::Long(b) => b.len(),
            ColumnBuilder::Float(b) => b.len(),
            ColumnBuilder::Double(b) => b.len(),
            ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::TimestampMillis(b) => b.len(),
            ColumnBuilder::TimestampMicros(b) => b.len(),
            ColumnBuilder::List(b) => b.len(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        self.inner().finish()
    }

    fn finish_cloned(&self) -> ArrayRef {
        match &**self {
            ColumnBuilder::Boolean(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Int(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Long(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Float(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Double(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::TimestampMillis(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::TimestampMicros(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::List(b) => Arc::new(b.finish_cloned()),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_box_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// A Parquet file of the archive, read back.
#[derive(Debug, Clone)]
pub struct ArchiveFile {
    /// The writer schema it was written with.
    pub schema: ArchiveSchema,
    /// Its rows, in file order.
    pub rows: Vec<ArchiveRow>,
}

/// Reads an archive file (`bytes`), with `event_time_field` as when it was
/// written. `path` only names the file in errors.
pub fn decode_file(path: &str, bytes: Vec<u8>, event_time_field: &str) -> Result<ArchiveFile, ColumnsError> {
    let err = |detail: String| ColumnsError::Parquet(format!("{path}: {detail}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| err(e.to_string()))?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let meta = |key: &str| {
        metadata
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| {
                err(format!(
                    "no `{key}` in the key-value metadata (not written by soilstream archive?)"
                ))
            })
    };
    let schema_id: u32 = meta(META_SCHEMA_ID)?
        .parse()
        .map_err(|_| err("bad schema id".into()))?;
    let schema = ArchiveSchema::new(schema_id, &meta(META_WRITER_SCHEMA)?, event_time_field)
        .map_err(|e| err(e.to_string()))?;
    let reader = builder.build().map_err(|e| err(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        if batch.schema().fields() != schema.arrow.fields() {
            return Err(err("columns differ from those its writer schema maps to".into()));
        }
        let n = schema.fields.len();
        let partitions = column::<Int32Array>(&batch, n, path)?;
        let offsets = column::<Int64Array>(&batch, n + 1, path)?;
        let keys = column::<BinaryArray>(&batch, n + 2, path)?;
        let ids = column::<Int32Array>(&batch, n + 3, path)?;
        let raws = column::<BinaryArray>(&batch, n + 4, path)?;
        for i in 0..batch.num_rows() {
            let cells: Vec<Cell> = schema
                .fields
                .iter()
                .enumerate()
                .map(|(c, f)| read_cell(batch.column(c).as_ref(), &f.kind, i))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let event_time_ms = match &cells[schema.event_time_index] {
                Cell::Long(v) | Cell::TimestampMillis(v) => *v,
                Cell::TimestampMicros(v) => v.div_euclid(1_000),
                _ => return Err(err("null event time".into())),
            };
            rows.push(ArchiveRow {
                partition: partitions.value(i),
                offset: offsets.value(i),
                key: (!keys.is_null(i)).then(|| keys.value(i).to_vec()),
                schema_id: ids.value(i) as u32,
                cells,
                raw_value: (!raws.is_null(i)).then(|| raws.value(i).to_vec()),
                event_time_ms,
            });
        }
    }
    Ok(ArchiveFile { schema, rows })
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, index: usize, path: &str) -> Result<&'a T, ColumnsError> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ColumnsError::Parquet(format!("{path}: column {index} has an unexpected type")))
}

fn read_cell(array: &dyn Array, kind: &Kind, i: usize) -> Result<Cell, String> {
    if array.is_null(i) {
        return Ok(Cell::Null);
    }
    fn typed<T: 'static>(array: &dyn Array) -> Result<&T, String> {
        array
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| "a column has an unexpected type".to_string())
    }
    Ok(match kind {
        Kind::Boolean => Cell::Boolean(typed::<BooleanArray>(array)?.value(i)),
        Kind::Int => Cell::Int(typed::<Int32Array>(array)?.value(i)),
        Kind::Long => Cell::Long(typed::<Int64Array>(array)?.value(i)),
        Kind::Float => Cell::Float(typed::<Float32Array>(array)?.value(i)),
        Kind::Double => Cell::Double(typed::<Float64Array>(array)?.value(i)),
        Kind::Utf8 | Kind::Enum(_) => Cell::Utf8(typed::<StringArray>(array)?.value(i).to_string()),
        Kind::Binary => Cell::Binary(typed::<BinaryArray>(array)?.value(i).to_vec()),
        Kind::TimestampMillis => Cell::TimestampMillis(typed::<TimestampMillisecondArray>(array)?.value(i)),
        Kind::TimestampMicros => Cell::TimestampMicros(typed::<TimestampMicrosecondArray>(array)?.value(i)),
        Kind::List(item) => {
            let values = typed::<ListArray>(array)?.value(i);
            (0..values.len())
                .map(|j| read_cell(values.as_ref(), item, j))
                .collect::<Result<Vec<_>, _>>()
                .map(Cell::List)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN_SCHEMA: &str = include_str!("../../../schemas/soil_reading_clean.avsc");

    fn clean_value(seq: i64, ec: Option<f64>, flags: &[&str]) -> Vec<u8> {
        let schema = Schema::parse_str(CLEAN_SCHEMA).unwrap();
        let union = |v: Option<f64>| match v {
            Some(x) => Value::Union(1, Box::new(Value::Double(x))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let record = Value::Record(vec![
            ("gateway_id".into(), Value::String("gw-1".into())),
            ("sensor_id".into(), Value::String("s1".into())),
            ("seq".into(), Value::Long(seq)),
            (
                "event_time".into(),
                Value::TimestampMillis(1_777_593_600_000 + seq * 60_000),
            ),
            ("moisture_pct".into(), Value::Double(23.5)),
            ("soil_temp_c".into(), union((seq % 4 != 2).then_some(11.25))),
            ("bulk_ec_ds_m".into(), union(ec)),
            ("depth_cm".into(), Value::Int(30)),
            ("battery_v".into(), union(Some(3.61))),
            (
                "flags".into(),
                Value::Array(flags.iter().map(|f| Value::String((*f).into())).collect()),
            ),
            ("lookahead_complete".into(), Value::Boolean(true)),
            ("source_schema_id".into(), Value::Int(1)),
            (
                "source_flag".into(),
                if seq % 7 == 0 {
                    Value::Union(1, Box::new(Value::String("D03,D05".into())))
                } else {
                    Value::Union(0, Box::new(Value::Null))
                },
            ),
        ]);
        to_wire(7, &apache_avro::to_avro_datum(&schema, record).unwrap())
    }

    #[test]
    fn the_clean_schema_round_trips_byte_exact_through_parquet() {
        let schema = ArchiveSchema::new(7, CLEAN_SCHEMA, "event_time").unwrap();
        let values: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                clean_value(
                    i,
                    (i % 3 != 0).then_some(0.4),
                    if i % 5 == 0 { &["D06", "STUCK"] } else { &[] },
                )
            })
            .collect();
        let rows: Vec<ArchiveRow> = values
            .iter()
            .enumerate()
            .map(|(i, v)| schema.row(2, 100 + i as i64, Some(b"s1"), v).unwrap())
            .collect();
        assert!(
            rows.iter().all(|r| r.raw_value.is_none()),
            "canonical Avro needs no raw copy"
        );
        assert_eq!(rows[3].event_time_ms, 1_777_593_600_000 + 3 * 60_000);
        let bytes = schema.encode("soil-moisture-clean", &rows).unwrap();
        let file = decode_file("x.parquet", bytes, "event_time").unwrap();
        assert_eq!(file.rows, rows);
        for (row, original) in file.rows.iter().zip(&values) {
            assert_eq!(&file.schema.wire_bytes(row).unwrap(), original);
        }
    }

    #[test]
    fn a_non_canonical_encoding_keeps_its_raw_bytes() {
        let schema = ArchiveSchema::new(7, CLEAN_SCHEMA, "event_time").unwrap();
        let mut value = clean_value(1, None, &[]);
        // The last field (source_flag = null, union branch 0 as the byte
        // 0x00) re-written as a two-byte varint: valid Avro, not canonical.
        assert_eq!(value.last(), Some(&0x00));
        value.pop();
        value.extend_from_slice(&[0x80, 0x00]);
        let row = schema.row(0, 5, None, &value).unwrap();
        assert_eq!(row.raw_value.as_deref(), Some(&value[..]));
        assert_eq!(schema.wire_bytes(&row).unwrap(), value);
        let file = decode_file(
            "x",
            schema.encode("t", std::slice::from_ref(&row)).unwrap(),
            "event_time",
        )
        .unwrap();
        assert_eq!(file.schema.wire_bytes(&file.rows[0]).unwrap(), value);
    }

    #[test]
    fn unsupported_schemas_name_the_field() {
        let nested = r#"{"type":"record","name":"r","fields":[{"name":"t","type":"long"},{"name":"m","type":{"type":"map","values":"long"}}]}"#;
        let err = ArchiveSchema::new(1, nested, "t").unwrap_err().to_string();
        assert!(err.contains("field `m`"), "{err}");
        let collide = r#"{"type":"record","name":"r","fields":[{"name":"t","type":"long"},{"name":"kafka_offset","type":"long"}]}"#;
        assert!(
            ArchiveSchema::new(1, collide, "t")
                .unwrap_err()
                .to_string()
                .contains("collides")
        );
        let no_time = r#"{"type":"record","name":"r","fields":[{"name":"t","type":"string"}]}"#;
        assert!(ArchiveSchema::new(1, no_time, "t").is_err());
        assert!(
            ArchiveSchema::new(1, no_time, "event_time")
                .unwrap_err()
                .to_string()
                .contains("no event-time field")
        );
    }

    #[test]
    fn garbage_files_are_errors_not_panics() {
        for bytes in [
            vec![],
            b"PAR1".to_vec(),
            vec![0u8; 100],
            b"PAR1\0\0\0\0PAR1".to_vec(),
        ] {
            assert!(decode_file("bad.parquet", bytes, "event_time").is_err());
        }
    }
}
