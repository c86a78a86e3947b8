"""Replay a tile's stored acquisitions through a detector, without Dask: what each detector
would have flagged, look by look, from the same embeddings, masks and indices.

The embedding store holds everything the statistics need, so detectors and their settings
are compared on one encoding run (``streamembed evaluate``). ``embedding+index`` is the
runtime's default (``stats.detector``), ``embedding`` the z-score without the index gate,
``index`` the per-cell seasonal index baseline of ``seasonal.py``; all three are
``stats.update`` with another ``stats.detector`` and go through the same alert lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actor import day_number
from .config import DETECTORS, StatsConfig
from .stats import TileState, update
from .store import EmbeddingStore

__all__ = ["DETECTORS", "Replay", "replay_tile"]


@dataclass(frozen=True)
class Replay:
    """Per look (T) and flattened cell (C): what one detector did on one tile."""

    tile: str
    detector: str
    shape: tuple[int, int]
    acquisition_ids: list[str]
    days: np.ndarray  # (T,) float64 day numbers (days since 1970-01-01)
    scored: np.ndarray  # (T, C) bool: a clear look after warm-up
    anomaly: np.ndarray  # (T, C) bool
    row: np.ndarray  # (T, C) bool: an output row (anomalous, or its alert ended on this look)
    status: np.ndarray  # (T, C) int8 AlertStatus after the look
    label: np.ndarray  # (T, C) int8 the alert's label after the look (labels.LABELS)


def replay_tile(store: EmbeddingStore, tile: str, detector: str, params: StatsConfig) -> Replay:
    """Every committed acquisition of ``tile``, in time order, through ``detector``."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    grid = store.grid(tile)
    if grid is None:
        raise KeyError(f"tile {tile} has no embeddings in {store.root}")
    # Times first (the coordinate alone), then one acquisition in memory at a time: a full
    # tile's embeddings are ~0.5 GB per acquisition.
    ds = store.open_dataset(tile)
    order = sorted(
        zip(ds["time"].values.astype("datetime64[s]").astype(np.int64),
            [str(a) for a in ds["acquisition_id"].values], strict=True)
    )  # fmt: skip
    shape = (grid.n_cells_y, grid.n_cells_x)
    c = shape[0] * shape[1]
    p = params.model_copy(update={"detector": detector})
    t = len(order)
    scored = np.zeros((t, c), bool)
    anomaly = np.zeros((t, c), bool)
    row = np.zeros((t, c), bool)
    status = np.zeros((t, c), np.int8)
    label = np.zeros((t, c), np.int8)
    state: TileState | None = None
    for k, (_, acquisition_id) in enumerate(order):
        acq = store.read(tile, acquisition_id)
        if state is None:
            state = TileState.empty(*shape, acq.embedding.shape[-1])
        res = update(
            state, acq.embedding, acq.clear, acq.snow, acq.indices, day_number(acq.time), p
        )
        scored[k] = res.scored
        anomaly[k] = res.anomaly
        row[k, res.rows] = True
        status[k], label[k] = state.alerts.status, state.alerts.label
    return Replay(
        tile, detector, shape, [a for _, a in order],
        np.array([seconds / 86400.0 for seconds, _ in order]), scored, anomaly, row, status, label,
    )  # fmt: skip
