//! Property tests of the protocol: writers crash after a random number of
//! store operations, restart with other batch boundaries, and zombies race
//! with their successors; whatever happened, the archive ends with every
//! record once, in its event date's directory, and nothing else.

use super::batch::{OpenBatch, RotationLimits};
use super::columns::ArchiveSchema;
use super::protocol::{NoCrash, ProtocolError, commit_batch, recover};
use super::store::{ArchiveStore, MemoryArchiveStore, StoreError, StoredObject};
use super::verify::{VerifyOptions, verify};
use crate::codec::to_wire;
use apache_avro::Schema;
use apache_avro::types::Value;
use futures::future::LocalBoxFuture;
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

const CLEAN_SCHEMA: &str = include_str!("../../../schemas/soil_reading_clean.avsc");
const TOPIC: &str = "soil-moisture-clean";
const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_777_593_600_000;

/// A store that stops working (as its writer crashed) after `ops_left`
/// operations; puts are atomic, as on S3 and with `DiskArchiveStore`.
struct CrashingStore {
    inner: MemoryArchiveStore,
    ops_left: Cell<u64>,
}

impl CrashingStore {
    fn tick(&self) -> Result<(), StoreError> {
        let left = self.ops_left.get();
        if left == 0 {
            return Err(StoreError::Unavailable("the writer crashed".into()));
        }
        self.ops_left.set(left - 1);
        Ok(())
    }
}

impl ArchiveStore for CrashingStore {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.tick()?;
            self.inner.put_if_absent(path, bytes).await
        })
    }
    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            self.tick()?;
            self.inner.get(path).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move {
            self.tick()?;
            self.inner.list(prefix).await
        })
    }
    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.tick()?;
            self.inner.delete(path).await
        })
    }
}

fn clean_record(offset: i64, day_spread: i64) -> Vec<u8> {
    let schema = Schema::parse_str(CLEAN_SCHEMA).unwrap();
    // Live readings today, and every third one a backfill up to
    // `day_spread` days old.
    let t = if offset % 3 == 0 {
        T0 - (offset % (day_spread + 1)) * DAY_MS
    } else {
        T0 + offset * 1_000
    };
    let record = Value::Record(vec![
        ("gateway_id".into(), Value::String("gw".into())),
        ("sensor_id".into(), Value::String(format!("s{}", offset % 4))),
        ("seq".into(), Value::Long(offset)),
        ("event_time".into(), Value::TimestampMillis(t)),
        ("moisture_pct".into(), Value::Double(20.0 + (offset % 7) as f64)),
        (
            "soil_temp_c".into(),
            Value::Union(1, Box::new(Value::Double(9.5))),
        ),
        ("bulk_ec_ds_m".into(), Value::Union(0, Box::new(Value::Null))),
        ("depth_cm".into(), Value::Int(10)),
        ("battery_v".into(), Value::Union(1, Box::new(Value::Double(3.5)))),
        ("flags".into(), Value::Array(vec![])),
        ("lookahead_complete".into(), Value::Boolean(true)),
        ("source_schema_id".into(), Value::Int(1)),
        ("source_flag".into(), Value::Union(0, Box::new(Value::Null))),
    ]);
    to_wire(9, &apache_avro::to_avro_datum(&schema, record).unwrap())
}

fn limits(max_rows: u64, max_open_dates: usize) -> RotationLimits {
    RotationLimits {
        max_rows,
        max_bytes: 1 << 30,
        max_age_ms: 1 << 40,
        max_open_dates,
        small_file_rows: 10,
    }
}

/// One writer's life: recover, then archive records from where recovery
/// says until `end` or until the store "crashes". Returns whether it ran
/// to the end.
async fn writer_life(
    store: Rc<dyn ArchiveStore>,
    schema: &Rc<ArchiveSchema>,
    records: &[Vec<u8>],
    limits: RotationLimits,
    writer_id: &str,
) -> Result<bool, ProtocolError> {
    let recovery = match recover(&*store, &NoCrash, TOPIC, 0, writer_id, false).await {
        Ok(r) => r,
        Err(e) if e.is_transient() => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut position = recovery.next_offset.unwrap_or(0);
    let mut attempt = recovery.next_attempt;
    let mut offset = position;
    while (offset as usize) < records.len() {
        let mut batch = OpenBatch::new(position, 0);
        while (offset as usize) < records.len() {
            let row = schema
                .row(0, offset, Some(b"k"), &records[offset as usize])
                .unwrap();
            if batch.cut_before(&row, &limits).is_some() {
                break;
            }
            batch.push(schema, row);
            offset += 1;
            if batch.full(&limits).is_some() {
                break;
            }
        }
        let plan = Rc::new(batch.plan(TOPIC, 0, attempt, writer_id, None).unwrap());
        match commit_batch(store.clone(), Rc::new(NoCrash), plan.clone()).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Ok(false),
            Err(e) => return Err(e),
        }
        position = plan.last + 1;
        attempt = 0;
    }
    Ok(true)
}

