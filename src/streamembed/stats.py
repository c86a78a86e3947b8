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
   shift such as haze, low sun or a tile-wide green-up is not an anomaly); on tiles with more
   than SPATIAL_SAMPLE scorable cells the tile-wide medians come from an evenly spaced sample;
3. the distance is a z-score against the cell's own distance history, again centred by the
   tile median; cells past ``threshold`` after ``min_obs`` observations are anomalies;
4. updates are robust: an anomalous cell moves its mean and distance history only by a
   clipped step, so a permanent change is learnt gradually and a passing one barely at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# The embedding-sized work is one pass over blocks of cells whose temporaries stay in the CPU
# cache: each embedding and each mean is read once and each mean written once, the minimum.
# That needs the two tile-wide quantities (the median residual and the median z-score) before
# the pass, so they are taken from a sample of the scorable cells: all of them on tiles with up
# to SPATIAL_SAMPLE scorable cells (exact), an evenly spaced sample beyond (a tile-wide shift is
# estimated as well from a few hundred cells as from a hundred thousand).
_BLOCK_BYTES = 1 << 20
SPATIAL_SAMPLE = 255  # odd: the sample median is one order statistic


_HALF_TO_FLOAT = (
    np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
)


def _half_caster(e: np.ndarray) -> Any:
    """A function filling ``out`` with ``e[rows]`` cast from float16 to float32.

    NumPy's float16 cast is a scalar loop (~1 ns per value) and would dominate the pass; torch
    (a dependency of the encoder, present on every worker) casts with F16C in a fraction of
    that. Without torch, or for a read-only array, a 256 KiB lookup table does it.
    """
    try:
        import torch
    except ImportError:  # the lookup table below
        torch = None  # type: ignore[assignment]
    if torch is not None and e.flags.writeable and e.flags.c_contiguous:
        # Below torch's parallel grain size (32768 values) a copy stays on this thread: the
        # core is one task on one core, and a thread pool's hand-off costs more than the cast.
        step = max(1, 32768 // max(1, e.shape[1]))

        def cast(rows: slice, out: np.ndarray) -> None:
            target = torch.from_numpy(out)
            start = rows.start or 0
            for i in range(0, out.shape[0], step):
                j = min(out.shape[0], i + step)
                target[i:j].copy_(torch.from_numpy(e[start + i : start + j]))

        return cast
    codes = e.view(np.uint16)

    def lookup(rows: slice, out: np.ndarray) -> None:
        np.take(_HALF_TO_FLOAT, codes[rows], out=out, mode="clip")

    return lookup


def _row_dot(x: np.ndarray) -> np.ndarray:
    """Squared norm of each row (np.vecdot where NumPy has it: several times einsum's speed)."""
    vecdot = getattr(np, "vecdot", None)
    return vecdot(x, x) if vecdot is not None else np.einsum("ij,ij->i", x, x)


def _row_nanmax(x: np.ndarray) -> np.ndarray:
    """Max over the (few) columns ignoring NaN, as a column-wise fmax (fast for (C, 4))."""
    out = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        np.fmax(out, x[:, j], out=out)
    return np.nan_to_num(out, nan=0.0)


def _median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row (``x`` is reordered); one partition when the row length is odd."""
    n = x.shape[1]
    if n % 2:
        x.partition(n // 2, axis=1)
        return x[:, n // 2].copy()
    return np.median(x, axis=1, overwrite_input=True)


def _spatial_reference(
    e: np.ndarray,
    mean: np.ndarray,
    candidates: np.ndarray,
    dist_mean: np.ndarray,
    scale: np.ndarray,
) -> tuple[np.ndarray, float]:
    """(median residual, median z-score) over (a sample of) the scorable cells."""
    dim = e.shape[1]
    if candidates.size > SPATIAL_SAMPLE:
        pick = np.linspace(0, candidates.size - 1, SPATIAL_SAMPLE).astype(np.intp)
        candidates = candidates[pick]
    # Residuals of the sample gathered in chunks straight into dimension-major order: the
    # per-dimension median is then a partition along contiguous rows.
    n = candidates.size
    resid_t = np.empty((dim, n), np.float32)
    sq = np.empty(n, np.float32)
    for j in range(0, n, 64):
        rows = candidates[j : j + 64]
        block = e[rows].astype(np.float32)
        block -= mean[rows]
        sq[j : j + len(rows)] = _row_dot(block)
        resid_t[:, j : j + len(rows)] = block.T
    ok = np.isfinite(sq)
    if not ok.all():
        resid_t, sq, candidates = resid_t[:, ok], sq[ok], candidates[ok]
    if len(candidates) < MIN_CELLS_FOR_SPATIAL:
        return np.zeros(dim, np.float32), 0.0
    shift = _median_rows(resid_t.copy()).astype(np.float32)
    # |r - shift|^2 from |r|^2 and r . shift, without another pass over the sample
    sq_shifted = np.maximum(sq - 2.0 * (shift @ resid_t) + float(shift @ shift), 0.0)
    dist = np.sqrt(sq_shifted) / np.float32(np.sqrt(dim))
    z = (dist - dist_mean[candidates]) / scale[candidates]
    return shift, float(_median_rows(z[None, :])[0])


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
    e = embedding.reshape(c, -1)  # float16 as stored is promoted block by block
    dim = e.shape[1]
    f = clear.reshape(c)
    ctx = context_mean(clear.astype(np.float32)).reshape(c)
    idx = indices.reshape(c, -1)
    clear_ok = (f >= params.min_clear) & (ctx >= params.min_context_clear)
    seen = state.n > 0
    warm = state.n >= params.min_obs
    n_before = state.n.copy()

    sd = np.sqrt(state.dist_var) + 0.1 * state.dist_mean + 1e-6
    # A cell unseen for weeks (cloud, snow) has drifted further than its 5-day history says.
    gap = np.where(seen, np.maximum(day - state.last_day, 0.0), 0.0)
    z_scale = sd * np.sqrt(1.0 + gap / params.half_life_days)
    with np.errstate(invalid="ignore"):
        delta = idx - state.idx_mean
        # The encoder's receptive field spans several cells: a cell whose embedding moved only
        # because a neighbour changed shows no change in its own pixels' indices.
        own_change = _row_nanmax(np.abs(delta)) >= params.min_index_change
    elapsed = np.where(seen, day - state.last_day, np.inf)
    decay = 1.0 - 0.5 ** (np.maximum(elapsed, 0.0) / params.half_life_days)
    alpha = np.maximum(1.0 / (state.n + 1.0), decay).astype(np.float32)
    cap = state.dist_mean + CLIP_SIGMA * sd

    shift, z_median = np.zeros(dim, np.float32), 0.0
    if params.spatial_correction:
        shift, z_median = _spatial_reference(
            e, state.mean, np.flatnonzero(clear_ok & warm), state.dist_mean, z_scale
        )

    dist = np.zeros(c, np.float32)
    z = np.zeros(c, np.float64)
    valid = np.zeros(c, bool)
    anomaly = np.zeros(c, bool)
    step_scale = np.ones(c, np.float64)
    inv_scale = 1.0 / z_scale
    candidate = clear_ok & warm & own_change  # anomalous if also finite and z >= threshold
    updating = clear_ok & seen
    shift_sq = float(np.dot(shift, shift))
    rows = max(16, _BLOCK_BYTES // (4 * max(1, dim)))
    r_buf = np.empty((rows, dim), np.float32)  # reused: no allocation per block
    half = e.dtype == np.float16
    to_float = _half_caster(e) if half else None
    norm = np.float32(np.sqrt(dim))
    for i in range(0, c, rows):
        b = slice(i, min(c, i + rows))
        r = r_buf[: b.stop - i]
        if to_float is not None:
            to_float(b, r)
            r -= state.mean[b]
        else:
            np.subtract(e[b], state.mean[b], out=r)
        # |r - shift|^2 without materialising r - shift
        sq = _row_dot(r)
        if shift_sq:
            sq += shift_sq - 2.0 * (r @ shift)
        finite = np.isfinite(sq)
        d = np.sqrt(np.maximum(np.where(finite, sq, 0.0), 0.0)) / norm
        zb = (d - state.dist_mean[b]) * inv_scale[b] - z_median
        an = candidate[b] & finite & (zb >= params.threshold)
        sc = np.where(an, np.minimum(1.0, cap[b] / np.maximum(d, 1e-12)), 1.0)
        w = np.where(updating[b] & finite, alpha[b] * sc, 0.0).astype(np.float32)
        if w.any():
            if not finite.all():
                r[~finite] = 0.0  # a weight of 0 times NaN would still poison the mean
            w0 = w[0]
            # Cells of a tile usually share one weight (same history): a scalar multiply is
            # much cheaper than a row-broadcast one.
            if (w == w0).all():
                r *= w0
            else:
                r *= w[:, None]
            state.mean[b] += r
        dist[b], z[b], valid[b], anomaly[b], step_scale[b] = d, zb, clear_ok[b] & finite, an, sc
    first = valid & ~seen
    state.mean[first] = e[first]
    scorable = valid & warm
    score = np.where(scorable, z, np.nan).astype(np.float32)
    labels = np.full(c, "", dtype=object)
    labels[anomaly] = label_cells(delta[anomaly], idx[anomaly])
    upd = valid & seen

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

    # Row-wise finiteness through a sum: (C, 4) reductions along the short axis are slow.
    with np.errstate(invalid="ignore"):
        idx_ok = valid & np.isfinite(idx.sum(axis=1))
        idx_first = idx_ok & ~np.isfinite(state.idx_mean.sum(axis=1))
        idx_upd = idx_ok & ~idx_first
        gain = np.where(idx_upd, alpha * step_scale, 0.0).astype(np.float32)[:, None]
        moved = state.idx_mean + gain * (idx - state.idx_mean)
    state.idx_mean[:] = np.where(
        idx_first[:, None], idx, np.where(idx_upd[:, None], moved, state.idx_mean)
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
