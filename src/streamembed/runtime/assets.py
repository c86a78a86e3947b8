"""Which rasters an acquisition needs and opening them: its band and quality assets, its tile
grid, GDAL's options for local files, HTTP and S3, and the checks an opened raster must pass
before any window is read from it (an untrusted file's grid can be anything); the errors ingest
raises, classed as the ledger files them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..acquisition import Acquisition, BandAsset
from ..config import IngestConfig, ModelConfig
from ..grid import PIXEL_M, TileGrid
from . import cloudmask


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
class OpenBands:
    datasets: dict[str, object]


@contextlib.contextmanager
def open_bands(
    acq: Acquisition,
    bands: Sequence[str],
    quality: str | None = "SCL",
    http_retries: int = 5,
) -> Iterator[OpenBands]:
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
            yield OpenBands(opened)
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
