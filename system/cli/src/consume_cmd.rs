//! `soilstream consume`: prints the readings of a topic, decoded, with where
//! they are (topic, partition, offset) and both of their times (the Kafka
//! record timestamp and the reading's event time), flagging any difference.
//!
//! A record that cannot be decoded (not the Confluent wire format, an Avro
//! body that does not decode) is reported with its partition, offset and the
//! reason, and consumption goes on.

use anyhow::Context;
use serde_json::json;
use soilstream::codec::ReadingCodec;
use soilstream::decode::ReadingDecoder;
use soilstream::model::Reading;
use soilstream::registry::{HttpRegistryClient, HttpRegistryClientConfig, TcpConnector};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer};
use soilstream::transport::{ConsumeError, ConsumedRecord, LogConsumer, StartOffset, TimestampKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest single wait for records, in ms (keeps Ctrl-C and the idle timer
/// responsive).
const POLL_SLICE_MS: u64 = 200;

/// Arguments of `soilstream consume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(long, env = "SOILSTREAM_BROKERS", value_name = "ADDR")]
    brokers: String,
    /// Topic to read (all of its partitions).
    #[arg(long, value_name = "T")]
    topic: String,
    /// Start at the oldest retained record (default: only new records).
    #[arg(long)]
    from_beginning: bool,
    /// Exit after printing this many records (undecodable ones included).
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
    /// Exit once no record arrived for this many ms.
    #[arg(long, value_name = "MS")]
    idle_exit_ms: Option<u64>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// A librdkafka property, e.g. `-X security.protocol=SSL` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = crate::args::parse_kafka_property)]
    properties: Vec<(String, String)>,
    /// Schema registry URL: writer schemas are fetched by id (and cached).
    /// Without it every value is decoded with the shipped v1 schema.
    #[arg(long, env = "SOILSTREAM_REGISTRY_URL", value_name = "URL")]
    registry: Option<String>,
}

/// A decoded value: a reading (raw and quarantine topics), or any other
/// soilstream record (clean readings, flag revisions, aggregates, alerts)
/// as JSON.
#[derive(Debug, Clone, PartialEq)]
enum Decoded {
    /// A soil reading and its writer schema id.
    Reading(u32, Reading),
    /// Another record: writer schema id, its full name, its fields.
    Record(u32, String, serde_json::Value),
}

/// Decodes the values of one topic: readings with the reading decoder,
/// other records with their writer schema (from the registry, or the
/// shipped schema of a qaqc output topic of that name).
struct ValueDecoder {
    readings: ReadingDecoder,
    registry: Option<Rc<HttpRegistryClient<TcpConnector>>>,
    writers: std::cell::RefCell<BTreeMap<u32, Result<apache_avro::Schema, String>>>,
    /// Without a registry: the shipped schema of this topic, if it is a
    /// qaqc output topic.
    shipped: Option<apache_avro::Schema>,
}

/// The shipped schema of a qaqc output topic with its default name.
fn shipped_schema(topic: &str) -> Option<apache_avro::Schema> {
    use soilstream::qaqc::records::{AGGREGATE_SCHEMA, ALERT_SCHEMA, CLEAN_SCHEMA, FLAG_REVISION_SCHEMA};
    let names = soilstream::qaqc::config::TopicNames::default();
    let text = if topic == names.clean {
        CLEAN_SCHEMA
    } else if topic == names.flags {
        FLAG_REVISION_SCHEMA
    } else if topic == names.aggregates {
        AGGREGATE_SCHEMA
    } else if topic == names.alerts {
        ALERT_SCHEMA
    } else {
        return None;
    };
    apache_avro::Schema::parse_str(text).ok()
}

fn is_reading_schema(schema: &apache_avro::Schema) -> bool {
    matches!(schema, apache_avro::Schema::Record(r) if r.name.fullname(None) == "io.soilstream.SoilReading")
}

fn generic(id: u32, schema: &apache_avro::Schema, body: &[u8]) -> Result<Decoded, String> {
    let mut cursor = body;
    let value = apache_avro::from_avro_datum(schema, &mut cursor, None)
        .map_err(|e| format!("schema id {id}: {e}"))?;
    if !cursor.is_empty() {
        return Err(format!("schema id {id}: {} trailing bytes", cursor.len()));
    }
    let name = match schema {
        apache_avro::Schema::Record(r) => r.name.fullname(None),
        other => format!("{other:?}"),
    };
    let json = serde_json::Value::try_from(value).map_err(|e| format!("schema id {id}: {e}"))?;
    Ok(Decoded::Record(id, name, json))
}

impl ValueDecoder {
    async fn decode(&self, value: Option<&[u8]>) -> Result<Decoded, String> {
        let Some(bytes) = value else {
            return Err("no value (tombstone)".into());
        };
        let (id, body) = soilstream::codec::from_wire(bytes).map_err(|e| e.to_string())?;
        let writer = match &self.registry {
            Some(registry) => {
                let cached = self.writers.borrow().get(&id).cloned();
                match cached {
                    Some(writer) => Some(writer?),
                    None => {
                        use soilstream::registry::SchemaRegistry;
                        let fetched = match registry.schema_by_id(id).await {
                            Ok(text) => apache_avro::Schema::parse_str(&text).map_err(|e| e.to_string()),
                            Err(soilstream::registry::RegistryError::SchemaNotFound(_)) => {
                                Err(format!("unknown schema id {id}"))
                            }
                            Err(e) => return Err(e.to_string()),
                        };
                        self.writers.borrow_mut().insert(id, fetched.clone());
                        Some(fetched?)
                    }
                }
            }
            None => self.shipped.clone(),
        };
        match writer {
            Some(schema) if !is_reading_schema(&schema) => generic(id, &schema, body),
            _ => self
                .readings
                .decode(value)
                .await
                .map(|(id, r)| Decoded::Reading(id, r))
                .map_err(|e| e.to_string()),
        }
    }
}

/// Counts printed at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Summary {
    records: u64,
    undecodable: u64,
    flagged: u64,
}