fn run_local<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn assert_exactly_once(store: &dyn ArchiveStore, n: usize) {
    let options = VerifyOptions {
        event_time_field: "event_time".into(),
        identity_fields: vec!["gateway_id".into(), "sensor_id".into(), "seq".into()],
        topic_offsets: Some(BTreeMap::from([(0, (0, n as i64))])),
    };
    let report = verify(store, TOPIC, &options).await.unwrap();
    assert!(report.is_clean(), "{}", report.render(TOPIC));
    assert_eq!(report.rows(), n as u64, "{}", report.render(TOPIC));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Crash after any number of store operations, any number of times,
    /// restarting with other rotation limits: the archive ends exactly once.
    #[test]
    fn crashes_anywhere_leave_every_record_archived_once(
        n in 1usize..120,
        day_spread in 0i64..6,
        lives in proptest::collection::vec((1u64..40, 1u64..50, 1usize..4), 1..6),
    ) {
        run_local(async {
            let records: Vec<Vec<u8>> = (0..n as i64).map(|o| clean_record(o, day_spread)).collect();
            let schema = Rc::new(ArchiveSchema::new(9, CLEAN_SCHEMA, "event_time").unwrap());
            let memory = MemoryArchiveStore::new();
            for (i, (ops, max_rows, max_dates)) in lives.iter().enumerate() {
                let crashing = Rc::new(CrashingStore { inner: memory.clone(), ops_left: Cell::new(*ops) });
                writer_life(crashing, &schema, &records, limits(*max_rows, *max_dates), &format!("w{i}")).await.unwrap();
            }
            // The last life never crashes.
            let done = writer_life(Rc::new(memory.clone()), &schema, &records, limits(17, 3), "final").await.unwrap();
            prop_assert!(done);
            assert_exactly_once(&memory, n).await;
            // Recovery of a finished archive changes nothing.
            let before = memory.paths();
            let r = recover(&memory, &NoCrash, TOPIC, 0, "again", false).await.unwrap();
            prop_assert_eq!(r.next_offset, Some(n as i64));
            prop_assert_eq!(memory.paths(), before);
            Ok(())
        })?;
    }
}

/// A zombie (paused between its data files and its marker while another
/// writer recovered and committed the same offsets) is fenced by the abort
/// marker, cleans up, and the archive stays exactly once.
#[test]
fn a_zombie_is_fenced_and_its_files_removed() {
    run_local(async {
        let n = 40;
        let records: Vec<Vec<u8>> = (0..n as i64).map(|o| clean_record(o, 3)).collect();
        let schema = Rc::new(ArchiveSchema::new(9, CLEAN_SCHEMA, "event_time").unwrap());
        let memory = MemoryArchiveStore::new();
        let store: Rc<dyn ArchiveStore> = Rc::new(memory.clone());
        // The zombie builds a batch of 25 rows at attempt 0 and writes its
        // intent and data, then pauses (its writes stop after 1 + files).
        let mut batch = OpenBatch::new(0, 0);
        for o in 0..25 {
            batch.push(&schema, schema.row(0, o, None, &records[o as usize]).unwrap());
        }
        let zombie_plan = Rc::new(batch.plan(TOPIC, 0, 0, "zombie", None).unwrap());
        let files = zombie_plan.files.len() as u64;
        let paused = Rc::new(CrashingStore {
            inner: memory.clone(),
            ops_left: Cell::new(1 + files),
        });
        assert!(
            commit_batch(paused, Rc::new(NoCrash), zombie_plan.clone())
                .await
                .unwrap_err()
                .is_transient()
        );
        // The successor recovers (fences attempt 0) and archives everything.
        assert!(
            writer_life(store.clone(), &schema, &records, limits(10, 2), "successor")
                .await
                .unwrap()
        );
        // The zombie wakes up and retries its commit: fenced, cleans up.
        let err = commit_batch(store.clone(), Rc::new(NoCrash), zombie_plan)
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Fenced { .. }), "{err}");
        assert_exactly_once(&memory, n).await;
    });
}

