"""Per-cell rolling statistics and anomaly scoring: NumPy arrays in and out, one compiled pass.

For each embedding cell the state holds the observation count, an exponentially weighted mean
embedding (Welford weights 1/n while warming up, then a half-life in days, so the expected state
follows the seasons), the cell's own distribution of distances to that mean (EW mean and
variance), the seasonal model of its own spectral indices (``seasonal.IndexModel``: the index
gate, the index detector and the labels) and its alert lifecycle (``alerts.AlertState``).

Scoring one acquisition:
1. cells under cloud, shadow, snow or nodata (clear fraction below ``min_clear``, or a 3x3
   neighbourhood below ``min_context_clear``, since the encoder sees context) neither update
   nor score;
2. residual = embedding - expected; the tile-wide median residual is removed (a whole-tile
   shift such as haze, low sun or a tile-wide green-up is not an anomaly); on tiles with more
   than SPATIAL_SAMPLE scorable cells the tile-wide medians come from an evenly spaced sample;
3. the distance is a z-score against the cell's own distance history, again centred by the
   tile median; cells past ``threshold`` after ``min_obs`` observations whose own indices also
   moved from their seasonal expectation (the ``detector``'s gate) are anomalies;
4. updates are robust: an anomalous cell moves its mean only by a clipped step and leaves its
   distance history alone, so a permanent change is learnt gradually (and stays anomalous
   while it is), and a passing one barely moves the state at all;
5. the alert lifecycle advances: provisional, confirmed, retracted, recovered (alerts.py).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numba.extending
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

from .alerts import ALERT_ARRAYS, STATUS_NAMES, AlertState, AlertStatus, advance
from .config import StatsConfig
from .labels import LABELS, UNKNOWN, label_cells, label_index
from .seasonal import (
    INDEX_MODEL_ARRAYS,
    IndexModel,
    index_anomalies,
    index_scores,
    seasonal_cells,
)
from .storage import atomic_writer, open_input

__all__ = ["LABELS", "ScoreResult", "TileState", "label_cells", "update"]

MIN_CELLS_FOR_SPATIAL = 8
CLIP_SIGMA = 3.0


@dataclass
class TileState:
    """Per-cell state of one tile; arrays are indexed by flattened cell (y * n_x + x)."""

    n: np.ndarray  # (C,) int32 observations applied
    mean: np.ndarray  # (C, D) float32 expected embedding
    dist_mean: np.ndarray  # (C,) float32 EW mean of the cell's own distances
    dist_var: np.ndarray  # (C,) float32 EW variance of those distances
    last_day: np.ndarray  # (C,) float64 day of the last update (NaN: never)
    shape: tuple[int, int]
    index_model: IndexModel  # the cell's own spectral indices: their seasonal expectation
    alerts: AlertState
    last_time_day: float = float("nan")
    applied_ids: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Memory the state's arrays hold (what an actor shard's budget counts)."""
        arrays = (self.n, self.mean, self.dist_mean, self.dist_var, self.last_day)
        return int(sum(a.nbytes for a in arrays)) + self.index_model.nbytes + self.alerts.nbytes

    @classmethod
    def empty(cls, cells_y: int, cells_x: int, dim: int) -> TileState:
        c = cells_y * cells_x
        return cls(
            n=np.zeros(c, np.int32),
            mean=np.zeros((c, dim), np.float32),
            dist_mean=np.zeros(c, np.float32),
            dist_var=np.zeros(c, np.float32),
            last_day=np.full(c, np.nan),
            shape=(cells_y, cells_x),
            index_model=IndexModel.empty(c),
            alerts=AlertState.empty(c),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the state holds, as the arrays its checkpoint stores."""
        return {
            "n": self.n,
            "mean": self.mean,
            "dist_mean": self.dist_mean,
            "dist_var": self.dist_var,
            "last_day": self.last_day,
            "shape": np.array(self.shape),
            "last_time_day": np.array(self.last_time_day),
            "applied_ids": np.array(self.applied_ids, dtype=str),
            **{f"index_{name}": getattr(self.index_model, name) for name in INDEX_MODEL_ARRAYS},
            **{f"alert_{name}": getattr(self.alerts, name) for name in ALERT_ARRAYS},
        }

    def save(self, path: str | Path) -> None:
        """Atomic checkpoint to a local path or a URL (written whole, then published)."""
        with atomic_writer(path, crash="state.written") as f:
            np.savez(f, **self.arrays())  # type: ignore[arg-type]  # numpy stubs: allow_pickle

    @classmethod
    def load(cls, path: str | Path) -> TileState:
        with open_input(path) as f, np.load(f) as z:
            # A checkpoint from before the alert lifecycle starts its cells with no alert.
            alerts = (
                AlertState(**{name: z[f"alert_{name}"] for name in ALERT_ARRAYS})
                if "alert_status" in z
                else AlertState.empty(int(z["n"].size))
            )
            # One from before the seasonal index model starts it from the rolling index mean.
            index_model = (
                IndexModel(**{name: z[f"index_{name}"] for name in INDEX_MODEL_ARRAYS})
                if "index_level" in z
                else IndexModel.from_rolling_mean(z["idx_mean"], z["n"], z["last_day"])
            )
            return cls(
                n=z["n"],
                mean=z["mean"],
                dist_mean=z["dist_mean"],
                dist_var=z["dist_var"],
                last_day=z["last_day"],
                shape=(int(z["shape"][0]), int(z["shape"][1])),
                index_model=index_model,
                alerts=alerts,
                last_time_day=float(z["last_time_day"]),
                applied_ids=[str(s) for s in z["applied_ids"]],
            )


@dataclass(frozen=True)
class WarmUp:
    """How far a tile's cells are through their warm-up (``streamembed status``)."""

    cells: int
    scored: int  # cells with min_obs clear looks: scored
    seasonal: int  # cells with a year of clear looks: the seasonal index expectation in use


def checkpoint_applied_ids(path: str | Path) -> list[str]:
    """The acquisitions a tile checkpoint holds, read alone (its state arrays stay on disk)."""
    with open_input(path) as f, np.load(f) as z:
        return [str(s) for s in z["applied_ids"]]


def warm_up(path: str | Path, min_obs: int) -> WarmUp:
    """Read a tile checkpoint's counts only (its embedding means stay on disk)."""
    with open_input(path) as f, np.load(f) as z:
        n = z["n"]
        seasonal = (
            int(seasonal_cells(z["index_n"], z["index_first_day"], z["index_last_day"]).sum())
            if "index_n" in z
            else 0
        )
    return WarmUp(int(n.size), int((n >= min_obs).sum()), seasonal)


@dataclass(frozen=True)
class ScoreResult:
    """What one acquisition did to a tile, per flattened cell."""

    score: np.ndarray  # (C,) float32, NaN where not scored
    distance: np.ndarray  # (C,) float32
    anomaly: np.ndarray  # (C,) bool
    valid: np.ndarray  # (C,) bool: clear enough to update
    n_obs: np.ndarray  # (C,) int32 observations before this one
    scored: np.ndarray  # (C,) bool: valid and past min_obs (what the alert lifecycle saw)
    rows: np.ndarray  # (R,) cells with an output row: anomalous, or their alert just ended
    labels: np.ndarray  # (R,) object: label of each row's cell
    status: np.ndarray  # (R,) object: alert status of each row's cell after this look
    snow_cells: int
    masked_cells: int


# ------------------------------------------------------------------ the compiled core
#
# The per-acquisition work is one pass over the cells, compiled with numba: for each cell its
# scalars (history, scale, index change, weights) and its embedding row are handled together,
# so each embedding and each mean is read once and each mean written once, with no per-cell
# temporary arrays. A NumPy formulation needs some forty whole-array operations over the
# cells for the scalars alone, which at 128 dimensions cost more than the embedding traffic.
# The two tile-wide quantities (the median residual and the median z-score) are needed before
# that pass, so they come from a sample of the scorable cells: all of them on tiles with up to
# SPATIAL_SAMPLE scorable cells (exact), an evenly spaced sample beyond (a tile-wide shift is
# estimated as well from a few hundred cells as from a hundred thousand).
SPATIAL_SAMPLE = 255  # odd: the sample median is one order statistic

# Reassociation lets the per-row sums vectorise. No "nnan"/"ninf"/"nsz": the finiteness test
# on a row's sum must survive (with "nsz" added, LLVM folded a NaN sum's test to finite;
# test_non_finite_embedding_row_neither_updates_nor_scores guards it).
_JIT: dict[str, Any] = {
    "nogil": True,
    "cache": True,
    "fastmath": {"reassoc", "contract", "arcp"},
}


def _native_half() -> bool:
    """Whether the CPU converts float16 in hardware (F16C on x86-64; every arm64 CPU)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    return bool(llvm.get_host_cpu_features().get("f16c", False))


def _make_to_float32(native: bool) -> Any:
    """An intrinsic reading one embedding value as float32: float32 as is, float16 (given as
    its uint16 code, since numba has no float16 type on CPU) decoded.

    NumPy's float16 cast is a scalar loop (~2 ns per value); inside the compiled pass the
    decode vectorises with the rest. ``native`` uses the CPU's instruction (vcvtph2ps, 16
    values at once); otherwise the same in 32-bit integer lanes: the half's exponent and
    mantissa shifted into a float32's read as 2^-112 times the value (subnormals included),
    so one multiply rescales them, and infinities and NaNs get the all-ones exponent first.
    """

    @numba.extending.intrinsic
    def to_float32(typingctx: Any, value: Any) -> Any:
        if value == numba.types.float32:
            return numba.types.float32(value), lambda context, builder, sig, args: args[0]
        if value != numba.types.uint16:
            return None

        def decode(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            f32 = ir.FloatType()
            if native:
                return builder.fpext(builder.bitcast(args[0], ir.HalfType()), f32)
            i32 = ir.IntType(32)
            h = builder.zext(args[0], i32)
            body = builder.shl(builder.and_(h, i32(0x7FFF)), i32(13))
            special = builder.icmp_unsigned(">=", body, i32(0x0F800000))
            bits = builder.or_(body, builder.select(special, i32(0x7F800000), i32(0)))
            bits = builder.or_(bits, builder.shl(builder.and_(h, i32(0x8000)), i32(16)))
            return builder.fmul(builder.bitcast(bits, f32), f32(2.0**112))

        return numba.types.float32(value), decode

    return to_float32


_to_float32 = _make_to_float32(_native_half())


@numba.njit(**_JIT)
def _distance_sd(dist_var: float, dist_mean: float) -> float:
    """Spread of a cell's distance history (a floor of 10% of its mean keeps calm cells sane)."""
    return np.sqrt(dist_var) + 0.1 * dist_mean + 1e-6


