"""The Dask actor around ``stats.py``: one per shard, holding the rolling state of its tiles.

A shard owns a fixed set of tiles (``shard_of``); it reads each acquisition's embeddings from
the Zarr store itself (only ids travel), applies them strictly in time order, writes the
anomalies through the sink and checkpoints tile state atomically to ``state/<tile>.npz``.
Re-applying an acquisition already in the state is a no-op, and re-applying one after a crash
that lost a checkpoint rewrites the same anomaly file with the same rows.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from pathlib import Path
from typing import Any

from .config import StatsConfig, StoreConfig
from .sink import partition_path, records_from_result, write_anomalies
from .stats import StatsParams, TileState, update
from .store import EmbeddingStore

APPLIED, LATE, ALREADY = "applied", "late", "already_applied"


def shard_of(tile: str, shards: int) -> int:
    """Stable tile -> shard assignment (not Python's salted hash)."""
    return zlib.crc32(tile.encode()) % shards


def day_number(when: dt.datetime) -> float:
    return when.timestamp() / 86400.0


class StatsActor:
    """Per-shard statistics; every public method is one actor call."""

    def __init__(self, output_dir: str, stats: StatsConfig, store: StoreConfig, model_id: str):
        self.output = Path(output_dir)
        self.cfg = stats
        # StatsParams is the pure core's view of the same keys.
        self.params = StatsParams(
            **{k: getattr(stats, k) for k in StatsParams.__dataclass_fields__}
        )
        self.store = EmbeddingStore(self.output / "embeddings.zarr", store)
        self.model_id = model_id
        self.states: dict[str, TileState] = {}
        self._dirty: dict[str, int] = {}
        self.cell_updates = 0
        self.busy_seconds = 0.0

    def _state_path(self, tile: str) -> Path:
        return self.output / "state" / f"{tile}.npz"

    def _state(self, tile: str, shape: tuple[int, int], dim: int) -> TileState:
        if tile not in self.states:
            path = self._state_path(tile)
            self.states[tile] = (
                TileState.load(path) if path.exists() else TileState.empty(*shape, dim)
            )
        return self.states[tile]

    def applied_ids(self, tile: str) -> list[str]:
        """Acquisitions folded into the tile's state (in memory, else its last checkpoint)."""
        if tile in self.states:
            return list(self.states[tile].applied_ids)
        path = self._state_path(tile)
        return list(TileState.load(path).applied_ids) if path.exists() else []

    def apply(self, tile: str, acquisition_id: str) -> dict[str, Any]:
        """Fold one stored acquisition into its tile's state and write its anomalies."""
        t0 = time.perf_counter()
        grid = self.store.grid(tile)
        if grid is None:
            raise KeyError(f"tile {tile} has no embeddings in {self.store.root}")
        stored = self.store.read(tile, acquisition_id)
        t_read = time.perf_counter()
        state = self._state(tile, (grid.n_cells_y, grid.n_cells_x), stored.embedding.shape[-1])
        path = partition_path(
            self.output / "anomalies", tile, stored.time.strftime("%Y-%m-%d"), acquisition_id
        )
        if acquisition_id in state.applied_ids:
            n = _count_rows(path)
            return {"status": ALREADY, "n_anomalies": n, "path": str(path) if n else None}
        day = day_number(stored.time)
        if state.applied_ids and day <= state.last_time_day:
            return {"status": LATE, "n_anomalies": 0, "path": None}
        result = update(
            state, stored.embedding, stored.clear, stored.snow, stored.indices, day, self.params
        )
        t_stats = time.perf_counter()
        state.last_acquisition_id = acquisition_id
        state.applied_ids.append(acquisition_id)
        records = records_from_result(
            result, grid, acquisition_id, stored.time, stored.clear, self.model_id
        )
        written = write_anomalies(
            self.output / "anomalies",
            records,
            grid,
            stored.time.strftime("%Y-%m-%d"),
            acquisition_id,
        )
        t_sink = time.perf_counter()
        self._dirty[tile] = self._dirty.get(tile, 0) + 1
        if self._dirty[tile] >= self.cfg.checkpoint_every:
            self.checkpoint(tile)
        t_end = time.perf_counter()
        self.cell_updates += int(result.valid.sum())
        self.busy_seconds += t_end - t0
        return {
            "status": APPLIED,
            "n_anomalies": len(records),
            "path": str(written) if written else None,
            "snow_cells": result.snow_cells,
            "masked_cells": result.masked_cells,
            "timings": {
                "stats_read": t_read - t0,
                "stats_apply": t_stats - t_read,
                "sink_write": t_sink - t_stats,
                "stats_checkpoint": t_end - t_sink,
            },
        }

    def checkpoint(self, tile: str | None = None) -> int:
        """Write dirty tile states (one tile, or all); returns how many were written."""
        tiles = [tile] if tile else [t for t, n in self._dirty.items() if n]
        for t in tiles:
            self.states[t].save(self._state_path(t))
            self._dirty[t] = 0
        return len(tiles)

    def metrics(self) -> dict[str, float]:
        return {"cell_updates": float(self.cell_updates), "busy_seconds": self.busy_seconds}


def _count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)
