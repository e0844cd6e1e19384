use super::*;
use crate::codec::SOIL_READING_SCHEMA_V1;
use crate::disk::{DiskFile, StdDisk};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn schema(text: &str) -> ParsedSchema {
    ParsedSchema::parse(text).unwrap()
}

fn rec(fields: &str) -> ParsedSchema {
    schema(&format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#))
}

fn open(dir: &Path) -> Store<StdDisk> {
    Store::open(StdDisk, dir, StoreLimits::default()).unwrap().0
}

fn code<T: fmt::Debug>(result: Result<T, ServiceError>) -> u32 {
    result.unwrap_err().error_code()
}

#[test]
fn ids_are_global_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let v1 = schema(SOIL_READING_SCHEMA_V1);
    let a = rec(r#"{"name":"a","type":"int"}"#);
    assert_eq!(store.register("s1", &v1).unwrap(), 1);
    // Same schema, same subject: same id, no new version.
    assert_eq!(store.register("s1", &v1).unwrap(), 1);
    assert_eq!(store.versions("s1", DeletedFilter::Exclude).unwrap(), vec![1]);
    // Same schema, another subject: same id.
    assert_eq!(store.register("s2", &v1).unwrap(), 1);
    store.set_level(Some("s2"), CompatibilityLevel::None).unwrap();
    assert_eq!(store.register("s2", &a).unwrap(), 2);
    assert_eq!(store.versions("s2", DeletedFilter::Exclude).unwrap(), vec![1, 2]);
    // The same schema formatted differently is the same schema.
    let a_spaced = schema(
        "{ \"name\": \"R\", \"type\": \"record\", \"fields\": [ {\"name\":\"a\", \"type\":{\"type\":\"int\"}} ] }",
    );
    assert_eq!(store.register("s2", &a_spaced).unwrap(), 2);
    assert_eq!(store.schema_by_id(1).unwrap(), SOIL_READING_SCHEMA_V1);
    assert_eq!(code(store.schema_by_id(3)), 40403);
    assert_eq!(
        store.id_usages(1, DeletedFilter::Exclude).unwrap(),
        vec![("s1".to_owned(), 1), ("s2".to_owned(), 1)]
    );
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        store.set_level(None, CompatibilityLevel::Full).unwrap();
        store.set_level(Some("x"), CompatibilityLevel::None).unwrap();
        store.register("x", &rec(r#"{"name":"a","type":"int"}"#)).unwrap();
        store
            .register("x", &rec(r#"{"name":"a","type":"string"}"#))
            .unwrap();
        store.delete_version("x", VersionSpec::Number(1), false).unwrap();
    }
    let (store, report) = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap();
    assert!(!report.created);
    assert_eq!(report.frames_replayed, 5);
    assert_eq!(report.torn_tail, None);
    assert_eq!(store.global_level(), CompatibilityLevel::Full);
    assert_eq!(store.subject_level("x"), Some(CompatibilityLevel::None));
    assert_eq!(store.versions("x", DeletedFilter::Exclude).unwrap(), vec![2]);
    assert_eq!(store.versions("x", DeletedFilter::Include).unwrap(), vec![1, 2]);
    assert_eq!(store.versions("x", DeletedFilter::Only).unwrap(), vec![1]);
    let latest = store.version("x", VersionSpec::Latest, false).unwrap();
    assert_eq!((latest.version, latest.id), (2, 2));
}

#[test]
fn ids_and_versions_are_never_reused_after_hard_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.set_level(None, CompatibilityLevel::None).unwrap();
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let b = rec(r#"{"name":"b","type":"int"}"#);
    let c = rec(r#"{"name":"c","type":"int"}"#);
    assert_eq!(store.register("s", &a).unwrap(), 1);
    assert_eq!(store.register("s", &b).unwrap(), 2);
    assert_eq!(store.delete_subject("s", false).unwrap(), vec![1, 2]);
    assert_eq!(store.delete_subject("s", true).unwrap(), vec![1, 2]);
    assert_eq!(code(store.schema_by_id(1)), 40403);
    assert_eq!(code(store.versions("s", DeletedFilter::Include)), 40401);
    drop(store);
    let mut store = open(dir.path());
    // A new schema gets a new id, and the subject continues its numbering.
    assert_eq!(store.register("s", &c).unwrap(), 3);
    assert_eq!(store.versions("s", DeletedFilter::Exclude).unwrap(), vec![3]);
    // An old schema gets its old id back.
    assert_eq!(store.register("t", &a).unwrap(), 1);
    assert_eq!(store.schema_by_id(1).unwrap(), a.text());
}

#[test]
fn backward_accepts_optional_additions_and_names_rejected_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store
        .register("s", &rec(r#"{"name":"x","type":"double"}"#))
        .unwrap();
    let err = store
        .register(
            "s",
            &rec(r#"{"name":"x","type":"double"},{"name":"y","type":"int"}"#),
        )
        .unwrap_err();
    assert_eq!(err.error_code(), 409);
    let text = err.to_string();
    assert!(text.contains("subject \"s\""), "{text}");
    assert!(text.contains("BACKWARD"), "{text}");
    assert!(
        text.contains(
            "field `y` added without default (the new schema cannot read data written with version 1)"
        ),
        "{text}"
    );
    let err = store
        .register("s", &rec(r#"{"name":"x","type":"string"}"#))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("field `x`: type changed from double to string"),
        "{err}"
    );
    // Removing a field is fine under BACKWARD; adding one with a default too.
    assert_eq!(store.register("s", &rec("")).unwrap(), 2);
    assert_eq!(
        store
            .register("s", &rec(r#"{"name":"y","type":["null","int"],"default":null}"#))
            .unwrap(),
        3
    );
}

#[test]
fn forward_and_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let xy = rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int"}"#);
    let x = rec(r#"{"name":"x","type":"int"}"#);
    store.set_level(Some("f"), CompatibilityLevel::Forward).unwrap();
    store.register("f", &xy).unwrap();
    let err = store.register("f", &x).unwrap_err();
    assert_eq!(err.error_code(), 409);
    assert!(
        err.to_string().contains(
            "field `y` removed without default (readers using version 1 cannot read data written with the new schema)"
        ),
        "{err}"
    );
    // Adding a field is forward compatible: old readers ignore it.
    let xyz = rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int"},{"name":"z","type":"int"}"#);
    store.register("f", &xyz).unwrap();

    store.set_level(Some("full"), CompatibilityLevel::Full).unwrap();
    store.register("full", &x).unwrap();
    // FULL rejects both directions.
    assert_eq!(code(store.register("full", &xy)), 409);
    let changed = rec(r#"{"name":"x","type":"string"}"#);
    let err = store.register("full", &changed).unwrap_err().to_string();
    assert!(
        err.contains("field `x`: type changed from int to string (neither the new schema nor version 1 can read the other's data)"),
        "{err}"
    );
    let with_default = rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int","default":0}"#);
    store.register("full", &with_default).unwrap();
}

/// Registers v1, v2, v3 under `level`; v3 is compatible with v2 but not v1.
fn chain(level: CompatibilityLevel, chain: [&ParsedSchema; 3]) -> Result<u32, ServiceError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.set_level(None, level).unwrap();
    store.register("s", chain[0]).unwrap();
    store.register("s", chain[1]).unwrap();
    store.register("s", chain[2])
}

#[test]
fn transitive_levels_check_every_live_version() {
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let ab_default = rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":0}"#);
    let ab = rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
    // Backward: v3 (b required) reads v2 data (which has b) but not v1's.
    assert!(chain(CompatibilityLevel::Backward, [&a, &ab_default, &ab]).is_ok());
    let err = chain(CompatibilityLevel::BackwardTransitive, [&a, &ab_default, &ab]).unwrap_err();
    assert!(
        err.to_string().contains(
            "field `b` added without default (the new schema cannot read data written with version 1)"
        ),
        "{err}"
    );
    // Forward: v1 readers need b; v2 readers default it; v3 drops it.
    assert!(chain(CompatibilityLevel::Forward, [&ab, &ab_default, &a]).is_ok());
    let err = chain(CompatibilityLevel::ForwardTransitive, [&ab, &ab_default, &a]).unwrap_err();
    assert!(
        err.to_string()
            .contains("field `b` removed without default (readers using version 1"),
        "{err}"
    );
    // Full: both; a → a+b(default) → a+b(default 0)+... the transitive form
    // catches v3 dropping b against v1 which requires it.
    assert!(chain(CompatibilityLevel::Full, [&ab, &ab_default, &a]).is_ok());
    assert_eq!(
        code(chain(CompatibilityLevel::FullTransitive, [&ab, &ab_default, &a])),
        409
    );
    // None accepts anything.
    let s = rec(r#"{"name":"a","type":"string"}"#);
    assert!(chain(CompatibilityLevel::None, [&a, &s, &ab]).is_ok());
}

#[test]
fn soft_deleted_versions_are_not_checked_against() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.register("s", &rec(r#"{"name":"x","type":"int"}"#)).unwrap();
    store.delete_version("s", VersionSpec::Latest, false).unwrap();
    // Nothing live: anything goes, and it becomes version 2.
    store
        .register("s", &rec(r#"{"name":"x","type":"string"}"#))
        .unwrap();
    assert_eq!(store.versions("s", DeletedFilter::Include).unwrap(), vec![1, 2]);
}

#[test]
fn deletion_rules_and_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.set_level(None, CompatibilityLevel::None).unwrap();
    assert_eq!(code(store.delete_subject("nope", false)), 40401);
    assert_eq!(code(store.delete_subject("nope", true)), 40401);
    store.register("s", &rec(r#"{"name":"a","type":"int"}"#)).unwrap();
    store.register("s", &rec(r#"{"name":"b","type":"int"}"#)).unwrap();
    assert_eq!(code(store.delete_subject("s", true)), 40405);
    assert_eq!(
        code(store.delete_version("s", VersionSpec::Number(1), true)),
        40407
    );
    assert_eq!(
        code(store.delete_version("s", VersionSpec::Number(9), false)),
        40402
    );
    assert_eq!(
        store.delete_version("s", VersionSpec::Number(1), false).unwrap(),
        1
    );
    assert_eq!(
        code(store.delete_version("s", VersionSpec::Number(1), false)),
        40406
    );
    assert_eq!(code(store.version("s", VersionSpec::Number(1), false)), 40402);
    assert_eq!(store.version("s", VersionSpec::Number(1), true).unwrap().id, 1);
    // The id of a soft-deleted version still resolves.
    assert!(store.schema_by_id(1).is_ok());
    assert_eq!(
        store.delete_version("s", VersionSpec::Number(1), true).unwrap(),
        1
    );
    assert_eq!(code(store.schema_by_id(1)), 40403);
    assert_eq!(store.delete_subject("s", false).unwrap(), vec![2]);
    assert_eq!(code(store.delete_subject("s", false)), 40404);
    assert_eq!(code(store.versions("s", DeletedFilter::Exclude)), 40401);
    assert_eq!(store.subjects(DeletedFilter::Exclude), Vec::<String>::new());
    assert_eq!(store.subjects(DeletedFilter::Only), vec!["s".to_owned()]);
    // Soft-deleting a version again, even the subject's last: 40406.
    assert_eq!(
        code(store.delete_version("s", VersionSpec::Number(2), false)),
        40406
    );
    // `latest` of a subject without live versions: no such version.
    assert_eq!(code(store.delete_version("s", VersionSpec::Latest, false)), 40402);
    assert_eq!(store.delete_subject("s", true).unwrap(), vec![2]);
    assert_eq!(store.subjects(DeletedFilter::Include), Vec::<String>::new());
}

#[test]
fn lookup_and_compatibility_queries() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let a = rec(r#"{"name":"a","type":"int"}"#);
    let b = rec(r#"{"name":"b","type":"int"}"#);
    assert_eq!(code(store.lookup("s", &a, false)), 40401);
    store.register("s", &a).unwrap();
    let found = store.lookup("s", &a, false).unwrap();
    assert_eq!((found.subject.as_str(), found.version, found.id), ("s", 1, 1));
    assert_eq!(code(store.lookup("s", &b, false)), 40403);

    let incompatible = rec(r#"{"name":"a","type":"int"},{"name":"c","type":"int"}"#);
    let report = store
        .check_compatibility("s", &incompatible, Some(VersionSpec::Latest))
        .unwrap();
    assert!(!report.is_compatible());
    assert_eq!(report.level, CompatibilityLevel::Backward);
    assert_eq!(
        report.messages,
        vec!["field `c` added without default (the new schema cannot read data written with version 1)"]
    );
    assert!(
        store
            .check_compatibility("s", &a, Some(VersionSpec::Number(1)))
            .unwrap()
            .is_compatible()
    );
    assert_eq!(
        code(store.check_compatibility("s", &a, Some(VersionSpec::Number(2)))),
        40402
    );
    // No subject: `latest` passes, a number is 40402.
    assert!(
        store
            .check_compatibility("new", &a, Some(VersionSpec::Latest))
            .unwrap()
            .is_compatible()
    );
    assert!(
        store
            .check_compatibility("new", &a, None)
            .unwrap()
            .is_compatible()
    );
    assert_eq!(
        code(store.check_compatibility("new", &a, Some(VersionSpec::Number(1)))),
        40402
    );
}

#[test]
fn levels_set_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.global_level(), CompatibilityLevel::Backward);
    assert_eq!(code(store.delete_level(Some("s"))), 40408);
    store
        .set_level(Some("s"), CompatibilityLevel::ForwardTransitive)
        .unwrap();
    assert_eq!(store.effective_level("s"), CompatibilityLevel::ForwardTransitive);
    assert_eq!(
        store.delete_level(Some("s")).unwrap(),
        CompatibilityLevel::ForwardTransitive
    );
    assert_eq!(store.effective_level("s"), CompatibilityLevel::Backward);
    store.set_level(None, CompatibilityLevel::None).unwrap();
    assert_eq!(store.delete_level(None).unwrap(), CompatibilityLevel::None);
    assert_eq!(store.global_level(), CompatibilityLevel::Backward);
    assert_eq!(code(store.set_level(Some(""), CompatibilityLevel::Full)), 42208);
    assert_eq!(
        code(store.register(&"x".repeat(SUBJECT_MAX_BYTES + 1), &rec(""))),
        42208
    );
    assert_eq!(code(store.register("a\nb", &rec(""))), 42208);
}

#[test]
fn version_specs() {
    assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
    assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
    assert_eq!(VersionSpec::parse("7").unwrap(), VersionSpec::Number(7));
    for bad in ["0", "-2", "abc", "2147483648", ""] {
        assert_eq!(code(VersionSpec::parse(bad)), 42202, "{bad}");
    }
    assert_eq!(http_status_of(40401), 404);
    assert_eq!(http_status_of(42201), 422);
    assert_eq!(http_status_of(50001), 500);
    assert_eq!(http_status_of(409), 409);
}

fn log_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(LOG_FILE_NAME)).unwrap()
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_stays_appendable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        store.register("s", &rec(r#"{"name":"a","type":"int"}"#)).unwrap();
    }
    let one = log_bytes(dir.path());
    {
        let mut store = open(dir.path());
        store
            .register(
                "s",
                &rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":1}"#),
            )
            .unwrap();
    }
    let two = log_bytes(dir.path());
    for cut in (one.len() + 1..two.len()).step_by(7) {
        std::fs::write(dir.path().join(LOG_FILE_NAME), &two[..cut]).unwrap();
        let (mut store, report) = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(
            report.torn_tail,
            Some((one.len() as u64, (cut - one.len()) as u64))
        );
        assert_eq!(store.versions("s", DeletedFilter::Include).unwrap(), vec![1]);
        assert_eq!(log_bytes(dir.path()), one, "cut {cut}: the torn bytes are gone");
        // The lost registration was never acknowledged; registering another
        // schema now reuses neither the lost frame nor garbage.
        assert_eq!(store.register("s", &rec("")).unwrap(), 2);
        drop(store);
        let (store, report) = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap();
        assert_eq!(report.torn_tail, None);
        assert_eq!(store.versions("s", DeletedFilter::Include).unwrap(), vec![1, 2]);
    }
}

#[test]
fn a_partial_header_is_a_new_log_and_damage_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOG_FILE_NAME), &LOG_HEADER[..4]).unwrap();
    let (mut store, report) = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap();
    assert!(report.created);
    store.set_level(None, CompatibilityLevel::None).unwrap();
    store.register("s", &rec(r#"{"name":"a","type":"int"}"#)).unwrap();
    store.register("s", &rec(r#"{"name":"b","type":"int"}"#)).unwrap();
    drop(store);
    let mut bytes = log_bytes(dir.path());
    // Flip a byte inside the first frame's payload.
    bytes[LOG_HEADER.len() + log::FRAME_HEADER_BYTES + 3] ^= 0x20;
    std::fs::write(dir.path().join(LOG_FILE_NAME), &bytes).unwrap();
    let err = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap_err();
    match &err {
        StoreOpenError::Damaged {
            offset,
            intact_frames_after,
            ..
        } => {
            assert_eq!(*offset, LOG_HEADER.len() as u64);
            assert_eq!(*intact_frames_after, 2);
        }
        other => panic!("expected damage, got {other}"),
    }
    assert!(err.to_string().contains("Refusing to start"), "{err}");
    std::fs::write(dir.path().join(LOG_FILE_NAME), b"hello").unwrap();
    assert!(matches!(
        Store::open(StdDisk, dir.path(), StoreLimits::default()),
        Err(StoreOpenError::NotALog { .. })
    ));
}

#[test]
fn records_that_contradict_the_log_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = LOG_HEADER.to_vec();
    let record = |events: Vec<Event>| log::encode_frame(&serde_json::to_vec(&LogRecord { events }).unwrap());
    bytes.extend(record(vec![Event::SchemaCreated {
        id: 1,
        schema: "\"int\"".into(),
    }]));
    // Id 1 again, for another schema: intact frame, impossible content.
    bytes.extend(record(vec![Event::SchemaCreated {
        id: 1,
        schema: "\"long\"".into(),
    }]));
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join(LOG_FILE_NAME), &bytes).unwrap();
    let err = Store::open(StdDisk, dir.path(), StoreLimits::default()).unwrap_err();
    assert!(err.to_string().contains("is not the next id"), "{err}");
}

#[test]
fn the_log_size_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits { log_max_bytes: 600 };
    let (mut store, _) = Store::open(StdDisk, dir.path(), limits).unwrap();
    store.set_level(None, CompatibilityLevel::None).unwrap();
    let mut registered = 0;
    let err = loop {
        match store.register("s", &rec(&format!(r#"{{"name":"f{registered}","type":"int"}}"#))) {
            Ok(_) => registered += 1,
            Err(e) => break e,
        }
    };
    assert!(registered >= 2, "{registered}");
    assert_eq!(err.error_code(), 50001);
    assert!(err.to_string().contains("full"), "{err}");
    assert!(store.log_len_bytes() <= 600);
    // A full log is not a failed store: reads and reopening work.
    assert!(!store.is_failed());
    drop(store);
    let (store, _) = Store::open(StdDisk, dir.path(), limits).unwrap();
    assert_eq!(
        store.versions("s", DeletedFilter::Exclude).unwrap().len(),
        registered
    );
    assert!(matches!(
        Store::open(StdDisk, dir.path(), StoreLimits { log_max_bytes: 10 }),
        Err(StoreOpenError::TooLarge { .. })
    ));
}

/// A disk whose `sync_data` fails while `fail_sync` is set.
#[derive(Clone, Default)]
struct FlakyDisk {
    fail_sync: Arc<AtomicBool>,
}

struct FlakyFile {
    inner: Box<dyn DiskFile>,
    fail_sync: Arc<AtomicBool>,
}

impl DiskFile for FlakyFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.append(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(offset, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO"));
        }
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl FlakyDisk {
    fn wrap(&self, inner: Box<dyn DiskFile>) -> Box<dyn DiskFile> {
        Box::new(FlakyFile {
            inner,
            fail_sync: self.fail_sync.clone(),
        })
    }
}

impl Disk for FlakyDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdDisk.create_dir_all(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        StdDisk.open(path).map(|f| self.wrap(f))
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        StdDisk.create_new(path).map(|f| self.wrap(f))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        StdDisk.create_truncate(path).map(|f| self.wrap(f))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdDisk.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdDisk.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdDisk.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdDisk.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdDisk.exists(path)
    }
}

#[test]
fn a_failed_sync_stops_all_changes_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FlakyDisk::default();
    let (mut store, _) = Store::open(disk.clone(), dir.path(), StoreLimits::default()).unwrap();
    store.register("s", &rec(r#"{"name":"a","type":"int"}"#)).unwrap();
    disk.fail_sync.store(true, Ordering::SeqCst);
    let err = store
        .register("t", &rec(r#"{"name":"b","type":"int"}"#))
        .unwrap_err();
    assert_eq!(err.error_code(), 50001);
    assert!(err.to_string().contains("injected EIO"), "{err}");
    // The failed change is not visible, and nothing else may be written, even
    // once the disk recovers: the file's contents are unknown until replay.
    assert_eq!(code(store.versions("t", DeletedFilter::Include)), 40401);
    disk.fail_sync.store(false, Ordering::SeqCst);
    assert!(store.is_failed());
    let err = store.set_level(None, CompatibilityLevel::None).unwrap_err();
    assert!(err.to_string().contains("restart the registry"), "{err}");
    assert_eq!(
        store.schema_by_id(1).unwrap(),
        rec(r#"{"name":"a","type":"int"}"#).text()
    );
    drop(store);
    // Replay decides: here the frame reached the file, so `t` exists with id 2
    // and no id was handed out twice.
    let (store, _) = Store::open(disk, dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(
        store
            .lookup("t", &rec(r#"{"name":"b","type":"int"}"#), false)
            .unwrap()
            .id,
        2
    );
}