@numba.njit(**_JIT)
def _history_decay(last_day: float, day: float, half_life: float) -> tuple[float, float]:
    """(EW weight of a new observation, z-scale widening) for a cell last updated ``last_day``.

    A cell unseen for weeks (cloud, snow) has drifted further than its 5-day history says, so
    its scale widens with the gap.
    """
    gap = max(day - last_day, 0.0)
    return 1.0 - 0.5 ** (gap / half_life), np.sqrt(1.0 + gap / half_life)


@numba.njit(**_JIT)
def _context_mean(clear: np.ndarray) -> np.ndarray:
    """Mean of each cell's 3x3 neighbourhood (edges repeat), the encoder's near context."""
    h, w = clear.shape
    out = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            acc = np.float32(0.0)
            for yy in range(y - 1, y + 2):
                for xx in range(x - 1, x + 2):
                    acc += clear[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]
            out[y, x] = acc / np.float32(9.0)
    return out


@numba.njit(**_JIT)
def _sample_residuals(
    e: np.ndarray,
    mean: np.ndarray,
    rows: np.ndarray,
    n: np.ndarray,
    dist_var: np.ndarray,
    dist_mean: np.ndarray,
    last_day: np.ndarray,
    day: float,
    half_life: float,
    resid: np.ndarray,
    sq: np.ndarray,
    z_scale: np.ndarray,
) -> None:
    """Residuals of the sampled cells (one row each), their squared norms and z-scales."""
    dim = mean.shape[1]
    for s in range(rows.size):
        i = rows[s]
        acc = np.float32(0.0)
        for j in range(dim):
            r = _to_float32(e[i, j]) - mean[i, j]
            resid[s, j] = r
            acc += r * r
        sq[s] = acc
        gap_factor = _history_decay(last_day[i], day, half_life)[1] if n[i] > 0 else 1.0
        z_scale[s] = _distance_sd(dist_var[i], dist_mean[i]) * gap_factor