/// Runs the command; returns when a limit is reached or on Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = KafkaClientConfig {
        bootstrap_servers: args.brokers.clone(),
        properties: args.properties.iter().cloned().collect(),
    };
    // The group only names this reader; it never joins it nor commits.
    let group_id = format!("soilstream-consume-{}", std::process::id());
    let mut consumer = KafkaConsumer::new(&config, &group_id).context("creating the Kafka consumer")?;
    let partitions = consumer
        .partition_count(&args.topic)
        .await
        .with_context(|| format!("reading the partitions of `{}` from {}", args.topic, args.brokers))?;
    let start = if args.from_beginning {
        StartOffset::Beginning
    } else {
        StartOffset::End
    };
    let starts: Vec<(i32, StartOffset)> = (0..partitions)
        .map(|p| (i32::try_from(p).unwrap_or(i32::MAX), start))
        .collect();
    consumer
        .assign(&args.topic, &starts)
        .with_context(|| format!("assigning the partitions of `{}`", args.topic))?;
    tracing::info!(topic = %args.topic, partitions, from_beginning = args.from_beginning, "consuming");

    let decoder = match &args.registry {
        Some(url) => {
            let client = Rc::new(
                HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default())
                    .context("--registry")?,
            );
            ValueDecoder {
                readings: ReadingDecoder::with_registry(client.clone(), ReadingCodec::reader()),
                registry: Some(client),
                writers: std::cell::RefCell::new(BTreeMap::new()),
                shipped: None,
            }
        }
        None => ValueDecoder {
            readings: ReadingDecoder::without_registry(),
            registry: None,
            writers: std::cell::RefCell::new(BTreeMap::new()),
            shipped: shipped_schema(&args.topic),
        },
    };
    let mut summary = Summary::default();
    let mut stdout = std::io::stdout().lock();
    let mut last_record_at = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    'consume: loop {
        if args.max_records.is_some_and(|max| summary.records >= max) {
            break;
        }
        let mut wait_ms = POLL_SLICE_MS;
        if let Some(idle_ms) = args.idle_exit_ms {
            let idle_for_ms = u64::try_from(last_record_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            if idle_for_ms >= idle_ms {
                tracing::info!(idle_ms, "no record for the idle limit; exiting");
                break;
            }
            wait_ms = wait_ms.min(idle_ms - idle_for_ms);
        }
        let batch = tokio::select! {
            biased;
            _ = &mut ctrl_c => break,
            batch = consumer.poll(wait_ms) => batch,
        };
        let records = match batch {
            Ok(records) => records,
            Err(ConsumeError::UnknownTopic(topic)) => {
                anyhow::bail!("topic `{topic}` does not exist (any more)");
            }
            Err(error) => {
                tracing::warn!(%error, "poll failed; retrying");
                tokio::time::sleep(Duration::from_millis(POLL_SLICE_MS)).await;
                continue;
            }
        };
        for record in records {
            last_record_at = Instant::now();
            let decoded = decoder.decode(record.value.as_deref()).await;
            let view = RecordView {
                record: &record,
                decoded,
            };
            summary.records += 1;
            if view.decoded.is_err() {
                summary.undecodable += 1;
            } else if !view.flags().is_empty() {
                summary.flagged += 1;
            }
            let line = if args.json {
                view.to_json().to_string()
            } else {
                view.to_text()
            };
            match writeln!(stdout, "{line}") {
                Ok(()) => {}
                // The reader went away (`| head`): stop quietly.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break 'consume,
                Err(error) => return Err(error).context("writing to stdout"),
            }
            if args.max_records.is_some_and(|max| summary.records >= max) {
                break 'consume;
            }
        }
        if let Err(error) = stdout.flush()
            && error.kind() == std::io::ErrorKind::BrokenPipe
        {
            break;
        }
    }
    let _ = stdout.flush();
    eprintln!(
        "consumed {} record(s) from `{}`: {} undecodable, {} flagged",
        summary.records, args.topic, summary.undecodable, summary.flagged
    );
    Ok(ExitCode::SUCCESS)
}

