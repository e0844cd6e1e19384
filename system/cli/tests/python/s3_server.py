"""A real S3-compatible server on loopback for the archive suites: moto in
server mode (it enforces If-None-Match create-if-absent puts), with one
bucket created. Usage: s3_server.py PORT BUCKET. Prints "ready" once the
bucket exists and serves until killed or until stdin closes."""

import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    port = int(sys.argv[1])
    bucket = sys.argv[2]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="soilstream-test",
        aws_secret_access_key="soilstream-test-secret",
    )
    s3.create_bucket(Bucket=bucket)
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
