"""Ingest: read bands onto the tile's 10 m grid, SCL mask, harmonise, normalise, cut windows.

A tile is processed as blocks of cells (``windows.plan_blocks``): a block task reads, masks and
summarises its cells (``read_block_pixels``) and hands compact DN plus mask to the encoder,
which cuts the windows (``windows.window_inputs``). The pure NumPy cores are their own modules
so tests can hit them directly: ``radiometry`` (masks, reflectance, normalisation, fill, cell
summaries) and ``windows`` (windows and blocks); this one is the rasterio I/O around them and
which assets an acquisition needs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..acquisition import Acquisition, BandAsset
from ..config import IngestConfig, ModelConfig
from ..grid import PIXEL_M, TileGrid
from ..indices import INDEX_BANDS
from . import cloudmask
from .radiometry import SNOW_CLASS, cell_summaries, quality_masks, to_reflectance
from .tilecache import TileCache, read_window, worker_cache
from .windows import Block

log = logging.getLogger(__name__)


class IngestError(Exception):
    """Base for ingest failures."""


class CorruptAssetError(IngestError):
    """A raster that cannot be opened or decoded: permanent for this acquisition."""


class GridMismatchError(IngestError):
    """An acquisition that does not fit its tile's fixed grid (other CRS, too small)."""


class TransientReadError(IngestError):
    """A read that failed for a reason that passes (timeout, throttling, HTTP 429/5xx, a reset
    or refused connection): retried with back-off before the acquisition is failed."""


# GDAL's messages for reads that may succeed when tried again (curl, HTTP, S3 throttling).
_TRANSIENT = re.compile(
    r"timed? ?out|timeout|HTTP response code: (429|5\d\d)|connection (was )?(reset|refused)"
    r"|SlowDown|throttl|too many requests|could not resolve|temporar|empty reply|"
    r"recv failure|send failure|operation too slow|connection closed",
    re.IGNORECASE,
)


def raster_error(acq_id: str, what: str, err: Exception) -> IngestError:
    """The typed error for a raster that could not be opened or read: transient or corrupt
    (GDAL's message is kept in the text; the task raises it without the rasterio chain)."""
    cls = TransientReadError if _TRANSIENT.search(str(err)) else CorruptAssetError
    return cls(f"acquisition {acq_id}: {what}: {err}")


# ---------------------------------------------------------------- I/O


def gdal_options(hrefs: Sequence[str] = (), http_retries: int = 5) -> dict[str, object]:
    """GDAL settings for reading COG/JP2 from disk, HTTPS or S3, set in this one place.

    Remote reads retry throttling (429) and server errors with back-off, time out instead of
    hanging a worker, and skip directory listings; credentials for ``hrefs`` come from the
    worker's environment (``credentials.py``) and are never logged. Nothing GDAL learnt of a
    remote file outlives its handle: a worker runs for months, and a cached failure (a 503, a
    file being replaced) would fail every later read of that file, retries included.
    """
    from ..credentials import Credentials

    return {
        "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/:/vsis3/:/vsigs/:/vsiaz/",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2,.TIF,.TIFF,.JP2",
        "GDAL_HTTP_MAX_RETRY": http_retries,
        "GDAL_HTTP_RETRY_DELAY": 1,
        "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
        "GDAL_HTTP_TIMEOUT": 60,
        "GDAL_HTTP_CONNECTTIMEOUT": 15,
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "VSI_CACHE": "TRUE",
        "GDAL_NUM_THREADS": 1,
        **Credentials.from_env().gdal_options(hrefs),
    }


def mask_mode(acq: Acquisition, ingest: IngestConfig) -> str:
    """What masks ``acq``: ``scl``, ``computed``, ``asset`` or ``none`` (``auto`` resolved:
    SCL where the product has one, L2A; computed from the bands for L1C)."""
    mode = ingest.cloud_mask
    if mode == "auto":
        return "computed" if acq.level == "L1C" else "scl"
    if mode == "scl" and acq.level == "L1C":
        raise IngestError(
            f"acquisition {acq.id}: an L1C product has no SCL layer and ingest.cloud_mask is "
            "scl; set ingest.cloud_mask: auto (computes the mask from the bands for L1C)"
        )
    return mode


def quality_asset(acq: Acquisition, ingest: IngestConfig) -> str | None:
    """The asset that carries ``acq``'s cloud mask (None: no layer is read)."""
    return {"scl": "SCL", "asset": "MASK", "computed": None, "none": None}[mask_mode(acq, ingest)]


def scene_bands(acq: Acquisition, model: ModelConfig) -> list[str]:
    """The bands to read for the encoder: L2A products have no B10."""
    bands = [b for b in model.bands if b != "B10"] if acq.level == "L2A" else list(model.bands)
    if len(bands) != len(model.bands):
        raise IngestError(
            f"acquisition {acq.id}: L2A has no B10 but model.bands lists 13 bands; "
            "use a 12-band (L2A) encoder or L1C products"
        )
    return bands


def required_assets(acq: Acquisition, ingest: IngestConfig, model: ModelConfig) -> list[str]:
    bands = scene_bands(acq, model)
    if mask_mode(acq, ingest) == "computed":
        return bands + [b for b in cloudmask.INPUT_BANDS if b not in bands]
    quality = quality_asset(acq, ingest)
    return bands + ([quality] if quality else [])


