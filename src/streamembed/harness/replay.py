"""Replay a tile's stored acquisitions through a detector, without Dask: what each detector
would have flagged, look by look, from the same embeddings, masks and indices.

The embedding store holds everything the statistics need, so detectors and their settings
are compared on one encoding run (``streamembed evaluate``). ``embedding+index`` is the
runtime's default (``stats.detector``), ``embedding`` the z-score without the index gate,
``index`` the per-cell seasonal index baseline of ``seasonal.py``; all three are
``stats.update`` with another ``stats.detector`` and go through the same alert lifecycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import DETECTORS, StatsConfig
from ..detection.change import Gradual
from ..detection.stats import TileState, update
from ..outputs.store import EmbeddingStore
from ..runtime.actor import day_number

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
    gradual: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # (T, C) bool:
    # a gradual alert stands after the look (empty: none recorded)
    gradual_row: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # (T, C)
    # bool: a gradual row (its alert raised or ended on the look)

    def __post_init__(self) -> None:
        for name in ("gradual", "gradual_row"):
            if getattr(self, name).size == 0:
                object.__setattr__(self, name, np.zeros(self.status.shape, bool))


def replay_tile(
    store: EmbeddingStore, tile: str, detectors: Sequence[str], params: StatsConfig
) -> dict[str, Replay]:
    """Every committed acquisition of ``tile``, in time order, through each of ``detectors``:
    each acquisition is read once and folded into one state per detector."""
    for detector in detectors:
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
    t, c = len(order), shape[0] * shape[1]
    days = np.array([seconds / 86400.0 for seconds, _ in order])
    ids = [a for _, a in order]
    out = {
        d: Replay(tile, d, shape, ids, days, np.zeros((t, c), bool), np.zeros((t, c), bool),
                  np.zeros((t, c), bool), np.zeros((t, c), np.int8), np.zeros((t, c), np.int8),
                  np.zeros((t, c), bool), np.zeros((t, c), bool))
        for d in detectors
    }  # fmt: skip
    runs = {d: params.model_copy(update={"detector": d}) for d in detectors}
    states: dict[str, TileState] = {}
    for k, acquisition_id in enumerate(ids):
        acq = store.read(tile, acquisition_id)
        for d, p in runs.items():
            state = states.get(d) or TileState.empty(
                *shape, acq.embedding.shape[-1], dtype=p.state_dtype
            )
            states[d] = state
            res = update(
                state, acq.embedding, acq.clear, acq.snow, acq.indices, day_number(acq.time), p
            )
            r = out[d]
            r.scored[k], r.anomaly[k] = res.scored, res.anomaly
            gradual = res.kinds == "gradual" if res.kinds.size else np.zeros(res.rows.size, bool)
            r.row[k, res.rows[~gradual]] = True
            r.gradual_row[k, res.rows[gradual]] = True
            r.status[k], r.label[k] = state.alerts.status, state.alerts.label
            r.gradual[k] = state.change.gradual == Gradual.ACTIVE
    return out
