"""Per-cell rolling statistics and anomaly scoring: pure NumPy, vectorised over cells.

For each embedding cell the state holds the observation count, an exponentially weighted mean
embedding (Welford weights 1/n while warming up, then a half-life in days, so the expected state
follows the seasons), the cell's own distribution of distances to that mean (EW mean and
variance), and EW means of spectral indices (for labels).

Scoring one acquisition:
1. cells under cloud, shadow, snow or nodata (clear fraction below ``min_clear``, or a 3x3
   neighbourhood below ``min_context_clear``, since the encoder sees context) neither update
   nor score;
2. residual = embedding - expected; the tile-wide median residual is removed (a whole-tile
   shift such as haze, low sun or a tile-wide green-up is not an anomaly);
3. the distance is a z-score against the cell's own distance history, again centred by the
   tile median; cells past ``threshold`` after ``min_obs`` observations are anomalies;
4. updates are robust: an anomalous cell moves its mean and distance history only by a
   clipped step, so a permanent change is learnt gradually and a passing one barely at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ingest import INDEX_NAMES

LABELS: tuple[str, ...] = ("water_gain", "burn", "vegetation_loss", "bare_gain", "unknown")
MIN_CELLS_FOR_SPATIAL = 8
CLIP_SIGMA = 3.0
_I_NDVI, _I_NDWI, _I_NBR, _I_NDBI = range(len(INDEX_NAMES))


@dataclass(frozen=True)
class StatsParams:
    half_life_days: float = 45.0
    min_obs: int = 6
    min_clear: float = 0.9
    min_context_clear: float = 0.8
    threshold: float = 3.5
    min_index_change: float = 0.25
    spatial_correction: bool = True


@dataclass
class TileState:
    """Per-cell state of one tile; arrays are indexed by flattened cell (y * n_x + x)."""

    n: np.ndarray  # (C,) int32 observations applied
    mean: np.ndarray  # (C, D) float32 expected embedding
    dist_mean: np.ndarray  # (C,) float32 EW mean of the cell's own distances
    dist_var: np.ndarray  # (C,) float32 EW variance of those distances
    idx_mean: np.ndarray  # (C, K) float32 EW mean spectral indices
    last_day: np.ndarray  # (C,) float64 day of the last update (NaN: never)
    shape: tuple[int, int]
    last_time_day: float = float("nan")
    last_acquisition_id: str = ""
    applied: int = 0
    applied_ids: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, cells_y: int, cells_x: int, dim: int) -> TileState:
        c = cells_y * cells_x
        return cls(
            n=np.zeros(c, np.int32),
            mean=np.zeros((c, dim), np.float32),
            dist_mean=np.zeros(c, np.float32),
            dist_var=np.zeros(c, np.float32),
            idx_mean=np.full((c, len(INDEX_NAMES)), np.nan, np.float32),
            last_day=np.full(c, np.nan),
            shape=(cells_y, cells_x),
        )

    def save(self, path: str | Path) -> None:
        """Atomic checkpoint (temporary file then rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                n=self.n,
                mean=self.mean,
                dist_mean=self.dist_mean,
                dist_var=self.dist_var,
                idx_mean=self.idx_mean,
                last_day=self.last_day,
                shape=np.array(self.shape),
                last_time_day=np.array(self.last_time_day),
                last_acquisition_id=np.array(self.last_acquisition_id),
                applied=np.array(self.applied),
                applied_ids=np.array(self.applied_ids, dtype=str),
            )
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> TileState:
        with np.load(path) as z:
            return cls(
                n=z["n"],
                mean=z["mean"],
                dist_mean=z["dist_mean"],
                dist_var=z["dist_var"],
                idx_mean=z["idx_mean"],
                last_day=z["last_day"],
                shape=(int(z["shape"][0]), int(z["shape"][1])),
                last_time_day=float(z["last_time_day"]),
                last_acquisition_id=str(z["last_acquisition_id"]),
                applied=int(z["applied"]),
                applied_ids=[str(s) for s in z["applied_ids"]],
            )


@dataclass(frozen=True)
class ScoreResult:
    """What one acquisition did to a tile, per flattened cell."""

    score: np.ndarray  # (C,) float32, NaN where not scored
    distance: np.ndarray  # (C,) float32
    anomaly: np.ndarray  # (C,) bool
    valid: np.ndarray  # (C,) bool: clear enough to update
    n_obs: np.ndarray  # (C,) int32 observations before this one
    delta_indices: np.ndarray  # (C, K) current minus expected indices
    labels: np.ndarray  # (C,) object: label per cell ("" if not an anomaly)
    snow_cells: int
    masked_cells: int