/// A consumed record with its decoded reading, ready to print.
struct RecordView<'a> {
    record: &'a ConsumedRecord,
    decoded: Result<Decoded, String>,
}

/// A header value as text when it is UTF-8 without control characters, else
/// as hex.
fn header_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

fn timestamp_kind_name(kind: TimestampKind) -> &'static str {
    match kind {
        TimestampKind::CreateTime => "CreateTime",
        TimestampKind::LogAppendTime => "LogAppendTime",
        TimestampKind::NotAvailable => "NoTimestamp",
    }
}

impl<'a> RecordView<'a> {
    fn position(&self) -> String {
        format!(
            "{}/{}@{}",
            self.record.topic, self.record.partition, self.record.offset
        )
    }

    fn timestamp_text(&self) -> String {
        match self.record.timestamp_kind {
            TimestampKind::NotAvailable => "-".to_string(),
            _ => format_rfc3339_ms(self.record.timestamp_ms),
        }
    }

    /// Kafka timestamp minus event time, in ms, when both exist.
    fn timestamp_skew_ms(&self) -> Option<i64> {
        let Ok(Decoded::Reading(_, reading)) = self.decoded.as_ref() else {
            return None;
        };
        if self.record.timestamp_kind == TimestampKind::NotAvailable {
            return None;
        }
        Some(self.record.timestamp_ms.saturating_sub(reading.event_time_ms))
    }

    /// What is inconsistent between the record and its reading.
    fn flags(&self) -> Vec<String> {
        let Ok(Decoded::Reading(_, reading)) = &self.decoded else {
            return Vec::new();
        };
        let mut flags = Vec::new();
        match self.timestamp_skew_ms() {
            Some(0) => {}
            Some(skew) => flags.push(format!("kafka timestamp differs from event time by {skew:+} ms")),
            None => flags.push("record has no timestamp".to_string()),
        }
        if self.record.key.as_deref() != Some(reading.sensor_id.as_bytes()) {
            let key = self
                .record
                .key
                .as_deref()
                .map_or("<none>".to_string(), header_text);
            flags.push(format!("key `{key}` differs from sensor_id"));
        }
        if let Some(gateway) = self.record.header("gateway_id")
            && gateway != reading.gateway_id.as_bytes()
        {
            flags.push(format!(
                "header gateway_id `{}` differs from the reading",
                header_text(gateway)
            ));
        }
        if let Some(seq) = self.record.header("seq")
            && seq != reading.seq.to_string().as_bytes()
        {
            flags.push(format!(
                "header seq `{}` differs from the reading",
                header_text(seq)
            ));
        }
        flags
    }