@numba.njit(**_JIT)
def _update_cells(
    e: np.ndarray,
    mean: np.ndarray,
    n: np.ndarray,
    dist_mean: np.ndarray,
    dist_var: np.ndarray,
    last_day: np.ndarray,
    clear: np.ndarray,
    ctx: np.ndarray,
    gate: np.ndarray,
    use_embedding: bool,
    day: float,
    shift: np.ndarray,
    z_median: float,
    min_obs: int,
    min_clear: float,
    min_context_clear: float,
    threshold: float,
    half_life: float,
    dist_out: np.ndarray,
    score_out: np.ndarray,
    valid_out: np.ndarray,
    anomaly_out: np.ndarray,
) -> None:
    """Score every cell against its state, then fold the acquisition in (in place)."""
    cells, dim = mean.shape
    norm = np.float32(np.sqrt(dim))
    shift_sq = np.float32(0.0)
    for j in range(dim):
        shift_sq += shift[j] * shift[j]
    # Cells of a tile mostly share their last update day: the power and the gap factor are
    # computed once per run of equal days.
    run_day = np.nan
    run_decay = 1.0
    run_gap = 1.0
    for i in range(cells):
        ev = e[i]
        m = mean[i]
        ni = n[i]
        seen = ni > 0
        warm = ni >= min_obs
        clear_ok = clear[i] >= min_clear and ctx[i] >= min_context_clear
        if seen:
            if last_day[i] != run_day:
                run_day = last_day[i]
                run_decay, run_gap = _history_decay(run_day, day, half_life)
            decay, gap_factor = run_decay, run_gap
        else:
            decay, gap_factor = 1.0, 1.0
        sd = _distance_sd(dist_var[i], dist_mean[i])
        z_scale = sd * gap_factor

        alpha = max(1.0 / (ni + 1.0), decay)
        cap = dist_mean[i] + CLIP_SIGMA * sd

        # |e - mean - shift|^2 from |r|^2 and r . shift: one read of the two rows
        sq = np.float32(0.0)
        rs = np.float32(0.0)
        for j in range(dim):
            r = _to_float32(ev[j]) - m[j]
            sq += r * r
            rs += r * shift[j]
        sq = sq + shift_sq - np.float32(2.0) * rs
        finite = np.isfinite(sq)
        d = np.float32(np.sqrt(max(sq, np.float32(0.0))) / norm) if finite else np.float32(0.0)
        z = (d - dist_mean[i]) / z_scale - z_median
        # ``gate``: the cell's own indices changed (embedding+index), every cell (embedding), or
        # the index detector's verdict (then the embedding only updates).
        flagged = z >= threshold if use_embedding else True
        anomaly = clear_ok and warm and gate[i] and finite and flagged
        # Robust update: an anomalous cell moves by a clipped step, so a permanent change is
        # learnt gradually and a passing one barely at all.
        step = min(1.0, cap / max(d, 1e-12)) if anomaly else 1.0
        valid = clear_ok and finite
        dist_out[i] = d
        score_out[i] = z if valid and warm else np.nan
        valid_out[i] = valid
        anomaly_out[i] = anomaly
        if not valid:
            continue

        if seen:
            w = np.float32(alpha * step)
            for j in range(dim):
                m[j] += w * (_to_float32(ev[j]) - m[j])
            d_eff = min(d, cap) if warm else d
            if ni == 1:  # the first distance
                dist_mean[i] = d_eff
                dist_var[i] = 0.0
            elif not anomaly:
                # An alerted look is not evidence of the cell's usual spread: folding it in
                # would widen the history until the change's second look no longer counts.
                beta = np.float32(max(1.0 / ni, decay))
                dd = d_eff - dist_mean[i]
                dist_mean[i] += beta * dd
                dist_var[i] = (1.0 - beta) * (dist_var[i] + beta * dd * dd)
        else:
            for j in range(dim):
                m[j] = _to_float32(ev[j])
        n[i] = ni + 1
        last_day[i] = day


