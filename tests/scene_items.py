"""Test data: scenes held as NumPy arrays (eo-learn's example patch in ../shared) written as
COGs + STAC items, so the real-scene tests run them through the same reader as any product.

Each scene becomes one single-band COG per band (DN = reflectance x 10000, nodata 0) plus an
optional cloud-mask COG (asset ``CLM``, for ``ingest.cloud_mask: asset``), and one STAC Item
in the CDSE naming (``B02_10m``…) with projection fields, so the same reader, grid and ledger
apply as for any other product.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamembed.grid import utm_footprint
from streamembed.harness.cog_writer import cog_asset, write_cog


def write_scene_items(
    out_dir: str | Path,
    scenes: np.ndarray,
    times: Sequence[dt.datetime],
    bands: Sequence[str],
    tile: str,
    epsg: int,
    x0: float,
    y0: float,
    level: str = "L1C",
    cloud_masks: np.ndarray | None = None,
    processing_baseline: str | None = None,
    id_prefix: str = "S2",
    extra_properties: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``scenes`` (time, y, x, band) reflectance at 10 m as COGs + items; returns item paths.

    ``x0, y0``: UTM upper-left corner; ``cloud_masks`` (time, y, x) non-zero = cloud.
    """
    if scenes.ndim != 4 or scenes.shape[-1] != len(bands):
        raise ValueError(
            f"scenes must be (time, y, x, band) with {len(bands)} bands; got {scenes.shape}"
        )
    if len(times) != scenes.shape[0]:
        raise ValueError(f"{len(times)} times for {scenes.shape[0]} scenes")
    out = Path(out_dir)
    height, width = scenes.shape[1:3]
    bbox, geometry = utm_footprint(epsg, x0, y0, width * 10.0, height * 10.0)
    paths = []
    for t, when in enumerate(times):
        stamp = when.strftime("%Y%m%dT%H%M%S")
        item_id = f"{id_prefix}_MSI{level}_{stamp}_T{tile}"
        folder = out / tile / item_id
        folder.mkdir(parents=True, exist_ok=True)
        dn = np.clip(np.round(scenes[t] * 10000.0), 1, 65535).astype(np.uint16)
        layers = {f"{band}_10m": dn[:, :, b] for b, band in enumerate(bands)}
        if cloud_masks is not None:
            # 0 = clear, 1 = cloud (the s2cloudless / eo-learn CLM convention).
            layers["CLM"] = (cloud_masks[t] != 0).astype(np.uint8)
        assets: dict[str, dict[str, Any]] = {}
        for key, data in layers.items():
            name = f"T{tile}_{stamp}_{key}.tif"
            write_cog(folder / name, data, epsg, x0, y0, 10.0)
            assets[key] = cog_asset(name, epsg, x0, y0, data.shape, 10.0)
            if key == "CLM":
                assets[key]["roles"] = ["cloud"]
            else:
                assets[key].update({"raster:scale": 0.0001, "raster:offset": 0.0})
        props: dict[str, Any] = {
            "datetime": when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "constellation": "sentinel-2",
            "grid:code": f"MGRS-{tile}",
            "product:type": "S2MSI1C" if level == "L1C" else "S2MSI2A",
            **(extra_properties or {}),
        }
        if processing_baseline:
            props["processing:version"] = processing_baseline
        item = {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": item_id,
            "bbox": bbox,
            "geometry": geometry,
            "properties": props,
            "assets": assets,
            "links": [],
        }
        path = folder / f"{item_id}.json"
        path.write_text(json.dumps(item, indent=1))
        paths.append(path)
    return paths


# Scene order of eo-learn's REFERENCE_SCENES.npy (checked against its NDVI series by date).
EOLEARN_SCENE_DATES = ("2015-08-20", "2015-07-31", "2015-09-09", "2015-08-30", "2015-07-11")


def load_eolearn_example(
    folder: str | Path,
) -> tuple[np.ndarray, list[dt.datetime], np.ndarray, np.ndarray, float, float]:
    """eo-learn's example patch as exported to NumPy (shared/data/s2/eolearn_slovenia_2015_2017).

    Returns the five 13-band L1C scenes (time, y, x, band), their times, s2cloudless cloud masks
    and NDVI of the same dates, and the patch's UTM upper-left corner (EPSG:32633).
    """
    folder = Path(folder)
    scenes = np.load(folder / "REFERENCE_SCENES_L1C_13band.npy")
    stamps = json.loads((folder / "timestamps.json").read_text())
    index = [next(i for i, s in enumerate(stamps) if s.startswith(d)) for d in EOLEARN_SCENE_DATES]
    times = [dt.datetime.fromisoformat(stamps[i]).replace(tzinfo=dt.timezone.utc) for i in index]
    clm = np.load(folder / "CLM.npy")[index, :, :, 0]
    ndvi = np.load(folder / "NDVI.npy")[index, :, :, 0]
    ring = json.loads((folder / "bbox.geojson").read_text())["coordinates"][0]
    return scenes, times, clm, ndvi, min(p[0] for p in ring), max(p[1] for p in ring)
