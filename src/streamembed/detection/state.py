"""A tile's statistics state: per-cell arrays of the embedding's expectation, the distance
history, the seasonal index model, the change memories and the alert lifecycle; saved as a
checkpoint (small arrays in one ``.npz``, the embedding means in blocks of 32 x 32 cells beside
it, written only where an acquisition touched them) and loaded whole or lazily, block by block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..storage import join, open_input
from .alerts import ALERT_ARRAYS, AlertState
from .change import CHANGE_ARRAYS, ChangeState
from .seasonal import INDEX_MODEL_ARRAYS, IndexModel, seasonal_cells

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

    def block_window(self, block: int) -> tuple[slice, slice]:
        """The cells of mean block ``block`` (rows, columns of the cell grid)."""
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

    def mean_grid(self) -> np.ndarray:
        """The expected embeddings as (cells_y, cells_x, D), a view."""
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
        grid = self.mean_grid()
        read = 0
        for block in missing:
            gen = int(self.block_gen[block])
            if gen >= 0:
                if self.source is None:
                    raise RuntimeError("a state block is on disk but the state has no source")
                location = block_location(self.source, int(block), gen)
                with open_input(location) as f:
                    values = np.load(f)
                ys, xs = self.block_window(int(block))
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
        """Atomic checkpoint to a local path or a URL (``state_file.save_checkpoint``)."""
        from .state_file import save_checkpoint  # the file format imports this module

        save_checkpoint(self, path, keep_replaced)

    @classmethod
    def load(cls, path: str | Path, lazy: bool = False, blocks_at: str | None = None) -> TileState:
        """The checkpoint at ``path`` (``state_file.load_checkpoint``)."""
        from .state_file import load_checkpoint

        return load_checkpoint(path, lazy, blocks_at)


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