def _median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row (``x`` is reordered); one partition when the row length is odd."""
    n = x.shape[1]
    if n % 2:
        x.partition(n // 2, axis=1)
        return x[:, n // 2].copy()
    return np.median(x, axis=1, overwrite_input=True)


def _embedding_rows(embedding: np.ndarray, cells: int) -> np.ndarray:
    """(cells, dim) float32, or the uint16 codes of float16 as stored (decoded in the pass)."""
    e = embedding.reshape(cells, -1)
    if e.dtype == np.float16:
        return np.ascontiguousarray(e).view(np.uint16)
    return np.ascontiguousarray(e, np.float32)


def _spatial_reference(
    state: TileState,
    e: np.ndarray,
    candidates: np.ndarray,
    day: float,
    params: StatsConfig,
) -> tuple[np.ndarray, float]:
    """(median residual, median z-score) over (a sample of) the scorable cells."""
    dim = state.mean.shape[1]
    if candidates.size > SPATIAL_SAMPLE:
        pick = np.arange(SPATIAL_SAMPLE) * (candidates.size - 1) // (SPATIAL_SAMPLE - 1)
        candidates = candidates[pick]
    m = candidates.size
    resid = np.empty((m, dim), np.float32)
    sq = np.empty(m, np.float32)
    z_scale = np.empty(m, np.float64)
    _sample_residuals(
        e, state.mean, candidates.astype(np.intp), state.n, state.dist_var, state.dist_mean,
        state.last_day, day, params.half_life_days, resid, sq, z_scale,
    )  # fmt: skip
    ok = np.isfinite(sq)
    if not ok.all():
        resid, sq, candidates, z_scale = resid[ok], sq[ok], candidates[ok], z_scale[ok]
    if len(candidates) < MIN_CELLS_FOR_SPATIAL:
        return np.zeros(dim, np.float32), 0.0
    # dimension-major: the per-dimension median is then a partition along contiguous rows
    shift = _median_rows(resid.T.copy()).astype(np.float32)
    # |r - shift|^2 from |r|^2 and r . shift, without another pass over the sample
    sq_shifted = np.maximum(sq - 2.0 * (resid @ shift) + float(shift @ shift), 0.0)
    dist = np.sqrt(sq_shifted) / np.float32(np.sqrt(dim))
    z = (dist - state.dist_mean[candidates]) / z_scale
    return shift, float(_median_rows(z[None, :])[0])


def update(
    state: TileState,
    embedding: np.ndarray,
    clear: np.ndarray,
    snow: np.ndarray,
    indices: np.ndarray,
    day: float,
    params: StatsConfig,
) -> ScoreResult:
    """Score one acquisition against the state, then fold it in (state is updated in place).

    ``embedding`` is (cells_y, cells_x, dim) float32 or float16 (as stored); the cells under
    cloud, shadow, snow or nodata neither update nor score (see the module docstring).
    """
    cy, cx = state.shape
    c = cy * cx
    e = _embedding_rows(embedding, c)
    clear32 = np.ascontiguousarray(clear, np.float32)
    f = clear32.reshape(c)
    ctx = _context_mean(clear32).reshape(c)
    idx = np.ascontiguousarray(indices, np.float32).reshape(c, -1)
    n_before = state.n.copy()
    usable = (f >= params.min_clear) & (ctx >= params.min_context_clear)

    # The cell's own spectral indices against their seasonal expectation (seasonal.py), folded
    # in here for every detector: the index gate, the index detector and the labels use it.
    z_idx, expected_idx = index_scores(
        state.index_model, idx, usable, day, params.half_life_days, params.min_obs
    )
    delta = (idx - expected_idx).astype(np.float32)
    if params.detector == "index":
        gate = index_anomalies(z_idx, params.index_threshold)
    elif params.detector == "embedding":
        gate = np.ones(c, bool)
    else:
        # The encoder's receptive field spans several cells: a cell whose embedding moved only
        # because a neighbour changed shows no change in its own pixels' indices.
        own = np.nan_to_num(np.abs(delta), nan=0.0).max(axis=1)
        gate = own >= params.min_index_change

    shift, z_median = np.zeros(state.mean.shape[1], np.float32), 0.0
    if params.spatial_correction:
        scorable = usable & (state.n >= params.min_obs)
        shift, z_median = _spatial_reference(state, e, np.flatnonzero(scorable), day, params)

    dist = np.empty(c, np.float32)
    score = np.empty(c, np.float32)
    valid = np.empty(c, bool)
    anomaly = np.empty(c, bool)
    _update_cells(
        e, state.mean, state.n, state.dist_mean, state.dist_var, state.last_day, f, ctx,
        np.ascontiguousarray(gate), params.detector != "index", float(day), shift,
        float(z_median), int(params.min_obs), float(params.min_clear),
        float(params.min_context_clear), float(params.threshold), float(params.half_life_days),
        dist, score, valid, anomaly,
    )  # fmt: skip
    state.last_time_day = day

    flagged = np.flatnonzero(anomaly)
    look_label = np.full(c, UNKNOWN, np.int8)
    if flagged.size:
        look_label[flagged] = label_index(delta[flagged], idx[flagged])
    scored = valid & (n_before >= params.min_obs)
    emit = advance(
        state.alerts, scored, anomaly, look_label, idx, expected_idx.astype(np.float32), day,
        params.confirm_looks, params.recover_index_change,
    )  # fmt: skip
    rows = np.flatnonzero(emit)
    status = state.alerts.status
    # An anomalous look is labelled by itself; an alert that just ended by the alert's label.
    ended = (status[rows] == AlertStatus.RECOVERED) | (status[rows] == AlertStatus.RETRACTED)
    row_label = np.where(ended, state.alerts.label[rows], look_label[rows])
    return ScoreResult(
        score=score,
        distance=dist,
        anomaly=anomaly,
        valid=valid,
        n_obs=n_before,
        scored=scored,
        rows=rows,
        labels=np.array([LABELS[i] for i in row_label], dtype=object),
        status=np.array([STATUS_NAMES[i] for i in status[rows]], dtype=object),
        snow_cells=int(np.count_nonzero(snow.reshape(c) > 0.5)),
        masked_cells=c - int(np.count_nonzero(valid)),
    )
