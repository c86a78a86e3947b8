"""The Dask actor around ``stats.py``: one per shard, holding the rolling state of its tiles.

A shard owns a fixed set of tiles (``shard_of``); it reads each acquisition's embeddings from
the Zarr store itself (only ids travel), applies them strictly in time order, writes the
anomalies through the sink and checkpoints tile state atomically to ``state/<tile>.npz``.
Re-applying an acquisition already in the state is a no-op, and re-applying one after a crash
that lost a checkpoint rewrites the same anomaly file with the same rows.

Memory is bounded by ``stats.max_state_mib``, not by the number of tiles a shard owns: past
the budget the least recently applied tiles are checkpointed and dropped, and loaded again
from their checkpoint when their next acquisition comes (a full tile at 2048-d is ~1 GB).
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
from distributed.actor import BaseActorFuture

from .. import storage
from ..config import StatsConfig, StoreConfig
from ..detection.stats import ScoreResult, TileState, update, usable_cells
from ..faults import crash_point
from ..grid import TileGrid
from ..layout import OutputLayout
from ..outputs.sink import records_from_result, write_alert_table, write_anomalies
from ..outputs.store import EmbeddingStore, StoredAcquisition
from .stages import StageSeconds
from .state_cache import TileStateCache


class ApplyStatus(StrEnum):
    """What applying an acquisition to its tile's statistics did."""

    APPLIED = "applied"
    LATE = "late"  # older than the tile's last applied look by more than the allowed lateness
    ALREADY = "already_applied"  # in the state already (a replay after a crash)


@dataclass(frozen=True)
class Revision:
    """A look replayed after an earlier one was folded in: its anomaly rows before and now."""

    acquisition_id: str
    rows_before: int
    rows_after: int
    path: str | None  # its anomaly file now (None: it has no rows any more)


@dataclass(frozen=True)
class Rewind:
    """What folding a late look in (or a rebuild) replayed and what it cost."""

    base_generation: int  # the kept checkpoint gone back to (-1: the tile's first look)
    replayed: int  # looks applied again after it (the late one included)
    seconds: float
    bytes_read: int  # store and state bytes read
    bytes_written: int  # state bytes written (anomaly files aside)


@dataclass(frozen=True)
class ApplyResult:
    """What applying one acquisition did (the actor's reply to the driver)."""

    status: ApplyStatus
    n_anomalies: int = 0
    path: str | None = None
    snow_cells: int | None = None
    masked_cells: int | None = None
    seconds: StageSeconds = field(default_factory=StageSeconds)
    revised: tuple[Revision, ...] = ()  # the later looks a late one changed
    rewind: Rewind | None = None


@dataclass(frozen=True)
class ShardMetrics:
    """What one statistics shard has done so far (the benchmark reads it)."""

    cell_updates: int
    busy_seconds: float
    resident_state_mib: float
    resident_tiles: int
    evictions: int
    # tile checkpoint bytes read and written (mean blocks: those an acquisition can see or
    # changed; the seconds are each apply's StageSeconds.state_load)
    state_read_mib: float = 0.0
    state_written_mib: float = 0.0


class StatsShard(Protocol):
    """The driver's handle on a ``StatsActor`` (a ``distributed.Actor``): each call returns a
    future of what the actor method returns, so mypy checks the contract across processes."""

    def apply(
        self, tile: str, acquisition_id: str, lateness_days: float | None = None
    ) -> BaseActorFuture[ApplyResult]: ...

    def rebuild(
        self, tile: str, from_day: float, ids: list[str]
    ) -> BaseActorFuture[ApplyResult]: ...

    def applied_ids(self, tile: str) -> BaseActorFuture[list[str]]: ...

    def applied_counts(self, tiles: list[str]) -> BaseActorFuture[dict[str, int]]: ...

    def checkpoint(self, tile: str | None = None) -> BaseActorFuture[int]: ...

    def metrics(self) -> BaseActorFuture[ShardMetrics]: ...


def shard_of(tile: str, shards: int) -> int:
    """Stable tile -> shard assignment (not Python's salted hash)."""
    return zlib.crc32(tile.encode()) % shards


def day_number(when: dt.datetime) -> float:
    return when.timestamp() / 86400.0


