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

from ..storage import atomic_writer, join, open_input, remove_tree
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
