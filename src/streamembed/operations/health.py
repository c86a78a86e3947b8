"""The daemon's HTTP face for orchestrators: /metrics (Prometheus), /healthz, /readyz.

Kubernetes' liveness probe asks /healthz whether the process still turns its loop (a driver
stuck on a lost scheduler or a hung read is restarted); the readiness probe asks /readyz
whether the daemon can do work now: the scheduler answers, at least one worker is there, the
source answered the last poll. A plain threaded HTTP server is enough for three GETs a scrape
interval; it runs beside the loop and never touches the ledger (the loop sets the gauges).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import DaemonMetrics, WorkersSeen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """One probe's answer: ok, and why (for the operator reading the body)."""

    ok: bool
    checks: dict[str, str]


class DaemonHealth:
    """What the loop last did, kept for the probes; every method is safe from any thread."""

    def __init__(self, poll_seconds: float, stale_polls: float):
        self.poll_seconds = poll_seconds
        self.stale_polls = stale_polls
        self._lock = threading.Lock()
        self._beat = time.monotonic()
        self._next_wait = poll_seconds
        self._source_ok: bool | None = None  # None: no poll finished yet
        self._cluster_lost: str | None = None  # why the last poll could not use the cluster

    def beat(self) -> None:
        """The loop is turning (called between polls and while a poll waits on tasks)."""
        with self._lock:
            self._beat = time.monotonic()

    def polled(self, source_ok: bool, next_wait: float) -> None:
        with self._lock:
            self._beat = time.monotonic()
            self._source_ok = source_ok
            self._cluster_lost = None
            self._next_wait = next_wait

    def cluster_lost(self, why: str, next_wait: float) -> None:
        """The last poll stopped because the scheduler went away (the source was not asked)."""
        with self._lock:
            self._beat = time.monotonic()
            self._cluster_lost = why
            self._next_wait = next_wait

    def live(self) -> Probe:
        with self._lock:
            silent = time.monotonic() - self._beat
            # A source outage stretches the wait between polls: that is not a stuck loop.
            allowed = self._next_wait + self.stale_polls * self.poll_seconds
        ok = silent <= allowed
        return Probe(ok, {"loop": f"last turn {silent:.0f} s ago (allowed {allowed:.0f} s)"})

    def source_ok(self) -> bool | None:
        with self._lock:
            return self._source_ok

    def cluster_problem(self) -> str | None:
        with self._lock:
            return self._cluster_lost


def scheduler_reachable(address: str, timeout: float = 2.0) -> bool:
    """A TCP connection to the scheduler opens (``tcp://host:port`` or ``tls://…``)."""
    parts = urlsplit(address)
    if parts.hostname is None or parts.port is None:
        return True  # an in-process scheduler has no socket to lose
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


class Readiness:
    """/readyz: the scheduler answers, a worker is there, the source answered the last poll."""

    def __init__(
        self,
        health: DaemonHealth,
        scheduler_address: str,
        workers: Callable[[], WorkersSeen],
        metrics: DaemonMetrics,
        timeout: float = 5.0,
    ):
        self.health = health
        self.address = scheduler_address
        self.workers = workers
        self.metrics = metrics
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="readyz")

    def check(self) -> Probe:
        checks: dict[str, str] = {}
        ok = scheduler_reachable(self.address)
        checks["scheduler"] = f"{self.address} " + ("answers" if ok else "does not answer")
        if ok:
            try:
                seen = self._pool.submit(self.workers).result(self.timeout)
            except (FutureTimeout, OSError) as err:
                ok = False
                checks["workers"] = f"the scheduler did not list its workers: {err!r}"
            else:
                self.metrics.observe_workers(seen)
                ok = seen.workers > 0
                checks["workers"] = f"{seen.workers} ({seen.gpu_workers} with a GPU)"
        source = self.health.source_ok()
        checks["source"] = {None: "no poll finished yet", True: "answered the last poll",
                            False: "failed the last poll"}[source]  # fmt: skip
        # The scheduler may answer again before the daemon has re-placed its actors: ready
        # only once a poll went through on the cluster as it is now.
        lost = self.health.cluster_problem()
        if lost is not None:
            checks["cluster"] = f"the last poll lost the cluster: {lost}"
        return Probe(ok and source is True and lost is None, checks)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def workers_seen(client: Any) -> WorkersSeen:
    """All workers of ``client``'s scheduler, and those advertising a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    gpu = sum(1 for w in workers if (w.get("resources") or {}).get("GPU"))
    return WorkersSeen(len(workers), gpu)


class MetricsServer:
    """/metrics, /healthz and /readyz on ``host:port`` in a daemon thread."""

    def __init__(
        self, metrics: DaemonMetrics, health: DaemonHealth, readiness: Readiness,
        host: str, port: int,
    ):  # fmt: skip
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    probe = health.live() if path == "/healthz" else readiness.check()
                    body = json.dumps({"ok": probe.ok, **probe.checks}).encode()
                    self._send(200 if probe.ok else 503, body, "application/json")
                else:
                    self._send(404, b"/metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
