"""Synthetic Sentinel-2 L2A archive: real COGs + STAC Items (CDSE naming) with planted events.

What it writes, per MGRS tile (two tiles in different UTM zones by default), one acquisition
every ``revisit_days`` for ``days`` days:
- 12 reflectance bands as uint16 COGs at their native 10/20/60 m resolution, in the L2A
  convention of processing baseline >= 04.00 (DN = reflectance * 10000 + 1000, nodata 0), and
  SCL at 20 m;
- land cover with a seasonal vegetation cycle (crop parcels with their own phase, forest,
  grassland, a lake, a settlement), whole-tile illumination and haze changes, partial clouds
  (SCL 8/9), thin cirrus (10), their shadows (3), winter snow (11) and swath-edge nodata (0);
- planted events at known cells and dates: a flood, a clear-cut, a burn scar and a
  construction site; the truth is written as GeoParquet (one row per event cell).

It goes through the same local STAC reader as real data. The files are written by
``cog_writer``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..grid import TileGrid
from .cog_writer import (
    TILES,
    SyntheticTile,
    stac_item,
    synthetic_tiles,
    write_bands,
    write_cog,
)
from .scenarios import (
    CROP,
    DEMO,
    DEMO_EVENTS,
    FOREST,
    GRASS,
    URBAN,
    WATER,
    PlantedEvent,
    Scenario,
)

__all__ = [
    "CROP", "FOREST", "GRASS", "URBAN", "WATER", "PlantedEvent", "SyntheticTile", "generate",
    "synthetic_tiles", "write_cog",
]  # fmt: skip

# Reflectance spectra in BANDS_L2A order (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12).
SPECTRA: dict[str, np.ndarray] = {
    name: np.array(values, np.float32)
    for name, values in {
        "soil": [0.08, 0.10, 0.13, 0.17, 0.20, 0.22, 0.23, 0.25, 0.26, 0.27, 0.32, 0.28],
        "vegetation": [0.03, 0.04, 0.07, 0.04, 0.10, 0.30, 0.38, 0.42, 0.44, 0.45, 0.22, 0.11],
        "water": [0.06, 0.06, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.008, 0.006, 0.004, 0.003],
        "floodwater": [0.08, 0.09, 0.10, 0.09, 0.07, 0.05, 0.04, 0.035, 0.03, 0.02, 0.01, 0.008],
        "urban": [0.12, 0.13, 0.15, 0.17, 0.19, 0.21, 0.22, 0.23, 0.24, 0.24, 0.26, 0.24],
        "char": [0.04, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.09, 0.10, 0.10, 0.16, 0.14],
        "concrete": [0.20, 0.22, 0.25, 0.27, 0.28, 0.29, 0.30, 0.30, 0.31, 0.31, 0.34, 0.31],
        "snow": [0.85, 0.85, 0.82, 0.80, 0.78, 0.75, 0.72, 0.70, 0.68, 0.65, 0.10, 0.08],
        "cloud": [0.55, 0.55, 0.56, 0.57, 0.58, 0.58, 0.58, 0.58, 0.58, 0.55, 0.45, 0.38],
    }.items()
}


EVENTS = DEMO_EVENTS
TRUTH_WINDOW_DAYS = 45  # how long after an event's start (or end) a detection still counts


def _smooth_noise(rng: np.random.Generator, h: int, w: int, coarse: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random grid, bilinearly upsampled."""
    g = rng.random((coarse + 1, coarse + 1))
    ys = np.linspace(0, coarse, h)
    xs = np.linspace(0, coarse, w)
    rows = np.array([np.interp(xs, np.arange(coarse + 1), r) for r in g])
    out = np.array([np.interp(ys, np.arange(coarse + 1), c) for c in rows.T]).T
    lo, hi = out.min(), out.max()
    return ((out - lo) / (hi - lo + 1e-9)).astype(np.float32)


