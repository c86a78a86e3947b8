"""Ingest: read bands onto the tile's 10 m grid, SCL mask, harmonise, normalise, cut windows.

A tile is processed as blocks of cells (``windows.plan_blocks``): a block task reads, masks and
summarises its cells (``read_block_pixels``) and hands compact DN plus mask to the encoder,
which cuts the windows (``windows.window_inputs``). The pure NumPy cores are their own modules
so tests can hit them directly: ``radiometry`` (masks, reflectance, normalisation, fill, cell
summaries) and ``windows`` (windows and blocks); ``assets`` says which rasters an acquisition
needs, opens and checks them; this one is the rasterio reads around them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..acquisition import Acquisition
from ..config import IngestConfig, ModelConfig
from ..grid import PIXEL_M, TileGrid
from ..indices import INDEX_BANDS
from . import cloudmask
from .assets import (
    CorruptAssetError,
    GridMismatchError,
    IngestError,
    OpenBands,
    TransientReadError,
    gdal_options,
    grid_for,
    mask_mode,
    open_bands,
    quality_asset,
    raster_error,
    required_assets,
    scene_bands,
)
from .radiometry import SNOW_CLASS, cell_summaries, quality_masks, to_reflectance
from .tilecache import TileCache, read_window, worker_cache
from .windows import Block

log = logging.getLogger(__name__)

__all__ = [
    "Block",
    "BlockPixels",
    "CorruptAssetError",
    "GridMismatchError",
    "IngestError",
    "TransientReadError",
    "gdal_options",
    "grid_for",
    "mask_mode",
    "open_bands",
    "quality_asset",
    "raster_error",
    "read_block",
    "read_block_pixels",
    "read_dn",
    "read_masked",
    "required_assets",
    "scene_bands",
]


def _read_band(
    acq: Acquisition,
    src: Any,
    band: str,
    grid: TileGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
    resampling: str,
    cache: TileCache | None = None,
) -> np.ndarray:
    """One band's pixels [rows, cols) on the tile's 10 m grid, zero outside the raster.

    Nearest: the native pixels are read (clipped to the raster) and repeated to 10 m in NumPy,
    so a pixel's value never depends on the extent read (blocks of any size agree bit for bit)
    and GDAL does no resampling. Bilinear, or a raster off the tile's 10 m lattice: GDAL
    resamples the extent.
    """
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import from_bounds

    h, w = rows[1] - rows[0], cols[1] - cols[0]
    index = acq.assets[band].index
    t = src.transform
    factor = t.a / PIXEL_M
    off_c = (t.c - grid.x0) / PIXEL_M
    off_r = (grid.y0 - t.f) / PIXEL_M
    on_lattice = (
        t.b == 0 and t.d == 0 and t.e == -t.a and factor >= 1
        and all(abs(v - round(v)) < 1e-6 for v in (factor, off_c, off_r))
    )  # fmt: skip
    try:
        if resampling == "nearest" and on_lattice:
            f, oc, orr = round(factor), round(off_c), round(off_r)
            # 10 m pixel r of the tile is native row (r - orr) // f of this raster.
            n0, n1 = (rows[0] - orr) // f, (rows[1] - 1 - orr) // f + 1
            m0, m1 = (cols[0] - oc) // f, (cols[1] - 1 - oc) // f + 1
            native = np.zeros((n1 - n0, m1 - m0), src.dtypes[index - 1])
            r0, r1 = max(n0, 0), min(n1, src.height)
            c0, c1 = max(m0, 0), min(m1, src.width)
            if r0 < r1 and c0 < c1:
                native[r0 - n0 : r1 - n0, c0 - m0 : c1 - m0] = read_window(
                    src, index, (r0, r1), (c0, c1), cache
                )
            if f > 1:
                native = np.repeat(np.repeat(native, f, axis=0), f, axis=1)
            dy, dx = rows[0] - orr - n0 * f, cols[0] - oc - m0 * f
            return native[dy : dy + h, dx : dx + w]
        method = Resampling.bilinear if resampling == "bilinear" else Resampling.nearest
        win = from_bounds(*grid.pixel_bounds(rows[0], cols[0], rows[1], cols[1]), transform=t)
        return np.asarray(
            src.read(
                index, window=win, out_shape=(h, w), resampling=method,
                boundless=True, fill_value=0,
            )
        )  # fmt: skip
    except RasterioError as err:
        raise raster_error(
            acq.id, f"band {band} {acq.assets[band].href} is unreadable", err
        ) from err


def read_dn(
    acq: Acquisition,
    opened: OpenBands,
    grid: TileGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
    bands: Sequence[str],
    resampling: str,
    quality: str | None = "SCL",
    cache: TileCache | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DN (band, y, x) in the rasters' integer type, the quality layer (y, x) uint8, nodata.

    Pixels outside the tile or at a band's nodata are nodata; the quality layer is zeros where
    ``quality`` is None. DN stay integers (uint16 for Sentinel-2): half the bytes of float32
    and lossless, which is what travels from a reading worker to an encoding one.
    """
    h, w = rows[1] - rows[0], cols[1] - cols[0]
    dn = np.empty((len(bands), h, w), np.uint16)  # open_bands let only uint8/uint16 through
    nodata = np.zeros((h, w), bool)
    for i, band in enumerate(bands):
        dn[i] = _read_band(acq, opened.datasets[band], band, grid, rows, cols, resampling, cache)
        nd = acq.assets[band].nodata
        nodata |= dn[i] == (0 if nd is None else nd)
    layer = (
        _read_band(
            acq, opened.datasets[quality], quality, grid, rows, cols, "nearest", cache
        ).astype(np.uint8)
        if quality
        else np.zeros((h, w), np.uint8)
    )
    return dn, layer, nodata


