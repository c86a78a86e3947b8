"""Replay a tile's stored acquisitions through a detector, without Dask: what each detector
would have flagged, look by look, from the same embeddings, masks and indices.

The embedding store holds everything the statistics need, so detectors and their settings
are compared on one encoding run (``streamembed evaluate``). ``embedding+index`` is the
runtime's detector (``stats.update`` with the index gate), ``embedding`` the same with the
gate off, ``index`` the per-cell seasonal index baseline of ``seasonal.py``; all three go
through the same alert lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actor import day_number
from .alerts import AlertState, advance
from .config import StatsConfig
from .labels import UNKNOWN, label_cells, label_codes
from .seasonal import IndexModel, index_anomalies, index_scores
from .stats import TileState, update, usable_cells
from .store import EmbeddingStore

DETECTORS: tuple[str, ...] = ("embedding+index", "embedding", "index")
INDEX_THRESHOLD = 4.0  # z of the index detector (a tail beyond the embedding's 3.5: 3 indices)


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
    status: np.ndarray  # (T, C) int8 AlertStatus after the look
    label: np.ndarray  # (T, C) int8 the alert's label after the look (labels.LABELS)


def replay_tile(store: EmbeddingStore, tile: str, detector: str, params: StatsConfig) -> Replay:
    """Every committed acquisition of ``tile``, in time order, through ``detector``."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    grid = store.grid(tile)
    if grid is None:
        raise KeyError(f"tile {tile} has no embeddings in {store.root}")
    stored = [store.read(tile, a) for a in store.acquisition_ids(tile)]
    stored.sort(key=lambda s: s.time)
    shape = (grid.n_cells_y, grid.n_cells_x)
    c = shape[0] * shape[1]
    p = params.model_copy(update={"min_index_change": 0.0}) if detector == "embedding" else params
    t = len(stored)
    scored = np.zeros((t, c), bool)
    anomaly = np.zeros((t, c), bool)
    status = np.zeros((t, c), np.int8)
    label = np.zeros((t, c), np.int8)
    state: TileState | None = None
    model = IndexModel.empty(c)
    alerts = AlertState.empty(c)
    for k, acq in enumerate(stored):
        day = day_number(acq.time)
        if detector == "index":
            idx = acq.indices.reshape(c, -1).astype(np.float32)
            ok = usable_cells(acq.clear, params) & np.isfinite(idx).all(axis=1)
            sc = ok & (model.n >= params.min_obs)
            z, expected = index_scores(model, idx, ok, day, params.half_life_days, params.min_obs)
            flagged = index_anomalies(z, INDEX_THRESHOLD) & sc
            look = np.full(c, UNKNOWN, np.int8)
            f = np.flatnonzero(flagged)
            if f.size:
                look[f] = label_codes(label_cells(idx[f] - expected[f], idx[f]))
            advance(alerts, sc, flagged, look, idx, expected.astype(np.float32), day,
                    p.confirm_looks, p.recover_index_change)  # fmt: skip
            scored[k], anomaly[k] = sc, flagged
            status[k], label[k] = alerts.status, alerts.label
            continue
        if state is None:
            state = TileState.empty(*shape, acq.embedding.shape[-1])
        n_before = state.n.copy()
        res = update(state, acq.embedding, acq.clear, acq.snow, acq.indices, day, p)
        scored[k] = res.valid & (n_before >= p.min_obs)
        anomaly[k] = res.anomaly
        status[k], label[k] = state.alerts.status, state.alerts.label
    return Replay(
        tile, detector, shape, [a.acquisition_id for a in stored],
        np.array([day_number(a.time) for a in stored]), scored, anomaly, status, label,
    )  # fmt: skip
