"""What the web map shows, read from an output folder (or bucket) as the daemon leaves it.

Pure reads, no web framework: anomaly rows as GeoJSON, a cell's history from the store and the
anomaly rows, an RGB quicklook warped to Web Mercator. A view reads the files of the partitions
it shows (tile, date, the tiles a bbox touches); the files are listed on every request, so a
page following a running daemon sees new dates without a restart of the server.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import box

from ... import storage
from ...layout import OutputLayout
from ...outputs.ledger import Ledger
from ...outputs.sink import read_anomalies
from ...outputs.store import EmbeddingStore

FEATURE_COLUMNS = (
    "acquisition_id", "tile", "date", "cell_y", "cell_x", "label", "status", "kind", "score",
    "distance", "clear_fraction", "n_obs",
)  # fmt: skip


@dataclass(frozen=True)
class Quicklook:
    """An RGB PNG in EPSG:3857 and its corners in degrees, as Leaflet's imageOverlay takes them."""

    png: bytes
    bounds: tuple[tuple[float, float], tuple[float, float]]  # ((south, west), (north, east))
    acquisition_id: str
    date: str


# ~1 MB a PNG (1024 px): the last few dozen tiles/dates viewed stay rendered
QUICKLOOKS_KEPT = 32


@dataclass(frozen=True)
class _FileSummary:
    """What the summary needs of one anomaly file, read once (two columns)."""

    rows: int
    labels: dict[str, int]
    statuses: dict[str, int]


def _partition(path: str) -> tuple[str, str]:
    """(tile, date) of an anomaly file from its ``tile=…/date=…/`` path."""
    parts = path.replace("\\", "/").split("/")
    return parts[-3].removeprefix("tile="), parts[-2].removeprefix("date=")


BBox = tuple[float, float, float, float]  # west, south, east, north (degrees)