def read_block(
    acq: Acquisition,
    opened: OpenBands,
    grid: TileGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
    bands: Sequence[str],
    resampling: str,
    quality: str | None = "SCL",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reflectance (band, y, x) float32, the quality layer (y, x) uint8 and nodata (y, x)."""
    dn, layer, nodata = read_dn(acq, opened, grid, rows, cols, bands, resampling, quality)
    out = np.empty(dn.shape, np.float32)
    for i, band in enumerate(bands):
        out[i] = to_reflectance(dn[i], *acq.scale_offset(band))
    return out, layer, nodata


@dataclass(frozen=True)
class BlockPixels:
    """One block of one acquisition, read and masked, ready for the encoder.

    What crosses from a reading worker to an encoding one: DN as read (uint16), the mask and
    the per-cell summaries; the encoder side harmonises, normalises and fills (cheap, and
    float32 windows with their overlapping margins would be 2.5x the bytes).
    """

    acquisition_id: str
    tile: str
    block: Block
    origin: tuple[int, int]  # pixel (row, col) of dn[:, 0, 0] on the tile grid
    dn: np.ndarray  # (band, y, x) uint16
    masked: np.ndarray  # (y, x) bool: cloud, shadow, snow, nodata…
    scale_offset: np.ndarray  # (band, 2) DN -> reflectance
    bands: tuple[str, ...]
    clear: np.ndarray  # (cells_y, cells_x) of the block
    snow: np.ndarray
    indices: np.ndarray  # (cells_y, cells_x, index)
    read_seconds: float
    mask_seconds: float

    @property
    def nbytes(self) -> int:
        arrays = (self.dn, self.masked, self.clear, self.snow, self.indices)
        return int(sum(a.nbytes for a in arrays))


def _read_retrying(
    acq: Acquisition,
    grid: TileGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
    bands: Sequence[str],
    quality: str | None,
    ingest: IngestConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``read_dn`` of a block, tried again with back-off while the failure is transient."""
    delay = ingest.read_backoff_seconds
    for attempt in range(1, ingest.read_attempts + 1):
        try:
            with open_bands(acq, bands, quality, ingest.http_retries) as opened:
                return read_dn(acq, opened, grid, rows, cols, bands, ingest.resampling, quality,
                               worker_cache(ingest.decode_cache_mib))  # fmt: skip
        except TransientReadError as err:
            if attempt == ingest.read_attempts:
                raise TransientReadError(
                    f"{err} (still failing after {attempt} attempts: ingest.read_attempts)"
                ) from err
            log.warning("%s; attempt %d of %d in %.0f s", err, attempt + 1,
                        ingest.read_attempts, delay)  # fmt: skip
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable: read_attempts >= 1")


def read_masked(
    acq: Acquisition,
    grid: TileGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
    bands: Sequence[str],
    ingest: IngestConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """DN (band, y, x), masked and snow (y, x) of an area, and the seconds spent reading.

    A computed mask (L1C) reads ``cloudmask.HALO_PX`` more on every side, on the mask's 160 m
    lattice, so a pixel's mask is the one a whole-tile computation gives (block-size
    invariant, like SCL's), then keeps the area asked for."""
    mode = mask_mode(acq, ingest)
    if mode != "computed":
        t0 = time.perf_counter()
        quality = quality_asset(acq, ingest)
        dn, layer, nodata = _read_retrying(acq, grid, rows, cols, bands, quality, ingest)
        read_s = time.perf_counter() - t0
        masked, snow = quality_masks(layer, nodata, ingest, mode)
        return dn, masked, snow, read_s
    lat, halo = cloudmask.LATTICE_PX, cloudmask.HALO_PX
    r0, c0 = (rows[0] - halo) // lat * lat, (cols[0] - halo) // lat * lat
    r1, c1 = -(-(rows[1] + halo) // lat) * lat, -(-(cols[1] + halo) // lat) * lat
    extra = [b for b in cloudmask.INPUT_BANDS if b not in bands]
    every = [*bands, *extra]
    t0 = time.perf_counter()
    dn, _, nodata = _read_retrying(acq, grid, (r0, r1), (c0, c1), every, None, ingest)
    read_s = time.perf_counter() - t0

    def toa(band: str) -> np.ndarray:
        return to_reflectance(dn[every.index(band)], *acq.scale_offset(band))

    sun = acq.sun_azimuth if acq.sun_azimuth is not None else cloudmask.DEFAULT_SUN[0]
    cloud, shadow, snow = cloudmask.computed_masks(toa, nodata, sun)
    masked = nodata | cloud | shadow
    if SNOW_CLASS in ingest.scl_mask_classes:  # snow masked as the SCL classes mask it
        masked |= snow
    keep = (slice(rows[0] - r0, rows[1] - r0), slice(cols[0] - c0, cols[1] - c0))
    return dn[: len(bands), keep[0], keep[1]].copy(), masked[keep], snow[keep], read_s


def read_block_pixels(
    acq: Acquisition, grid: TileGrid, block: Block, ingest: IngestConfig, model: ModelConfig
) -> BlockPixels:
    """Read and mask one block of an acquisition onto its tile's fixed grid (CPU work)."""
    if acq.epsg is not None and acq.epsg != grid.epsg:
        raise GridMismatchError(
            f"acquisition {acq.id}: EPSG:{acq.epsg} differs from tile {grid.tile}'s "
            f"EPSG:{grid.epsg}; each tile keeps its own UTM grid"
        )
    bands = scene_bands(acq, model)
    cell = grid.cell_size
    rows, cols = block.read_rows(cell), block.read_cols(cell)
    t0 = time.perf_counter()
    dn, masked, is_snow, read_s = read_masked(acq, grid, rows, cols, bands, ingest)
    t1 = t0 + read_s
    scale_offset = np.array([acq.scale_offset(b) for b in bands], np.float64)
    # Per-cell summaries over the block's own cells: six bands' reflectance is all they need.
    core = (
        slice(block.cells_y[0] * cell - rows[0], block.cells_y[1] * cell - rows[0]),
        slice(block.cells_x[0] * cell - cols[0], block.cells_x[1] * cell - cols[0]),
    )
    refl = np.stack(
        [
            to_reflectance(dn[bands.index(b)][core], *scale_offset[bands.index(b)])
            for b in INDEX_BANDS
        ]
    )
    clear, snow, indices = cell_summaries(refl, masked[core], is_snow[core], INDEX_BANDS, cell)
    del refl
    return BlockPixels(
        acq.id, acq.tile, block, (rows[0], cols[0]), dn, masked, scale_offset, tuple(bands),
        clear, snow, indices, t1 - t0, time.perf_counter() - t1,
    )  # fmt: skip
