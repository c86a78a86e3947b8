"""Acquisition ledger (SQLite, WAL): what was seen, embedded, applied, failed, arrived late or
was skipped (another processing baseline of the same acquisition), plus each source's watermark.

States move forward only: seen -> embedded -> applied; failed, late and skipped are terminal
unless a run asks to retry failures. The ledger lives with the driver (the daemon), never on
workers.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ..acquisition import Acquisition
from ..layout import OutputFullError, is_disk_full
from .ledger_reads import (
    FINAL,
    ROW_SELECT,
    Failure,
    LedgerReads,
    LedgerRow,
    State,
    TileProgress,
    utc_now,
)

__all__ = [
    "FINAL",
    "ROW_SELECT",
    "Failure",
    "Ledger",
    "LedgerRow",
    "State",
    "TileProgress",
    "utc_now",
]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS acquisitions (
    id TEXT PRIMARY KEY,
    tile TEXT NOT NULL,
    datetime TEXT NOT NULL,
    item_href TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    n_anomalies INTEGER,
    snow_cells INTEGER,
    masked_cells INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_seen TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_tile_time ON acquisitions (tile, datetime);
CREATE TABLE IF NOT EXISTS source_failures (
    key TEXT PRIMARY KEY,
    href TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    url_key TEXT PRIMARY KEY,
    started TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS announcements (
    acquisition_id TEXT NOT NULL,
    url_key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (acquisition_id, url_key)
);
CREATE TABLE IF NOT EXISTS revisions (
    acquisition_id TEXT NOT NULL,
    revised_by TEXT NOT NULL,
    rows_before INTEGER NOT NULL,
    rows_after INTEGER NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (acquisition_id, revised_by)
);
CREATE TABLE IF NOT EXISTS compactions (
    tile TEXT PRIMARY KEY,
    started TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    source TEXT PRIMARY KEY,
    sensed TEXT NOT NULL,
    updated TEXT NOT NULL
);
"""


class Ledger(LedgerReads):
    """The ledger file at ``path``; every method is one short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # One transaction: a reader opening the file meanwhile sees every table or none.
            self._db.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
            self._migrate()
        except sqlite3.OperationalError as err:
            self._db.close()
            if is_disk_full(err, self.path.parent):
                raise OutputFullError(
                    f"the ledger {self.path} cannot be opened: its volume is full ({err}); "
                    "free space and run again"
                ) from None
            raise

    def _migrate(self) -> None:
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(acquisitions)")}
        if "failure_class" not in columns:
            self._db.execute("ALTER TABLE acquisitions ADD COLUMN failure_class TEXT")
        # Ledgers written before source_failures existed filed unparseable entries as
        # acquisitions of tile "?" (a sentinel in a NOT NULL column): move them over.
        self._db.executescript(
            "BEGIN;"
            " INSERT OR IGNORE INTO source_failures"
            "  SELECT id, item_href, COALESCE(reason, ''), first_seen, updated FROM acquisitions"
            "  WHERE tile = '?';"
            " DELETE FROM acquisitions WHERE tile = '?';"
            " COMMIT;"
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """The ledger's SQLite connection (the webhook outbox keeps its tables in the same file,
        so an apply and what is due to be announced are one truth)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_seen(self, acqs: Iterable[Acquisition]) -> int:
        """Insert acquisitions not yet known; returns how many were new."""
        now = utc_now()
        rows = [
            (a.id, a.tile, a.datetime.isoformat(), a.item_href, State.SEEN, now, now) for a in acqs
        ]
        cursor = self._db.executemany(
            "INSERT OR IGNORE INTO acquisitions (id, tile, datetime, item_href, state, first_seen,"
            " updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return max(0, cursor.rowcount)  # rows inserted (ignored ones count 0), not a count(*)

    def record_source_failure(self, key: str, href: str, reason: str) -> bool:
        """A source entry that could not even be parsed into an acquisition (it has no tile or
        time to file it under); returns whether it is new or its reason changed."""
        now = utc_now()
        known = self._db.execute(
            "SELECT reason FROM source_failures WHERE key=?", (key,)
        ).fetchone()
        self._db.execute(
            "INSERT INTO source_failures (key, href, reason, first_seen, updated)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET reason=excluded.reason, updated=excluded.updated",
            (key, href, reason, now, now),
        )
        return known is None or known[0] != reason

    def set_state(
        self,
        acq_id: str,
        state: str,
        reason: str | None = None,
        n_anomalies: int | None = None,
        snow_cells: int | None = None,
        masked_cells: int | None = None,
        failure: Failure | None = None,
    ) -> None:
        if state not in set(State):
            raise ValueError(f"unknown ledger state {state!r}")
        if state == State.FAILED and failure is None:
            failure = Failure.OTHER
        self._db.execute(
            "UPDATE acquisitions SET state=?, reason=?, n_anomalies=COALESCE(?, n_anomalies),"
            " snow_cells=COALESCE(?, snow_cells), masked_cells=COALESCE(?, masked_cells),"
            " attempts=attempts + (? IN ('failed', 'embedded')), failure_class=?, updated=?"
            " WHERE id=?",
            (
                state,
                reason,
                n_anomalies,
                snow_cells,
                masked_cells,
                state,
                failure,
                utc_now(),
                acq_id,
            ),
        )

    def record_revision(
        self, acq_id: str, revised_by: str, rows_before: int, rows_after: int
    ) -> None:
        """An applied acquisition's anomaly rows rewritten because ``revised_by`` (a late look,
        or a rebuild) was folded in before it: its count made current, the change kept."""
        self._db.executescript("BEGIN;")
        try:
            self._db.execute(
                "UPDATE acquisitions SET n_anomalies=?, updated=? WHERE id=?",
                (rows_after, utc_now(), acq_id),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO revisions VALUES (?, ?, ?, ?, ?)",
                (acq_id, revised_by, rows_before, rows_after, utc_now()),
            )
            # a webhook told of the old rows is told of the new ones (its "revised" event)
            self._db.execute(
                "UPDATE announcements SET status='revise', updated=? WHERE acquisition_id=?"
                " AND status IN ('sent', 'revised')",
                (utc_now(), acq_id),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def mark_compacting(self, tile: str, done: bool = False) -> None:
        """A tile whose store rows are being put in order (``done``: finished): a run killed
        meanwhile finishes it when it starts again, even with nothing new to do."""
        if done:
            self._db.execute("DELETE FROM compactions WHERE tile=?", (tile,))
        else:
            self._db.execute("INSERT OR REPLACE INTO compactions VALUES (?, ?)", (tile, utc_now()))

    def set_watermark(self, source: str, sensed: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO watermarks (source, sensed, updated) VALUES (?, ?, ?)"
            " ON CONFLICT(source) DO UPDATE SET sensed=excluded.sensed, updated=excluded.updated",
            (source, sensed.isoformat(), utc_now()),
        )