    fn to_text(&self) -> String {
        let mut out = format!(
            "{}  {} {}",
            self.position(),
            self.timestamp_text(),
            timestamp_kind_name(self.record.timestamp_kind)
        );
        match &self.decoded {
            Err(reason) => out.push_str(&format!("  UNDECODABLE: {reason}")),
            Ok(Decoded::Record(schema_id, name, value)) => {
                out.push_str(&format!("  schema {schema_id} ({name})\n  {value}"));
            }
            Ok(Decoded::Reading(schema_id, r)) => {
                out.push_str(&format!("  schema {schema_id}\n"));
                let optional = |value: Option<f64>, unit: &str, digits: usize| {
                    value.map_or("-".to_string(), |v| format!("{v:.digits$} {unit}"))
                };
                out.push_str(&format!(
                    "  {}/{} seq={} event_time={} moisture={:.3} m3/m3 temp={} ec={} depth={} cm battery={}",
                    r.gateway_id,
                    r.sensor_id,
                    r.seq,
                    format_rfc3339_ms(r.event_time_ms),
                    r.moisture_vwc,
                    optional(r.soil_temp_c, "C", 2),
                    optional(r.bulk_ec_ds_m, "dS/m", 3),
                    r.depth_cm,
                    optional(r.battery_v, "V", 2),
                ));
                if let Some(flag) = &r.source_flag {
                    out.push_str(&format!(" source_flag={flag}"));
                }
            }
        }
        if !self.record.headers.is_empty() {
            let headers: Vec<String> = self
                .record
                .headers
                .iter()
                .map(|(k, v)| format!("{k}={}", header_text(v)))
                .collect();
            out.push_str(&format!("\n  headers: {}", headers.join(" ")));
        }
        for flag in self.flags() {
            out.push_str(&format!("\n  ! {flag}"));
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let headers: Vec<serde_json::Value> = self
            .record
            .headers
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": header_text(v) }))
            .collect();
        let mut out = json!({
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "timestamp_ms": self.record.timestamp_ms,
            "timestamp": self.timestamp_text(),
            "timestamp_type": timestamp_kind_name(self.record.timestamp_kind),
            "key": self.record.key.as_deref().map(header_text),
            "headers": headers,
        });
        let mut fields = BTreeMap::new();
        match &self.decoded {
            Err(reason) => {
                fields.insert("error", json!(reason));
            }
            Ok(Decoded::Record(schema_id, name, value)) => {
                fields.insert("schema_id", json!(schema_id));
                fields.insert("schema", json!(name));
                fields.insert("value", value.clone());
            }
            Ok(Decoded::Reading(schema_id, reading)) => {
                let mut reading_json = serde_json::to_value(reading).unwrap_or_else(|_| json!({}));
                if let Some(object) = reading_json.as_object_mut() {
                    object.insert(
                        "event_time".into(),
                        json!(format_rfc3339_ms(reading.event_time_ms)),
                    );
                }
                fields.insert("schema_id", json!(schema_id));
                fields.insert("reading", reading_json);
                fields.insert("timestamp_minus_event_time_ms", json!(self.timestamp_skew_ms()));
                fields.insert("flags", json!(self.flags()));
            }
        }
        if let Some(object) = out.as_object_mut() {
            for (key, value) in fields {
                object.insert(key.into(), value);
            }
        }
        out
    }
}

/// Formats ms since the Unix epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2023-11-14T22:13:20.000Z` (proleptic Gregorian calendar; years
/// outside 0..=9999 get more digits or a sign).
fn format_rfc3339_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = soilstream::clock::civil_date_utc(seconds.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use soilstream::codec::to_wire;

    #[test]
    fn qaqc_records_decode_with_their_shipped_schema() {
        use soilstream::qaqc::records::OutputCodecs;
        let codecs = OutputCodecs::default();
        let alert = soilstream::qaqc::records::AlertRecord {
            alert: "sensor_silent".into(),
            transition: "raise".into(),
            sensor_id: "probe-07".into(),
            gateway_id: "gw-01".into(),
            depth_cm: 10,
            episode: 1,
            historical: false,
            event_time: 1_700_000_000_000,
            value: 1_800_000.0,
            threshold: 1_800_000.0,
            detail: "no reading".into(),
        };
        let value = to_wire(5, &codecs.alerts.encode_body(&alert).unwrap());
        let decoder = ValueDecoder {
            readings: ReadingDecoder::without_registry(),
            registry: None,
            writers: std::cell::RefCell::new(BTreeMap::new()),
            shipped: shipped_schema("soil-alerts"),
        };
        let decoded = futures::executor::block_on(decoder.decode(Some(&value))).unwrap();
        let Decoded::Record(id, name, json) = decoded else {
            panic!("{decoded:?}");
        };
        assert_eq!((id, name.as_str()), (5, "io.soilstream.qaqc.SoilAlert"));
        assert_eq!(json["transition"], "raise");
        assert!(shipped_schema("soil-moisture-raw").is_none());
    }

    fn reading() -> Reading {
        Reading {
            gateway_id: "gw-01".into(),
            sensor_id: "probe-07".into(),
            seq: 42,
            event_time_ms: 1_700_000_000_000,
            moisture_vwc: 0.31,
            soil_temp_c: Some(14.5),
            bulk_ec_ds_m: Some(0.42),
            depth_cm: 30,
            battery_v: None,
            source_flag: None,
        }
    }

    fn record(value: Vec<u8>, timestamp_ms: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: "soil-moisture-raw".into(),
            partition: 2,
            offset: 17,
            key: Some(b"probe-07".to_vec()),
            value: Some(value),
            timestamp_ms,
            timestamp_kind: TimestampKind::CreateTime,
            headers: vec![
                ("gateway_id".into(), b"gw-01".to_vec()),
                ("seq".into(), b"42".to_vec()),
            ],
        }
    }