class StatsActor:
    """Per-shard statistics; every public method is one actor call."""

    def __init__(self, output_dir: str, stats: StatsConfig, store: StoreConfig, model_id: str):
        self.layout = OutputLayout(output_dir)
        self.cfg = stats
        self.store = EmbeddingStore(self.layout.store, store)
        self.model_id = model_id
        self.cache = TileStateCache(self.layout, stats)
        self.cell_updates = 0
        self.busy_seconds = 0.0

    def applied_ids(self, tile: str) -> list[str]:
        """Acquisitions folded into the tile's state (in memory, else its last checkpoint)."""
        return self.cache.applied_ids(tile)

    def applied_counts(self, tiles: list[str]) -> dict[str, int]:
        """How many acquisitions each tile's state holds: one actor call for many tiles (the
        driver's start-up check), reading only the id list of a checkpoint not in memory."""
        return {t: len(self.cache.applied_ids(t)) for t in tiles}

    def apply(
        self, tile: str, acquisition_id: str, lateness_days: float | None = None
    ) -> ApplyResult:
        """Fold one stored acquisition into its tile's state and write its anomalies.

        A look older than the tile's newest applied one is folded in where it belongs: the
        tile goes back to a kept checkpoint from before it and the looks after it are applied
        again, their anomaly files rewritten (``Revision``). ``lateness_days``: how far back
        that may go (the daemon's ``stats.allowed_lateness_days``); an older look is LATE.
        None: any look (a backfill's retry, a rebuild).
        """
        t0 = time.perf_counter()
        grid = self.store.grid(tile)
        if grid is None:
            raise KeyError(f"tile {tile} has no embeddings in {self.store.root}")
        stored = self.store.read(tile, acquisition_id)
        t_read = time.perf_counter()
        usable = usable_cells(stored.clear, self.cfg)
        state = self.cache.get(tile, (grid.n_cells_y, grid.n_cells_x),
                               stored.embedding.shape[-1], usable)  # fmt: skip
        t_load = time.perf_counter()
        path = self.layout.anomaly_file(tile, stored.time.strftime("%Y-%m-%d"), acquisition_id)
        if acquisition_id in state.applied_ids:
            n = _count_rows(path)
            return ApplyResult(ApplyStatus.ALREADY, n, str(path) if n else None)
        day = day_number(stored.time)
        if state.applied_ids and day <= state.last_time_day:
            if lateness_days is not None and day < state.last_time_day - lateness_days:
                return ApplyResult(ApplyStatus.LATE)
            # Nothing of this apply stays referenced: a full tile's state and look are ~0.5 GB
            # each, and the rewind holds a second state beside the look it replays.
            del state, stored
            return self._rewind(tile, acquisition_id, day)
        result, seconds = self._fold(tile, state, stored)
        return _result(result, StageSeconds(stats_read=t_read - t0, state_load=t_load - t_read,
                                            **seconds))  # fmt: skip

    def rebuild(self, tile: str, from_day: float, ids: list[str]) -> ApplyResult:
        """Replay the tile's looks ``ids`` (its stored ones) from the newest kept checkpoint
        before ``from_day`` (none: from its first look), rewriting their anomaly files."""
        grid = self.store.grid(tile)
        if grid is None:
            raise KeyError(f"tile {tile} has no embeddings in {self.store.root}")
        none = np.zeros(grid.n_cells_y * grid.n_cells_x, bool)
        state = self.cache.get(tile, (grid.n_cells_y, grid.n_cells_x), self.store.dim(tile), none)
        applied = dict(zip(state.applied_ids, state.applied_days, strict=True))
        del state
        days = self.store.days(tile)
        todo = {i: days[i] for i in ids if i in days}
        return self._replay(tile, from_day, {**applied, **todo}, None)

    def _rewind(self, tile: str, late: str, day: float) -> ApplyResult:
        """Fold the look ``late`` in at its ``day`` (see ``apply``)."""
        state = self.cache.states[tile]
        applied = dict(zip(state.applied_ids, state.applied_days, strict=True))
        del state
        if any(np.isnan(d) for d in applied.values()):  # a checkpoint from before the days
            days = self.store.days(tile)
            applied = {i: days.get(i, d) for i, d in applied.items()}
        applied[late] = day
        return self._replay(tile, day, applied, late)

    def _replay(
        self, tile: str, day: float, looks: dict[str, float], late: str | None
    ) -> ApplyResult:
        """Go back to the newest kept checkpoint before ``day`` and apply the looks of
        ``looks`` (id -> day) after it in sensing order, each read from the store in its turn;
        the result is the ``late`` look's (else the last one's), with every other replayed
        look's anomaly rows before and after."""
        t0 = time.perf_counter()
        path = self.cache.path(tile)
        if self.cache.changed(tile):  # the timeline gone back from is kept whole until replaced
            self.cache.checkpoint(tile)
        old = self.cache.states[tile]
        shape, dim, generation = old.shape, old.mean.shape[1], old.generation
        del old
        self.cache.drop(tile)  # gone before the base is read: one state in memory at a time
        base_entry = self.cache.base_before(tile, {i: d for i, d in looks.items() if i != late},
                                            day)  # fmt: skip
        if base_entry is None:
            base = self.cache.empty(shape, dim)
            base.source = path if storage.exists(path) else None
        else:
            base = TileState.load(base_entry.path, lazy=True, blocks_at=path)
        base.generation = generation  # new saves never reuse a replaced timeline's names
        self.cache.put(tile, base)
        replay = sorted((d, i) for i, d in looks.items() if i not in base.applied_ids)
        revised: list[Revision] = []
        result: ApplyResult | None = None
        own: ApplyResult | None = None  # the late look's (a rebuild: the last look's)
        read = 0
        for _, acq in replay:
            stored = self.store.read(tile, acq)
            read += stored.embedding.nbytes
            before_path = self.layout.anomaly_file(tile, stored.time.strftime("%Y-%m-%d"), acq)
            before = _count_rows(before_path)
            result, _ = self._fold(tile, base, stored)
            del stored
            if acq != late:
                revised.append(Revision(acq, before, result.n_anomalies, result.path))
            else:
                own = result
        own = own or result or ApplyResult(ApplyStatus.ALREADY)  # nothing after the base
        self.cache.checkpoint(tile)
        rewind = Rewind(
            -1 if base_entry is None else base_entry.generation,
            len(replay),
            time.perf_counter() - t0,
            read + base.bytes_read,
            base.bytes_written,
        )
        crash_point("actor.rewound")
        seconds = StageSeconds(stats_apply=rewind.seconds)  # the whole replay, as one apply
        return ApplyResult(own.status, own.n_anomalies, own.path, own.snow_cells,
                           own.masked_cells, seconds, tuple(revised), rewind)  # fmt: skip

    def _fold(
        self, tile: str, state: TileState, stored: StoredAcquisition
    ) -> tuple[ApplyResult, dict[str, float]]:
        """Apply one look newer than every look in ``state``, write its anomalies (a file
        from an earlier timeline replaced, or removed when the look has no rows now) and alert
        table, checkpoint per ``stats.checkpoint_every``."""
        t0 = time.perf_counter()
        grid = self.store.grid(tile)
        assert grid is not None
        self.cache.load_blocks(tile, state, usable_cells(stored.clear, self.cfg))
        t_load = time.perf_counter()
        day = day_number(stored.time)
        result = update(
            state, stored.embedding, stored.clear, stored.snow, stored.indices, day, self.cfg
        )
        t_stats = time.perf_counter()
        state.applied_ids.append(stored.acquisition_id)
        state.applied_days.append(day)
        n_rows, written = _sink(self.layout, tile, grid, state, stored, result, self.model_id)
        t_sink = time.perf_counter()
        crash_point("actor.sunk")
        if self.cache.applied(tile) >= self.cfg.checkpoint_every:
            self.cache.checkpoint(tile)
        self.cache.evict(keep=tile)
        crash_point("actor.checkpointed")
        t_end = time.perf_counter()
        self.cell_updates += int(result.valid.sum())
        self.busy_seconds += t_end - t0
        res = ApplyResult(ApplyStatus.APPLIED, n_rows, written, result.snow_cells,
                          result.masked_cells)  # fmt: skip
        return res, {
            "stats_apply": t_stats - t_load,
            "sink_write": t_sink - t_stats,
            "stats_checkpoint": t_end - t_sink,
        }

    def checkpoint(self, tile: str | None = None) -> int:
        """Write dirty tile states (one tile, or all); returns how many were written."""
        return self.cache.checkpoint(tile)

    def metrics(self) -> ShardMetrics:
        read, written = self.cache.state_bytes()
        return ShardMetrics(
            self.cell_updates,
            self.busy_seconds,
            self.cache.resident_bytes() / 2**20,
            len(self.cache.states),
            self.cache.evictions,
            read / 2**20,
            written / 2**20,
        )


