"""The monitoring daemon as a user runs it, for tests: a real `streamembed monitor` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_states(ledger: Path, *states: str) -> int:
    """Acquisitions of the ledger in any of ``states`` (0 before the ledger exists: the
    daemon creates the file a moment before its tables)."""
    if not ledger.exists():
        return 0
    marks = ",".join("?" * len(states))
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        query = f"SELECT COUNT(*) FROM acquisitions WHERE state IN ({marks})"
        try:
            return int(db.execute(query, states).fetchone()[0])
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return 0
            raise


@contextlib.contextmanager
def monitor_process(
    source: str, out: Path, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """`streamembed monitor` polling ``source`` every second (ResNet-18, one worker);
    killed on exit if a test left it running."""
    env = {
        **os.environ,
        "STREAMEMBED__MODEL__ARCH": "resnet18",
        "STREAMEMBED__CLUSTER__N_WORKERS": "1",
        "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
        "STREAMEMBED__DAEMON__METRICS_PORT": "0",  # tests run side by side
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "streamembed.cli", "monitor", "--source", source]
    cmd += ["--output", str(out), "--poll-seconds", "1"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the monitor")


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, as a service manager sends it; returns everything the daemon printed."""
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    return output


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails each file's first ``failures`` POSTs (500)."""

    def __init__(self, failures: int = 2):
        self.posts: list[tuple[str, int, dict]] = []  # (Idempotency-Key, answered code, body)
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                key = self.headers["Idempotency-Key"]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = sum(1 for k, _, _ in receiver.posts if k == key)
                code = 500 if seen < receiver.failures else 200
                receiver.posts.append((key, code, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?token=s3cret"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def delivered(self) -> Counter[str]:
        return Counter(k for k, code, _ in self.posts if code == 200)

    def close(self) -> None:
        self.httpd.shutdown()
