"""The daemon's Prometheus metrics: what this process did, and what the ledger says now.

Counters (``*_total``) count this process's own work since it started, as Prometheus expects
of counters (``rate()`` across restarts is Prometheus's business). The ``streamembed_ledger_*``
gauges are read from the ledger after every poll, so they agree with ``streamembed status``
whatever ran before. One registry per daemon, never the global one: tests and a second daemon
in one process stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..acquisition import parse_datetime
from ..outputs.ledger import Ledger, State
from ..runtime.stages import StageSeconds

# Block tasks take 0.1-400 s (a CPU encoder on a full-size block), applies 0.01-30 s.
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_POLL_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


@dataclass(frozen=True)
class WorkersSeen:
    """Workers of the cluster at the last look: all of them, and those tagged ``GPU``."""

    workers: int
    gpu_workers: int


@dataclass(frozen=True)
class TileNumbers:
    newest_sensed: str
    newest_applied: str | None
    lag_seconds: float | None
    anomaly_rows: int


@dataclass(frozen=True)
class LedgerNumbers:
    """What the ledger says now: the gauges of /metrics and `streamembed status --json`."""

    acquisitions: dict[str, int]  # by state, every state listed
    failures: dict[str, int]  # by failure class (and "source")
    tiles: dict[str, TileNumbers]


def ledger_numbers(ledger: Ledger) -> LedgerNumbers:
    totals = {str(s): 0 for s in State}
    for counts in ledger.summary().values():
        for state, n in counts.items():
            totals[state] += n
    tiles = {}
    for tile, p in ledger.progress().items():
        lag = None
        if p.newest_applied is not None:
            delta = parse_datetime(p.newest_sensed) - parse_datetime(p.newest_applied)
            lag = delta.total_seconds()
        tiles[tile] = TileNumbers(p.newest_sensed, p.newest_applied, lag, p.anomaly_rows)
    return LedgerNumbers(totals, ledger.failure_counts(), tiles)


class DaemonMetrics:
    """Every metric ``streamembed monitor`` serves, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"streamembed_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"streamembed_{name}", doc, labels, registry=r)

        self.discovered = counter("acquisitions_discovered", "Products listed by the source")
        self.new = counter("acquisitions_new", "Products seen for the first time")
        self.embedded = counter("acquisitions_embedded", "Acquisitions stored whole")
        self.applied = counter("acquisitions_applied", "Acquisitions applied to the statistics")
        self.failed = counter("acquisitions_failed", "Failed acquisitions", "reason_class")
        self.anomaly_rows = counter("anomaly_rows_written", "Anomaly rows written")
        self.anomaly_files = counter("anomaly_files_written", "Anomaly GeoParquet files written")
        self.stage_seconds = Histogram(
            "streamembed_stage_seconds", "Worker seconds of one task, by pipeline stage",
            ["stage"], buckets=_STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.poll_seconds = Histogram(
            "streamembed_poll_duration_seconds", "Seconds of one poll (discovery to last apply)",
            buckets=_POLL_BUCKETS, registry=r,
        )  # fmt: skip
        self.source_errors = counter("source_errors", "Polls the source did not answer")
        self.cluster_errors = counter(
            "cluster_errors", "Polls stopped because the Dask scheduler or its workers were lost"
        )
        self.last_poll = gauge("last_poll_timestamp_seconds", "When the last poll finished")
        self.workers = gauge("workers", "Dask workers seen")
        self.gpu_workers = gauge("gpu_workers", "Dask workers with a GPU resource")
        self.ledger_acquisitions = gauge(
            "ledger_acquisitions", "Acquisitions in the ledger, by state", "state"
        )
        self.ledger_failures = gauge(
            "ledger_failures", "Failed acquisitions in the ledger, by class", "reason_class"
        )
        self.ledger_anomaly_rows = gauge("ledger_anomaly_rows", "Anomaly rows per tile", "tile")
        self.lag = gauge(
            "tile_lag_seconds", "Newest sensing time seen minus newest applied, per tile", "tile"
        )
        self.webhook_sent = counter("webhook_sent", "Anomaly files announced to the webhook")
        self.webhook_errors = counter("webhook_errors", "Webhook tries that failed")
        self.webhook_given_up = counter("webhook_given_up", "Files not announced after all tries")

    def observe_stage(self, seconds: StageSeconds) -> None:
        """One task's seconds: each stage it spent time in is one observation."""
        for stage, value in seconds.as_dict().items():
            if value > 0:
                self.stage_seconds.labels(stage).observe(value)

    def observe_workers(self, seen: WorkersSeen) -> None:
        self.workers.set(seen.workers)
        self.gpu_workers.set(seen.gpu_workers)

    def read_ledger(self, ledger: Ledger) -> LedgerNumbers:
        """Set the ledger gauges from the ledger as it is now (and return what they hold)."""
        numbers = ledger_numbers(ledger)
        for state, n in numbers.acquisitions.items():
            self.ledger_acquisitions.labels(state).set(n)
        self.ledger_failures.clear()
        for reason_class, n in numbers.failures.items():
            self.ledger_failures.labels(reason_class).set(n)
        for tile, t in numbers.tiles.items():
            self.ledger_anomaly_rows.labels(tile).set(t.anomaly_rows)
            if t.lag_seconds is not None:
                self.lag.labels(tile).set(t.lag_seconds)
        return numbers