def _sink(
    layout: OutputLayout,
    tile: str,
    grid: TileGrid,
    state: TileState,
    stored: StoredAcquisition,
    result: ScoreResult,
    model_id: str,
) -> tuple[int, str | None]:
    """Write a look's anomaly rows (a file from an earlier timeline replaced, or removed when
    the look has none now) and its tile's alert table; returns the rows and their file."""
    acquisition_id = stored.acquisition_id
    records = records_from_result(result, grid, acquisition_id, stored.time, stored.clear, model_id)
    date = stored.time.strftime("%Y-%m-%d")
    written = write_anomalies(layout.anomalies, records, grid, date, acquisition_id)
    if written is None:  # a replay (or one after a killed rewind): no rows left
        storage.remove_tree(layout.anomaly_file(tile, date, acquisition_id))
    day = day_number(stored.time)
    write_alert_table(
        layout.alert_table(tile), state.alerts, grid, day, acquisition_id, state.change
    )
    return len(records), str(written) if written else None


def _result(res: ApplyResult, seconds: StageSeconds) -> ApplyResult:
    return ApplyResult(res.status, res.n_anomalies, res.path, res.snow_cells, res.masked_cells,
                       seconds)  # fmt: skip


def _count_rows(path: str) -> int:
    if not storage.exists(path):
        return 0
    import pyarrow.parquet as pq

    with storage.open_input(path) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)
