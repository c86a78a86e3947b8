"""The compiled core of the statistics: one pass over a tile's cells per acquisition (numba),
and float16 read and written natively where the CPU converts it in hardware."""

from __future__ import annotations

import platform
from typing import Any

import numba
import numba.extending
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

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
# an anomalous cell's mean moves by a step clipped at this many sigma of its distances
CLIP_SIGMA = 3.0

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


def _make_to_storage(native: bool) -> Any:
    """An intrinsic writing a float32 value as an array element like ``like``: float32 as is,
    float16 as its uint16 code, rounded to nearest even (as NumPy's cast).

    ``native`` uses the CPU's instruction (vcvtps2ph); otherwise the same rounding in 32-bit
    integer lanes: NaN and infinity kept, overflow to infinity, subnormals rounded by adding
    the float 0.5 (whose exponent puts the half's last subnormal bit at the float's last
    mantissa bit), normals by adding half an ulp less one plus the kept mantissa's low bit.
    """

    @numba.extending.intrinsic
    def to_storage(typingctx: Any, value: Any, like: Any) -> Any:
        if value != numba.types.float32:
            return None
        if like == numba.types.float32:
            return numba.types.float32(value, like), lambda context, builder, sig, args: args[0]
        if like != numba.types.uint16:
            return None

        def encode(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            i16, i32, f32 = ir.IntType(16), ir.IntType(32), ir.FloatType()
            if native:
                return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), i16)
            bits = builder.bitcast(args[0], i32)
            sign = builder.and_(builder.lshr(bits, i32(16)), i32(0x8000))
            a = builder.and_(bits, i32(0x7FFFFFFF))
            nan = builder.icmp_unsigned(">", a, i32(0x7F800000))
            special = builder.select(nan, i32(0x7E00), i32(0x7C00))
            over = builder.icmp_unsigned(">=", a, i32(0x477FF000))  # >= 65520: infinity
            tiny = builder.icmp_unsigned("<", a, i32(0x38800000))  # < 2^-14: subnormal
            half_f = builder.bitcast(i32(0x3F000000), f32)
            sub = builder.fadd(builder.bitcast(a, f32), half_f)
            sub_code = builder.sub(builder.bitcast(sub, i32), i32(0x3F000000))
            odd = builder.and_(builder.lshr(a, i32(13)), i32(1))
            rounded = builder.add(builder.add(a, i32(0xC8000FFF)), odd)
            normal = builder.lshr(rounded, i32(13))
            code = builder.select(tiny, sub_code, normal)
            code = builder.select(over, special, code)
            code = builder.or_(code, sign)
            return builder.trunc(code, i16)

        return numba.types.uint16(value, like), encode

    return to_storage


_to_float32 = _make_to_float32(_native_half())
_to_storage = _make_to_storage(_native_half())


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
            r = _to_float32(e[i, j]) - _to_float32(mean[i, j])
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
    threshold: np.ndarray,
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
            r = _to_float32(ev[j]) - _to_float32(m[j])
            sq += r * r
            rs += r * shift[j]
        sq = sq + shift_sq - np.float32(2.0) * rs
        finite = np.isfinite(sq)
        d = np.float32(np.sqrt(max(sq, np.float32(0.0))) / norm) if finite else np.float32(0.0)
        z = (d - dist_mean[i]) / z_scale - z_median
        # ``gate``: the cell's own indices changed (embedding+index), every cell (embedding), or
        # the index detector's verdict (then the embedding only updates); ``threshold`` is per
        # cell (a look with no novelty on the indices needs a z-score far past it, stats.py).
        flagged = z >= threshold[i] if use_embedding else True
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
                mj = _to_float32(m[j])
                m[j] = _to_storage(mj + w * (_to_float32(ev[j]) - mj), m[j])
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
                m[j] = _to_storage(_to_float32(ev[j]), m[j])
        n[i] = ni + 1
        last_day[i] = day
