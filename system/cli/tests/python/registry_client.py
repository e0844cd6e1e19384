#!/usr/bin/env python3
"""Runs Confluent's own Python client against the soilstream schema registry.

Started by ``system/cli/tests/registry_python.rs`` with a running
``soilstream registry serve``. It checks, with ``confluent-kafka``'s
``SchemaRegistryClient``, ``AvroSerializer`` and ``AvroDeserializer``:

* the registry API calls a Confluent client makes, and that errors raise
  ``SchemaRegistryError`` with the registry's ``error_code``;
* that a reading serialized by Python decodes in Python, and that a value
  produced by soilstream (``ReadingCodec`` + ``to_wire``) decodes in Python.

It prints one JSON object on stdout for the Rust side, which decodes the
Python-produced values with soilstream's codec.

The serde helpers (``reading_serializer``, ``reading_deserializer``,
``value_context``) are what a broker round trip needs as well: hand the
serializer's bytes to ``confluent_kafka.Producer.produce(value=...)`` and feed
consumed values to the deserializer with the same context.
"""

import argparse
import datetime
import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def registry_client(url):
    # No retries: an error must surface once, with its code.
    return SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": 10})


def value_context(topic):
    return SerializationContext(topic, MessageField.VALUE)


def reading_serializer(client, schema_str):
    """Serializes reading dicts, registering the schema under <topic>-value."""
    return AvroSerializer(client, schema_str, conf={"auto.register.schemas": True})


def reading_deserializer(client):
    """Deserializes any value whose writer schema the registry knows."""
    return AvroDeserializer(client)


