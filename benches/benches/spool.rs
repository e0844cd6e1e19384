//! Spool throughput on the real filesystem (`StdDisk` in a temporary
//! directory), in records per second:
//!
//! - `spool_append_commit/batch_N`: append N readings, commit (one
//!   `sync_data` per batch), repeated up to 2 000 records;
//! - `spool_drain`: `read_next` + `mark_delivered` + `persist_cursor` over a
//!   backlog of 20 000 durable records until it is empty.
//!
//! Run with `cargo bench -p soilstream-benches --bench spool`.

use criterion::{BatchSize, Criterion, Throughput, criterion_main};
use soilstream::spool::Spool;
use soilstream_benches::{fill_spool, open_bench_spool};
use std::hint::black_box;
use std::time::Duration;

const APPEND_RECORDS: u64 = 2_000;
const DRAIN_RECORDS: u64 = 20_000;
const READ_BATCH_RECORDS: usize = 256;

fn open(dir: &std::path::Path) -> Spool {
    open_bench_spool(&dir.join("spool"))
}

fn fill(spool: &mut Spool, count: u64, batch: u64) {
    fill_spool(spool, count, batch);
}

fn append_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("spool_append_commit");
    group.throughput(Throughput::Elements(APPEND_RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for batch in [10u64, 100, 1000] {
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let spool = open(dir.path());
                    (dir, spool)
                },
                |(dir, mut spool)| {
                    fill(&mut spool, APPEND_RECORDS, batch);
                    black_box(spool.stats().committed_total);
                    (dir, spool)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("spool_drain");
    group.throughput(Throughput::Elements(DRAIN_RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("read_mark_persist", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut spool = open(dir.path());
                fill(&mut spool, DRAIN_RECORDS, 1000);
                (dir, spool)
            },
            |(dir, mut spool)| {
                let mut delivered = 0;
                loop {
                    let records = spool.read_next(READ_BATCH_RECORDS).expect("read");
                    if records.is_empty() {
                        break;
                    }
                    for record in &records {
                        black_box(&record.body);
                        spool.mark_delivered(record.index);
                    }
                    spool.persist_cursor().expect("persist");
                    delivered += records.len() as u64;
                }
                assert_eq!(delivered, DRAIN_RECORDS);
                (dir, spool)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

mod group {
    //! The benchmark group (a private module: `criterion_group!` generates
    //! an undocumented public function).
    use super::{append_commit, drain};
    criterion::criterion_group!(benches, append_commit, drain);
}

criterion_main!(group::benches);
