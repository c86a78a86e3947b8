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
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..acquisition import Acquisition
from ..layout import OutputFullError, is_disk_full


class State(StrEnum):
    """An acquisition's state in the ledger (the values are what the SQLite file holds)."""

    SEEN = "seen"
    EMBEDDED = "embedded"
    APPLIED = "applied"
    LATE = "late"
    SKIPPED = "skipped"
    FAILED = "failed"


class Failure(StrEnum):
    """Why an acquisition failed, in the classes an operator acts on differently."""

    TRANSIENT = "transient"  # reads kept failing past their retries: try again later
    CORRUPT = "corrupt"  # a raster that cannot be opened or decoded: the product is bad
    MISSING = "missing"  # a band asset absent: the product, or source.band_mapping
    GRID = "grid"  # off its tile's grid (another CRS, too small)
    STORE = "store"  # the store holds another model or grid for the tile
    WORKER = "worker"  # the workers running it died (most often their memory limit)
    OTHER = "other"


# ids per SQL ``IN (...)``: under SQLite's default limit of bound parameters
_IN_BATCH = 500

FINAL = frozenset({State.APPLIED, State.FAILED, State.LATE, State.SKIPPED})

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


@dataclass(frozen=True)
class LedgerRow:
    id: str
    tile: str
    datetime: str
    item_href: str
    state: str
    reason: str | None
    n_anomalies: int | None
    snow_cells: int | None
    masked_cells: int | None
    attempts: int
    failure_class: str | None = None  # a Failure value where state is failed


# The columns of a LedgerRow, in its field order.
ROW_SELECT = (
    "SELECT id, tile, datetime, item_href, state, reason, n_anomalies, snow_cells, masked_cells,"
    " attempts, failure_class FROM acquisitions"
)


