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
   tile median; with the default detector (embedding+index) a look is a sudden change's
   onset when its own indices stepped past the cell's seasons (change.py: departed from the
   expectation, stepped since the last clear look, new to the cell), or did so by half the
   departure while the z-score passes ``threshold``, after ``min_obs`` observations;
4. updates are robust: an anomalous cell moves its mean only by a clipped step and leaves its
   distance history alone, so a permanent change is learnt gradually (and stays anomalous
   while it is), and a passing one barely moves the state at all;
5. the alert lifecycle advances: provisional, confirmed, retracted, recovered (alerts.py),
   each later look measured against the onset; the gradual test (change.py) raises or ends
   gradual alerts, and the change memories take the look in (``advance_cells``).
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

from ..config import StatsConfig
from ..storage import atomic_writer, join, open_input, remove_tree
from .alerts import ALERT_ARRAYS, STATUS_NAMES, AlertState, AlertStatus, advance
from .change import (
    CHANGE_ARRAYS,
    COLS,
    SIGN,
    ChangeState,
    Evidence,
    evidence,
    fold,
    gradual_step,
)
from .labels import LABELS, UNKNOWN, label_cells, label_index
from .seasonal import (
    INDEX_MODEL_ARRAYS,
    IndexModel,
    index_anomalies,
    index_scores,
    seasonal_cells,
)

__all__ = ["LABELS", "ScoreResult", "TileState", "label_cells", "update", "usable_cells"]

MIN_CELLS_FOR_SPATIAL = 8
CLIP_SIGMA = 3.0


STATE_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}
BLOCK_CELLS = 32  # a state block: 32 x 32 cells (10 km), 4 MiB at 2048-d float16


def _blocks_dir(path: str | Path) -> str:
    """Where a checkpoint's mean blocks live: beside it, ``<tile>-mean/``."""
    text = str(path)
    return (text[: -len(".npz")] if text.endswith(".npz") else text) + "-mean"


def block_location(path: str | Path, block: int, generation: int) -> str:
    """One mean block of the checkpoint at ``path``, as written by save ``generation``."""
    return join(_blocks_dir(path), f"{block}.g{generation}.npy")