def event_time_ms(value):
    """fastavro decodes timestamp-millis to an aware datetime."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    return value


def expect_error(code, http_status, call, *args, **kwargs):
    try:
        result = call(*args, **kwargs)
    except SchemaRegistryError as error:
        assert error.error_code == code, f"{call.__name__}: expected {code}, got {error!r}"
        assert error.http_status_code == http_status, f"{call.__name__}: {error!r}"
        return error
    raise AssertionError(f"{call.__name__}{args}: expected error {code}, got {result!r}")


def check_registry_api(url, subject, v1, v2, soilstream_id):
    client = registry_client(url)
    checks = []
    avro_v1 = Schema(v1, "AVRO")

    # soilstream registered v1 under the subject; the same schema gets the
    # same id from any client.
    assert subject in client.get_subjects(), client.get_subjects()
    assert client.register_schema(subject, avro_v1) == soilstream_id
    assert json.loads(client.get_schema(soilstream_id).schema_str) == json.loads(v1)
    latest = client.get_latest_version(subject)
    assert (latest.subject, latest.version, latest.schema_id) == (subject, 1, soilstream_id), latest
    found = client.lookup_schema(subject, avro_v1)
    assert (found.version, found.schema_id) == (1, soilstream_id), found
    assert client.get_versions(subject) == [1]
    assert client.get_version(subject, 1).schema_id == soilstream_id
    checks.append("register/get_schema/get_latest_version/lookup_schema/get_versions")

    # Compatibility: v2 adds an optional field; a type change is refused.
    assert client.test_compatibility(subject, Schema(v2, "AVRO")) is True
    moisture_as_string = v1.replace(
        '{"name": "moisture_vwc", "type": "double"', '{"name": "moisture_vwc", "type": "string"'
    )
    assert moisture_as_string != v1
    assert client.test_compatibility(subject, Schema(moisture_as_string, "AVRO")) is False
    assert client.test_compatibility_all_versions(subject, Schema(v2, "AVRO")) is True
    error = expect_error(409, 409, client.register_schema, subject, Schema(moisture_as_string, "AVRO"))
    assert "field `moisture_vwc`: type changed from double to string" in error.error_message, error
    checks.append("test_compatibility and 409 naming the field")

    # Configuration.
    assert client.get_compatibility() == "BACKWARD"
    expect_error(40408, 404, client.get_compatibility, subject)
    assert client.set_compatibility(subject, "full") == {"compatibility": "FULL"}
    assert client.get_compatibility(subject) == "FULL"
    assert client.get_config(subject).compatibility_level.value == "FULL"
    expect_error(42203, 422, client.set_compatibility, subject, "SIDEWAYS")
    assert client.delete_config(subject).compatibility_level.value == "FULL"
    checks.append("set_compatibility/get_compatibility/get_config/delete_config")

    # Error codes.
    expect_error(42201, 422, client.register_schema, subject, Schema('{"type": "nope"}', "AVRO"))
    expect_error(42201, 422, client.register_schema, subject, Schema("{}", "PROTOBUF"))
    expect_error(40403, 404, client.get_schema, 999999)
    expect_error(40401, 404, client.get_latest_version, "no-such-subject")
    expect_error(40402, 404, client.get_version, subject, 99)
    expect_error(42202, 422, client.get_version, subject, 0)
    expect_error(40403, 404, client.lookup_schema, subject, Schema(moisture_as_string, "AVRO"))
    checks.append("errors 40401 40402 40403 42201 42202 42203")

    # Deletion: soft, then permanent; ids stay with their schema.
    scratch = "python-scratch-value"
    scratch_schema = Schema(
        '{"type":"record","name":"Scratch","fields":[{"name":"a","type":"int"}]}', "AVRO"
    )
    scratch_id = client.register_schema(scratch, scratch_schema)
    expect_error(40405, 404, client.delete_subject, scratch, permanent=True)
    expect_error(40407, 404, client.delete_version, scratch, 1, permanent=True)
    assert client.delete_subject(scratch) == [1]
    expect_error(40404, 404, client.delete_subject, scratch)
    assert scratch not in client.get_subjects()
    assert scratch in client.get_subjects(deleted=True)
    assert client.delete_subject(scratch, permanent=True) == [1]
    assert scratch not in client.get_subjects(deleted=True)
    # A fresh client: this one cached the schema when it registered it.
    expect_error(40403, 404, registry_client(url).get_schema, scratch_id)
    assert client.register_schema(scratch, scratch_schema) == scratch_id
    assert client.delete_version(scratch, 2) == 2
    expect_error(40406, 404, client.delete_version, scratch, 2)
    checks.append("delete_subject/delete_version soft and permanent, 40404-40407")
    return checks


def check_serde(client, topic, v2, soilstream_value, soilstream_reading):
    ctx = value_context(topic)
    deserializer = reading_deserializer(client)

    # A value soilstream produced (ReadingCodec + to_wire) decodes here.
    decoded = deserializer(soilstream_value, ctx)
    decoded["event_time"] = event_time_ms(decoded["event_time"])
    assert decoded == soilstream_reading, (decoded, soilstream_reading)

    # Python serializes a v2 reading (the new optional field set), registering
    # v2 under BACKWARD, and reads it back.
    reading = dict(soilstream_reading)
    reading.update(seq=soilstream_reading["seq"] + 1, battery_v=3.61, signal_rssi_dbm=-67)
    serializer = reading_serializer(client, v2)
    value = serializer(reading, ctx)
    assert value[0] == 0, "Confluent wire format magic byte"
    schema_id = int.from_bytes(value[1:5], "big")
    back = deserializer(value, ctx)
    back["event_time"] = event_time_ms(back["event_time"])
    assert back == reading, (back, reading)
    return value, schema_id, reading


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--schema-v1", required=True, help="path of soil_reading.avsc")
    parser.add_argument("--schema-v2", required=True, help="path of soil_reading_v2.avsc")
    parser.add_argument("--soilstream-id", type=int, required=True)
    parser.add_argument("--soilstream-value-hex", required=True)
    parser.add_argument("--soilstream-reading-json", required=True)
    args = parser.parse_args()

    with open(args.schema_v1) as f:
        v1 = f.read()
    with open(args.schema_v2) as f:
        v2 = f.read()
    subject = f"{args.topic}-value"
    checks = check_registry_api(args.url, subject, v1, v2, args.soilstream_id)
    value, schema_id, reading = check_serde(
        registry_client(args.url),
        args.topic,
        v2,
        bytes.fromhex(args.soilstream_value_hex),
        json.loads(args.soilstream_reading_json),
    )
    checks.append("AvroSerializer/AvroDeserializer round trip; soilstream value decoded")
    json.dump(
        {
            "checks": checks,
            "python_value_hex": value.hex(),
            "python_schema_id": schema_id,
            "python_reading": reading,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