def _overlaps(a: BBox | list[float], b: BBox | list[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


class OutputView:
    """The outputs under ``layout`` as the map reads them; safe to share between requests.

    Views read the anomaly files of their partitions only (a tile, a date, the tiles a
    bounding box touches), never every row of the output; the summary keeps each file's counts
    and each tile's bounds once read, so a map over thousands of tiles answers in the time of
    what it shows.
    """

    def __init__(self, layout: OutputLayout):
        self.layout = layout
        self.store = EmbeddingStore(layout.store)
        self._lock = threading.Lock()
        self._file_summaries: dict[str, tuple[str, _FileSummary]] = {}  # path: (stamp, it)
        self._bounds: dict[str, list[float] | None] = {}
        # rendered quicklooks, least recently served first: a daemon's map runs for months
        self._quicklooks: OrderedDict[tuple[str, str], Quicklook] = OrderedDict()

    def files(self) -> list[str]:
        """Every anomaly file, listed (not read): new ones appear as the daemon writes them."""
        return storage.glob(self.layout.anomalies, "tile=*/date=*/*.parquet")

    def summary(self) -> dict[str, Any]:
        """Tiles, dates with anomalies, counts by label and status, and the bounds of it all."""
        # stamped: a file a late look's replay rewrote under its name is read again
        stamped = storage.glob_stamped(self.layout.anomalies, "tile=*/date=*/*.parquet")
        files = list(stamped)
        with self._lock:
            for f, stamp in stamped.items():
                known = self._file_summaries.get(f)
                if known is None or known[0] != stamp:
                    self._file_summaries[f] = (stamp, _summarise(f))
            for gone in set(self._file_summaries) - set(files):
                del self._file_summaries[gone]
            summaries = [self._file_summaries[f][1] for f in files]
        labels: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for fs in summaries:
            for k, v in fs.labels.items():
                labels[k] = labels.get(k, 0) + v
            for k, v in fs.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        parts = [_partition(f) for f in files]
        tiles = sorted(set(self.store.tiles()) | {t for t, _ in parts})
        tile_bounds = {t: b for t in tiles if (b := self._tile_bounds(t)) is not None}
        with_rows = [tile_bounds[t] for t, _ in parts if t in tile_bounds]
        boxes = np.array(with_rows or list(tile_bounds.values()) or np.zeros((0, 4)))
        bounds = (
            [float(v) for v in (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))]
            if len(boxes)
            else None
        )
        return {
            "tiles": tiles,
            "dates": sorted({d for _, d in parts}),
            "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1])),
            "statuses": dict(sorted(statuses.items(), key=lambda kv: -kv[1])),
            "rows": sum(fs.rows for fs in summaries),
            "bounds": bounds,
            "tile_bounds": tile_bounds,
        }

    def select(
        self,
        date: str | None = None,
        tile: str | None = None,
        until: bool = False,
        bbox: BBox | None = None,
    ) -> gpd.GeoDataFrame:
        """Rows of ``date``, ``tile`` and ``bbox`` (None: all). ``until``: each cell's newest row
        up to ``date``, i.e. the cells' alerts as they stood that day. Only the files of the
        partitions asked for are read."""
        wanted = []
        for f in self.files():
            t, d = _partition(f)
            if tile and t != tile:
                continue
            if date and (d > date if until else d != date):
                continue
            if bbox is not None:
                b = self._tile_bounds(t)
                if b is None or not _overlaps(b, bbox):
                    continue
            wanted.append(f)
        rows = _read_files(wanted)
        if bbox is not None and len(rows):
            rows = rows[rows.intersects(box(*bbox))]
        if until:
            rows = rows.sort_values("datetime").drop_duplicates(
                ["tile", "cell_y", "cell_x"], keep="last"
            )
        return rows

    def geojson(self, rows: gpd.GeoDataFrame) -> dict[str, Any]:
        """The rows as a GeoJSON FeatureCollection (cell polygons, the map's properties)."""
        features = []
        for rec, geom in zip(
            # rows written before gradual alerts existed have no kind: they were all sudden
            rows.reindex(columns=list(FEATURE_COLUMNS)).fillna({"kind": "sudden"})
            .to_dict("records"), rows.geometry, strict=True
        ):  # fmt: skip
            props = {k: _plain(v) for k, v in rec.items()}
            gradual = "/gradual" if props["kind"] == "gradual" else ""
            features.append({
                "type": "Feature",
                "id": f"{props['acquisition_id']}/{props['cell_y']}/{props['cell_x']}{gradual}",
                "geometry": geom.__geo_interface__,
                "properties": props,
            })  # fmt: skip
        return {"type": "FeatureCollection", "features": features}

    def geoparquet(self, rows: gpd.GeoDataFrame) -> bytes:
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False, schema_version="1.1.0", write_covering_bbox=True)
        return buf.getvalue()

    def history(self, tile: str, cell_y: int, cell_x: int) -> dict[str, Any]:
        """One cell over time: clear fraction and NDVI at every stored acquisition (the store),
        score, distance, label and status where it was anomalous (the anomaly rows)."""
        grid = self.store.grid(tile)
        if grid is None:
            raise KeyError(f"tile {tile} is not in {self.layout.store}")
        if not (0 <= cell_y < grid.n_cells_y and 0 <= cell_x < grid.n_cells_x):
            raise KeyError(f"cell ({cell_y}, {cell_x}) is outside tile {tile}")
        ds = self.store.open_dataset(tile, decode=False)
        cell = ds[["clear", "indices"]].isel(y=cell_y, x=cell_x).load()
        ndvi = cell["indices"].sel(index="ndvi").values
        times = pd.DatetimeIndex(ds["time"].values).strftime("%Y-%m-%dT%H:%M:%S")
        rows = self.select(tile=tile)
        mine = rows[
            (rows["tile"] == tile) & (rows["cell_y"] == cell_y) & (rows["cell_x"] == cell_x)
        ].sort_values("datetime")
        return {
            "tile": tile,
            "cell_y": cell_y,
            "cell_x": cell_x,
            "cell_m": grid.cell_m,
            "looks": [
                {"time": t, "clear": _plain(c), "ndvi": _plain(n)}
                for t, c, n in zip(times, cell["clear"].values, ndvi, strict=True)
            ],
            "anomalies": [_anomaly(r) for r in mine.itertuples()],
        }

    def quicklook(self, tile: str, date: str | None = None, max_px: int = 1024) -> Quicklook:
        """The RGB of ``tile`` on ``date`` (None: its latest applied acquisition)."""
        with Ledger(self.layout.ledger) as ledger:
            rows = ledger.rows("applied", tile=tile)
        if date:
            rows = [r for r in rows if r.datetime[:10] == date]
        if not rows:
            raise KeyError(f"no applied acquisition of tile {tile}" + (f" on {date}" * bool(date)))
        row = rows[-1]
        key = (tile, row.id)
        with self._lock:
            cached = self._quicklooks.get(key)
            if cached is not None:
                self._quicklooks.move_to_end(key)
                return cached
        ql = _render_quicklook(self.store, tile, row.id, row.item_href, row.datetime[:10], max_px)
        with self._lock:
            self._quicklooks[key] = ql
            while len(self._quicklooks) > QUICKLOOKS_KEPT:
                self._quicklooks.popitem(last=False)
        return ql

    def _tile_bounds(self, tile: str) -> list[float] | None:
        """[west, south, east, north] of a stored tile's cells, in degrees (read once: a
        tile's grid never changes)."""
        if self._bounds.get(tile) is None:
            grid = self.store.grid(tile)
            if grid is None:
                return None
            lon, lat = grid.corners_wgs84()
            self._bounds[tile] = [float(lon.min()), float(lat.min()), float(lon.max()),
                                  float(lat.max())]  # fmt: skip
        return self._bounds[tile]


