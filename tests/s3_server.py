"""An S3-compatible server on 127.0.0.1 for tests: moto's server mode in its own process.

Real HTTP and the real S3 REST API (signatures, multipart uploads, listings) as s3fs, zarr,
pyarrow and geopandas speak it; only the storage behind it is in memory. The process is outside
any run a test kills, so objects survive the run as they would on a real bucket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """``start()`` runs the server; ``env`` is what a client needs (keys and endpoint)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "streamembed-test",
            "AWS_SECRET_ACCESS_KEY": "streamembed-test-secret",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with suppress(OSError):
                urllib.request.urlopen(self.endpoint, timeout=1).read()
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise RuntimeError(f"moto server did not answer on {self.endpoint}")

    def make_bucket(self, name: str) -> str:
        """A new bucket; returns its URL."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **self._keys()).create_bucket(Bucket=name)
        return f"s3://{name}"

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **self._keys())

    def _keys(self) -> dict[str, str]:
        return {
            "aws_access_key_id": self.env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.env["AWS_SECRET_ACCESS_KEY"],
            "region_name": self.env["AWS_REGION"],
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def set_environ(env: dict[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, unset) variables in this process; returns the old values."""
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return old