/// Planted bug: recovery that keeps uncommitted files leaves orphans that
/// verify reports.
#[test]
fn recovery_keeping_uncommitted_files_is_caught_by_verify() {
    run_local(async {
        let n = 30;
        let records: Vec<Vec<u8>> = (0..n as i64).map(|o| clean_record(o, 2)).collect();
        let schema = Rc::new(ArchiveSchema::new(9, CLEAN_SCHEMA, "event_time").unwrap());
        let memory = MemoryArchiveStore::new();
        let mut batch = OpenBatch::new(0, 0);
        for o in 0..20 {
            batch.push(&schema, schema.row(0, o, None, &records[o as usize]).unwrap());
        }
        let plan = Rc::new(batch.plan(TOPIC, 0, 0, "crashed", None).unwrap());
        let files = plan.files.len() as u64;
        let crashing = Rc::new(CrashingStore {
            inner: memory.clone(),
            ops_left: Cell::new(1 + files),
        });
        assert!(commit_batch(crashing, Rc::new(NoCrash), plan).await.is_err());
        recover(&memory, &NoCrash, TOPIC, 0, "buggy", true).await.unwrap();
        assert!(
            writer_life(Rc::new(memory.clone()), &schema, &records, limits(7, 2), "next")
                .await
                .unwrap()
        );
        let options = VerifyOptions {
            event_time_field: "event_time".into(),
            identity_fields: vec![],
            topic_offsets: None,
        };
        let report = verify(&memory, TOPIC, &options).await.unwrap();
        assert!(!report.is_clean());
        assert!(
            report.problems.iter().any(|p| p.contains("orphan")),
            "{}",
            report.render(TOPIC)
        );
    });
}

/// Planted bug: files named by the archive's clock put old readings in
/// today's directory, which verify reports.
#[test]
fn wall_clock_file_names_are_caught_by_verify() {
    run_local(async {
        let records: Vec<Vec<u8>> = (0..12i64).map(|o| clean_record(o, 4)).collect();
        let schema = Rc::new(ArchiveSchema::new(9, CLEAN_SCHEMA, "event_time").unwrap());
        let memory = MemoryArchiveStore::new();
        let mut batch = OpenBatch::new(0, 0);
        for (o, r) in records.iter().enumerate() {
            batch.push(&schema, schema.row(0, o as i64, None, r).unwrap());
        }
        let plan = Rc::new(batch.plan(TOPIC, 0, 0, "w", Some("2026-05-01")).unwrap());
        commit_batch(Rc::new(memory.clone()), Rc::new(NoCrash), plan)
            .await
            .unwrap();
        let options = VerifyOptions {
            event_time_field: "event_time".into(),
            identity_fields: vec![],
            topic_offsets: None,
        };
        let report = verify(&memory, TOPIC, &options).await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("not its directory's")),
            "{}",
            report.render(TOPIC)
        );
    });
}

/// A store whose first listing of the manifests is a snapshot taken just
/// before another writer finishes its commit (marker written, intent
/// removed): what a successor's recovery sees when it lists while a
/// zombie commits.
struct CommitAfterListing {
    inner: MemoryArchiveStore,
    pending: String,
    marker: String,
    manifest: Vec<u8>,
    fired: Cell<bool>,
}

impl ArchiveStore for CommitAfterListing {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_if_absent(path, bytes)
    }
    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        self.inner.get(path)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move {
            let listed = self.inner.list(prefix).await?;
            if prefix.starts_with("_archive/") && !self.fired.replace(true) {
                self.inner
                    .put_if_absent(&self.marker, self.manifest.clone())
                    .await?;
                self.inner.delete(&self.pending).await?;
            }
            Ok(listed)
        })
    }
    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete(path)
    }
}

/// Found by the simulator (`archive-rebalance`, seed 2008): a recovery that
/// listed an intent whose writer then committed and removed it must not
/// take the vanished intent for nothing: it starts over and resumes after
/// that commit, never writing a second commit at the same position.
#[test]
fn an_intent_committed_between_listing_and_reading_is_not_overlooked() {
    use super::layout::{marker_path, pending_path};
    run_local(async {
        let records: Vec<Vec<u8>> = (0..10).map(|o| clean_record(o, 0)).collect();
        let schema = Rc::new(ArchiveSchema::new(9, CLEAN_SCHEMA, "event_time").unwrap());
        let mut batch = OpenBatch::new(0, 0);
        for (offset, record) in records.iter().enumerate() {
            batch.push(&schema, schema.row(0, offset as i64, Some(b"k"), record).unwrap());
        }
        let plan = batch.plan(TOPIC, 0, 0, "zombie", None).unwrap();
        let memory = MemoryArchiveStore::new();
        let manifest = plan.manifest().to_bytes();
        let pending = pending_path(TOPIC, 0, 0, 0);
        memory.put_if_absent(&pending, manifest.clone()).await.unwrap();
        for file in &plan.files {
            memory
                .put_if_absent(&file.entry.path, file.bytes.clone())
                .await
                .unwrap();
        }
        let racing = CommitAfterListing {
            inner: memory.clone(),
            pending,
            marker: marker_path(TOPIC, 0, 0, 0),
            manifest,
            fired: Cell::new(false),
        };
        let recovery = recover(&racing, &NoCrash, TOPIC, 0, "successor", false)
            .await
            .unwrap();
        assert!(racing.fired.get(), "the commit raced with the listing");
        assert_eq!(recovery.next_offset, Some(10), "{recovery:?}");
        assert_exactly_once(&memory, 10).await;
    });
}
