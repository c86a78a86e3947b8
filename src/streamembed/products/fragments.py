"""Major TOM-faithful fragment embeddings: one encoder pass per 224 px fragment, as Major TOM's
embedder computes them (the CDSE Global Embeddings Dataset).

What Major TOM does, in its own terms (MajorTOM/embedder in ESA-PhiLab/Major-TOM, read for the
arithmetic, none of it copied): a grid cell's image is a 10,680 m square of the product's own
UTM grid whose south-west corner is 340 m south and west of the cell's reference point (its
south-west corner), i.e. 1068 x 1068 px; it is cut into fragments of the model's input size
(224 px) with a target overlap of 10 %: n = round((1068 - 224) / (224 - 22.4)) = 4 steps, an
actual overlap of ceil(224 - 844 / 4) = 13 px, offsets 0, 211, 422, 633, 844 (the last row and
column moved to the image's edge where they fall short of it). The bands are read as the
product stores them (20 m and 60 m bands upsampled, nearest) and divided by 10,000, and the
embedding is the model's own pooled output: global average pooling for a ResNet, the class
token after the final norm for a ViT.

The store's cheaper fragment (export.py, ``--fragment-embedding cells``) is the clear-weighted
mean of the 7 x 7 cells under a snapped fragment: docs/export.md says how the two differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pyproj import Transformer

from ..grid import PIXEL_M, TileGrid
from .majortom import FRAGMENT_PX, MajorTomGrid, grid_cells_near

if TYPE_CHECKING:
    from ..acquisition import Acquisition
    from ..config import IngestConfig, ModelConfig
    from ..runtime.encoder import Encoder

TARGET_OVERLAP = 0.1
CELL_M = 10_000  # Major TOM's grid spacing
IMAGE_M = 10_680  # the side of a grid cell's image: 340 m beyond the cell on every side
DN_SCALE = 10_000.0  # Major TOM's preprocessing: the stored values / 10,000


def fragment_offsets(
    side: int, fragment: int = FRAGMENT_PX, target_overlap: float = TARGET_OVERLAP
) -> list[int]:
    """Offsets along one axis of the fragments of an image ``side`` px long (Major TOM's
    arithmetic, the border shift included)."""
    if side < fragment:
        raise ValueError(f"an image of {side} px is smaller than a {fragment} px fragment")
    if side == fragment:
        return [0]
    steps = max(1, round((side - fragment) / (fragment - target_overlap * fragment)))
    overlap = math.ceil(fragment - (side - fragment) / steps)
    stride = fragment - overlap
    offsets = [i * stride for i in range(steps + 1)]
    if offsets[-1] + fragment < side:
        offsets[-1] = side - fragment
    return offsets


@dataclass(frozen=True)
class Fragment:
    """One fragment of one Major TOM grid cell, in the tile's pixel grid."""

    label: str
    grid_row: int
    grid_col: int
    fragment_row: int
    fragment_col: int
    row0: int
    col0: int

    @property
    def rows(self) -> tuple[int, int]:
        return self.row0, self.row0 + FRAGMENT_PX

    @property
    def cols(self) -> tuple[int, int]:
        return self.col0, self.col0 + FRAGMENT_PX


def majortom_fragments(grid: TileGrid, mt: MajorTomGrid) -> list[Fragment]:
    """Every fragment of Major TOM's grid-cell images that lies wholly inside the tile, grouped
    by grid cell (25 each where the whole image is inside)."""
    to_utm = Transformer.from_crs(4326, grid.epsg, always_xy=True)
    margin = (IMAGE_M - CELL_M) / 2
    side = round(IMAGE_M / PIXEL_M)
    offsets = fragment_offsets(side)
    out = []
    for row, col in grid_cells_near(grid, mt):
        west, south, _, _ = mt.outline(row, col).bounds
        x, y = to_utm.transform(west, south)
        # rasterio's from_bounds + read: the image's corner on the nearest pixel edge.
        c0 = round((x - margin - grid.x0) / PIXEL_M)
        r0 = round((grid.y0 - (y - margin + IMAGE_M)) / PIXEL_M)
        label = mt.label(row, col)
        for fr, oy in enumerate(offsets):
            for fc, ox in enumerate(offsets):
                top, left = r0 + oy, c0 + ox
                inside = top >= 0 and left >= 0
                if inside and top + FRAGMENT_PX <= grid.height and left + FRAGMENT_PX <= grid.width:
                    out.append(Fragment(label, row, col, fr, fc, top, left))
    return out


def fragment_inputs(dn: np.ndarray) -> np.ndarray:
    """Encoder input of fragments' DN (n, band, 224, 224): Major TOM's ``input / 1e4``."""
    return (dn.astype(np.float32) / np.float32(DN_SCALE)).astype(np.float32)


@dataclass(frozen=True)
class FragmentEmbeddings:
    """The embeddings of one acquisition's fragments (those clear enough), in fragment order."""

    fragments: list[Fragment]
    embedding: np.ndarray  # (n, dim) float32
    clear: np.ndarray  # (n,) clear fraction of the fragment's pixels (the quality layer)


def embed_fragments(
    acq: Acquisition,
    grid: TileGrid,
    fragments: list[Fragment],
    encoder: Encoder,
    ingest: IngestConfig,
    model: ModelConfig,
    min_clear: float,
) -> FragmentEmbeddings:
    """Read each fragment's pixels from the product and embed them as Major TOM does.

    Fragments are read and encoded one grid cell at a time (25 x 224 px x bands: ~65 MB of
    float32 at 13 bands), so memory does not grow with the tile.
    """
    from ..runtime.ingest import (
        mask_mode,
        open_bands,
        quality_asset,
        quality_masks,
        read_dn,
        read_masked,
        scene_bands,
    )

    bands = scene_bands(acq, model)
    mode = mask_mode(acq, ingest)
    quality = quality_asset(acq, ingest)
    kept: list[Fragment] = []
    vecs: list[np.ndarray] = []
    clears: list[float] = []
    by_cell: dict[str, list[Fragment]] = {}
    for f in fragments:
        by_cell.setdefault(f.label, []).append(f)
    with open_bands(acq, bands, quality, ingest.http_retries) as opened:
        for cell_fragments in by_cell.values():
            dns, here = [], []
            for f in cell_fragments:
                if mode == "computed":  # reads a halo of its own around the fragment
                    dn, masked, _, _ = read_masked(acq, grid, f.rows, f.cols, bands, ingest)
                else:
                    dn, layer, nodata = read_dn(acq, opened, grid, f.rows, f.cols, bands,
                                                "nearest", quality)  # fmt: skip
                    masked, _ = quality_masks(layer, nodata, ingest, mode)
                clear = 1.0 - float(masked.mean())
                if clear < min_clear or clear <= 0:
                    continue
                dns.append(dn)
                here.append((f, clear))
            if not dns:
                continue
            vecs.append(encoder.pooled(fragment_inputs(np.stack(dns))))
            kept += [f for f, _ in here]
            clears += [c for _, c in here]
    dim = int(encoder.dim)
    emb = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    return FragmentEmbeddings(kept, emb, np.array(clears, np.float32))
