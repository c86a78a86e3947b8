"""STAC for the outputs: a Collection of the run and one Item per tile, kept current.

``<output>/stac/collection.json`` lists an Item per tile (``stac/<tile>/<tile>.json``) whose
assets are the tile's Zarr group (datacube extension: its dimensions and variables) and its
anomaly partitions and alert table (table extension: columns, row counts), so STAC browsers and
pystac-client can find what the daemon produced. Hrefs are relative: the catalogue moves with
the output (a folder or a bucket). Row counts come from the ledger, not from reading files.
A run rewrites the Items of the tiles it changed and folds them into the Collection (new links,
a wider extent); nothing it does reads or writes the other tiles' Items.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .. import storage
from ..grid import TileGrid
from ..indices import INDEX_NAMES
from ..layout import OutputLayout
from .ledger import Ledger, LedgerRow
from .sink import ALERT_COLUMNS, COLUMNS
from .store import EmbeddingStore

STAC_VERSION = "1.1.0"
DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
TABLE = "https://stac-extensions.github.io/table/v1.2.0/schema.json"
COLLECTION_ID = "streamembed-outputs"
_COLUMN_TYPES = {
    "acquisition_id": "string", "mgrs_tile": "string", "datetime": "timestamp[us, UTC]",
    "cell_y": "int32", "cell_x": "int32", "score": "float32", "distance": "float32",
    "n_obs": "int32", "clear_fraction": "float32", "label": "string", "status": "string",
    "model_id": "string", "utm_epsg": "int32", "geometry": "binary (WKB, EPSG:4326)",
    "onset": "timestamp[us, UTC]", "confirmed": "timestamp[us, UTC]",
    "last_anomalous": "timestamp[us, UTC]", "looks": "int32", "updated": "timestamp[us, UTC]",
    "kind": "string", "gradual": "string", "gradual_onset": "timestamp[us, UTC]",
}  # fmt: skip
_VARIABLES = {
    "embedding": ("encoder feature map at the output stride, one per cell", None),
    "embedding_scale": ("int8 stores: per-cell scale of the codes", None),
    "embedding_offset": ("int8 stores: per-cell offset of the codes", None),
    "clear": ("fraction of the cell's pixels not masked by SCL", "1"),
    "snow": ("fraction of the cell's pixels flagged snow", "1"),
    "indices": ("spectral indices over the cell's clear pixels", "1"),
}


def _iso(t: np.datetime64 | dt.datetime) -> str:
    return pd.Timestamp(t).tz_localize(None).strftime("%Y-%m-%dT%H:%M:%SZ")


def _footprint(grid: TileGrid) -> tuple[dict[str, Any], list[float]]:
    """The tile's outline in degrees (its four corners) and its bbox."""
    lon, lat = grid.corners_wgs84()
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    bbox = [lon.min(), lat.min(), lon.max(), lat.max()]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, [float(v) for v in bbox]


def _columns(names: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"name": n, "type": _COLUMN_TYPES.get(n, "string")} for n in names]


def _cube(grid: TileGrid, ds: Any) -> dict[str, Any]:
    """Datacube extension fields of a tile's Zarr group."""
    times = ds["time"].values
    half = grid.cell_m / 2
    dims: dict[str, Any] = {
        "time": {"type": "temporal",
                 "extent": [_iso(times.min()), _iso(times.max())] if len(times) else [None, None]},
        "y": {"type": "spatial", "axis": "y", "reference_system": grid.epsg, "step": -grid.cell_m,
              "extent": [float(ds["y"].min()) - half, float(ds["y"].max()) + half]},
        "x": {"type": "spatial", "axis": "x", "reference_system": grid.epsg, "step": grid.cell_m,
              "extent": [float(ds["x"].min()) - half, float(ds["x"].max()) + half]},
        "dim": {"type": "embedding", "extent": [0, int(ds.sizes["dim"]) - 1], "step": 1},
        "index": {"type": "spectral index", "values": list(INDEX_NAMES)},
    }  # fmt: skip
    variables = {}
    for name, (description, unit) in _VARIABLES.items():
        if name in ds:
            var = {"dimensions": list(ds[name].dims), "type": "data",
                   "description": description}  # fmt: skip
            if unit:
                var["unit"] = unit
            variables[name] = var
    variables["acquisition_id"] = {"dimensions": ["time"], "type": "auxiliary",
                                   "description": "the Sentinel-2 product of each time step"}  # fmt: skip
    return {"cube:dimensions": dims, "cube:variables": variables}


