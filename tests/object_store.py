"""A local S3 server for the object-storage tests (moto's server, from the package registry).

The sweep, the data sources and Ray's own storage code reach it through the standard AWS
variables (AWS_ENDPOINT_URL and keys), so the code under test is the code that talks to
AWS S3, MinIO or an on-prem object store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from driver_side import free_ports

# Credentials moto accepts; never real ones.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # pyarrow, boto3 and Ray read the endpoint from here (an on-prem store sets the same).
    "AWS_ENDPOINT_URL": "",
    "AWS_EC2_METADATA_DISABLED": "true",  # no probe of a cloud metadata service
}
START_TIMEOUT_S = 30.0


def s3_env() -> dict:
    """The AWS variables of a local S3 server on a port free now (tests/conftest.py puts them
    in the test process's environment at start, so that every Ray process it starts, the
    session's Ray included, inherits them)."""
    return {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_ports(1)[0]}"}


class S3Server:
    """moto's S3 server at AWS_ENDPOINT_URL, started and stopped with this object."""

    def __init__(self):
        self.endpoint = os.environ["AWS_ENDPOINT_URL"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.env = {k: os.environ[k] for k in S3_ENV}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start; is moto[server] installed?")
                time.sleep(0.2)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_REGION"],
                            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if new) and return its URI, s3://name."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
