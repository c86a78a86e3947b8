"""Alerts pushed out: an HTTP POST per new anomaly file, from a thread beside the daemon's loop.

Each payload's ``event`` is ``new`` (an acquisition's anomaly file, first time) or ``revised``
(a file already announced was rewritten because a late look was folded in before it: the
payload carries its rows now, none when all were withdrawn; ``Idempotency-Key`` is the id
with ``:revised:`` and the revision's time).

What is due comes from the ledger, not from memory: every applied acquisition with anomaly rows
that the webhook has not been told of. So a restart resends what a crash left unsent, and a
file already announced is never announced again (each announcement is recorded once the
receiver answered 2xx). The one window left, a crash between the receiver's 2xx and that
record, is covered by the ``Idempotency-Key`` header (the acquisition id) the receiver can use
to drop the repeat. Files applied before a webhook was first configured are not news and are
not sent. The URL may hold a token: it is never logged, and the ledger keys it by a hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import requests

from .. import storage
from ..acquisition import parse_datetime
from ..config import WebhookConfig
from ..layout import OutputLayout
from ..outputs.ledger import Ledger, LedgerRow
from ..outputs.outbox import Outbox
from .metrics import DaemonMetrics

log = logging.getLogger(__name__)

SENT, GIVEN_UP = "sent", "given_up"


def url_key(url: str) -> str:
    """The ledger's name for a webhook URL (a hash: the URL may carry a token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def summary(
    row: LedgerRow, href: str, rows: gpd.GeoDataFrame, event: str = "new"
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of one anomaly file: one Feature, its bbox as geometry (a
    revision that withdrew every row: no feature)."""
    date = parse_datetime(row.datetime).strftime("%Y-%m-%d")
    if len(rows) == 0:
        return {"type": "FeatureCollection", "event": event, "acquisition_id": row.id,
                "tile": row.tile, "date": date, "rows": 0, "features": []}  # fmt: skip
    west, south, east, north = (float(v) for v in rows.total_bounds)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    props = {
        "event": event,
        "acquisition_id": row.id,
        "tile": row.tile,
        "date": date,
        "datetime": row.datetime,
        "rows": len(rows),
        "labels": dict(sorted(Counter(rows["label"].astype(str)).items())),
        "href": href,
    }
    if "status" in rows:
        props["statuses"] = dict(sorted(Counter(rows["status"].astype(str)).items()))
    if "kind" in rows:  # sudden and gradual rows (files from before gradual alerts have none)
        props["kinds"] = dict(sorted(Counter(rows["kind"].fillna("sudden").astype(str)).items()))
    return {
        "type": "FeatureCollection",
        "event": event,
        "bbox": [west, south, east, north],
        "features": [
            {
                "type": "Feature",
                "id": row.id,
                "bbox": [west, south, east, north],
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": props,
            }
        ],
    }


class Announcer:
    """Posts each new anomaly file's summary to ``cfg.url``; ``wake()`` after every poll."""

    def __init__(
        self,
        cfg: WebhookConfig,
        layout: OutputLayout,
        metrics: DaemonMetrics | None = None,
    ):
        if cfg.url is None:
            raise ValueError("daemon.webhook.url is not set")
        self.cfg = cfg
        self.url = cfg.url
        self.key = url_key(cfg.url)
        self.layout = layout
        self.ledger_path: Path = layout.ledger
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        with Ledger(self.ledger_path) as ledger:
            Outbox(ledger, self.key).start()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the POST in progress (what is left goes out after the next start)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        # Its own ledger connection: SQLite connections stay in the thread that made them.
        with Ledger(self.ledger_path) as ledger:
            while not self._stop.is_set():
                self._wake.wait(timeout=30)
                self._wake.clear()
                try:
                    self._announce_due(ledger)
                except Exception as err:  # never fatal: the next wake tries again
                    log.error("webhook: could not read what is due: %s", err)

    def _announce_due(self, ledger: Ledger) -> None:
        outbox = Outbox(ledger, self.key)
        for row in outbox.unannounced():
            if self._stop.is_set():
                return
            date = parse_datetime(row.datetime).strftime("%Y-%m-%d")
            href = self.layout.anomaly_file(row.tile, date, row.id)
            try:
                with storage.open_input(href) as f:
                    rows = gpd.read_parquet(f)
            except (OSError, ValueError) as err:
                log.error("webhook: anomaly file %s of %s unreadable: %s", href, row.id, err)
                outbox.record(row.id, GIVEN_UP, 0)
                self._count("webhook_given_up")
                continue
            status, attempts = self._post(row.id, summary(row, href, rows))
            if status is None:
                return  # stopping mid-retry: not recorded, resent after the next start
            outbox.record(row.id, status, attempts)
        for row in outbox.revisions_due():
            if self._stop.is_set():
                return
            date = parse_datetime(row.datetime).strftime("%Y-%m-%d")
            href = self.layout.anomaly_file(row.tile, date, row.id)
            rows = gpd.GeoDataFrame()
            if storage.exists(href):  # none: every row of it was withdrawn
                with storage.open_input(href) as f:
                    rows = gpd.read_parquet(f)
            key = f"{row.id}:revised:{outbox.revised_at(row.id)}"
            status, attempts = self._post(key, summary(row, href, rows, event="revised"))
            if status is None:
                return
            outbox.record(row.id, "revised", attempts)

    def _post(self, acq_id: str, payload: dict[str, Any]) -> tuple[str | None, int]:
        """POST with doubling back-off; (sent | given_up | None when stopped, tries made)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/geo+json", "Idempotency-Key": acq_id}
        rows = payload["features"][0]["properties"]["rows"] if payload["features"] else 0
        wait = self.cfg.backoff_seconds
        for attempt in range(1, self.cfg.attempts + 1):
            try:
                resp = requests.post(
                    self.url, data=body, headers=headers, timeout=self.cfg.timeout_seconds
                )
                if 200 <= resp.status_code < 300:
                    log.info("webhook: announced %s (%d rows)", acq_id, rows)
                    self._count("webhook_sent")
                    return SENT, attempt
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as err:
                problem = type(err).__name__  # the message may quote the URL (and its token)
            self._count("webhook_errors")
            log.warning("webhook: try %d/%d for %s failed (%s)", attempt, self.cfg.attempts,
                        acq_id, problem)  # fmt: skip
            if attempt < self.cfg.attempts and self._stop.wait(wait):
                return None, attempt
            wait = min(2 * wait, self.cfg.max_backoff_seconds)
        log.error("webhook: gave up announcing %s after %d tries", acq_id, self.cfg.attempts)
        self._count("webhook_given_up")
        return GIVEN_UP, self.cfg.attempts

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).inc()