def tile_item(
    layout: OutputLayout, store: EmbeddingStore, tile: str, applied: list[LedgerRow]
) -> dict[str, Any]:
    """One tile's Item: its Zarr group and its anomaly files as assets."""
    grid = store.grid(tile)
    if grid is None:
        raise KeyError(f"tile {tile} is not in {layout.store}")
    ds = store.open_dataset(tile, decode=False)
    geometry, bbox = _footprint(grid)
    times = ds["time"].values
    start, end = (_iso(times.min()), _iso(times.max())) if len(times) else (None, None)
    assets: dict[str, Any] = {
        "embeddings": {
            "href": f"../../embeddings.zarr/{tile}",
            "type": "application/vnd+zarr",
            "title": f"embeddings of {tile} (Zarr v3 group, consolidated)",
            "roles": ["data"],
            **_cube(grid, ds),
        }
    }
    for row in applied:
        if not row.n_anomalies:
            continue
        date = row.datetime[:10]
        assets[f"anomalies-{row.id}"] = {
            "href": f"../../anomalies/tile={tile}/date={date}/{row.id}.parquet",
            "type": "application/vnd.apache.parquet",
            "title": f"anomalous cells of {row.id}",
            "roles": ["data"],
            "table:primary_geometry": "geometry",
            "table:row_count": int(row.n_anomalies),
            "table:columns": _columns(COLUMNS),
        }
    if storage.exists(layout.alert_table(tile)):
        assets["alerts"] = {
            "href": f"../../alerts/tile={tile}/alerts.parquet",
            "type": "application/vnd.apache.parquet",
            "title": f"current alert status of {tile}'s cells",
            "roles": ["data"],
            "table:primary_geometry": "geometry",
            "table:columns": _columns(ALERT_COLUMNS),
        }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [DATACUBE, TABLE],
        "id": tile,
        "collection": COLLECTION_ID,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": None,
            "start_datetime": start,
            "end_datetime": end,
            "mgrs:tile": tile,
            "streamembed:model_id": ds.attrs.get("model_id"),
            "streamembed:acquisitions": len(times),
        },
        "links": [
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
        ],
        "assets": assets,
    }


def write_catalog(layout: OutputLayout, tiles: Iterable[str] | None = None) -> str | None:
    """Write the Items of ``tiles`` (None: every stored tile) and fold them into the Collection;
    its location, or None with no tile yet.

    A run passes the tiles it changed: each Item is rewritten from its own tile's store group
    and ledger rows (an indexed query), and the Collection gains links for new tiles and
    widens its extent from the changed Items only, so a run's catalogue work follows what it
    touched, not how many tiles the output holds.
    """
    store = EmbeddingStore(layout.store)
    changed = sorted(set(store.tiles() if tiles is None else tiles))
    with Ledger(layout.ledger) as ledger:
        items = [
            tile_item(layout, store, t, ledger.rows("applied", tile=t))
            for t in changed
            if store.grid(t) is not None
        ]
    for item in items:
        where = storage.join(layout.root, "stac", item["id"], f"{item['id']}.json")
        storage.publish(where, json.dumps(item, indent=1).encode())
    where = storage.join(layout.root, "stac", "collection.json")
    old = json.loads(storage.read_bytes(where)) if storage.exists(where) else None
    if old is None and not items:
        return None
    collection = _collection(old, items)
    if collection != old:
        storage.publish(where, json.dumps(collection, indent=1).encode())
    return where


def _collection(old: dict[str, Any] | None, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The Collection with ``items`` linked and its extent widened to cover them."""
    boxes = [item["bbox"] for item in items]
    starts = [i["properties"]["start_datetime"] for i in items if i["properties"]["start_datetime"]]
    ends = [i["properties"]["end_datetime"] for i in items if i["properties"]["end_datetime"]]
    links = [{"rel": "root", "href": "./collection.json", "type": "application/json"}]
    if old is not None:
        boxes += old["extent"]["spatial"]["bbox"][:1]
        start, end = old["extent"]["temporal"]["interval"][0]
        starts += [start] if start else []
        ends += [end] if end else []
        links = list(old["links"])
    linked = {link["href"] for link in links}
    for item in items:
        href = f"./{item['id']}/{item['id']}.json"
        if href not in linked:
            links.append({"rel": "item", "href": href, "type": "application/json"})
    box = np.array(boxes, dtype=float)
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": COLLECTION_ID,
        "title": "streamembed outputs",
        "description": "Per-cell Sentinel-2 embeddings (Zarr, one group per MGRS tile) and the "
        "anomalies found in them (GeoParquet partitions), written by streamembed.",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[*box[:, :2].min(0).tolist(), *box[:, 2:].max(0).tolist()]]},
            "temporal": {"interval": [[min(starts, default=None), max(ends, default=None)]]},
        },
        "links": links,
    }
