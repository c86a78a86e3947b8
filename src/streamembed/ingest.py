"""Ingest: read bands onto the tile's 10 m grid, SCL mask, harmonise, normalise, cut windows.

Pure NumPy cores (``scl_masks``, ``to_reflectance``, ``normalise``, ``cell_summaries``,
``fill_masked``, ``plan_windows``) are separate from the rasterio I/O (``read_block``,
``prepare_scene``) so tests can hit them directly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .acquisition import Acquisition, BandAsset
from .config import IngestConfig, ModelConfig
from .grid import PIXEL_M, TileGrid


class IngestError(Exception):
    """Base for ingest failures."""


class CorruptAssetError(IngestError):
    """A raster that cannot be opened or decoded: permanent for this acquisition."""


class GridMismatchError(IngestError):
    """An acquisition that does not fit its tile's fixed grid (other CRS, too small)."""


# Scene classification (SCL) of Sentinel-2 L2A (ESA L2A product specification).
SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_defective", 2: "dark_area", 3: "cloud_shadow",
    4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified",
    8: "cloud_medium_probability", 9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow",
}  # fmt: skip
SNOW_CLASS = 11
INDEX_NAMES: tuple[str, ...] = ("ndvi", "ndwi", "nbr", "ndbi")

# SSL4EO-S12 L1C band statistics (DN) used by its MoCo/DINO pretraining: each band is scaled
# from [mean - 2 std, mean + 2 std] to [0, 1] through uint8, exactly as the original loader.
SSL4EO_S2C_MEAN: dict[str, float] = {
    "B01": 1612.9, "B02": 1397.6, "B03": 1322.3, "B04": 1373.1, "B05": 1561.0, "B06": 2108.4,
    "B07": 2390.7, "B08": 2318.7, "B8A": 2581.0, "B09": 837.7, "B10": 22.0, "B11": 2195.2,
    "B12": 1537.4,
}  # fmt: skip
SSL4EO_S2C_STD: dict[str, float] = {
    "B01": 791.0, "B02": 854.3, "B03": 878.7, "B04": 1144.9, "B05": 1127.5, "B06": 1164.2,
    "B07": 1276.0, "B08": 1249.5, "B8A": 1345.9, "B09": 577.5, "B10": 51.15, "B11": 1336.6,
    "B12": 1136.5,
}  # fmt: skip


# ---------------------------------------------------------------- pure cores


