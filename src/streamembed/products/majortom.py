"""Major TOM's grid in a tile: the grid cells (labels and outlines, the geometry of majortom-eg's
grid), the cells that may overlap a tile, and the store's fragments snapped to its cells.

Labels follow Major TOM's convention: rows counted from the equator (U north, D south), columns
from the prime meridian (R east, L west), each row's columns of its own width.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import shapely
from pyproj import Transformer

from ..grid import PIXEL_M, TileGrid

FRAGMENT_PX = 224  # Major TOM's fragment side at 10 m
FRAGMENTS_PER_SIDE = 5  # 25 fragments per ~10 km grid cell, overlapping
MAJOR_TOM_D = 10_000  # metres between grid rows


class MajorTomGrid:
    """Major TOM cell labels and outlines for points (the geometry of majortom-eg's grid)."""

    def __init__(self) -> None:
        from majortom_eg import MajorTomGrid as _Grid

        self._grid = _Grid(d=MAJOR_TOM_D, overlap=False)
        self.lat_spacing = float(self._grid.lat_spacing)
        self._equator = round(90 / self.lat_spacing)

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed row (from the equator, north positive) and column (from the prime meridian,
        east positive) of the cells holding each point."""
        row_from_south = np.floor((lat + 90) / self.lat_spacing).astype(int)
        rows = row_from_south - self._equator
        cols = np.empty(len(lat), int)
        for r in np.unique(row_from_south):
            here = row_from_south == r
            spacing = self._grid.get_lon_spacing(self._grid.get_row_lat(int(r)))
            cols[here] = np.floor(lon[here] / spacing).astype(int)
        return rows, cols

    def outline(self, row: int, col: int) -> shapely.Polygon:
        """The cell (row, col) as a lon/lat box."""
        r = row + self._equator
        south = self._grid.get_row_lat(r)
        spacing = self._grid.get_lon_spacing(south)
        return shapely.box(col * spacing, south, (col + 1) * spacing, south + self.lat_spacing)

    @staticmethod
    def label(row: int, col: int) -> str:
        """``582U_71R``: rows north of the equator U from 0, south D from 1 (the row just south
        of the equator is 1D); columns east of the prime meridian R from 0, west L from 1."""
        r = f"{row}U" if row >= 0 else f"{-row}D"
        c = f"{col}R" if col >= 0 else f"{-col}L"
        return f"{r}_{c}"


def grid_cells_near(grid: TileGrid, mt: MajorTomGrid) -> Iterator[tuple[int, int]]:
    """(row, col) of every Major TOM grid cell that may overlap the tile (a margin of one
    column either side: rows' columns have their own widths)."""
    lon, lat = grid.corners_wgs84()
    rows, _ = mt.locate(lat, lon)
    for row in range(int(rows.min()), int(rows.max()) + 1):
        lat_row = np.array([row * mt.lat_spacing + 1e-9] * 2)
        lo_c, hi_c = mt.locate(lat_row, np.array([min(lon), max(lon)]))[1]
        for col in range(int(lo_c) - 1, int(hi_c) + 2):
            yield row, col


def fragment_origins(grid: TileGrid, mt: MajorTomGrid) -> list[tuple[str, int, int, int, int]]:
    """Every Major TOM fragment wholly inside the tile: (grid cell label, fragment row, fragment
    column, top pixel row, left pixel column), fragments snapped to the store's cells.

    Fragments: 5 x 5 per grid cell, 224 px, evenly spaced over the cell's footprint in the
    tile's UTM grid (the first at its north-west corner, the last at its south-east one).
    """
    to_utm = Transformer.from_crs(4326, grid.epsg, always_xy=True)
    out = []
    s = grid.cell_size
    for row, col in grid_cells_near(grid, mt):
        west, south, east, north = mt.outline(row, col).bounds
        x, y = to_utm.transform([west, east, west, east], [north, north, south, south])
        left = (min(x) - grid.x0) / PIXEL_M
        top = (grid.y0 - max(y)) / PIXEL_M
        right = (max(x) - grid.x0) / PIXEL_M
        bottom = (grid.y0 - min(y)) / PIXEL_M
        step_x = (right - left - FRAGMENT_PX) / (FRAGMENTS_PER_SIDE - 1)
        step_y = (bottom - top - FRAGMENT_PX) / (FRAGMENTS_PER_SIDE - 1)
        for fr in range(FRAGMENTS_PER_SIDE):
            for fc in range(FRAGMENTS_PER_SIDE):
                r0 = round((top + fr * step_y) / s) * s
                c0 = round((left + fc * step_x) / s) * s
                inside = r0 >= 0 and c0 >= 0
                if inside and max(r0 - grid.height, c0 - grid.width) + FRAGMENT_PX <= 0:
                    out.append((mt.label(row, col), fr, fc, r0, c0))
    return out
