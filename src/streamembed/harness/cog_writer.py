"""How the synthetic archives are laid out and written: their MGRS tiles (the demo's two, then
real tile codes over many UTM zones), one product's bands as single-band COGs at their native
resolution (L2A DN convention >= 04.00) with their STAC assets, and the product's STAC item
(CDSE's property names). ``synthetic``, ``fullsize`` and ``fieldsim`` paint the reflectance;
this module writes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..acquisition import BANDS_L2A, NATIVE_RESOLUTION
from ..grid import utm_footprint


@dataclass(frozen=True)
class SyntheticTile:
    tile: str
    epsg: int
    x0: float
    y0: float


TILES = (
    SyntheticTile("33UWP", 32633, 499980.0, 5400000.0),
    SyntheticTile("32UPC", 32632, 600000.0, 5800020.0),
)


def synthetic_tiles(n: int) -> tuple[SyntheticTile, ...]:
    """``n`` MGRS tiles: the demo's two, then real tile codes over many UTM zones at their
    grid origins (``mgrs.northern_tiles``), for archives of hundreds or thousands of tiles."""
    from .mgrs import northern_tiles

    out = list(TILES[:n])
    known = {t.tile for t in out}
    for code, epsg, x0, y0 in northern_tiles():
        if len(out) >= n:
            break
        if code not in known:
            out.append(SyntheticTile(code, epsg, x0, y0))
    if len(out) < n:
        raise ValueError(f"{n} tiles asked for, the synthetic grid has {len(out)}")
    return tuple(out)


def downsample(a: np.ndarray, factor: int, mode: str) -> np.ndarray:
    """Block-average (reflectance) or top-left pick (classes) a (y, x) array by ``factor``."""
    h, w = a.shape
    ph, pw = -h % factor, -w % factor
    a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    if mode == "pick":
        return a[::factor, ::factor]
    return a.reshape(a.shape[0] // factor, factor, a.shape[1] // factor, factor).mean(axis=(1, 3))


def cog_asset(
    href: str, epsg: int, x0: float, y0: float, shape: tuple[int, ...], res: float
) -> dict[str, object]:
    """The STAC asset (projection fields, nodata 0) of one single-band COG on a UTM grid."""
    return {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:code": f"EPSG:{epsg}",
        "proj:shape": [int(shape[0]), int(shape[1])],
        "proj:transform": [float(res), 0.0, x0, 0.0, -float(res), y0],
        "nodata": 0,
    }


def band_asset(
    href: str, band: str, tile: SyntheticTile, shape: tuple[int, ...], dtype: str
) -> dict[str, object]:
    """The STAC asset of one band COG at its native resolution (L2A DN convention >= 04.00)."""
    res = NATIVE_RESOLUTION[band]
    asset = cog_asset(href, tile.epsg, tile.x0, tile.y0, shape, res)
    asset.update({"gsd": res, "data_type": dtype})
    if band != "SCL":
        asset.update({"raster:scale": 0.0001, "raster:offset": -0.1})
    return asset


def write_cog(path: Path, data: np.ndarray, epsg: int, x0: float, y0: float, res: float) -> None:
    """One single-band north-up COG (deflate, nodata 0) on a UTM grid."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{epsg}",
        transform=from_origin(x0, y0, res, res),
        nodata=0,
        compress="deflate",
        blocksize=256,
    ) as dst:
        dst.write(data[None])


def write_bands(
    folder: Path, refl: np.ndarray, scl: np.ndarray, tile: SyntheticTile, stamp: str
) -> dict[str, dict[str, object]]:
    """One product's 12 bands (10 m reflectance (band, y, x), block-averaged to their native
    resolution, L2A DN convention >= 04.00) and SCL (picked) as COGs in ``folder``; returns
    their STAC assets."""
    folder.mkdir(parents=True, exist_ok=True)
    assets: dict[str, dict[str, object]] = {}
    for b, band in enumerate((*BANDS_L2A, "SCL")):
        res = NATIVE_RESOLUTION[band]
        f = res // 10
        if band == "SCL":
            data = downsample(scl, f, "pick").astype(np.uint8)
        else:
            r = refl[b] if f == 1 else downsample(refl[b], f, "mean")
            data = np.clip(np.round(r * 10000 + 1000), 0, 65535).astype(np.uint16)
        key = f"{band}_{res}m"
        name = f"T{tile.tile}_{stamp}_{key}.tif"
        write_cog(folder / name, data, tile.epsg, tile.x0, tile.y0, float(res))
        assets[key] = band_asset(name, band, tile, data.shape, str(data.dtype))
    return assets


def stac_item(
    item_id: str,
    tile: SyntheticTile,
    when: dt.datetime,
    published: dt.datetime,
    assets: dict[str, dict[str, object]],
    stats: dict[str, float],
    size_px: int,
    platform: str = "sentinel-2b",
) -> dict[str, object]:
    bbox, geometry = utm_footprint(tile.epsg, tile.x0, tile.y0, size_px * 10.0, size_px * 10.0)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
        ],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": bbox,
        "geometry": geometry,
        "properties": {
            "datetime": stamp,
            "platform": platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "grid:code": f"MGRS-{tile.tile}",
            "processing:version": "05.11",
            "processing:level": "L2",
            "product:type": "S2MSI2A",
            "published": published.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "updated": published.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "eo:cloud_cover": round(100 * stats["cloud"], 3),
            "eo:snow_cover": round(100 * stats["snow"], 3),
            "streamembed:synthetic": True,
        },
        "assets": assets,
        "links": [],
    }
