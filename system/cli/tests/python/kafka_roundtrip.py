#!/usr/bin/env python3
"""Confluent's Python client at both ends of a Kafka round trip through the
soilstream schema registry and a real broker.

Started by ``system/cli/tests/e2e_registry_roundtrip.rs``. Two subcommands:

``produce``
    reads readings (JSON lines with soilstream's field names, as in a gateway
    ledger file) and produces them with a ``SerializingProducer`` whose value
    serializer is an ``AvroSerializer`` (the schema given with ``--schema``,
    registered under ``<topic>-value``). Key = sensor id, record timestamp =
    event time, headers ``gateway_id`` and ``seq``, partitioner
    ``murmur2_random`` like every soilstream client. Waits for every delivery
    report and prints one JSON line per record: sensor id, seq, partition,
    offset and the schema id in the value.

``consume``
    reads every partition of the topic from the beginning up to the high
    watermarks seen at the start with a ``DeserializingConsumer`` whose value
    deserializer is an ``AvroDeserializer`` without a reader schema (writer
    schemas fetched by id from the registry). A record that does not decode
    raises and fails the run. Prints one JSON line per record: partition,
    offset, key, timestamp type and ms, headers and the reading (with
    soilstream's field names: ``event_time_ms``).

Exit status 0 on success; errors go to stderr.
"""

import argparse
import json
import sys
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    DeserializingConsumer,
    SerializingProducer,
    TopicPartition,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer

from registry_client import event_time_ms, registry_client

# Timeout of one metadata or watermark request, in seconds.
CLIENT_TIMEOUT_S = 10


def to_avro(reading, _ctx):
    """soilstream's JSON field names to the Avro record's."""
    record = {
        "gateway_id": reading["gateway_id"],
        "sensor_id": reading["sensor_id"],
        "seq": reading["seq"],
        "event_time": reading["event_time_ms"],
        "moisture_vwc": reading["moisture_vwc"],
        "soil_temp_c": reading["soil_temp_c"],
        "bulk_ec_ds_m": reading["bulk_ec_ds_m"],
        "depth_cm": reading["depth_cm"],
        "battery_v": reading["battery_v"],
    }
    if "signal_rssi_dbm" in reading:
        record["signal_rssi_dbm"] = reading["signal_rssi_dbm"]
    return record


def from_avro(record):
    """The Avro record's field names to soilstream's."""
    reading = dict(record)
    reading["event_time_ms"] = event_time_ms(reading.pop("event_time"))
    return reading


def produce(args):
    with open(args.schema) as f:
        schema_str = f.read()
    with open(args.readings) as f:
        readings = [json.loads(line) for line in f if line.strip()]
    serializer = AvroSerializer(
        registry_client(args.registry), schema_str, to_avro, conf={"auto.register.schemas": True}
    )
    producer = SerializingProducer(
        {
            "bootstrap.servers": args.bootstrap,
            "key.serializer": StringSerializer("utf_8"),
            "value.serializer": serializer,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    delivered = []
    failures = []

    def on_delivery(reading):
        def report(error, message):
            if error is not None:
                failures.append(f"{reading['sensor_id']} seq {reading['seq']}: {error}")
                return
            value = message.value()
            delivered.append(
                {
                    "sensor_id": reading["sensor_id"],
                    "seq": reading["seq"],
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "schema_id": int.from_bytes(value[1:5], "big"),
                }
            )

        return report

    for reading in readings:
        producer.produce(
            topic=args.topic,
            key=reading["sensor_id"],
            value=reading,
            timestamp=reading["event_time_ms"],
            headers=[("gateway_id", reading["gateway_id"].encode()), ("seq", str(reading["seq"]).encode())],
            on_delivery=on_delivery(reading),
        )
        producer.poll(0)
    left = producer.flush(args.timeout_s)
    if left or failures or len(delivered) != len(readings):
        sys.exit(f"{left} record(s) not delivered, failures: {failures}")
    for line in delivered:
        print(json.dumps(line))


def consume(args):
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "soilstream-e2e-python",
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
    consumer.assign(
        [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p, h in high.items() if h > 0]
    )
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
                    "reading": from_avro(message.value()),
                }
            )
        )
    consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "consume"):
        command = sub.add_parser(name)
        command.add_argument("--bootstrap", required=True, help="bootstrap servers")
        command.add_argument("--registry", required=True, help="schema registry URL")
        command.add_argument("--topic", required=True)
        command.add_argument("--timeout-s", type=float, default=60.0)
        if name == "produce":
            command.add_argument("--schema", required=True, help="Avro schema file (.avsc)")
            command.add_argument("--readings", required=True, help="JSON lines of readings")
    args = parser.parse_args()
    if args.command == "produce":
        produce(args)
    else:
        consume(args)


if __name__ == "__main__":
    main()
