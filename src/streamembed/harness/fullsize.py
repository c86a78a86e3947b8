"""Full-size synthetic Sentinel-2 L2A products (10980 x 10980 px), written strip by strip.

The demo generator (``synthetic.py``) builds a whole scene in memory, which at the size of a
real MGRS tile (12 bands x 10980 x 10980 px) is ~6 GB of float32 before noise. This writer
computes the same kind of scene (crop parcels with their own phase, forest, grass, a lake and
a town, seasonal green-up, partial clouds with shadows and SCL, sensor noise) one strip of rows
at a time and streams each strip into tiled GeoTIFFs at native 10/20/60 m, which GDAL's COG
driver then lays out as COGs: memory is bounded by the strip, not the tile. It plants no
events: it exists to put real-size products through the pipeline and the benchmarks.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..acquisition import BANDS_L2A, NATIVE_RESOLUTION
from .cog_writer import SyntheticTile, band_asset, downsample, stac_item, synthetic_tiles
from .synthetic import (
    CROP,
    FOREST,
    GRASS,
    SPECTRA,
    URBAN,
    WATER,
    _Landscape,
    _surface,
)

FULL_TILE_PX = 10980
# Past this size a scene is not built in memory (``synthetic.generate``) but written here.
IN_MEMORY_MAX_PX = 2048
STRIP_PX = 366  # a multiple of 6 (60 m) and 2 (20 m): strips stay on every band's pixel grid
_PARCEL = 64


def _field_rows(coarse: np.ndarray, size: int, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a smooth field: ``coarse`` (k+1, k+1) bilinearly spread over size px."""
    k = coarse.shape[0] - 1
    ys = np.arange(r0, r1) * (k / max(1, size - 1))
    xs = np.arange(size) * (k / max(1, size - 1))
    iy = np.minimum(ys.astype(int), k - 1)
    ix = np.minimum(xs.astype(int), k - 1)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
    a, b = coarse[iy][:, ix], coarse[iy][:, ix + 1]
    c, d = coarse[iy + 1][:, ix], coarse[iy + 1][:, ix + 1]
    return ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy).astype(np.float32)


