#!/usr/bin/env python3
"""Reads qaqc's clean topic with Confluent's Python client, as any downstream
consumer would.

Started by ``system/cli/tests/e2e_qaqc.rs``. Reads every partition of the
topic (``soil-moisture-clean`` by default) from the beginning up to the high
watermarks seen at the start with a ``DeserializingConsumer`` whose value
deserializer is an ``AvroDeserializer`` without a reader schema: the writer
schema (``io.soilstream.qaqc.CleanSoilReading``) is fetched by the id in each
value from the schema registry. A record that does not decode raises and
fails the run.

Prints one JSON line per record: partition, offset, key, whether the
timestamp is the producer's (CreateTime) and its ms, the headers, and the
decoded record with ``event_time`` as integer ms (``event_time_ms``).

Exit status 0 on success; errors go to stderr.
"""

import argparse
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, DeserializingConsumer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer

from registry_client import event_time_ms, registry_client

# Timeout of one metadata or watermark request, in seconds.
CLIENT_TIMEOUT_S = 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers")
    parser.add_argument("--registry", required=True, help="schema registry URL")
    parser.add_argument("--topic", default="soil-moisture-clean")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args()

    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "soilstream-e2e-python-clean",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Tansu waits about half of this even when data is ready.
            "fetch.wait.max.ms": 20,
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(registry_client(args.registry)),
        }
    )
    metadata = consumer.list_topics(args.topic, timeout=CLIENT_TIMEOUT_S)
    topic = metadata.topics[args.topic]
    if topic.error is not None:
        sys.exit(f"topic {args.topic}: {topic.error}")
    high = {}
    for partition in sorted(topic.partitions):
        _low, high[partition] = consumer.get_watermark_offsets(
            TopicPartition(args.topic, partition), timeout=CLIENT_TIMEOUT_S
        )
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p, h in high.items() if h > 0])
    next_offset = {p: 0 for p in high}
    deadline = time.monotonic() + args.timeout_s
    while any(next_offset[p] < high[p] for p in high):
        if time.monotonic() > deadline:
            sys.exit(f"not read to the end within {args.timeout_s} s: {next_offset} of {high}")
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error() is not None:
            sys.exit(f"consume error: {message.error()}")
        partition, offset = message.partition(), message.offset()
        if offset >= high[partition]:
            continue
        next_offset[partition] = offset + 1
        record = dict(message.value())
        record["event_time_ms"] = event_time_ms(record.pop("event_time"))
        timestamp_type, timestamp_ms = message.timestamp()
        print(
            json.dumps(
                {
                    "partition": partition,
                    "offset": offset,
                    "key": message.key(),
                    "create_time": timestamp_type == TIMESTAMP_CREATE_TIME,
                    "timestamp_ms": timestamp_ms,
                    "headers": {k: v.decode() for k, v in (message.headers() or [])},
                    "record": record,
                }
            )
        )
    consumer.close()


if __name__ == "__main__":
    main()