@dataclass
class TileState:
    """Per-cell state of one tile; arrays are indexed by flattened cell (y * n_x + x).

    The expected embeddings (``mean``, nearly all of a tile's bytes: ~0.5 GB for a full
    product at 2048-d float16) are kept in blocks of ``block_cells`` x ``block_cells`` cells:
    a checkpoint writes the blocks an acquisition changed, and a state read back from one
    loads the blocks its next acquisition can see (``ensure_loaded``); the rest stay on disk
    and read as zeros here. The small per-cell arrays travel whole.
    """

    n: np.ndarray  # (C,) int32 observations applied
    mean: np.ndarray  # (C, D) float32 or float16 expected embedding
    dist_mean: np.ndarray  # (C,) float32 EW mean of the cell's own distances
    dist_var: np.ndarray  # (C,) float32 EW variance of those distances
    last_day: np.ndarray  # (C,) float64 day of the last update (NaN: never)
    shape: tuple[int, int]
    index_model: IndexModel  # the cell's own spectral indices: their seasonal expectation
    alerts: AlertState
    change: ChangeState = field(default_factory=lambda: ChangeState.empty(0))  # step, envelope
    # and the gradual test (change.py); empty: one for every cell is made
    last_time_day: float = float("nan")
    applied_ids: list[str] = field(default_factory=list)
    applied_days: list[float] = field(default_factory=list)  # each applied look's day (a rewind
    # replays the looks after the day it goes back to; NaN in checkpoints from before 0.31)
    block_cells: int = BLOCK_CELLS
    # per block: the save that wrote it (-1: never written, all zeros), whether it is in
    # memory, whether it changed since the last save; left empty: a state all in memory,
    # never saved (every block -1, loaded, clean)
    block_gen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    loaded: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    dirty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    generation: int = 0  # saves so far (block file names carry it)
    source: str | None = None  # the checkpoint further blocks are read from
    bytes_read: int = 0  # checkpoint bytes read and written, manifest included (state I/O)
    bytes_written: int = 0

    def __post_init__(self) -> None:
        if self.change.trend.size != self.n.size:
            self.change = ChangeState.empty(int(self.n.size))
        blocks = self.blocks_y * self.blocks_x
        if self.block_gen.size == 0:
            self.block_gen = np.full(blocks, -1, np.int64)
        if self.loaded.size == 0:
            self.loaded = np.ones(blocks, bool)
        if self.dirty.size == 0:
            self.dirty = np.zeros(blocks, bool)

    @property
    def blocks_y(self) -> int:
        return -(-self.shape[0] // self.block_cells)

    @property
    def blocks_x(self) -> int:
        return -(-self.shape[1] // self.block_cells)

    def _block_window(self, block: int) -> tuple[slice, slice]:
        by, bx = divmod(block, self.blocks_x)
        b = self.block_cells
        return slice(by * b, (by + 1) * b), slice(bx * b, (bx + 1) * b)

    def blocks_of(self, cells: np.ndarray) -> np.ndarray:
        """(blocks,) bool: the blocks holding any of ``cells`` ((C,) bool)."""
        cy, cx = self.shape
        b = self.block_cells
        grid = np.zeros((self.blocks_y * b, self.blocks_x * b), bool)
        grid[:cy, :cx] = cells.reshape(cy, cx)
        return grid.reshape(self.blocks_y, b, self.blocks_x, b).any(axis=(1, 3)).reshape(-1)

    def _mean_grid(self) -> np.ndarray:
        return self.mean.reshape(*self.shape, -1)

    @property
    def mean_block_bytes(self) -> int:
        """Bytes of the mean blocks in memory."""
        b = self.block_cells
        heights = np.minimum(b, self.shape[0] - b * np.arange(self.blocks_y))
        widths = np.minimum(b, self.shape[1] - b * np.arange(self.blocks_x))
        sizes = np.outer(heights, widths).reshape(-1)
        cells = int(sizes[self.loaded].sum())
        return cells * self.mean.shape[1] * self.mean.itemsize

    @property
    def nbytes(self) -> int:
        """Memory the state's arrays hold (what an actor shard's budget counts): the mean
        blocks in memory (the others are zero pages never touched) and the rest whole."""
        arrays = (self.n, self.dist_mean, self.dist_var, self.last_day)
        small = int(sum(a.nbytes for a in arrays)) + self.index_model.nbytes + self.alerts.nbytes
        small += self.change.nbytes
        return small + self.mean_block_bytes

    @classmethod
    def empty(
        cls,
        cells_y: int,
        cells_x: int,
        dim: int,
        dtype: str = "float32",
        block_cells: int = BLOCK_CELLS,
    ) -> TileState:
        c = cells_y * cells_x
        return cls(
            n=np.zeros(c, np.int32),
            mean=np.zeros((c, dim), STATE_DTYPES[dtype]),
            dist_mean=np.zeros(c, np.float32),
            dist_var=np.zeros(c, np.float32),
            last_day=np.full(c, np.nan),
            shape=(cells_y, cells_x),
            index_model=IndexModel.empty(c),
            alerts=AlertState.empty(c),
            block_cells=block_cells,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the state holds (every mean block read)."""
        self.ensure_loaded()
        return {**self.small_arrays(), "mean": self.mean}

    def small_arrays(self) -> dict[str, np.ndarray]:
        """Everything but the mean: what a checkpoint's manifest holds whole."""
        return {
            "n": self.n,
            "dist_mean": self.dist_mean,
            "dist_var": self.dist_var,
            "last_day": self.last_day,
            "shape": np.array(self.shape),
            "last_time_day": np.array(self.last_time_day),
            "applied_ids": np.array(self.applied_ids, dtype=str),
            "applied_days": np.array(self.applied_days, dtype=np.float64),
            **{f"index_{name}": getattr(self.index_model, name) for name in INDEX_MODEL_ARRAYS},
            **{f"alert_{name}": getattr(self.alerts, name) for name in ALERT_ARRAYS},
            **{f"change_{name}": getattr(self.change, name) for name in CHANGE_ARRAYS},
        }

    def ensure_loaded(self, blocks: np.ndarray | None = None) -> int:
        """Read the mean blocks ``blocks`` ((blocks,) bool; None: all) not yet in memory from
        the checkpoint; returns the bytes read."""
        want = np.ones_like(self.loaded) if blocks is None else blocks
        missing = np.flatnonzero(want & ~self.loaded)
        grid = self._mean_grid()
        read = 0
        for block in missing:
            gen = int(self.block_gen[block])
            if gen >= 0:
                if self.source is None:
                    raise RuntimeError("a state block is on disk but the state has no source")
                location = block_location(self.source, int(block), gen)
                with open_input(location) as f:
                    values = np.load(f)
                ys, xs = self._block_window(int(block))
                if values.shape != grid[ys, xs].shape or values.dtype != grid.dtype:
                    raise ValueError(
                        f"state block {location} holds {values.dtype} {values.shape}, not "
                        f"{grid.dtype} {grid[ys, xs].shape}: the checkpoint is damaged; "
                        f"remove {self.source} and its blocks to rebuild the tile's state"
                    )
                grid[ys, xs] = values
                read += values.nbytes
            self.loaded[block] = True
        self.bytes_read += read
        return read

    def mark_changed(self, cells: np.ndarray) -> None:
        """The cells ``cells`` ((C,) bool) changed their mean: their blocks are saved next."""
        self.dirty |= self.blocks_of(cells)

    def save(self, path: str | Path, keep_replaced: bool = False) -> None:
        """Atomic checkpoint to a local path or a URL: the changed mean blocks under new
        names, then the manifest (small arrays and which save wrote each block) published
        whole. A kill before the manifest leaves the previous checkpoint whole.

        ``keep_replaced``: the blocks this save supersedes stay (earlier checkpoints kept for
        rewinds still name them; ``history`` removes them with the last one that does)."""
        path = str(path)
        if path != self.source:  # a new place: every block with a look goes there
            self.ensure_loaded()
            self.mark_changed(self.n > 0)
        gen = self.generation + 1
        grid = self._mean_grid()
        block_gen = self.block_gen.copy()  # this save's, in force once the manifest is
        written = 0
        for block in np.flatnonzero(self.dirty):
            ys, xs = self._block_window(int(block))
            with atomic_writer(block_location(path, int(block), gen)) as f:
                values = np.ascontiguousarray(grid[ys, xs])
                np.save(f, values)
                written += values.nbytes
            block_gen[block] = gen
        with atomic_writer(path, crash="state.written") as f:
            manifest = {
                **self.small_arrays(),
                "mean_dim": np.array(self.mean.shape[1]),
                "mean_dtype": np.array(self.mean.dtype.name),
                "block_cells": np.array(self.block_cells),
                "block_gen": block_gen,
                "generation": np.array(gen),
            }
            np.savez(f, **manifest)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
            written += f.tell()
        if path == self.source and not keep_replaced:  # the replaced blocks are no one's now
            for block in np.flatnonzero(self.dirty & (self.block_gen >= 0)):
                remove_tree(block_location(path, int(block), int(self.block_gen[block])))
        self.block_gen = block_gen
        self.generation = gen
        self.source = path
        self.dirty[:] = False
        self.bytes_written += written

    @classmethod
    def load(cls, path: str | Path, lazy: bool = False, blocks_at: str | None = None) -> TileState:
        """The checkpoint at ``path``; ``lazy``: no mean block read yet (``ensure_loaded``
        reads those asked for), else all. ``blocks_at``: the checkpoint whose block folder
        holds the blocks (an earlier manifest kept for rewinds names the tile's blocks)."""
        with open_input(path) as f, np.load(f) as z:
            manifest_bytes = f.seek(0, 2)  # every array in it is read
            # A checkpoint from before the alert lifecycle starts its cells with no alert.
            alerts = (
                AlertState.from_arrays(
                    {name: z[f"alert_{name}"] for name in ALERT_ARRAYS if f"alert_{name}" in z}
                )
                if "alert_status" in z
                else AlertState.empty(int(z["n"].size))
            )
            # One from before the change memories starts them empty (change.py).
            change = ChangeState.from_arrays(
                {name: z[f"change_{name}"] for name in CHANGE_ARRAYS if f"change_{name}" in z},
                int(z["n"].size),
            )
            # One from before the seasonal index model starts it from the rolling index mean.
            index_model = (
                IndexModel(**{name: z[f"index_{name}"] for name in INDEX_MODEL_ARRAYS})
                if "index_level" in z
                else IndexModel.from_rolling_mean(z["idx_mean"], z["n"], z["last_day"])
            )
            whole = "mean" in z  # from before the blocks: the mean inside, read whole
            n = z["n"]
            mean = (
                z["mean"]
                if whole
                else np.zeros((n.size, int(z["mean_dim"])), STATE_DTYPES[str(z["mean_dtype"])])
            )
            state = cls(
                n=n,
                mean=mean,
                dist_mean=z["dist_mean"],
                dist_var=z["dist_var"],
                last_day=z["last_day"],
                shape=(int(z["shape"][0]), int(z["shape"][1])),
                index_model=index_model,
                alerts=alerts,
                change=change,
                last_time_day=float(z["last_time_day"]),
                applied_ids=[str(s) for s in z["applied_ids"]],
                applied_days=(
                    [float(d) for d in z["applied_days"]]
                    if "applied_days" in z
                    else [float("nan")] * int(z["applied_ids"].size)
                ),
                block_cells=BLOCK_CELLS if whole else int(z["block_cells"]),
                block_gen=np.zeros(0, np.int64) if whole else z["block_gen"].astype(np.int64),
                loaded=np.zeros(0 if whole else z["block_gen"].size, bool),
                generation=0 if whole else int(z["generation"]),
                source=None if whole else str(blocks_at or path),
                bytes_read=manifest_bytes,
            )
            if whole:  # its next save writes the mean as blocks
                state.mark_changed(state.n > 0)
        if not lazy:
            state.ensure_loaded()
        return state


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
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # (R,) object:
    # sudden or gradual (empty: all sudden)
    onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (R,) float64 day each
    # row's alert began (empty: unknown)


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
            r = _to_float32(ev[j]) - _to_float32(m[j])
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


def _median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row (``x`` is reordered); one partition when the row length is odd."""
    n = x.shape[1]
    if n % 2:
        x.partition(n // 2, axis=1)
        return x[:, n // 2].copy()
    return np.median(x, axis=1, overwrite_input=True)


def _mean_rows(mean: np.ndarray) -> np.ndarray:
    """The state's mean as the compiled pass reads and writes it (float16 as uint16 codes)."""
    return mean.view(np.uint16) if mean.dtype == np.float16 else mean


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
        e, _mean_rows(state.mean), candidates.astype(np.intp), state.n, state.dist_var, state.dist_mean,
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


def _clear_and_context(clear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) each cell's clear fraction and its 3x3 neighbourhood's."""
    clear32 = np.ascontiguousarray(clear, np.float32)
    return clear32.reshape(-1), _context_mean(clear32).reshape(-1)


def usable_cells(clear: np.ndarray, params: StatsConfig) -> np.ndarray:
    """(C,) cells clear enough to score and update (the only ones whose state is read)."""
    f, ctx = _clear_and_context(clear)
    return (f >= params.min_clear) & (ctx >= params.min_context_clear)


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
    cloud, shadow, snow or nodata neither update nor score (see the module docstring). The
    state's mean blocks holding the clear cells (``usable_cells``) must be in memory.
    """
    cy, cx = state.shape
    c = cy * cx
    e = _embedding_rows(embedding, c)
    f, ctx = _clear_and_context(clear)
    idx = np.ascontiguousarray(indices, np.float32).reshape(c, -1)
    n_before = state.n.copy()
    usable = (f >= params.min_clear) & (ctx >= params.min_context_clear)

    # The cell's own spectral indices against their seasonal expectation (seasonal.py), folded
    # in here for every detector: the index gate, the index detector and the labels use it.
    z_idx, expected_idx = index_scores(
        state.index_model, idx, usable, day, params.half_life_days, params.min_obs
    )
    change = evidence(state.change, idx, expected_idx, usable, day)
    strong = np.zeros(c, bool)
    if params.detector == "index":
        gate = index_anomalies(z_idx, params.index_threshold)
    elif params.detector == "embedding":
        gate = np.ones(c, bool)
    else:
        # A sudden change is a step past the cell's own seasons (change.py). Clear evidence
        # on the indices opens an alert alone; half the departure needs the embedding to agree
        # (the encoder sees what the indices miss, such as texture). Either way the look must
        # have stepped and be new to the cell: a harvest looks sudden to both.
        strong = change.onset(params.min_index_change, params.min_step, params.min_novelty)
        gate = change.onset(params.min_index_change / 2, params.min_step, params.min_novelty)

    shift, z_median = np.zeros(state.mean.shape[1], np.float32), 0.0
    if params.spatial_correction:
        scorable = usable & (state.n >= params.min_obs)
        shift, z_median = _spatial_reference(state, e, np.flatnonzero(scorable), day, params)

    dist = np.empty(c, np.float32)
    score = np.empty(c, np.float32)
    valid = np.empty(c, bool)
    anomaly = np.empty(c, bool)
    _update_cells(
        e, _mean_rows(state.mean), state.n, state.dist_mean, state.dist_var, state.last_day, f, ctx,
        np.ascontiguousarray(gate), params.detector != "index", float(day), shift,
        float(z_median), int(params.min_obs), float(params.min_clear),
        float(params.min_context_clear), float(params.threshold), float(params.half_life_days),
        dist, score, valid, anomaly,
    )  # fmt: skip
    state.last_time_day = day
    state.mark_changed(valid)
    scored = valid & (n_before >= params.min_obs)
    alerts = state.alerts
    onset = anomaly | (strong & scored)

    look = advance_cells(
        alerts, state.change, state.index_model.seasonal(), idx, expected_idx, change, onset,
        scored, usable, day, params, params.detector == "embedding+index",
    )  # fmt: skip
    emit, look_label, raised, ended_gradual = look.emit, look.label, look.raised, look.ended
    status = alerts.status

    rows = np.flatnonzero(emit)
    # An anomalous look is labelled by itself; an alert that just ended by the alert's label.
    ended = (status[rows] == AlertStatus.RECOVERED) | (status[rows] == AlertStatus.RETRACTED)
    row_label = np.where(ended, alerts.label[rows], look_label[rows])
    labels = [LABELS[i] for i in row_label]
    statuses = [STATUS_NAMES[i] for i in status[rows]]
    kinds = ["sudden"] * rows.size
    onsets = list(alerts.onset_day[rows])
    grows = np.flatnonzero(raised | ended_gradual)
    if grows.size:  # the gradual alerts raised or ended on this look
        rows = np.concatenate([rows, grows])
        labels += ["vegetation_loss"] * grows.size
        statuses += [
            STATUS_NAMES[AlertStatus.CONFIRMED if r else AlertStatus.RECOVERED]
            for r in raised[grows]
        ]
        kinds += ["gradual"] * grows.size
        onsets += list(state.change.gradual_onset[grows])
    return ScoreResult(
        score=score,
        distance=dist,
        anomaly=look.anomalous if look.tracked else anomaly,
        valid=valid,
        n_obs=n_before,
        scored=scored,
        rows=rows,
        labels=np.array(labels, dtype=object),
        status=np.array(statuses, dtype=object),
        snow_cells=int(np.count_nonzero(snow.reshape(c) > 0.5)),
        masked_cells=c - int(np.count_nonzero(valid)),
        kinds=np.array(kinds, dtype=object),
        onsets=np.array(onsets, np.float64),
    )


@dataclass(frozen=True)
class CellLook:
    """What one look did to each cell's alerts (``advance_cells``)."""

    emit: np.ndarray  # (C,) bool: a sudden row (anomalous, persisting, or its alert ended)
    anomalous: np.ndarray  # (C,) bool: an onset or a look that persists and still departs
    label: np.ndarray  # (C,) int8 each look's label (labels.LABELS)
    raised: np.ndarray  # (C,) bool: a gradual alert raised
    ended: np.ndarray  # (C,) bool: a gradual alert ended
    tracked: bool  # later looks measured against the onset (else by their own anomaly)


def advance_cells(
    alerts: AlertState,
    memory: ChangeState,
    seasonal: np.ndarray,
    idx: np.ndarray,
    expected: np.ndarray,
    change: Evidence,
    onset: np.ndarray,
    scored: np.ndarray,
    usable: np.ndarray,
    day: float,
    params: StatsConfig,
    track: bool,
) -> CellLook:
    """One look through the alert lifecycle, the gradual test and the change memories (in
    place), for any detector: ``onset`` (C,) are its anomalous looks; ``track``: later looks
    of an alert are measured against its onset (change.py), else by their own ``onset``."""
    c = idx.shape[0]
    delta = (idx - expected).astype(np.float32)
    # Each later look of an alert against its onset (alerts.advance): the share of the change
    # on the index it began on that is still there; an alert without one (the embedding or
    # index detector, an older checkpoint) goes by its look's own anomaly.
    progress = None
    if track:
        progress = np.where(onset, 1.0, 0.0)
        axis = alerts.axis.astype(np.intp)
        has = axis >= 0
        rows_ = np.flatnonzero(has)
        col = COLS[axis[rows_]]
        moved = SIGN[axis[rows_]] * (idx[rows_, col] - alerts.reference[rows_, col])
        with np.errstate(invalid="ignore", divide="ignore"):
            progress[rows_] = moved / alerts.magnitude[rows_]
    before = alerts.status.copy()
    active_before = (before == AlertStatus.PROVISIONAL) | (before == AlertStatus.CONFIRMED)
    # A later look of an alert is labelled by its change since the onset (a flood stays
    # water_gain while it lasts, though the expectation learns it).
    label_delta = np.where(active_before[:, None], idx - alerts.reference, delta)
    named = onset | active_before
    look_label = np.full(c, UNKNOWN, np.int8)
    if named.any():
        look_label[named] = label_index(label_delta[named], idx[named])
    emit, going = advance(
        alerts, scored, onset, look_label, idx, expected.astype(np.float32), day,
        params.confirm_looks, params.recover_index_change, progress,
    )  # fmt: skip
    fresh = scored & onset & ~active_before
    if fresh.any():
        dominant = change.dominant()[fresh]
        alerts.axis[fresh] = dominant
        col = COLS[dominant.astype(np.intp)]
        # the change on it, floored: a weak onset's index may have moved less than the
        # tile-wide shift removed from its departure
        moved = SIGN[dominant] * delta[np.flatnonzero(fresh), col]
        alerts.magnitude[fresh] = np.maximum(moved, max(0.5 * params.min_index_change, 0.01))
    # A persisting change is a row while it still departs from the expectation, which learns
    # it: a clear-cut's alert stays confirmed, its rows stop.
    if progress is not None:
        axis = np.maximum(alerts.axis.astype(np.intp), 0)
        departing = change.departure[np.arange(c), axis] >= 0.5 * params.min_index_change
        emit &= ~(going & ~departing)
        going &= departing
    anomalous = fresh | going

    status = alerts.status
    active_after = (status == AlertStatus.PROVISIONAL) | (status == AlertStatus.CONFIRMED)
    raised, ended_gradual = gradual_step(
        memory, idx, usable, seasonal, active_after, day, params.gradual_threshold,
        params.gradual_min_loss,
    )  # fmt: skip
    fold(memory, idx, usable, ~onset & ~active_after & ~active_before, day)

    return CellLook(emit, anomalous, look_label, raised, ended_gradual, progress is not None)
