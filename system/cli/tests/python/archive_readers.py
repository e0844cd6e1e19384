"""Two outside readers of a soilstream archive: DuckDB (read_parquet with
hive partitioning) and pyarrow (a hive-partitioned dataset), on a local
directory or on S3. Prints one JSON object: rows per event date as each
reader sees them, the columns, and the event dates of the rows themselves.

Usage: archive_readers.py ROOT TOPIC [S3_ENDPOINT]
ROOT is a directory, or s3://BUCKET/PREFIX with S3_ENDPOINT given
(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""

import json
import os
import sys

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs


def main() -> None:
    root, topic = sys.argv[1], sys.argv[2]
    endpoint = sys.argv[3] if len(sys.argv) > 3 else None
    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    con = duckdb.connect()
    if root.startswith("s3://"):
        import s3fs

        con.register_filesystem(s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=endpoint))
        glob = f"{root}/{topic}/*/*.parquet"
        fs = pyarrow.fs.S3FileSystem(
            access_key=key,
            secret_key=secret,
            endpoint_override=endpoint,
            scheme="http",
            region="us-east-1",
        )
        base = f"{root[len('s3://'):]}/{topic}"
    else:
        glob = f"{root}/{topic}/*/*.parquet"
        fs = pyarrow.fs.LocalFileSystem()
        base = f"{root}/{topic}"
    duck = con.sql(
        f"""select cast(event_date as varchar) as d, count(*) as n,
                   count(distinct (kafka_partition, kafka_offset)) as distinct_offsets,
                   sum(case when strftime(event_time at time zone 'UTC', '%Y-%m-%d') = cast(event_date as varchar)
                            then 1 else 0 end) as dated_right
            from read_parquet('{glob}', hive_partitioning = true) group by 1 order by 1"""
    ).fetchall()
    table = ds.dataset(base, format="parquet", partitioning="hive", filesystem=fs).to_table()
    counts = pc.value_counts(table.column("event_date")).to_pylist()
    print(
        json.dumps(
            {
                "duckdb": {str(d): n for d, n, _, _ in duck},
                "duckdb_distinct_offsets": sum(x for _, _, x, _ in duck),
                "duckdb_dated_right": sum(x for _, _, _, x in duck),
                "pyarrow": {str(c["values"]): c["counts"] for c in counts},
                "columns": table.column_names,
            }
        )
    )


if __name__ == "__main__":
    main()