@dataclass(frozen=True)
class TileProgress:
    newest_sensed: str
    newest_applied: str | None
    anomaly_rows: int


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Ledger:
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

    def source_failures(self) -> list[tuple[str, str, str]]:
        """(key, href, reason) of every source entry that could not be parsed."""
        return list(self._db.execute("SELECT key, href, reason FROM source_failures ORDER BY key"))

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

    def compacting(self) -> list[str]:
        return [str(r[0]) for r in self._db.execute("SELECT tile FROM compactions ORDER BY tile")]

    def revisions(self, tile: str | None = None) -> list[tuple[str, str, int, int]]:
        """(acquisition, revised by, rows before, rows after), oldest first."""
        query = (
            "SELECT r.acquisition_id, r.revised_by, r.rows_before, r.rows_after FROM revisions r"
            " JOIN acquisitions a ON a.id = r.acquisition_id"
        )
        args: tuple[str, ...] = ()
        if tile is not None:
            query += " WHERE a.tile = ?"
            args = (tile,)
        rows = self._db.execute(query + " ORDER BY r.updated, r.acquisition_id", args)
        return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]

    def progress(self) -> dict[str, TileProgress]:
        """Per tile: the newest sensing time seen and applied, and the anomaly rows written."""
        rows = self._db.execute(
            "SELECT tile, MAX(datetime), MAX(CASE WHEN state='applied' THEN datetime END),"
            " COALESCE(SUM(n_anomalies), 0) FROM acquisitions GROUP BY tile ORDER BY tile"
        )
        return {tile: TileProgress(sensed, applied, int(n)) for tile, sensed, applied, n in rows}

    def failure_counts(self) -> dict[str, int]:
        """Failed acquisitions per failure class, and unparseable source entries as "source"."""
        out = dict(
            self._db.execute(
                "SELECT COALESCE(failure_class, 'other'), COUNT(*) FROM acquisitions"
                " WHERE state='failed' GROUP BY 1 ORDER BY 1"
            ).fetchall()
        )
        n_source = self._db.execute("SELECT COUNT(*) FROM source_failures").fetchone()[0]
        return {**out, "source": n_source} if n_source else out

    def state(self, acq_id: str) -> str | None:
        row = self._db.execute("SELECT state FROM acquisitions WHERE id=?", (acq_id,)).fetchone()
        return None if row is None else str(row[0])

    def states(self, ids: Iterable[str] | None = None) -> dict[str, State]:
        """Every acquisition's state, or those of ``ids`` only (by primary key: a daemon poll
        looks up what it found, not the whole archive)."""
        if ids is None:
            rows = self._db.execute("SELECT id, state FROM acquisitions")
            return {r[0]: State(r[1]) for r in rows}
        wanted = list(dict.fromkeys(ids))
        out: dict[str, State] = {}
        for i in range(0, len(wanted), _IN_BATCH):
            part = wanted[i : i + _IN_BATCH]
            sql = f"SELECT id, state FROM acquisitions WHERE id IN ({','.join('?' * len(part))})"
            out.update({r[0]: State(r[1]) for r in self._db.execute(sql, part)})
        return out

    def rows(self, state: str | None = None, tile: str | None = None) -> list[LedgerRow]:
        """Rows in tile and time order; of one state and/or one tile (indexed by tile)."""
        where, args = [], []
        if tile is not None:
            where.append("tile=?")
            args.append(tile)
        if state:
            where.append("state=?")
            args.append(state)
        sql = ROW_SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY tile, datetime"
        return [LedgerRow(*r) for r in self._db.execute(sql, args)]

    def updated_times(self, state: str) -> list[str]:
        """When each acquisition in ``state`` reached it (ISO seconds), oldest first."""
        sql = "SELECT updated FROM acquisitions WHERE state=? ORDER BY updated"
        return [str(r[0]) for r in self._db.execute(sql, (state,))]

    def applied_counts(self) -> dict[str, int]:
        """Applied acquisitions per tile (what the statistics states must hold)."""
        rows = self._db.execute(
            "SELECT tile, COUNT(*) FROM acquisitions WHERE state='applied' GROUP BY tile"
        )
        return {str(t): int(n) for t, n in rows}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM acquisitions").fetchone()[0])

    def summary(self) -> dict[str, dict[str, int]]:
        """{tile: {state: count}}."""
        out: dict[str, dict[str, int]] = {}
        for tile, state, n in self._db.execute(
            "SELECT tile, state, COUNT(*) FROM acquisitions GROUP BY tile, state ORDER BY tile"
        ):
            out.setdefault(tile, {})[state] = n
        return out

    def watermark(self, source: str) -> dt.datetime | None:
        """Sensing time up to which every product of ``source`` found so far reached a final state."""
        row = self._db.execute("SELECT sensed FROM watermarks WHERE source=?", (source,)).fetchone()
        return None if row is None else dt.datetime.fromisoformat(row[0])

    def set_watermark(self, source: str, sensed: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO watermarks (source, sensed, updated) VALUES (?, ?, ?)"
            " ON CONFLICT(source) DO UPDATE SET sensed=excluded.sensed, updated=excluded.updated",
            (source, sensed.isoformat(), utc_now()),
        )

    def processed_at(self, tile: str, when: dt.datetime) -> LedgerRow | None:
        """A row of ``tile`` sensed in the same second as ``when`` that was embedded or beyond."""
        lo = when.replace(microsecond=0)
        hi = lo + dt.timedelta(seconds=1)
        for r in self._db.execute(
            ROW_SELECT + " WHERE tile=? AND state IN (?, ?, ?)",
            (tile, State.EMBEDDED, State.APPLIED, State.LATE),
        ):
            t = dt.datetime.fromisoformat(r[2])
            if lo <= t < hi:
                return LedgerRow(*r)
        return None

    def find(self, tile: str, date: str) -> list[LedgerRow]:
        """The tile's rows sensed on ``date`` (YYYY-MM-DD), by the (tile, datetime) index."""
        sql = ROW_SELECT + " WHERE tile=? AND datetime >= ? AND datetime < ? ORDER BY datetime"
        return [LedgerRow(*r) for r in self._db.execute(sql, (tile, date, f"{date}\x7f"))]
