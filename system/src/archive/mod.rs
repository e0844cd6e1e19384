//! archive: the sink component. It consumes `soil-moisture-clean` as a
//! member of a consumer group and writes Parquet files partitioned by the
//! readings' own event date, exactly once, to a local directory or any
//! S3-compatible object store.

pub mod layout;
pub mod store;