    fn view(record: &ConsumedRecord) -> RecordView<'_> {
        let decoded =
            futures::executor::block_on(ReadingDecoder::without_registry().decode(record.value.as_deref()))
                .map(|(id, r)| Decoded::Reading(id, r))
                .map_err(|e| e.to_string());
        RecordView { record, decoded }
    }

    fn wire(reading: &Reading) -> Vec<u8> {
        to_wire(3, &ReadingCodec::v1().encode_body(reading).unwrap())
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(-62_135_596_800_000), "0001-01-01T00:00:00.000Z");
        // Extremes format without panicking.
        assert!(format_rfc3339_ms(i64::MIN).ends_with('Z'));
        assert!(format_rfc3339_ms(i64::MAX).ends_with('Z'));
    }

    #[test]
    fn a_consistent_record_prints_every_field_and_no_flag() {
        let r = record(wire(&reading()), 1_700_000_000_000);
        let v = view(&r);
        let text = v.to_text();
        for needle in [
            "soil-moisture-raw/2@17",
            "2023-11-14T22:13:20.000Z CreateTime",
            "schema 3",
            "gw-01/probe-07 seq=42",
            "event_time=2023-11-14T22:13:20.000Z",
            "moisture=0.310 m3/m3",
            "temp=14.50 C",
            "ec=0.420 dS/m",
            "depth=30 cm",
            "battery=-",
            "headers: gateway_id=gw-01 seq=42",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        assert!(!text.contains('!'), "{text}");
        let json = v.to_json();
        assert_eq!(json["schema_id"], 3);
        assert_eq!(json["reading"]["seq"], 42);
        assert_eq!(json["reading"]["event_time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["timestamp_minus_event_time_ms"], 0);
        assert_eq!(json["flags"], json!([]));
        assert_eq!(json["headers"][1], json!({"key": "seq", "value": "42"}));
    }

    #[test]
    fn inconsistencies_are_flagged() {
        let mut r = record(wire(&reading()), 1_700_000_001_500);
        r.headers[1].1 = b"41".to_vec();
        r.key = Some(b"other".to_vec());
        let v = view(&r);
        let flags = v.flags();
        assert_eq!(flags.len(), 3, "{flags:?}");
        assert!(flags[0].contains("+1500 ms"), "{flags:?}");
        assert!(
            v.to_text()
                .contains("! kafka timestamp differs from event time by +1500 ms")
        );
        assert_eq!(v.to_json()["timestamp_minus_event_time_ms"], 1_500);
        r.timestamp_kind = TimestampKind::NotAvailable;
        assert!(view(&r).flags()[0].contains("no timestamp"));
    }

    #[test]
    fn undecodable_records_are_reported_with_their_reason() {
        let bad_magic = record(vec![7, 0, 0, 0, 1, 1, 2, 3], 0);
        let text = view(&bad_magic).to_text();
        assert!(text.starts_with("soil-moisture-raw/2@17"), "{text}");
        assert!(
            text.contains("UNDECODABLE") && text.contains("magic byte 7"),
            "{text}"
        );
        let bad_body = record(to_wire(1, &[0xff, 0xff, 0xff]), 0);
        let json = view(&bad_body).to_json();
        assert!(json["error"].as_str().unwrap().contains("schema id 1"), "{json}");
        assert_eq!(json["offset"], 17);
        let mut tombstone = record(vec![], 0);
        tombstone.value = None;
        assert!(view(&tombstone).to_text().contains("tombstone"));
        assert_eq!(header_text(&[0xff, 0x01]), "0xff01");
    }
}