def context_mean(clear: np.ndarray) -> np.ndarray:
    """Mean of each cell's 3x3 neighbourhood (edges repeat), the encoder's near context."""
    padded = np.pad(clear, 1, mode="edge")
    h, w = clear.shape
    acc = np.zeros_like(clear, dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            acc += padded[dy : dy + h, dx : dx + w]
    return acc / 9.0


def label_cells(delta: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Anomaly labels from spectral-index deltas (current minus expected), first rule wins."""
    d_ndvi, d_ndwi, d_nbr, d_ndbi = (delta[:, i] for i in range(4))
    ndwi, nbr = current[:, _I_NDWI], current[:, _I_NBR]
    with np.errstate(invalid="ignore"):
        rules = [
            (d_ndwi >= 0.25) & (ndwi > 0.0),
            (d_nbr <= -0.3) & (nbr < -0.05),
            d_ndvi <= -0.2,
            d_ndbi >= 0.15,
        ]
    out = np.full(delta.shape[0], LABELS[-1], dtype=object)
    for rule, name in zip(reversed(rules), reversed(LABELS[:-1]), strict=True):
        out[rule] = name
    return out


def update(
    state: TileState,
    embedding: np.ndarray,
    clear: np.ndarray,
    snow: np.ndarray,
    indices: np.ndarray,
    day: float,
    params: StatsParams,
) -> ScoreResult:
    """Score one acquisition against the state, then fold it in (state is updated in place)."""
    cy, cx = state.shape
    c = cy * cx
    e = embedding.reshape(c, -1).astype(np.float32, copy=False)
    dim = e.shape[1]
    f = clear.reshape(c)
    ctx = context_mean(clear.astype(np.float32)).reshape(c)
    idx = indices.reshape(c, -1)
    valid = (f >= params.min_clear) & (ctx >= params.min_context_clear) & np.isfinite(e).all(1)
    seen = state.n > 0
    warm = state.n >= params.min_obs
    scorable = valid & warm
    n_before = state.n.copy()

    resid = e - state.mean
    shift = np.zeros(dim, np.float32)
    if params.spatial_correction and scorable.sum() >= MIN_CELLS_FOR_SPATIAL:
        shift = np.median(resid[scorable], axis=0)
    dist = (np.linalg.norm(resid - shift, axis=1) / np.sqrt(dim)).astype(np.float32)
    sd = np.sqrt(state.dist_var) + 0.1 * state.dist_mean + 1e-6
    # A cell unseen for weeks (cloud, snow) has drifted further than its 5-day history says.
    gap = np.where(seen, np.maximum(day - state.last_day, 0.0), 0.0)
    z = (dist - state.dist_mean) / (sd * np.sqrt(1.0 + gap / params.half_life_days))
    if params.spatial_correction and scorable.sum() >= MIN_CELLS_FOR_SPATIAL:
        z = z - np.median(z[scorable])
    score = np.where(scorable, z, np.nan).astype(np.float32)
    with np.errstate(invalid="ignore"):
        delta = idx - state.idx_mean
        # The encoder's receptive field spans several cells: a cell whose embedding moved only
        # because a neighbour changed shows no change in its own pixels' indices.
        own_change = np.nan_to_num(np.abs(delta)).max(axis=1) >= params.min_index_change
    anomaly = scorable & (z >= params.threshold) & own_change
    labels = np.full(c, "", dtype=object)
    labels[anomaly] = label_cells(delta[anomaly], idx[anomaly])

    # ---- fold in (valid cells only)
    elapsed = np.where(seen, day - state.last_day, np.inf)
    decay = 1.0 - 0.5 ** (np.maximum(elapsed, 0.0) / params.half_life_days)
    alpha = np.maximum(1.0 / (state.n + 1.0), decay).astype(np.float32)
    cap = state.dist_mean + CLIP_SIGMA * sd
    step_scale = np.where(anomaly, np.minimum(1.0, cap / np.maximum(dist, 1e-12)), 1.0)
    upd = valid & seen
    state.mean[upd] += (alpha[upd] * step_scale[upd])[:, None] * resid[upd]
    first = valid & ~seen
    state.mean[first] = e[first]

    k = state.n - 1  # distances seen so far (the first observation has none)
    d_eff = np.where(warm, np.minimum(dist, cap), dist)
    beta = np.maximum(1.0 / np.maximum(k + 1.0, 1.0), decay).astype(np.float32)
    first_dist = upd & (k == 0)
    state.dist_mean[first_dist] = d_eff[first_dist]
    state.dist_var[first_dist] = 0.0
    later = upd & (k > 0)
    dd = d_eff - state.dist_mean
    state.dist_mean[later] += beta[later] * dd[later]
    state.dist_var[later] = (1.0 - beta[later]) * (
        state.dist_var[later] + beta[later] * dd[later] ** 2
    )

    idx_ok = valid & np.isfinite(idx).all(1)
    idx_first = idx_ok & ~np.isfinite(state.idx_mean).all(1)
    state.idx_mean[idx_first] = idx[idx_first]
    idx_upd = idx_ok & ~idx_first
    state.idx_mean[idx_upd] += (alpha[idx_upd] * step_scale[idx_upd])[:, None] * (
        idx[idx_upd] - state.idx_mean[idx_upd]
    )

    state.n[valid] += 1
    state.last_day[valid] = day
    state.last_time_day = day
    state.applied += 1

    return ScoreResult(
        score=score,
        distance=dist,
        anomaly=anomaly,
        valid=valid,
        n_obs=n_before,
        delta_indices=delta.astype(np.float32),
        labels=labels,
        snow_cells=int((snow.reshape(c) > 0.5).sum()),
        masked_cells=int((~valid).sum()),
    )