def grid_for(acq: Acquisition, cell_size: int) -> TileGrid:
    """The tile grid from the acquisition's 10 m band (item metadata, else the raster header)."""
    import rasterio

    ref = acq.grid_asset() or next(iter(acq.assets.values()), None)
    if ref is None:
        raise GridMismatchError(f"acquisition {acq.id}: no band assets to take the grid from")
    transform, shape, epsg = ref.transform, ref.shape, ref.epsg
    if transform is None or shape is None or epsg is None:
        try:
            with rasterio.Env(**gdal_options([ref.href])), rasterio.open(ref.href) as src:
                transform = tuple(src.transform)[:6]
                shape = (src.height, src.width)
                epsg = src.crs.to_epsg() if src.crs else None
        except rasterio.errors.RasterioError as err:
            raise raster_error(acq.id, f"cannot open {ref.href}", err) from err
    if epsg is None:
        raise GridMismatchError(f"acquisition {acq.id}: {ref.href} has no EPSG code")
    res = float(transform[0])
    x0, y0 = float(transform[2]), float(transform[5])
    # The item's proj:shape and proj:transform are an untrusted catalogue's: a tile of 1e9 px
    # or at 1e300 m would plan blocks without end.
    if not (
        MIN_PIXEL_M <= res <= MAX_PIXEL_M
        and abs(x0) <= MAX_UTM_M
        and abs(y0) <= MAX_UTM_M
        and 0 < shape[0] * res <= MAX_BAND_PX * PIXEL_M
        and 0 < shape[1] * res <= MAX_BAND_PX * PIXEL_M
    ):
        raise GridMismatchError(
            f"acquisition {acq.id}: {ref.href} is {shape[0]} x {shape[1]} px of {res:g} m at "
            f"({x0:g}, {y0:g}) by its item or header; no Sentinel-2 tile is (proj:shape, "
            "proj:transform)"
        )
    height = round(shape[0] * res / PIXEL_M)
    width = round(shape[1] * res / PIXEL_M)
    grid = TileGrid(
        acq.tile, epsg, float(transform[2]), float(transform[5]), height, width, cell_size
    )
    if grid.n_cells_y == 0 or grid.n_cells_x == 0:
        raise GridMismatchError(
            f"acquisition {acq.id}: {height}x{width} px at 10 m is smaller than one "
            f"{cell_size}x{cell_size} px embedding cell; lower ingest.cell_size or use a larger area"
        )
    return grid


@dataclass
class _OpenBands:
    datasets: dict[str, object]


@contextlib.contextmanager
def open_bands(
    acq: Acquisition,
    bands: Sequence[str],
    quality: str | None = "SCL",
    http_retries: int = 5,
) -> Iterator[_OpenBands]:
    """Open every band raster (and the quality layer) once; CorruptAssetError names the file."""
    import rasterio

    opened: dict[str, object] = {}
    keys = [*bands, quality] if quality else list(bands)
    hrefs = [acq.assets[b].href for b in keys if b in acq.assets]
    with rasterio.Env(**gdal_options(hrefs, http_retries)):
        try:
            for band in keys:
                asset: BandAsset = acq.assets[band]
                try:
                    opened[band] = rasterio.open(asset.href)
                except rasterio.errors.RasterioError as err:
                    raise raster_error(
                        acq.id, f"cannot open band {band} {asset.href}", err
                    ) from err
                problem = _layout_problem(opened[band], asset)
                if problem:
                    raise CorruptAssetError(
                        f"acquisition {acq.id}: band {band} {asset.href} {problem}"
                    )
            yield _OpenBands(opened)
        finally:
            for ds in opened.values():
                ds.close()  # type: ignore[attr-defined]


MIN_PIXEL_M, MAX_PIXEL_M = 1.0, 1000.0  # a band's pixel size, metres (Sentinel-2: 10-60)
MAX_BAND_PX = 4 * 10980  # a band raster's side (a tile's 10 m band is 10980)
MAX_UTM_M = 2.0e7  # a UTM coordinate, metres (northings reach 10 000 km south)


def _layout_problem(src: Any, asset: BandAsset) -> str | None:
    """What makes an opened band raster unusable as the asset's Sentinel-2 band, or None."""
    expected = asset.file_bands
    if (expected is not None and src.count != expected) or src.count < asset.index:
        return f"has {src.count} bands; its item describes {expected or asset.index}"
    # The raster's own grid, before any window is computed from it: an untrusted file's
    # transform can be anything (metres of 1e30, origins off the planet, 200 000 px sides).
    x_res, y_res = (abs(float(v)) for v in src.res)
    if not (MIN_PIXEL_M <= x_res <= MAX_PIXEL_M and MIN_PIXEL_M <= y_res <= MAX_PIXEL_M):
        return f"has pixels of {x_res:g} x {y_res:g} units; Sentinel-2's are 10, 20 or 60 m"
    if max(src.width, src.height) > MAX_BAND_PX:
        return (f"is {src.width} x {src.height} px; a Sentinel-2 band is at most 10980 px a "
                "side")  # fmt: skip
    west, south, east, north = src.bounds
    if not all(abs(v) <= MAX_UTM_M for v in (west, south, east, north)):
        return f"lies at {src.bounds}, outside any UTM zone"
    dtype = src.dtypes[asset.index - 1]
    if dtype not in ("uint8", "uint16"):
        return (
            f"is {dtype}; Sentinel-2 bands are integer DN (uint16, SCL uint8): "
            "reflectance stored as floats is not a Sentinel-2 product"
        )
    return None


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
    opened: _OpenBands,
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
    opened: _OpenBands,
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
