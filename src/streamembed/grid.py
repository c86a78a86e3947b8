"""TileGrid: the fixed 10 m pixel grid and embedding-cell grid of one MGRS tile in its own UTM CRS.

The same cell means the same ground at every date because the grid is fixed per tile; only the
anomaly polygons are ever reprojected (to EPSG:4326), never the imagery.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from pyproj import Transformer

PIXEL_M = 10.0


@dataclass(frozen=True)
class TileGrid:
    """A north-up UTM grid: origin (x0, y0) at the top-left corner, 10 m pixels, square cells."""

    tile: str
    epsg: int
    x0: float
    y0: float
    height: int
    width: int
    cell_size: int = 32

    @property
    def n_cells_y(self) -> int:
        return self.height // self.cell_size

    @property
    def n_cells_x(self) -> int:
        return self.width // self.cell_size

    @property
    def cell_m(self) -> float:
        return self.cell_size * PIXEL_M

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine of the 10 m pixel grid (GDAL order a, b, c, d, e, f)."""
        return (PIXEL_M, 0.0, self.x0, 0.0, -PIXEL_M, self.y0)

    def pixel_bounds(self, row0: int, col0: int, row1: int, col1: int) -> tuple[float, ...]:
        """(left, bottom, right, top) in metres of the pixel block [row0:row1, col0:col1]."""
        return (
            self.x0 + col0 * PIXEL_M,
            self.y0 - row1 * PIXEL_M,
            self.x0 + col1 * PIXEL_M,
            self.y0 - row0 * PIXEL_M,
        )

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """UTM y (north first, descending) and x of the cell centres."""
        y = self.y0 - (np.arange(self.n_cells_y) + 0.5) * self.cell_m
        x = self.x0 + (np.arange(self.n_cells_x) + 0.5) * self.cell_m
        return y, x

    @cached_property
    def _to_wgs84(self) -> Transformer:
        return Transformer.from_crs(self.epsg, 4326, always_xy=True)

    def corners_wgs84(self) -> tuple[np.ndarray, np.ndarray]:
        """Longitudes and latitudes of the cell grid's NW, NE, SE and SW corners."""
        w, h = self.n_cells_x * self.cell_m, self.n_cells_y * self.cell_m
        xs = np.array([self.x0, self.x0 + w, self.x0 + w, self.x0])
        ys = np.array([self.y0, self.y0, self.y0 - h, self.y0 - h])
        lon, lat = self._to_wgs84.transform(xs, ys)
        return np.asarray(lon), np.asarray(lat)

    def cell_polygons_wgs84(self, cell_y: np.ndarray, cell_x: np.ndarray) -> list[Any]:
        """Cell squares reprojected to EPSG:4326 (corners densified so long edges stay true)."""
        from shapely.geometry import Polygon

        steps = np.linspace(0.0, 1.0, 5)
        ring_u = np.concatenate([steps, np.ones(4), steps[::-1][1:], np.zeros(4)])
        ring_v = np.concatenate([np.zeros(5), steps[1:], np.ones(4), steps[::-1][1:]])
        polys = []
        for cy, cx in zip(np.asarray(cell_y), np.asarray(cell_x), strict=True):
            xs = self.x0 + (cx + ring_u) * self.cell_m
            ys = self.y0 - (cy + ring_v) * self.cell_m
            lon, lat = self._to_wgs84.transform(xs, ys)
            polys.append(Polygon(zip(lon, lat, strict=True)))
        return polys

    def to_attrs(self) -> dict[str, Any]:
        return {
            "tile": self.tile,
            "crs": f"EPSG:{self.epsg}",
            "transform": list(self.transform),
            "height_px": self.height,
            "width_px": self.width,
            "cell_size_px": self.cell_size,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TileGrid:
        t = attrs["transform"]
        return cls(
            tile=str(attrs["tile"]),
            epsg=int(str(attrs["crs"]).split(":")[1]),
            x0=float(t[2]),
            y0=float(t[5]),
            height=int(attrs["height_px"]),
            width=int(attrs["width_px"]),
            cell_size=int(attrs["cell_size_px"]),
        )


@lru_cache(maxsize=64)
def _to_lonlat(epsg: int) -> Any:
    """A UTM zone's transformer to lon/lat, built once per zone (~ms each; a scale run or a
    bbox filter asks for thousands of footprints in a few zones)."""
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def utm_footprint(
    epsg: int, x0: float, y0: float, width_m: float, height_m: float
) -> tuple[list[float], dict[str, object]]:
    """The WGS84 bbox and polygon of a north-up UTM rectangle (upper-left corner x0, y0)."""
    tr = _to_lonlat(epsg)
    x1, y1 = x0 + width_m, y0 - height_m
    corners = [tr.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    lons, lats = zip(*corners, strict=True)
    geometry: dict[str, object] = {
        "type": "Polygon",
        "coordinates": [[*map(list, corners), list(corners[0])]],
    }
    return [min(lons), min(lats), max(lons), max(lats)], geometry