def _cover_rows(
    seed: int, tile_index: int, size: int, r0: int, r1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Land cover and crop phase of rows [r0, r1): parcels drawn per parcel row, so every
    strip sees the same landscape."""
    n_cols = -(-size // _PARCEL)
    cover = np.empty((r1 - r0, size), np.int8)
    phase = np.empty((r1 - r0, size), np.float32)
    for prow in range(r0 // _PARCEL, (r1 - 1) // _PARCEL + 1):
        rng = np.random.default_rng([seed, tile_index, prow])
        kinds = rng.choice([CROP, FOREST, GRASS], p=[0.5, 0.3, 0.2], size=n_cols).astype(np.int8)
        shifts = rng.uniform(-25, 25, n_cols).astype(np.float32)
        a, b = max(r0, prow * _PARCEL) - r0, min(r1, (prow + 1) * _PARCEL) - r0
        cover[a:b] = np.repeat(kinds, _PARCEL)[:size]
        phase[a:b] = np.repeat(shifts, _PARCEL)[:size]
    yy = np.arange(r0, r1, dtype=np.float32)[:, None]
    xx = np.arange(size, dtype=np.float32)[None, :]
    lake_y, lake_x = (0.2 * size, 0.85 * size) if tile_index == 0 else (0.8 * size, 0.2 * size)
    cover[(yy - lake_y) ** 2 + (xx - lake_x) ** 2 < (0.09 * size) ** 2] = WATER
    town_y = (yy >= 0.55 * size) & (yy < 0.68 * size)
    town_x = (xx >= 0.6 * size) & (xx < 0.75 * size)
    cover[town_y & town_x] = URBAN
    return cover, phase


@dataclass(frozen=True)
class _Scene:
    """What one acquisition draws once for the whole tile (every strip reads the same)."""

    texture: np.ndarray  # coarse smooth-noise grid
    illumination: float
    cloudy: bool
    clouds: np.ndarray  # coarse cloud-field grid
    threshold: float  # cloud field value above which a pixel is cloud
    coverage: float
    shadow_dy: int
    shadow_dx: int


def _strip(
    seed: int, tile_index: int, size: int, r0: int, r1: int, doy: float, scene: _Scene
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (band, y, x) float32 and SCL (y, x) of rows [r0, r1) of one acquisition."""
    cover, phase = _cover_rows(seed, tile_index, size, r0, r1)
    # The demo's surface model (unit texture); texture and illumination come next, together.
    refl = _surface(_Landscape(cover, phase, np.ones(cover.shape, np.float32)), doy)
    texture = 1.0 + 0.08 * (_field_rows(scene.texture, size, r0, r1) - 0.5)
    refl *= texture[None] * np.float32(scene.illumination)
    scl = np.full(cover.shape, 4, np.uint8)
    scl[cover == WATER] = 6
    scl[cover == URBAN] = 5
    rng = np.random.default_rng([seed, tile_index, int(doy * 1000), r0])
    refl += rng.standard_normal(refl.shape, dtype=np.float32) * np.float32(0.004)
    if scene.cloudy:
        field = _field_rows(scene.clouds, size, r0, r1)
        opacity = np.clip((field - np.float32(scene.threshold)) / 0.08, 0, 1)
        cloudy = opacity > 0.02
        # Shadows: the cloud field shifted by a fixed offset (rows read from the field itself).
        dy, dx = scene.shadow_dy, scene.shadow_dx
        lag = _field_rows(scene.clouds, size, max(0, r0 - dy), max(1, r1 - dy))
        if lag.shape[0] < cloudy.shape[0]:
            lag = np.pad(lag, ((cloudy.shape[0] - lag.shape[0], 0), (0, 0)))
        shadow = np.zeros_like(cloudy)
        shadow[:, dx:] = (lag[:, :-dx] - np.float32(scene.threshold)) > 0.0016
        shadow &= ~cloudy
        refl[:, shadow] *= 0.35
        scl[shadow] = 3
        refl = refl * (1 - opacity[None]) + SPECTRA["cloud"][:, None, None] * opacity[None]
        scl[cloudy] = np.where(opacity[cloudy] > 0.6, 9, 8)
    return refl, scl


def _scene_params(rng: np.random.Generator) -> _Scene:
    clouds = rng.random((6, 6))
    cloudy = bool(rng.random() < 0.6)
    coverage = float(rng.uniform(0.05, 0.4))
    # The threshold that covers ``coverage`` of the tile, from the field at low resolution.
    coarse_field = _field_rows(clouds, 512, 0, 512)
    return _Scene(
        texture=rng.random((25, 25)),
        illumination=float(1.0 + rng.normal(0, 0.03)),
        cloudy=cloudy,
        clouds=clouds,
        threshold=float(np.quantile(coarse_field, 1 - coverage)),
        coverage=coverage if cloudy else 0.0,
        shadow_dy=int(rng.integers(10, 40)),
        shadow_dx=int(rng.integers(10, 40)),
    )


def _to_cog(tmp: Path, dst: Path) -> None:
    """Lay a tiled GeoTIFF out as a COG (GDAL streams it: bounded memory)."""
    import rasterio.shutil

    rasterio.shutil.copy(
        str(tmp), str(dst), driver="COG", compress="DEFLATE", predictor=2, blocksize=512,
        overviews="NONE", num_threads="ALL_CPUS",
    )  # fmt: skip
    tmp.unlink()


def _band_rasters(
    band: str, strip: tuple[np.ndarray, np.ndarray], level: str = "L2A"
) -> tuple[np.ndarray, int]:
    """One band of a 10 m strip at its native resolution, as written (DN or SCL), and the
    resolution factor. L1C is top of atmosphere: the surface seen through a thin, bluish path
    radiance, and a cirrus band (B10) that only clouds reach."""
    refl, scl = strip
    f = NATIVE_RESOLUTION[band] // 10
    if band == "SCL":
        return downsample(scl, f, "pick").astype(np.uint8), f
    if band == "B10":
        a = np.float32(0.004) + np.float32(0.3) * np.isin(scl, (8, 9, 10)).astype(np.float32)
    else:
        a = refl[BANDS_L2A.index(band)]
        if level == "L1C":
            a = a * np.float32(0.93) + _PATH_RADIANCE[band]
    if f > 1:
        a = downsample(a, f, "mean")
    return np.clip(np.round(a * 10000 + 1000), 1, 65535).astype(np.uint16), f


# Top-of-atmosphere minus surface reflectance of a clear, dry mid-latitude sky (blue scatters
# most): enough for L1C to differ from L2A the way it does, not a radiative transfer model.
_PATH_RADIANCE: dict[str, np.float32] = {
    b: np.float32(v)
    for b, v in zip(
        BANDS_L2A,
        (0.09, 0.06, 0.04, 0.025, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.004, 0.003),
        strict=True,
    )
}


def _native_px(tile_px: int, band: str) -> int:
    """A band's raster side at its native resolution for a tile of ``tile_px`` 10 m pixels."""
    return -(-tile_px * 10 // NATIVE_RESOLUTION[band])


def _to_jp2(tmp: Path, dst: Path, tile_px: int, band: str) -> None:
    """Lay a tiled GeoTIFF out as lossless JPEG 2000 (OpenJPEG encodes tile by tile)."""
    import rasterio.shutil

    from .safe_layout import jp2_options

    rasterio.shutil.copy(str(tmp), str(dst), driver="JP2OpenJPEG", **jp2_options(tile_px, band))
    tmp.unlink()
    dst.with_name(dst.name + ".aux.xml").unlink(missing_ok=True)


@dataclass(frozen=True)
class _Look:
    """One acquisition of one tile, as the strips are drawn from it."""

    tile: SyntheticTile
    tile_index: int
    tile_px: int
    seed: int
    doy: float
    scene: _Scene


def _write_product(
    files: dict[str, Path],
    look: _Look,
    on_strip: Callable[[], None],
    level: str = "L2A",
    fmt: str = "cog",
) -> None:
    """Stream one product's strips into tiled GeoTIFFs, then lay each out as a COG or JP2.

    ``files``: each band's final path (its bands and their order are the product's)."""
    import rasterio
    from rasterio.transform import from_origin

    tile, tile_px = look.tile, look.tile_px
    partial = {band: path.with_name(path.name + ".partial.tif") for band, path in files.items()}
    opened = {}
    for band, path in partial.items():
        res = NATIVE_RESOLUTION[band]
        n = _native_px(tile_px, band)
        path.parent.mkdir(parents=True, exist_ok=True)
        opened[band] = rasterio.open(
            path, "w", driver="GTiff", width=n, height=n,
            count=1, dtype="uint8" if band == "SCL" else "uint16", crs=f"EPSG:{tile.epsg}",
            transform=from_origin(tile.x0, tile.y0, res, res), nodata=0, tiled=True,
            blockxsize=512, blockysize=512, compress="deflate",
        )  # fmt: skip
    try:
        for r0 in range(0, tile_px, STRIP_PX):
            r1 = min(tile_px, r0 + STRIP_PX)
            strip = _strip(look.seed, look.tile_index, tile_px, r0, r1, look.doy, look.scene)
            for band, ds in opened.items():
                data, f = _band_rasters(band, strip, level)
                win = rasterio.windows.Window(0, r0 // f, data.shape[1], data.shape[0])
                ds.write(data[None], window=win)
            on_strip()
    finally:
        for ds in opened.values():
            ds.close()
    for band, path in files.items():
        if fmt == "safe":
            _to_jp2(partial[band], path, tile_px, band)
        else:
            _to_cog(partial[band], path)


def generate_fullsize(
    out_dir: str | Path,
    acquisitions: int = 2,
    revisit_days: int = 5,
    tile_px: int = FULL_TILE_PX,
    seed: int = 42,
    start: dt.date = dt.date(2024, 6, 3),
    n_tiles: int = 1,
    progress: Callable[[int, int], None] | None = None,
    fmt: str = "cog",
    level: str = "L2A",
    zipped: bool = False,
) -> Path:
    """Write ``acquisitions`` products per tile of ``tile_px`` px; returns the items folder.

    ``fmt``: ``cog`` (COGs + a STAC item per product) or ``safe`` (SAFE products with JPEG 2000
    bands and ESA's metadata XML, ``zipped`` as downloads arrive if asked); ``level`` L2A or
    L1C (SAFE only: L1C is top of atmosphere, 13 bands, no SCL)."""
    if fmt not in ("cog", "safe"):
        raise ValueError(f"format {fmt!r}: use cog or safe")
    if level not in ("L1C", "L2A") or (level == "L1C" and fmt != "safe"):
        raise ValueError(f"level {level!r} as {fmt}: L2A as cog or safe, L1C as safe")
    items_dir = Path(out_dir) / "items"
    items_dir.mkdir(parents=True, exist_ok=True)
    total, done = acquisitions * n_tiles * len(range(0, tile_px, STRIP_PX)), 0

    def on_strip() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    for ti, tile in enumerate(synthetic_tiles(n_tiles)):
        for k in range(acquisitions):
            date = start + dt.timedelta(days=k * revisit_days)
            when = dt.datetime.combine(date, dt.time(10, 0, 31), tzinfo=dt.timezone.utc)
            scene = _scene_params(np.random.default_rng([seed, ti, k]))
            doy = float(date.timetuple().tm_yday)
            look = _Look(tile, ti, tile_px, seed, doy, scene)
            if fmt == "safe":
                _write_safe(items_dir / tile.tile, look, when, level, zipped, on_strip)
                continue
            stamp = when.strftime("%Y%m%dT%H%M%S")
            item_id = f"S2B_MSIL2A_{stamp}_N0511_R122_T{tile.tile}_{stamp[:8]}T140000"
            folder = items_dir / tile.tile / item_id
            folder.mkdir(parents=True, exist_ok=True)
            names = {
                b: f"T{tile.tile}_{stamp}_{b}_{NATIVE_RESOLUTION[b]}m.tif"
                for b in (*BANDS_L2A, "SCL")
            }
            files = {b: folder / name for b, name in names.items()}
            _write_product(files, look, on_strip)
            assets = {
                f"{b}_{NATIVE_RESOLUTION[b]}m": band_asset(
                    names[b],
                    b,
                    tile,
                    (_native_px(tile_px, b),) * 2,
                    "uint8" if b == "SCL" else "uint16",
                )
                for b in names
            }
            stats = {"cloud": scene.coverage, "snow": 0.0}
            item = stac_item(
                item_id, tile, when, when + dt.timedelta(hours=6), assets, stats, tile_px
            )
            (folder / f"{item_id}.json").write_text(json.dumps(item, indent=1))
    return items_dir


def _write_safe(
    folder: Path,
    look: _Look,
    when: dt.datetime,
    level: str,
    zipped: bool,
    on_strip: Callable[[], None],
) -> Path:
    """One SAFE product (JPEG 2000 bands + metadata XML), zipped if asked; returns its path."""
    from .safe_layout import SafeNames, write_metadata, zip_product

    tile, scene = look.tile, look.scene
    names = SafeNames(level, tile.tile, when)
    product = folder / f"{names.product_id}.SAFE"
    files = {b: product / f"{names.image_file(b)}.jp2" for b in names.bands}
    _write_product(files, look, on_strip, level, "safe")
    # The sun where the scene's shadows say it is: shadows lie (dy, dx) px from their clouds.
    away = math.degrees(math.atan2(scene.shadow_dx, -scene.shadow_dy))
    sun = ((away + 180.0) % 360.0, 40.0)
    cloud = 100 * scene.coverage
    write_metadata(product, names, tile.epsg, tile.x0, tile.y0, look.tile_px, cloud, sun)
    return zip_product(product) if zipped else product