def scl_masks(scl: np.ndarray, mask_classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(masked, snow) boolean arrays from an SCL array and the classes to mask."""
    masked = np.isin(scl, np.asarray(mask_classes, dtype=scl.dtype))
    return masked, scl == SNOW_CLASS


def quality_masks(
    layer: np.ndarray, nodata: np.ndarray, ingest: IngestConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(masked, snow) from the quality layer ``ingest.cloud_mask`` selects, plus band nodata.

    ``scl``: the L2A scene classification; ``asset``: a cloud mask raster (non-zero = cloud,
    e.g. s2cloudless output for L1C); ``none``: only nodata is masked.
    """
    if ingest.cloud_mask == "scl":
        layer = np.where(nodata, 0, layer)
        return scl_masks(layer, ingest.scl_mask_classes)
    snow = np.zeros(layer.shape, bool)
    if ingest.cloud_mask == "asset":
        return nodata | (layer != 0), snow
    return nodata.copy(), snow


def to_reflectance(dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """DN -> surface reflectance in one convention for every processing baseline."""
    return dn.astype(np.float32) * np.float32(scale) + np.float32(offset)


def normalise(reflectance: np.ndarray, bands: Sequence[str], mode: str) -> np.ndarray:
    """Encoder input from (band, y, x) reflectance, as the chosen SSL4EO checkpoint expects.

    ``divide_10000``: torchgeo's SSL4EO-S12 transform, DN / 10000 on offset-free DN, i.e. the
    harmonised reflectance itself. ``ssl4eo_minmax``: the original SSL4EO-S12 loader.
    """
    if mode == "divide_10000":
        return reflectance.astype(np.float32, copy=False)
    if mode == "ssl4eo_minmax":
        mean = np.array([SSL4EO_S2C_MEAN[b] for b in bands], np.float32)[:, None, None]
        std = np.array([SSL4EO_S2C_STD[b] for b in bands], np.float32)[:, None, None]
        lo, hi = mean - 2 * std, mean + 2 * std
        scaled = np.clip((reflectance * 10000.0 - lo) / (hi - lo) * 255.0, 0, 255)
        return (np.floor(scaled) / 255.0).astype(np.float32)
    raise ValueError(f"unknown normalisation {mode!r}")


def fill_masked(x: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Replace masked pixels with each band's median over clear pixels.

    Clouds and nodata are bright or zero; left in, the encoder's receptive field would carry
    them into neighbouring clear cells. A window with no clear pixel is filled with zeros.
    """
    out = x.copy()
    if not masked.any():
        return out
    clear = ~masked
    for b in range(x.shape[0]):
        fill = np.median(x[b][clear]) if clear.any() else 0.0
        out[b][masked] = fill
    return out


def cell_summaries(
    reflectance: np.ndarray,
    masked: np.ndarray,
    snow: np.ndarray,
    bands: Sequence[str],
    cell: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell clear fraction, snow fraction and spectral indices over clear pixels.

    ``reflectance`` is (band, y, x) with y, x multiples of ``cell``. Returns clear (ny, nx),
    snow (ny, nx) and indices (ny, nx, len(INDEX_NAMES)), NaN where a cell has no clear pixel.
    """
    nb, h, w = reflectance.shape
    ny, nx = h // cell, w // cell

    def blocks(a: np.ndarray) -> np.ndarray:
        return a[..., : ny * cell, : nx * cell].reshape(*a.shape[:-2], ny, cell, nx, cell)

    clear = ~masked
    clear_frac = blocks(clear).mean(axis=(-3, -1)).astype(np.float32)
    snow_frac = blocks(snow).mean(axis=(-3, -1)).astype(np.float32)
    want = ("B03", "B04", "B08", "B11", "B12")
    idx = [list(bands).index(b) for b in want]
    sel = blocks(reflectance[idx] * clear)
    n = blocks(clear).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sel.sum(axis=(-3, -1)) / n
        green, red, nir, swir1, swir2 = mean

        def nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (a - b) / (a + b)

        indices = np.stack(
            [nd(nir, red), nd(green, nir), nd(nir, swir2), nd(swir1, nir)], axis=-1
        ).astype(np.float32)
    return clear_frac, snow_frac, indices


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


STRIP_MAX_PX = 4096


def window_strips(windows: Sequence[Window], cell: int) -> list[list[Window]]:
    """Windows grouped into strips read at once: same rows, side by side, at most
    STRIP_MAX_PX wide. One read per band and strip instead of per window decodes the
    margins shared by neighbouring windows once and halves GDAL's per-read overhead or
    better; the cap bounds a strip's memory (13 bands x 320 x 4096 px float32: 68 MB)."""
    strips: list[list[Window]] = []
    for win in windows:
        last = strips[-1] if strips else None
        if (
            last is not None
            and last[0].read_rows(cell) == win.read_rows(cell)
            and win.read_cols(cell)[0] >= last[-1].read_cols(cell)[0]
            and win.read_cols(cell)[1] - last[0].read_cols(cell)[0] <= STRIP_MAX_PX
        ):
            last.append(win)
        else:
            strips.append([win])
    return strips


# ---------------------------------------------------------------- I/O


def gdal_options(hrefs: Sequence[str] = ()) -> dict[str, object]:
    """GDAL settings for reading COG/JP2 from disk, HTTPS or S3, set in this one place.

    Remote reads retry throttling (429) and server errors with back-off, time out instead of
    hanging a worker, and skip directory listings; credentials for ``hrefs`` come from the
    worker's environment (``credentials.py``) and are never logged.
    """
    from .credentials import Credentials

    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2,.TIF,.TIFF,.JP2",
        "GDAL_HTTP_MAX_RETRY": 5,
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


def quality_asset(ingest: IngestConfig) -> str | None:
    """The asset that carries the cloud mask for ``ingest.cloud_mask`` (None: no mask)."""
    return {"scl": "SCL", "asset": "MASK", "none": None}[ingest.cloud_mask]


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
    quality = quality_asset(ingest)
    return scene_bands(acq, model) + ([quality] if quality else [])


def grid_for(acq: Acquisition, cell_size: int) -> TileGrid:
    """The tile grid from the acquisition's 10 m band (item metadata, else the raster header)."""
    import rasterio

    ref = next((acq.assets[b] for b in ("B02", "B03", "B04", "B08") if b in acq.assets), None)
    if ref is None:
        ref = next(iter(acq.assets.values()), None)
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
            raise CorruptAssetError(f"acquisition {acq.id}: cannot open {ref.href}: {err}") from err
    if epsg is None:
        raise GridMismatchError(f"acquisition {acq.id}: {ref.href} has no EPSG code")
    res = float(transform[0])
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
    acq: Acquisition, bands: Sequence[str], quality: str | None = "SCL"
) -> Iterator[_OpenBands]:
    """Open every band raster (and the quality layer) once; CorruptAssetError names the file."""
    import rasterio

    opened: dict[str, object] = {}
    keys = [*bands, quality] if quality else list(bands)
    with rasterio.Env(**gdal_options([acq.assets[b].href for b in keys if b in acq.assets])):
        try:
            for band in keys:
                asset: BandAsset = acq.assets[band]
                try:
                    opened[band] = rasterio.open(asset.href)
                except rasterio.errors.RasterioError as err:
                    raise CorruptAssetError(
                        f"acquisition {acq.id}: cannot open band {band} {asset.href}: {err}"
                    ) from err
            yield _OpenBands(opened)
        finally:
            for ds in opened.values():
                ds.close()  # type: ignore[attr-defined]


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
    """Reflectance (band, y, x) float32, the quality layer (y, x) uint8 and nodata (y, x).

    Pixels outside the tile or at a band's nodata are nodata; the quality layer is zeros where
    ``quality`` is None.
    """
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import from_bounds

    h, w = rows[1] - rows[0], cols[1] - cols[0]
    bounds = grid.pixel_bounds(rows[0], cols[0], rows[1], cols[1])
    out = np.empty((len(bands), h, w), np.float32)
    nodata = np.zeros((h, w), bool)

    def read(band: str, method: Resampling) -> np.ndarray:
        src = opened.datasets[band]
        try:
            win = from_bounds(*bounds, transform=src.transform)  # type: ignore[attr-defined]
            return src.read(  # type: ignore[attr-defined]
                acq.assets[band].index,
                window=win,
                out_shape=(h, w),
                resampling=method,
                boundless=True,
                fill_value=0,
            )
        except RasterioError as err:
            raise CorruptAssetError(
                f"acquisition {acq.id}: band {band} {acq.assets[band].href} is unreadable: {err}"
            ) from err

    method = Resampling.bilinear if resampling == "bilinear" else Resampling.nearest
    for i, band in enumerate(bands):
        dn = read(band, method)
        nd = acq.assets[band].nodata
        nodata |= dn == (0 if nd is None else nd)
        scale, offset = acq.scale_offset(band)
        out[i] = to_reflectance(dn, scale, offset)
    layer = (
        read(quality, Resampling.nearest).astype(np.uint8)
        if quality
        else np.zeros((h, w), np.uint8)
    )
    return out, layer, nodata


@dataclass(frozen=True)
class SceneWindows:
    """One acquisition ready for the encoder: normalised windows plus per-cell summaries."""

    acquisition_id: str
    tile: str
    grid: TileGrid
    windows: tuple[Window, ...]
    inputs: np.ndarray  # (n_windows, band, y, x) float32, masked pixels filled
    clear: np.ndarray  # (cells_y, cells_x) clear-sky fraction
    snow: np.ndarray  # (cells_y, cells_x) snow fraction
    indices: np.ndarray  # (cells_y, cells_x, index) spectral indices over clear pixels
    # seconds spent reading (decode + resample to 10 m, in GDAL) and masking/normalising
    timings: dict[str, float] = field(default_factory=dict)


def prepare_scene(
    acq: Acquisition, grid: TileGrid, ingest: IngestConfig, model: ModelConfig
) -> SceneWindows:
    """Read, mask, harmonise and normalise one acquisition into encoder windows."""
    if acq.epsg is not None and acq.epsg != grid.epsg:
        raise GridMismatchError(
            f"acquisition {acq.id}: EPSG:{acq.epsg} differs from tile {grid.tile}'s "
            f"EPSG:{grid.epsg}; each tile keeps its own UTM grid"
        )
    bands = scene_bands(acq, model)
    quality = quality_asset(ingest)
    cell = grid.cell_size
    windows = plan_windows(grid, ingest.window, ingest.margin)
    ny, nx = grid.n_cells_y, grid.n_cells_x
    clear = np.zeros((ny, nx), np.float32)
    snow = np.zeros((ny, nx), np.float32)
    indices = np.full((ny, nx, len(INDEX_NAMES)), np.nan, np.float32)
    inputs = []
    t_read = t_mask = 0.0
    t0 = time.perf_counter()
    with open_bands(acq, bands, quality) as opened:
        t_read += time.perf_counter() - t0
        for strip in window_strips(windows, cell):
            t0 = time.perf_counter()
            rows = strip[0].read_rows(cell)
            cols = (strip[0].read_cols(cell)[0], strip[-1].read_cols(cell)[1])
            strip_refl, strip_layer, strip_nodata = read_block(
                acq, opened, grid, rows, cols, bands, ingest.resampling, quality
            )
            t1 = time.perf_counter()
            strip_masked, strip_snow = quality_masks(strip_layer, strip_nodata, ingest)
            for win in strip:
                c0, c1 = (c - cols[0] for c in win.read_cols(cell))
                refl = strip_refl[:, :, c0:c1]
                masked, is_snow = strip_masked[:, c0:c1], strip_snow[:, c0:c1]
                m = win.margin_cells * cell
                core = (slice(None), slice(m, refl.shape[1] - m), slice(m, refl.shape[2] - m))
                c, s, ix = cell_summaries(
                    refl[core], masked[core[1:]], is_snow[core[1:]], bands, cell
                )
                out = (
                    slice(win.cell_y, win.cell_y + win.n_cells_y),
                    slice(win.cell_x, win.cell_x + win.n_cells_x),
                )
                clear[out], snow[out], indices[out] = c, s, ix
                inputs.append(fill_masked(normalise(refl, bands, model.normalisation), masked))
            t_read += t1 - t0
            t_mask += time.perf_counter() - t1
    return SceneWindows(
        acq.id,
        acq.tile,
        grid,
        tuple(windows),
        np.stack(inputs),
        clear,
        snow,
        indices,
        {"read_decode_resample": t_read, "mask_normalise": t_mask},
    )