def _season(doy: np.ndarray | float) -> np.ndarray | float:
    """Green-up curve: 0 in mid-January, 1 in mid-July."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * (np.asarray(doy) - 15) / 365.25)


@dataclass
class _Landscape:
    cover: np.ndarray  # (h, w) land-cover class
    phase: np.ndarray  # (h, w) crop phase shift in days
    texture: np.ndarray  # (h, w) multiplicative brightness texture


def _landscape(
    rng: np.random.Generator,
    size: int,
    cell: int,
    tile_index: int,
    events: tuple[PlantedEvent, ...] = DEMO_EVENTS,
) -> _Landscape:
    cover = np.full((size, size), GRASS, np.int8)
    phase = np.zeros((size, size), np.float32)
    # Parcels on a 64 px lattice, each crop, forest or grass with its own crop phase.
    step = 64
    for y in range(0, size, step):
        for x in range(0, size, step):
            kind = rng.choice([CROP, FOREST, GRASS], p=[0.5, 0.3, 0.2])
            cover[y : y + step, x : x + step] = kind
            phase[y : y + step, x : x + step] = rng.uniform(-25, 25)
    yy, xx = np.mgrid[0:size, 0:size]
    lake_y, lake_x = (0.2 * size, 0.85 * size) if tile_index == 0 else (0.8 * size, 0.2 * size)
    cover[(yy - lake_y) ** 2 + (xx - lake_x) ** 2 < (0.09 * size) ** 2] = WATER
    town = (slice(int(0.55 * size), int(0.68 * size)), slice(int(0.6 * size), int(0.75 * size)))
    cover[town] = URBAN
    for ev in events:
        if ev.tile_index == tile_index:
            cover[
                ev.cells_y[0] * cell : ev.cells_y[1] * cell,
                ev.cells_x[0] * cell : ev.cells_x[1] * cell,
            ] = ev.land_cover
    texture = 1.0 + 0.08 * (_smooth_noise(rng, size, size, 24) - 0.5)
    return _Landscape(cover, phase, texture.astype(np.float32))


def _surface(land: _Landscape, doy: float, green: np.ndarray | None = None) -> np.ndarray:
    """Cloud-free reflectance (band, y, x) of the landscape on a day of year; ``green``, if
    given, multiplies the green fraction per pixel (a drought)."""
    g = np.zeros(land.cover.shape, np.float32)  # water and urban are set below
    crop = land.cover == CROP
    g[crop] = 0.05 + 0.85 * np.asarray(_season(doy - land.phase[crop]), np.float32)
    g[land.cover == FOREST] = 0.55 + 0.35 * float(_season(doy))
    g[land.cover == GRASS] = 0.3 + 0.5 * float(_season(doy))
    if green is not None:
        g *= green
    veg, soil = SPECTRA["vegetation"][:, None, None], SPECTRA["soil"][:, None, None]
    refl = g[None] * veg + (1 - g[None]) * soil
    for klass, name in ((WATER, "water"), (URBAN, "urban")):
        refl[:, land.cover == klass] = SPECTRA[name][:, None]
    return refl * land.texture[None]


def _clouds(
    rng: np.random.Generator, refl: np.ndarray, scl: np.ndarray, coverage: float | None = None
) -> tuple[np.ndarray, float]:
    """Clouds (thin to opaque) and their offset shadows over a scene; SCL marked in place.
    Returns the clouded reflectance and the cloud fraction."""
    size = scl.shape[0]
    if coverage is None:
        coverage = rng.choice([rng.uniform(0.05, 0.4), rng.uniform(0.9, 1.0)], p=[0.85, 0.15])
    field = _smooth_noise(rng, size, size, 5)
    thresh = np.quantile(field, 1 - coverage)
    opacity = np.clip((field - thresh) / 0.08, 0, 1).astype(np.float32)
    cloudy = opacity > 0.02
    dy, dx = int(rng.integers(10, 40)), int(rng.integers(10, 40))
    shadow = np.zeros_like(cloudy)
    shadow[dy:, dx:] = cloudy[:-dy, :-dx]
    shadow &= ~cloudy
    refl[:, shadow] *= 0.35
    scl[shadow] = 3
    refl = refl * (1 - opacity[None]) + SPECTRA["cloud"][:, None, None] * opacity[None]
    scl[cloudy] = np.where(opacity[cloudy] > 0.6, 9, 8)
    return refl, float(cloudy.mean())


# Haze scatters most in the blue: reflectance added per band (B01 … B12) on a hazy date.
HAZE = np.array(
    [0.09, 0.08, 0.06, 0.045, 0.035, 0.025, 0.02, 0.02, 0.018, 0.015, 0.005, 0.003], np.float32
)


def _scene(
    rng: np.random.Generator,
    land: _Landscape,
    day: int,
    doy: float,
    tile_index: int,
    cell: int,
    scenario: Scenario = DEMO,
    weather: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """One acquisition: reflectance (band, y, x) and SCL (y, x) at 10 m, plus cover stats.

    ``rng`` draws what every archive has (the demo's stream, unchanged by scenarios);
    ``weather`` draws the scenario's own conditions.
    """
    size = land.cover.shape[0]
    weather = weather if weather is not None else np.random.default_rng(0)
    green = None
    if scenario.droughts:
        green = np.ones(land.cover.shape, np.float32)
        for dr in scenario.droughts:
            green[
                dr.cells_y[0] * cell : dr.cells_y[1] * cell,
                dr.cells_x[0] * cell : dr.cells_x[1] * cell,
            ] *= dr.factor(day)
    year2 = day >= 365
    refl = _surface(land, doy + (scenario.phenology_shift_days if year2 else 0), green)
    scl = np.full((size, size), 4, np.uint8)  # vegetation
    scl[land.cover == WATER] = 6
    scl[land.cover == URBAN] = 5
    for ev in scenario.events:
        if ev.tile_index != tile_index or day < ev.start_day:
            continue
        if ev.duration_days is not None and day >= ev.start_day + ev.duration_days:
            continue
        ys = slice(ev.cells_y[0] * cell, ev.cells_y[1] * cell)
        xs = slice(ev.cells_x[0] * cell, ev.cells_x[1] * cell)
        refl[:, ys, xs] = SPECTRA[ev.cover][:, None, None] * land.texture[None, ys, xs]
        scl[ys, xs] = 6 if ev.cover == "floodwater" else 5
    if scenario.sensor_switch_day is not None and day >= scenario.sensor_switch_day:
        refl *= np.asarray(scenario.sensor_gains, np.float32)[:, None, None]
    # Whole-tile illumination and haze: a spatial-correction test, not an anomaly.
    refl *= np.float32(1.0 + rng.normal(0, 0.03))
    if rng.random() < 0.3:
        refl[:3] += np.float32(rng.uniform(0.005, 0.03))
    refl += rng.normal(0, 0.004, refl.shape).astype(np.float32)
    if day in scenario.haze_days:
        refl += (HAZE * weather.uniform(0.7, 1.0))[:, None, None]

    winter = doy < 60 or doy > 335
    if winter and rng.random() < 0.6:
        snow = _smooth_noise(rng, size, size, 6) < rng.uniform(0.3, 1.0)
        refl[:, snow] = SPECTRA["snow"][:, None] * rng.uniform(0.9, 1.0)
        scl[snow] = 11
    if any(season.holds(day) for season in scenario.snow_seasons):
        # A low sun darkens the whole scene; snow lies on most acquisitions.
        refl *= np.float32(weather.uniform(0.65, 0.8))
        if weather.random() < 0.85:
            snow = _smooth_noise(weather, size, size, 6) < weather.uniform(0.5, 1.0)
            refl[:, snow] = SPECTRA["snow"][:, None] * weather.uniform(0.6, 0.8)
            scl[snow] = 11
    stats = {"cloud": 0.0, "snow": float((scl == 11).mean())}
    if rng.random() < 0.55:
        refl, stats["cloud"] = _clouds(rng, refl, scl)
    if any(season.holds(day) for season in scenario.cloud_seasons) and weather.random() < 0.9:
        refl, heavy = _clouds(weather, refl, scl, coverage=weather.uniform(0.7, 1.0))
        stats["cloud"] = max(stats["cloud"], heavy)
    if rng.random() < 0.15:
        cirrus = _smooth_noise(rng, size, size, 4) > 0.7
        refl[:, cirrus] += 0.04
        scl[cirrus] = 10
    if rng.random() < 0.08:
        yy, xx = np.mgrid[0:size, 0:size]
        edge = xx + 0.3 * yy > size * rng.uniform(0.75, 1.1)
        refl[:, edge] = -0.1  # DN 0 after the +1000 offset: nodata
        scl[edge] = 0
    return refl, scl, stats


def generate(
    out_dir: str | Path,
    days: int | None = None,
    revisit_days: int = 5,
    tile_px: int = 512,
    seed: int = 42,
    cell_size: int = 32,
    start: dt.date = dt.date(2024, 1, 3),
    n_tiles: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    scenario: Scenario = DEMO,
) -> tuple[Path, Path]:
    """Write the archive of ``scenario`` (the demo by default) under ``out_dir``; returns
    (items folder, truth GeoParquet path). ``days`` and ``n_tiles`` default to the scenario's."""
    out = Path(out_dir)
    items_dir = out / "items"
    items_dir.mkdir(parents=True, exist_ok=True)
    days = scenario.days if days is None else days
    n_tiles = scenario.tiles if n_tiles is None else n_tiles
    dates = [start + dt.timedelta(days=d) for d in range(0, days, revisit_days)]
    total = len(dates) * n_tiles
    done = 0
    for ti, tile in enumerate(synthetic_tiles(n_tiles)):
        rng = np.random.default_rng([seed, ti])
        weather = np.random.default_rng([seed, ti, 1])
        land = _landscape(rng, tile_px, cell_size, ti, scenario.events)
        for date in dates:
            day = (date - start).days
            when = dt.datetime.combine(date, dt.time(10, 0, 31), tzinfo=dt.timezone.utc)
            stamp = when.strftime("%Y%m%dT%H%M%S")
            switched = scenario.sensor_switch_day is not None and day >= scenario.sensor_switch_day
            unit = "A" if switched else "B"
            item_id = f"S2{unit}_MSIL2A_{stamp}_N0511_R122_T{tile.tile}_{stamp[:8]}T140000"
            refl, scl, stats = _scene(
                rng, land, day, date.timetuple().tm_yday, ti, cell_size, scenario, weather
            )
            folder = items_dir / tile.tile / item_id
            assets = write_bands(folder, refl, scl, tile, stamp)
            published = when + dt.timedelta(hours=6)
            platform = f"sentinel-2{unit.lower()}"
            item = stac_item(item_id, tile, when, published, assets, stats, tile_px, platform)
            (folder / f"{item_id}.json").write_text(json.dumps(item, indent=1))
            done += 1
            if progress:
                progress(done, total)
    truth = write_truth(out / "truth.parquet", start, tile_px, cell_size, n_tiles, scenario)
    return items_dir, truth


def write_truth(
    path: Path,
    start: dt.date,
    tile_px: int,
    cell_size: int,
    n_tiles: int = 2,
    scenario: Scenario = DEMO,
) -> Path:
    """Ground truth: one GeoParquet row per event cell (``kind`` sudden), and one per cell of a
    gradual change (``kind`` gradual, label ``gradual``: no sudden alert belongs there)."""
    import geopandas as gpd
    import pandas as pd

    rows = []
    geoms = []
    origin = pd.Timestamp(start, tz="UTC")

    def add(tile_index: int, cells_y: tuple[int, int], cells_x: tuple[int, int], **row: object):
        tile = TILES[tile_index]
        grid = TileGrid(tile.tile, tile.epsg, tile.x0, tile.y0, tile_px, tile_px, cell_size)
        for cy in range(*cells_y):
            for cx in range(*cells_x):
                rows.append({"tile": tile.tile, "cell_y": cy, "cell_x": cx, **row})
                geoms.extend(grid.cell_polygons_wgs84(np.array([cy]), np.array([cx])))

    for ev in scenario.events:
        if ev.tile_index >= n_tiles:
            continue
        first = origin + pd.Timedelta(days=ev.start_day)
        last = first + pd.Timedelta(days=(ev.duration_days or 0) + TRUTH_WINDOW_DAYS)
        add(ev.tile_index, ev.cells_y, ev.cells_x, event=ev.name, label=ev.label,
            kind="sudden", start=first, end=last)  # fmt: skip
    for dr in scenario.droughts:
        first = origin + pd.Timedelta(days=dr.start_day)
        last = origin + pd.Timedelta(days=dr.end_day + dr.ramp_days)
        add(0, dr.cells_y, dr.cells_x, event="drought", label="gradual", kind="gradual",
            start=first, end=last)  # fmt: skip
    gdf = gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geoms, crs="EPSG:4326")
    gdf["scenario"] = scenario.name
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_parquet(path, index=False, schema_version="1.1.0", write_covering_bbox=True)
    return path
