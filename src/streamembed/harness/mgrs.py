"""MGRS tile codes and their UTM grid origins, for writing synthetic archives of many tiles.

A Sentinel-2 tile is named for an MGRS 100 km square (UTM zone, latitude band, column and row
letters) and its grid starts at the square's north-west corner: 33UWP at (500000, 5400000) in
EPSG:32633, within the 20-40 m ESA's tiling grid shifts some origins by (it has 499980 there).
The letters follow the MGRS lettering rule (columns in three sets of eight by zone, rows cycling
every 2,000 km with even zones offset by five), so the codes are the ones users know.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyproj import Transformer

_COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # zone % 3 == 0, 1, 2
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8 degrees each from 80 S
SQUARE_M = 100_000


def square_code(zone: int, easting: float, northing: float, lat: float) -> str:
    """The MGRS tile code (e.g. ``33UWP``) of the 100 km square holding a UTM point."""
    column = _COLUMN_SETS[zone % 3][int(easting // SQUARE_M) - 1]
    row_index = int(northing // SQUARE_M) % 20
    if zone % 2 == 0:
        row_index = (row_index + 5) % 20
    band = _BANDS[min(int((lat + 80) // 8), len(_BANDS) - 1)]
    return f"{zone:02d}{band}{column}{_ROWS[row_index]}"


def northern_tiles(
    zones: tuple[int, ...] = tuple(range(1, 61)),
    lat_range: tuple[float, float] = (38.0, 62.0),
) -> Iterator[tuple[str, int, float, float]]:
    """(code, EPSG, x0, y0) of the squares of northern-hemisphere ``zones`` whose centres lie in
    their zone and in ``lat_range``, interleaved across zones (so any first N span several
    zones), each zone from south to north and west to east."""
    per_zone = []
    for zone in zones:
        epsg = 32600 + zone
        to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
        lon0 = -183 + 6 * zone
        found = []
        for north in range(0, 9_400_000, SQUARE_M):
            for east in range(SQUARE_M, 9 * SQUARE_M, SQUARE_M):
                lon, lat = to_lonlat.transform(east + SQUARE_M / 2, north + SQUARE_M / 2)
                if not (lat_range[0] <= lat < lat_range[1] and lon0 - 3 <= lon < lon0 + 3):
                    continue
                code = square_code(zone, east, north, lat)
                found.append((code, epsg, float(east), float(north + SQUARE_M)))
        per_zone.append(found)
    for i in range(max(len(z) for z in per_zone)):
        for found in per_zone:
            if i < len(found):
                yield found[i]