def _render_quicklook(
    store: EmbeddingStore, tile: str, acq_id: str, href: str, date: str, max_px: int
) -> Quicklook:
    from PIL import Image
    from rasterio.crs import CRS
    from rasterio.transform import Affine, array_bounds
    from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

    from ...products.anomaly_map import acquisition_rgb

    grid = store.grid(tile)
    assert grid is not None
    step = max(1, int(np.ceil(max(grid.height, grid.width) / max_px)))
    rgb = np.clip(acquisition_rgb(href, acq_id, grid, step) * 3.5, 0, 1)
    a, b, c, d, e, f = grid.transform
    src_transform = Affine(a * step, b, c, d, e * step, f)
    src_crs, dst_crs = CRS.from_epsg(grid.epsg), CRS.from_epsg(3857)
    h, w = rgb.shape[1:]
    left, bottom, right, top = array_bounds(h, w, src_transform)
    dst_transform, dw, dh = calculate_default_transform(src_crs, dst_crs, w, h, left, bottom,
                                                        right, top)  # fmt: skip
    assert dw is not None and dh is not None
    out = np.zeros((4, dh, dw), np.float32)
    reproject(np.concatenate([rgb, np.ones((1, h, w), np.float32)]), out,
              src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
              dst_crs=dst_crs, resampling=Resampling.nearest, dst_nodata=0)  # fmt: skip
    pixels = (out.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, "PNG")
    west, south, east, north = transform_bounds(
        dst_crs, CRS.from_epsg(4326), *array_bounds(dh, dw, dst_transform)
    )
    return Quicklook(buf.getvalue(), ((south, west), (north, east)), acq_id, date)


def _anomaly(r: Any) -> dict[str, Any]:
    """One anomaly row of a cell's history."""
    return {
        "time": pd.Timestamp(r.datetime).strftime("%Y-%m-%dT%H:%M:%S"),
        "score": _plain(r.score),
        "distance": _plain(r.distance),
        "clear": _plain(r.clear_fraction),
        "label": r.label,
        "status": r.status,
    }


def _plain(value: Any) -> Any:
    """JSON-ready: NumPy scalars to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _summarise(path: str) -> _FileSummary:
    import pyarrow.parquet as pq

    with storage.open_input(path) as f:
        table = pq.read_table(f, columns=["label", "status"])
    labels = pd.Series(table.column("label").to_pylist()).value_counts()
    statuses = pd.Series(table.column("status").to_pylist()).value_counts()
    return _FileSummary(
        table.num_rows,
        {str(k): int(v) for k, v in labels.items()},
        {str(k): int(v) for k, v in statuses.items()},
    )


def _read_files(files: list[str]) -> gpd.GeoDataFrame:
    """These anomaly files' rows, with their ``tile`` and ``date`` partitions as columns.

    Read as Arrow tables and decoded once (the sink writes WKB in EPSG:4326): ~1 ms a file
    against ~28 ms for geopandas' reader one file at a time, so a view of a date over a
    thousand tiles reads its files in well under a second.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        with storage.open_input(f) as fh:
            table = pq.read_table(fh)
        tile, date = _partition(f)
        table = table.drop_columns([c for c in ("bbox",) if c in table.column_names])
        tables.append(
            table.append_column("tile", pa.array([tile] * table.num_rows, pa.string()))
            .append_column("date", pa.array([date] * table.num_rows, pa.string()))
        )  # fmt: skip
    if not tables:
        return _empty()
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    geometry = gpd.GeoSeries.from_wkb(frame.pop("geometry"), crs="EPSG:4326")
    return gpd.GeoDataFrame(frame, geometry=geometry)


def _empty() -> gpd.GeoDataFrame:
    frame = read_anomalies("/nonexistent-streamembed-output")
    frame["tile"] = pd.Series([], dtype=str)
    frame["date"] = pd.Series([], dtype=str)
    return frame
