"""A second scenario generator, written apart from ``synthetic``: what the detector was not tuned on.

Each seed draws a whole world: a two-year archive of one tile (12 bands + SCL COGs and STAC
items, the same product format as ``synthetic``, so both go through the same reader), its
ground truth, and which half of the seeds it belongs to. What differs from ``synthetic`` is the
scene itself:

- **surfaces**: spectra sampled from real Sentinel-2 pixels of the eo-learn patch (forest,
  grass, shrub, built) and a library of the surfaces it lacks (``spectral_library``); each
  parcel draws its own variants; a pixel is a linear mixture of green vegetation, dry
  vegetation (or litter) and soil with cover fractions from the parcel's phenology;
- **landscape**: Voronoi parcels of summer crops, winter crops, meadows (some mown twice a
  year), deciduous and coniferous forest, a sinuous river and a pond, a town of sealed and
  real built pixels; texture is 1/f noise from the Fourier domain;
- **phenology**: double-logistic cover curves per parcel; crops are sown, senesce and are
  harvested to stubble or bare soil, so a crop cell has a bare season every year; year 2
  greens up 10-30 days earlier (drawn per seed);
- **events**: random blob shapes (a perturbed rotated ellipse) of 3-22 cells, placed on the land
  cover they belong to (only its pixels change), starting on any day of the two years after
  the first three months (a spring of history):
  floods that drain, burns and clear-cuts that regrow slowly, construction that seals a field;
  plus one **gradual decline** (a group of meadow or forest parcels losing 50-80 % of their
  green cover to dry cover and bare ground over 100-180 days of year 2, and staying brown),
  whose cells must never raise a sudden alert;
- **conditions**: cumulus fields of Gaussian blobs whose shadows fall along the sun's azimuth
  at a length set by its elevation (SCL misses the thinnest edges), seasonal cloudiness, snow
  on winter looks over an elevation-like field, illumination by the sun's elevation at 47 N,
  haze with an Angstrom spectral shape on two dates, Sentinel-2A and 2B alternating every look
  with per-band gains up to 3 % apart, per-look per-band gain noise, and partial products
  (the swath's edge cuts the tile on some looks).

Seeds split in two halves: ``TUNING_SEEDS`` (thresholds and rules may be chosen on them) and
``HELD_OUT_SEEDS`` (reported, never used to choose anything). docs/evaluation.md shows both.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cog_writer import stac_item, synthetic_tiles, write_bands
from .fieldsim_world import (
    CELL_PX,
    CONIFER,
    DAYS,
    DECIDUOUS,
    MEADOW,
    SUMMER_CROP,
    TOWN,
    WATER,
    WINTER_CROP,
    World,
    _logistic,
    draw_world,
)
from .spectral_library import library

# Seeds 21-24 were the first held-out half; once run (2026-12-05: cell recall 0.85, deciduous
# clear-cuts missed, false cell-looks up to 0.11 %) they had been seen, so they joined the
# tuning half and a fresh held-out half took their place. Seeds 31-34 were the second (run
# 2026-12-05: cell recall 0.86, a flood seen clear once before it drained, building sites on
# bare fields missed); they joined the tuning half on 2026-12-06 and 41-44 took their place.
# Seeds 41-44 were the third (run 2026-12-06: 25 of 26 events in time, a clear-cut in its first
# spring missed, false cell-looks 0.024 %); they joined the tuning half on 2026-12-06 and 51-54
# took their place.
TUNING_SEEDS: tuple[int, ...] = (11, 12, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34, 41, 42, 43, 44)
HELD_OUT_SEEDS: tuple[int, ...] = (51, 52, 53, 54)
PREFIX = "fieldsim-"
START = dt.date(2023, 1, 3)
LATITUDE = 47.0
WINDOW_DAYS = 45  # how long after an event's start (or a flood's end) a detection still counts


def split_of(seed: int) -> str:
    """``tuning`` or ``held-out``; any other seed is ``extra`` (never in the report's halves)."""
    return "tuning" if seed in TUNING_SEEDS else "held-out" if seed in HELD_OUT_SEEDS else "extra"


def scenario_name(seed: int) -> str:
    return f"{PREFIX}{seed}"


def seed_of(name: str) -> int | None:
    """The seed of a ``fieldsim-<seed>`` scenario name (None: not one of these)."""
    if not name.startswith(PREFIX):
        return None
    try:
        return int(name[len(PREFIX) :])
    except ValueError as err:
        raise ValueError(f"scenario {name!r}: {PREFIX}<seed> takes an integer seed") from err


def _cover_fractions(world: World, day: int) -> tuple[np.ndarray, np.ndarray]:
    """(green, standing) cover per parcel on ``day``: green vegetation and all vegetation
    (green + dry); the rest of a pixel is soil (or litter under a forest)."""
    s = day + START.timetuple().tm_yday - 1
    year, doy = min(s // 365, 1), float(s % 365)
    t = world.timing[:, year]
    prev = world.timing[:, max(year - 1, 0)]
    c = world.parcel_cover
    sos, eos, harvest, plough, sow, mow = (t[:, i] for i in range(6))
    green = np.zeros(c.size)
    standing = np.ones(c.size)

    summer = c == SUMMER_CROP
    grown = _logistic((doy - sos) / 7.0) * (doy < harvest)
    green[summer] = (0.9 * grown * (1 - _logistic((doy - eos) / 8.0)))[summer]
    standing[summer] = grown[summer]

    winter = c == WINTER_CROP
    # Sown last autumn (or, after this year's sowing, for next year): a thin green cover.
    autumn = np.where(doy >= sow, 0.3 * _logistic((doy - sow - 25) / 8.0), 0.0)
    carried = np.where(doy < harvest, 0.3 * _logistic((365 + doy - prev[:, 4] - 25) / 8.0), 0.0)
    spring = 0.6 * _logistic((doy - sos) / 8.0) * (doy < harvest)
    live = (carried + spring) * (1 - _logistic((doy - eos) / 6.0))
    stubble = np.where((doy >= harvest) & (doy < plough), 0.55, 0.0)
    green[winter] = (live + autumn)[winter]
    standing[winter] = np.maximum(carried + spring, stubble)[winter] + autumn[winter]

    meadow = c == MEADOW
    g = 0.35 + 0.5 * (_logistic((doy - sos) / 12.0) - _logistic((doy - eos) / 15.0))
    for cut in (mow, mow + 70):
        since = doy - cut
        g = np.where(
            world.mown & (since >= 0), g * (1 - 0.5 * np.exp(-np.maximum(since, 0) / 18)), g
        )
    green[meadow] = g[meadow]

    deciduous = c == DECIDUOUS
    green[deciduous] = (
        0.15 + 0.75 * (_logistic((doy - sos) / 8.0) - _logistic((doy - eos) / 10.0))
    )[deciduous]
    conifer = c == CONIFER
    green[conifer] = 0.75 + 0.08 * np.sin(2 * np.pi * (doy - 100) / 365)
    return np.clip(green, 0, 1), np.clip(np.maximum(standing, green), 0, 1)


def _sun_elevation(doy: float) -> float:
    """Solar elevation (degrees) at 10:30 local solar time on ``doy`` at ``LATITUDE``."""
    decl = 23.44 * np.sin(2 * np.pi * (284 + doy) / 365)
    lat, d, h = np.radians(LATITUDE), np.radians(decl), np.radians(-22.5)
    sin_e = np.sin(lat) * np.sin(d) + np.cos(lat) * np.cos(d) * np.cos(h)
    return float(np.degrees(np.arcsin(sin_e)))


def surface(world: World, day: int) -> np.ndarray:
    """(12, size, size) cloud-free surface reflectance on ``day``: events and decline in."""
    green_p, standing_p = _cover_fractions(world, day)
    pid = world.parcel
    g = np.clip(green_p[pid] + world.patchiness, 0, 1)
    b = np.maximum(standing_p[pid], g)
    if world.decline.mask.any():
        # The green lost turns half to dry standing cover, half to bare ground.
        lost = np.where(world.decline.mask, g * (1.0 - world.decline.factor(day)), 0.0)
        g = g - lost
        b = b - 0.5 * lost
    G, D, S = world.green[pid], world.dry[pid], world.soil[pid]  # (size, size, 12)
    refl = g[..., None] * G + (b - g)[..., None] * D + (1 - b)[..., None] * S
    lib = library()
    water = world.cover == WATER
    w = world.water_spectrum[water][:, None]
    refl[water] = (1 - w) * lib["water"][0] + w * lib["water"][1]
    town = world.cover == TOWN
    s = world.town_sealed[town][:, None]
    refl[town] = s * lib["sealed"][0] * 0.6 + s * lib["sealed"][1] * 0.4 + (1 - s) * lib["built"][0]
    for ev in world.events:
        if day < ev.start_day:
            continue
        m = ev.mask
        since = day - ev.start_day
        if ev.name == "flood":
            assert ev.duration_days is not None
            if since < ev.duration_days:
                depth = np.clip(world.water_spectrum[m][:, None] * 0.5 + 0.5, 0, 1)
                refl[m] = depth * lib["floodwater"][0] + (1 - depth) * lib["floodwater"][1]
            else:  # drained: wet silt over damaged vegetation, recovering over two months
                k = float(np.exp(-(since - ev.duration_days) / 25.0))
                refl[m] = (1 - 0.6 * k) * refl[m] + 0.6 * k * lib["soil"][1] * 0.8
        elif ev.name == "burn":
            regrow = min(0.35, since / 365 * 0.35)
            refl[m] = regrow * G[m] + (1 - regrow) * lib["char"][ev.start_day % 2]
        elif ev.name == "clear-cut":
            regrow = min(0.3, since / 365 * 0.3)
            refl[m] = regrow * G[m] + (1 - regrow) * (0.55 * S[m] + 0.45 * lib["dry_vegetation"][0])
        else:  # construction: scraped and sealed within weeks
            sealed = 0.55 + 0.3 * min(1.0, since / 40)
            refl[m] = sealed * lib["sealed"][0] + (1 - sealed) * S[m]
    return np.moveaxis(refl * world.texture[..., None], -1, 0).astype(np.float32)


def _clouds(
    rng: np.random.Generator, size: int, fraction: float, elevation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """(opacity, shadow) of a cumulus field: Gaussian blobs on a coarse grid, their shadows
    cast north-west along the sun's azimuth, as long as the cloud height over tan(elevation)."""
    coarse = size // 8
    yy, xx = np.mgrid[0:coarse, 0:coarse].astype(np.float32)
    density = np.zeros((coarse, coarse), np.float32)
    for _ in range(int(8 + 40 * fraction)):
        cy, cx = rng.uniform(-4, coarse + 4, 2)
        r = rng.uniform(1.5, 7.0)
        density += rng.uniform(0.6, 1.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    # The densest ``fraction`` of the field is cloud, opaque in its cores, thin at its edges.
    floor = np.quantile(density, 1.0 - fraction)
    opacity = 1 - np.exp(-4.0 * np.maximum(density - floor, 0) / (density.max() - floor + 1e-6))
    opacity = np.kron(opacity, np.ones((8, 8), np.float32))[:size, :size]
    height_m = rng.uniform(800, 2500)
    length = height_m / np.tan(np.radians(max(elevation_deg, 8.0))) / 10.0
    azimuth = np.radians(rng.uniform(140, 165))  # the sun in the south-east at 10:30
    dy = int(np.rint(-length * np.cos(np.pi - azimuth)))  # shadows fall away from the sun
    dx = int(np.rint(-length * np.sin(np.pi - azimuth)))
    shadow = np.zeros_like(opacity)
    ys, yd = (
        (slice(0, size - dy), slice(dy, size))
        if dy >= 0
        else (slice(-dy, size), slice(0, size + dy))
    )
    xs, xd = (
        (slice(0, size - dx), slice(dx, size))
        if dx >= 0
        else (slice(-dx, size), slice(0, size + dx))
    )
    if abs(dy) < size and abs(dx) < size:
        shadow[yd, xd] = opacity[ys, xs]
    return opacity, np.clip(shadow - opacity, 0, 1)


def look(
    world: World, day: int, look_index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, float], str]:
    """One acquisition: (reflectance (12, y, x) at 10 m, SCL (y, x), cover stats, unit)."""
    size = world.size
    doy = float((day + START.timetuple().tm_yday - 1) % 365)
    refl = surface(world, day)
    ndvi = (refl[7] - refl[3]) / (refl[7] + refl[3] + 1e-6)
    scl = np.where(ndvi > 0.35, 4, 5).astype(np.uint8)
    scl[world.cover == WATER] = 6
    for ev in world.events:
        if ev.name == "flood" and ev.start_day <= day < ev.start_day + (ev.duration_days or 0):
            scl[ev.mask] = 6
    elevation = _sun_elevation(doy)
    # Illumination left after the L2A correction: darker, flatter scenes under a low sun.
    refl *= np.float32(0.8 + 0.2 * np.sin(np.radians(elevation)) / np.sin(np.radians(66.0)))
    unit = "A" if look_index % 2 else "B"
    gains = (world.s2a_gains if unit == "A" else np.ones(12, np.float32)) * (
        1 + rng.normal(0, 0.008, 12)
    )  # per look, per band
    refl *= gains.astype(np.float32)[:, None, None]
    if day in world.haze_days:
        from .spectral_library import WAVELENGTH_UM

        aot = rng.uniform(0.03, 0.06)
        refl = (
            refl * 0.97 + (aot * (WAVELENGTH_UM / 0.55) ** -1.4).astype(np.float32)[:, None, None]
        )
    winter = doy < 70 or doy > 335
    if winter and rng.random() < 0.55:
        line = rng.uniform(0.2, 0.9)
        snow = world.elevation > line
        cover = np.clip((world.elevation - line) / 0.05, 0, 1)[snow]
        refl[:, snow] = (1 - cover) * refl[:, snow] + cover * library()["snow"][0][
            :, None
        ] * rng.uniform(0.8, 1.0)
        scl[snow] = 11
    seasonal = world.cloud_base + 0.2 * np.cos(2 * np.pi * (doy - 15) / 365)
    fraction = 0.0
    if rng.random() < seasonal:
        fraction = float(np.clip(rng.beta(0.8, 1.4), 0.02, 1.0))
        opacity, shadow = _clouds(rng, size, fraction, elevation)
        refl = refl * (1 - 0.65 * shadow[None]) * (1 - opacity[None]) + opacity[None] * np.float32(
            rng.uniform(0.45, 0.7)
        )
        scl[shadow > 0.25] = 3
        scl[opacity > 0.12] = 10
        scl[opacity > 0.3] = 8
        scl[opacity > 0.65] = 9
        fraction = float((opacity > 0.12).mean())
    refl += rng.normal(0, 1, refl.shape).astype(np.float32) * (0.003 + 0.01 * refl)
    if rng.random() < 0.2:  # the swath's edge: part of the tile has no data
        yy, xx = np.mgrid[0:size, 0:size]
        angle = rng.uniform(0.2, 0.5)
        edge = xx * np.cos(angle) + yy * np.sin(angle) > size * rng.uniform(0.4, 0.9)
        if rng.random() < 0.5:
            edge = edge[:, ::-1]
        refl[:, edge] = -0.1  # DN 0 after the L2A offset: nodata
        scl[edge] = 0
    stats = {"cloud": fraction, "snow": float((scl == 11).mean())}
    return refl, scl, stats, unit


def generate(
    out_dir: str | Path,
    seed: int,
    size: int = 512,
    revisit_days: int = 5,
    days: int = DAYS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path]:
    """Write the archive of ``seed`` under ``out_dir``: ``items/`` (COGs + STAC items) and
    ``truth.parquet``; returns both paths."""
    if size % CELL_PX:
        raise ValueError(f"fieldsim tiles are a multiple of {CELL_PX} px (one cell), not {size}")
    out = Path(out_dir)
    items = out / "items"
    items.mkdir(parents=True, exist_ok=True)
    world = draw_world(seed, size)
    tile = synthetic_tiles(1)[0]
    rng = np.random.default_rng([seed, 7])
    looks = list(range(0, days, revisit_days))
    for k, day in enumerate(looks):
        date = START + dt.timedelta(days=day)
        when = dt.datetime.combine(date, dt.time(10, 20, 29), tzinfo=dt.timezone.utc)
        refl, scl, stats, unit = look(world, day, k, rng)
        stamp = when.strftime("%Y%m%dT%H%M%S")
        orbit = "R022" if unit == "A" else "R065"
        item_id = f"S2{unit}_MSIL2A_{stamp}_N0511_{orbit}_T{tile.tile}_{stamp[:8]}T151500"
        assets = write_bands(items / tile.tile / item_id, refl, scl, tile, stamp)
        published = when + dt.timedelta(hours=5)
        item = stac_item(
            item_id, tile, when, published, assets, stats, size, f"sentinel-2{unit.lower()}"
        )
        (items / tile.tile / item_id / f"{item_id}.json").write_text(json.dumps(item, indent=1))
        if progress:
            progress(k + 1, len(looks))
    truth = write_truth(out / "truth.parquet", world, days)
    return items, truth


def cell_fractions(mask: np.ndarray) -> np.ndarray:
    """(cells_y, cells_x) share of each embedding cell inside a pixel mask."""
    n = mask.shape[0] // CELL_PX
    m = mask[: n * CELL_PX, : n * CELL_PX]
    return m.reshape(n, CELL_PX, n, CELL_PX).mean(axis=(1, 3))


def write_truth(path: Path, world: World, days: int = DAYS) -> Path:
    """One GeoParquet row per cell an event or the decline touches: ``fraction`` of the cell
    inside it (a cell at least half inside is the event's; a smaller share is its edge),
    ``kind`` sudden or gradual, the label a detector should give, and the window in which a
    detection counts."""
    import geopandas as gpd
    import pandas as pd

    from ..grid import TileGrid

    tile = synthetic_tiles(1)[0]
    grid = TileGrid(tile.tile, tile.epsg, tile.x0, tile.y0, world.size, world.size, CELL_PX)
    origin = pd.Timestamp(START, tz="UTC")
    rows: list[dict[str, object]] = []
    geoms = []

    def add(mask: np.ndarray, **row: object) -> None:
        frac = cell_fractions(mask)
        for cy, cx in zip(*np.nonzero(frac > 0), strict=True):
            rows.append({"tile": tile.tile, "cell_y": int(cy), "cell_x": int(cx),
                         "fraction": float(frac[cy, cx]), **row})  # fmt: skip
            geoms.extend(grid.cell_polygons_wgs84(np.array([cy]), np.array([cx])))

    for i, ev in enumerate(world.events):
        first = origin + pd.Timedelta(days=ev.start_day)
        last = first + pd.Timedelta(days=(ev.duration_days or 0) + WINDOW_DAYS)
        add(ev.mask, event=ev.name, event_id=f"{ev.name}-{i}", label=ev.label, kind="sudden",
            start=first, end=last)  # fmt: skip
    dr = world.decline
    add(dr.mask, event="decline", event_id="decline-0", label="gradual", kind="gradual",
        start=origin + pd.Timedelta(days=dr.start_day), end=origin + pd.Timedelta(days=days))  # fmt: skip
    gdf = gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geoms, crs="EPSG:4326")
    gdf["scenario"] = scenario_name(world.seed)
    gdf["split"] = split_of(world.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_parquet(path, index=False, schema_version="1.1.0", write_covering_bbox=True)
    return path


def describe(world: World) -> str:
    """One line of what a world holds (for the evaluation document)."""
    events = ", ".join(
        f"{ev.name} day {ev.start_day} ({cell_fractions(ev.mask).sum():.0f} cells)"
        for ev in sorted(world.events, key=lambda e: e.start_day)
    )
    d = world.decline
    return (
        f"year 2 greens up {world.greenup_shift_days:.0f} days earlier; {events}; a decline of "
        f"{cell_fractions(d.mask).sum():.0f} cells from day {d.start_day} over {d.ramp_days} "
        f"days (green cover -{100 * d.depth:.0f} %); haze on days "
        f"{', '.join(map(str, world.haze_days))}"
    )
