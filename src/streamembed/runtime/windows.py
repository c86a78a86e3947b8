"""Where the encoder looks: a tile's windows (each with its margin, each cell kept from exactly
one window) and blocks of windows (the unit of a task), and a block's windows cut from its DN.
Pure arithmetic over the tile grid and NumPy; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import IngestConfig
from ..grid import TileGrid
from .radiometry import fill_masked, normalise


@dataclass(frozen=True)
class Window:
    """One encoder window: the cell block it is kept for, and the pixel block it reads."""

    cell_y: int
    cell_x: int
    n_cells_y: int
    n_cells_x: int
    margin_cells: int

    def read_rows(self, cell: int) -> tuple[int, int]:
        r0 = (self.cell_y - self.margin_cells) * cell
        return r0, r0 + (self.n_cells_y + 2 * self.margin_cells) * cell

    def read_cols(self, cell: int) -> tuple[int, int]:
        c0 = (self.cell_x - self.margin_cells) * cell
        return c0, c0 + (self.n_cells_x + 2 * self.margin_cells) * cell


def _starts(n_cells: int, per_window: int) -> list[int]:
    if n_cells <= per_window:
        return [0]
    starts = list(range(0, n_cells - per_window + 1, per_window))
    if starts[-1] + per_window < n_cells:
        # The last window is shifted back so every window has the same shape (one batch).
        starts.append(n_cells - per_window)
    return starts


def plan_windows(grid: TileGrid, window: int, margin: int) -> list[Window]:
    """Equal-shaped windows covering every cell of the tile (the last row/column overlaps)."""
    cell = grid.cell_size
    wy = min(window // cell, grid.n_cells_y)
    wx = min(window // cell, grid.n_cells_x)
    return [
        Window(cy, cx, wy, wx, margin // cell)
        for cy in _starts(grid.n_cells_y, wy)
        for cx in _starts(grid.n_cells_x, wx)
    ]


def _owned(starts: Sequence[int], n_cells: int) -> list[tuple[int, int]]:
    """The cells each window start keeps along one axis: up to the next window's start.

    Where the last window is shifted back to keep every window the same shape, the cells it
    overlaps belong to it (the later window), so every cell has exactly one owner.
    """
    ends = [*starts[1:], n_cells]
    return list(zip(starts, ends, strict=True))


@dataclass(frozen=True)
class WindowPart:
    """The cells one block keeps from one encoder window (tile cell indices, [start, stop))."""

    window: Window
    cells_y: tuple[int, int]
    cells_x: tuple[int, int]


@dataclass(frozen=True)
class Block:
    """A rectangle of cells written as one unit, and the window parts that fill it.

    Blocks are the unit of memory and of a task: a task reads, encodes and stores one block,
    so what it needs is known from the block's size before it runs, whatever the tile's size.
    Block edges fall on store chunk edges, so concurrent block writers never share a chunk.
    """

    index: int
    cells_y: tuple[int, int]
    cells_x: tuple[int, int]
    parts: tuple[WindowPart, ...]
    tile_windows: int = 1  # encoder windows in the whole tile (the encoder's pass size cap)

    @property
    def shape(self) -> tuple[int, int]:
        return self.cells_y[1] - self.cells_y[0], self.cells_x[1] - self.cells_x[0]

    def read_rows(self, cell: int) -> tuple[int, int]:
        """Pixel rows every window of the block reads (margins included)."""
        spans = [p.window.read_rows(cell) for p in self.parts]
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def read_cols(self, cell: int) -> tuple[int, int]:
        spans = [p.window.read_cols(cell) for p in self.parts]
        return min(s[0] for s in spans), max(s[1] for s in spans)


def block_cells(ingest: IngestConfig) -> int:
    """Cells per block side."""
    return ingest.block_px // ingest.cell_size


def plan_blocks(grid: TileGrid, ingest: IngestConfig) -> list[Block]:
    """The tile's blocks in row-major order, each with the window parts that own its cells.

    A window whose owned cells straddle a block edge appears in both blocks (encoded twice,
    identically): a cell's embedding comes from the same window whatever the block size.
    """
    cell = grid.cell_size
    per_y = min(ingest.window // cell, grid.n_cells_y)
    per_x = min(ingest.window // cell, grid.n_cells_x)
    margin = ingest.margin // cell
    ys, xs = _starts(grid.n_cells_y, per_y), _starts(grid.n_cells_x, per_x)
    own_y, own_x = _owned(ys, grid.n_cells_y), _owned(xs, grid.n_cells_x)
    side = block_cells(ingest)
    blocks: list[Block] = []
    for by in range(0, grid.n_cells_y, side):
        span_y = (by, min(by + side, grid.n_cells_y))
        for bx in range(0, grid.n_cells_x, side):
            span_x = (bx, min(bx + side, grid.n_cells_x))
            parts = []
            for sy, oy in zip(ys, own_y, strict=True):
                ky = (max(oy[0], span_y[0]), min(oy[1], span_y[1]))
                if ky[0] >= ky[1]:
                    continue
                for sx, ox in zip(xs, own_x, strict=True):
                    kx = (max(ox[0], span_x[0]), min(ox[1], span_x[1]))
                    if kx[0] < kx[1]:
                        parts.append(WindowPart(Window(sy, sx, per_y, per_x, margin), ky, kx))
            blocks.append(Block(len(blocks), span_y, span_x, tuple(parts), len(ys) * len(xs)))
    return blocks


def window_inputs(
    dn: np.ndarray,
    masked: np.ndarray,
    origin: tuple[int, int],
    windows: Sequence[Window],
    scale_offset: np.ndarray,
    bands: Sequence[str],
    normalisation: str,
    cell: int,
) -> np.ndarray:
    """Encoder inputs (n, band, y, x) float32 for windows cut from a block's DN and mask.

    ``dn`` is (band, y, x) starting at pixel ``origin``; ``scale_offset`` is (band, 2). Each
    window is harmonised, normalised and filled on its own, so its input does not depend on
    the block it was cut from.
    """
    scale = scale_offset[:, 0].astype(np.float32)[:, None, None]
    offset = scale_offset[:, 1].astype(np.float32)[:, None, None]
    out = []
    for win in windows:
        r0, r1 = (r - origin[0] for r in win.read_rows(cell))
        c0, c1 = (c - origin[1] for c in win.read_cols(cell))
        refl = dn[:, r0:r1, c0:c1].astype(np.float32) * scale + offset
        out.append(fill_masked(normalise(refl, bands, normalisation), masked[r0:r1, c0:c1]))
    return np.stack(out)
