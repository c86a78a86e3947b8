"""`streamembed monitor`: the poll loop, its metrics and probes, and the alerts it pushes out.

The loop is the pipeline's incremental run, repeated: a poll discovers, embeds and applies
what is new; a source outage stretches the wait between polls (doubling up to
``pipeline.outage_max_wait_seconds``) and the daemon catches up when the source is back. A lost
scheduler is waited out the same way: when it answers again the daemon connects anew, places
the statistics actors again from their checkpoints and replays what the ledger has beyond them.
Around it: /metrics, /healthz and /readyz (``daemon.metrics_port``), and a webhook announcer
(``daemon.webhook.url``) fed from the ledger, neither of which can stop or slow the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from distributed import Client

from ..acquisition import SourceError
from ..config import Config
from ..runtime.pipeline import Pipeline
from ..runtime.report import RunReport, one_line
from .health import DaemonHealth, MetricsServer, Readiness, scheduler_reachable, workers_seen
from .metrics import DaemonMetrics
from .webhook import Announcer

log = logging.getLogger("streamembed")


class Daemon:
    """One output directory monitored on one Client, until ``stop`` is set."""

    def __init__(self, cfg: Config, client: Client, poll_seconds: float, stop: threading.Event):
        self.cfg = cfg
        self.client = client
        self.poll = poll_seconds
        self.stop = stop
        self.address = client.scheduler.address
        self._own_client: Client | None = None  # one this daemon connected after a loss
        self._cluster_lost = False
        self.metrics = DaemonMetrics()
        self.health = DaemonHealth(poll_seconds, cfg.daemon.stale_polls)
        self.server: MetricsServer | None = None
        self.readiness: Readiness | None = None
        if cfg.daemon.metrics_port is not None:
            # Up before the pipeline: /healthz answers while the actors are being placed.
            self.readiness = Readiness(
                self.health, self.address, lambda: workers_seen(self.client), self.metrics
            )
            try:
                self.server = MetricsServer(
                    self.metrics, self.health, self.readiness,
                    cfg.daemon.metrics_host, cfg.daemon.metrics_port,
                )  # fmt: skip
            except OSError as err:
                raise ValueError(
                    f"daemon.metrics_port {cfg.daemon.metrics_port} on {cfg.daemon.metrics_host}:"
                    f" {err.strerror}; set another port (0: any free one) or null to serve none"
                ) from None
            log.info("metrics and probes on port %d: /metrics /healthz /readyz", self.server.port)
        try:
            self.pipe = Pipeline(cfg, client)
        except BaseException:
            self._close_server()
            raise
        self.pipe.observe = self.metrics.observe_stage
        self.metrics.read_ledger(self.pipe.ledger)
        self.announcer: Announcer | None = None
        if cfg.daemon.webhook.url:
            self.announcer = Announcer(cfg.daemon.webhook, cfg.layout, self.metrics)
            self.announcer.wake()  # what a crash left unannounced goes out now
            log.info("announcing new anomaly files to the configured webhook")

    def run(self, cycles: int = 0, on_report: Callable[[RunReport], None] | None = None) -> None:
        """Poll until stopped (or ``cycles`` polls); each poll's report goes to ``on_report``."""
        cycle = outage = 0
        down = "source"  # what failed the last polls: the source, or the Dask cluster
        while not self.stop.is_set():
            cycle += 1
            wait = self.poll
            t0 = time.perf_counter()
            try:
                if self._cluster_lost:
                    self._reattach()
                report = self.pipe.run(stop=self._turning, progress=False, incremental=True)
            except SourceError as err:
                # The source is down or throttling past its retries: keep the daemon up and
                # the watermark unmoved, poll less often while it lasts, catch up after.
                outage += 1
                down = "source"
                wait = self._backoff(outage)
                self.metrics.source_errors.inc()
                log.error("poll %d: source unavailable (%d polls in a row), next poll in "
                          "%.0f s: %s", cycle, outage, wait, one_line(err),
                          extra={"poll": cycle})  # fmt: skip
                self.health.polled(source_ok=False, next_wait=wait)
            except (Exception, asyncio.CancelledError) as err:
                # A lost scheduler cancels the poll's futures and kills the actors' workers;
                # anything else is a fault of the daemon's own and stops it.
                if not self._cluster_gone():
                    raise
                self._cluster_lost = True
                outage += 1
                down = "Dask cluster"
                wait = self._backoff(outage)
                self.metrics.cluster_errors.inc()
                log.error("poll %d: the Dask cluster at %s was lost (%d polls in a row), next "
                          "try in %.0f s: %s", cycle, self.address, outage, wait, one_line(err),
                          extra={"poll": cycle})  # fmt: skip
                self.health.cluster_lost(one_line(err), next_wait=wait)
            else:
                if outage:
                    log.info("poll %d: %s back after %d failed polls", cycle, down, outage)
                outage = 0
                self._count(report, time.perf_counter() - t0)
                self.health.polled(source_ok=True, next_wait=wait)
                if report.nothing_new:
                    log.info("poll %d: nothing new (%d acquisitions known)", cycle,
                             report.discovered, extra={"poll": cycle})  # fmt: skip
                if on_report is not None:
                    on_report(report)
            if cycles and cycle >= cycles:
                break
            self.stop.wait(wait)
            self.health.beat()

    def _backoff(self, outage: int) -> float:
        cap = max(self.poll, self.cfg.pipeline.outage_max_wait_seconds)
        return float(min(self.poll * 2**outage, cap))

    def _cluster_gone(self) -> bool:
        """The scheduler does not answer, the client gave it up, or a statistics actor died."""
        if self.client.status != "running" or not scheduler_reachable(self.address):
            return True
        return not all(self.pipe.actor_alive(k) for k in range(len(self.pipe.actors)))

    def _reattach(self) -> None:
        """Connect anew where the client gave the scheduler up, then re-place lost actors."""
        if self.client.status != "running":
            # distributed's own reconnect gives up after its connect timeout; a scheduler
            # restarted by its orchestrator at the same address is met by a new Client.
            client = Client(self.address, security=self.client.security, set_as_default=False)
            if self._own_client is not None:
                with contextlib.suppress(Exception):
                    self._own_client.close()
            self.client = self._own_client = client
        placed = self.pipe.reattach(self.client)
        self._cluster_lost = False
        log.info("the Dask cluster at %s answers again: %d statistics shards placed anew from "
                 "their checkpoints", self.address, placed)  # fmt: skip

    def _turning(self) -> bool:
        """The pipeline's stop check, called every few seconds while tasks run: a heartbeat."""
        self.health.beat()
        return self.stop.is_set()

    def _count(self, report: RunReport, seconds: float) -> None:
        m = self.metrics
        m.poll_seconds.observe(seconds)
        m.last_poll.set_to_current_time()
        m.discovered.inc(report.discovered)
        m.new.inc(report.new)
        m.embedded.inc(report.embedded)
        m.applied.inc(report.applied)
        for reason_class, n in report.failed_by_class.items():
            m.failed.labels(reason_class).inc(n)
        m.anomaly_rows.inc(report.anomaly_rows)
        m.anomaly_files.inc(len(report.files))
        m.read_ledger(self.pipe.ledger)
        try:
            m.observe_workers(workers_seen(self.client))
        except OSError as err:
            log.warning("could not list the workers: %s", err)
        if self.announcer is not None and report.files:
            self.announcer.wake()

    def close(self) -> None:
        """Checkpoint the statistics, then stop the announcer and the metrics server."""
        try:
            self.pipe.close()
        finally:
            if self.announcer is not None:
                self.announcer.close()
            self._close_server()
            if self._own_client is not None:
                with contextlib.suppress(Exception):
                    self._own_client.close()

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.readiness is not None:
            self.readiness.close()
