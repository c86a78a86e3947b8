"""What the acquisition ledger holds and says: its states and failure classes, its row, and
every query the driver, ``status`` and the reports ask of it (``LedgerReads``; ``Ledger`` in
``ledger.py`` adds the writes over the same SQLite connection).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


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
IN_BATCH = 500

FINAL = frozenset({State.APPLIED, State.FAILED, State.LATE, State.SKIPPED})


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


class LedgerReads:
    """The ledger's queries; each is one read on ``_db`` (the ledger's connection)."""

    _db: sqlite3.Connection

    def source_failures(self) -> list[tuple[str, str, str]]:
        """(key, href, reason) of every source entry that could not be parsed."""
        return list(self._db.execute("SELECT key, href, reason FROM source_failures ORDER BY key"))

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
        for i in range(0, len(wanted), IN_BATCH):
            part = wanted[i : i + IN_BATCH]
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
