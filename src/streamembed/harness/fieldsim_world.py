"""The second generator's worlds: a landscape drawn from a seed (parcels of summer and winter
crops, meadows, deciduous and conifer forest, a river, a town), its sudden events (floods,
burns, clear-cuts, construction) and gradual declines, placed on the covers they happen on.
``fieldsim.py`` turns a world into looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .spectral_library import library

DAYS = 730  # two years of looks
CELL_PX = 32  # the store's cell, px (events and declines cover whole cells)
SUMMER_CROP, WINTER_CROP, MEADOW, DECIDUOUS, CONIFER, WATER, TOWN = range(7)
COVER_SHARE = {SUMMER_CROP: 0.22, WINTER_CROP: 0.2, MEADOW: 0.22, DECIDUOUS: 0.2, CONIFER: 0.16}
# What each event is, where it happens, and the label a detector should give it.
EVENT_KINDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "flood": ("water_gain", (MEADOW, SUMMER_CROP, WINTER_CROP)),
    "burn": ("burn", (CONIFER, DECIDUOUS, MEADOW)),
    "clear-cut": ("vegetation_loss", (CONIFER, DECIDUOUS)),
    "construction": ("bare_gain", (SUMMER_CROP, WINTER_CROP, MEADOW)),
}


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def pink_noise(rng: np.random.Generator, size: int, beta: float = 2.2) -> np.ndarray:
    """(size, size) noise with a 1/f^beta power spectrum, zero mean, unit spread."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.normal(size=amp.shape) + 1j * rng.normal(size=amp.shape))
    out = np.fft.irfft2(spec, s=(size, size))
    return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)


@dataclass
class Event:
    """One sudden event: its pixels, its kind and when it starts (and, for a flood, ends)."""

    name: str
    label: str
    mask: np.ndarray  # (size, size) bool
    start_day: int
    duration_days: int | None  # None: for good


@dataclass
class Decline:
    """Parcels browning slowly: the green cover falls by ``depth`` over ``ramp_days``."""

    mask: np.ndarray
    start_day: int
    ramp_days: int
    depth: float

    def factor(self, day: int) -> float:
        return 1.0 - self.depth * float(np.clip((day - self.start_day) / self.ramp_days, 0, 1))


@dataclass
class World:
    """Everything one seed draws, fixed for the whole archive."""

    seed: int
    size: int
    cover: np.ndarray  # (size, size) int8 cover class
    parcel: np.ndarray  # (size, size) int32 parcel id
    parcel_cover: np.ndarray  # (P,) cover class per parcel
    green: np.ndarray  # (P, 12) green vegetation endmember per parcel
    dry: np.ndarray  # (P, 12) dry vegetation / litter endmember
    soil: np.ndarray  # (P, 12) soil endmember
    timing: np.ndarray  # (P, 2 years, 6) per-parcel dates: see _cover_fractions
    mown: np.ndarray  # (P,) bool: a meadow mown twice a year
    texture: np.ndarray  # (size, size) multiplicative brightness texture
    patchiness: np.ndarray  # (size, size) within-parcel green-cover variation
    elevation: np.ndarray  # (size, size) 0-1, where snow lies first
    water_spectrum: np.ndarray  # (size, size) 0 clear .. 1 turbid
    town_sealed: np.ndarray  # (size, size) sealed share of a town pixel
    events: list[Event]
    decline: Decline
    greenup_shift_days: float  # year 2 greens up this many days earlier
    s2a_gains: np.ndarray  # (12,) Sentinel-2A's gains relative to 2B
    haze_days: tuple[int, ...]
    cloud_base: float  # mean cloud probability of a look
    extras: dict[str, float] = field(default_factory=dict)


def _parcels(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(parcel id per pixel, cover class per parcel): Voronoi cells of random seeds, each
    given a cover class; forests come in clumps (a parcel takes its nearest seed's forest)."""
    from scipy.spatial import cKDTree

    n = int(rng.integers(90, 150))
    points = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = np.column_stack([yy.ravel(), xx.ravel()]) + rng.normal(0, 3.0, (size * size, 2))
    _, parcel = cKDTree(points).query(pixels)
    classes = np.array(list(COVER_SHARE))
    share = np.array(list(COVER_SHARE.values()))
    cover = rng.choice(classes, n, p=share / share.sum())
    # Forest clumps: a parcel next to forest turns forest with some probability.
    _, near = cKDTree(points).query(points, k=3)
    for i in range(n):
        if cover[i] not in (DECIDUOUS, CONIFER) and rng.random() < 0.25:
            forest = [j for j in near[i, 1:] if cover[j] in (DECIDUOUS, CONIFER)]
            if forest:
                cover[i] = cover[forest[0]]
    return parcel.reshape(size, size).astype(np.int32), cover.astype(np.int8)


def _river(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sinuous river across the tile and a pond beside it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    centre = size * rng.uniform(0.3, 0.7) + size * 0.08 * np.sin(
        xx / size * 2 * np.pi * 1.3 + phase
    )
    width = rng.uniform(7, 14)
    river = np.abs(yy - centre) < width / 2
    py, px = rng.uniform(0.15, 0.85, 2) * size
    pond = (yy - py) ** 2 / rng.uniform(12, 30) ** 2 + (xx - px) ** 2 / rng.uniform(12, 30) ** 2 < 1
    return river | pond


def _blob(rng: np.random.Generator, size: int, cy: float, cx: float, cells: float) -> np.ndarray:
    """A random event shape of about ``cells`` cells' area: a rotated ellipse whose radius
    wobbles with a few random harmonics of the angle."""
    area = cells * CELL_PX * CELL_PX
    ratio = rng.uniform(1.0, 2.5)
    a = np.sqrt(area * ratio / np.pi)
    b = a / ratio
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    angle = np.arctan2(v, u)
    wobble = np.ones_like(angle)
    for k in (2, 3, 5):
        wobble += rng.uniform(0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return (u / a) ** 2 + (v / b) ** 2 < wobble**2


def _place(
    rng: np.random.Generator,
    world_cover: np.ndarray,
    allowed: tuple[int, ...],
    taken: np.ndarray,
    cells: float,
    near: np.ndarray | None = None,
) -> np.ndarray | None:
    """A blob on the ``allowed`` cover classes, away from ``taken``; None when none fits."""
    size = world_cover.shape[0]
    ok = np.isin(world_cover, allowed) & ~taken
    if near is not None:
        ok &= near
    margin = CELL_PX
    ok[:margin], ok[-margin:], ok[:, :margin], ok[:, -margin:] = False, False, False, False
    candidates = np.flatnonzero(ok)
    for _ in range(80):
        if candidates.size == 0:
            return None
        cy, cx = divmod(int(rng.choice(candidates)), size)
        mask = _blob(rng, size, cy, cx, cells)
        if not (mask & taken).any() and np.isin(world_cover[mask], allowed).mean() > 0.5:
            return mask
    return None


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=px)


def draw_world(seed: int, size: int = 512) -> World:
    """Everything the archive of ``seed`` shows."""
    rng = np.random.default_rng([seed, 2026])
    lib = library()
    parcel, parcel_cover = _parcels(rng, size)
    p = parcel_cover.size
    cover = parcel_cover[parcel]
    water = _river(rng, size)
    cover = np.where(water, WATER, cover).astype(np.int8)
    ty, tx = rng.uniform(0.2, 0.8, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    town = (
        (np.abs(yy - ty) < rng.uniform(25, 45)) & (np.abs(xx - tx) < rng.uniform(25, 50)) & ~water
    )
    cover[town] = TOWN

    def pick(name: str, n: int) -> np.ndarray:
        return lib[name][rng.integers(0, len(lib[name]), n)]

    green = np.where(
        np.isin(parcel_cover, (DECIDUOUS, CONIFER))[:, None], pick("forest", p),
        np.where((parcel_cover == MEADOW)[:, None], pick("grass", p), pick("shrub", p)),
    )  # fmt: skip
    dry = np.where(
        np.isin(parcel_cover, (DECIDUOUS, CONIFER))[:, None], pick("litter", p),
        pick("dry_vegetation", p),
    )  # fmt: skip
    soil = pick("soil", p) * rng.uniform(0.85, 1.15, (p, 1)).astype(np.float32)
    # Per parcel and year: green-up, senescence, harvest, plough, sowing, a mowing date.
    base = np.zeros((p, 6))
    base[:, 0] = np.select(
        [parcel_cover == SUMMER_CROP, parcel_cover == WINTER_CROP, parcel_cover == MEADOW,
         parcel_cover == DECIDUOUS], [155, 95, 95, 115], 100,
    ) + rng.normal(0, 7, p)  # fmt: skip
    base[:, 1] = np.select(
        [parcel_cover == SUMMER_CROP, parcel_cover == WINTER_CROP, parcel_cover == MEADOW,
         parcel_cover == DECIDUOUS], [245, 172, 285, 292], 300,
    ) + rng.normal(0, 6, p)  # fmt: skip
    base[:, 2] = np.where(parcel_cover == SUMMER_CROP, 272, 200) + rng.normal(0, 7, p)
    base[:, 3] = 238 + rng.normal(0, 8, p)
    base[:, 4] = 285 + rng.normal(0, 7, p)
    base[:, 5] = 165 + rng.normal(0, 9, p)
    shift = float(rng.uniform(10, 30))
    timing = np.stack([base + rng.normal(0, 4, (p, 6)) for _ in range(2)], axis=1)
    timing[:, 1, 0] -= shift  # year 2 greens up earlier
    timing[:, 1, 1] -= 0.3 * shift
    mown = (parcel_cover == MEADOW) & (rng.random(p) < 0.5)

    taken = _grow(water | town, 8)
    # The gradual decline (drought stress, dieback): a few neighbouring meadow or forest
    # parcels, in year 2, after a year of normal seasons; the green lost turns dry and stays.
    perennial = np.flatnonzero(np.isin(parcel_cover, (MEADOW, DECIDUOUS, CONIFER)))
    first = int(rng.choice(perennial))
    counts = np.bincount(parcel.ravel(), minlength=p).astype(float)
    yy_, xx_ = np.mgrid[0:size, 0:size]
    cy = np.bincount(parcel.ravel(), yy_.ravel(), minlength=p) / np.maximum(counts, 1)
    cx = np.bincount(parcel.ravel(), xx_.ravel(), minlength=p) / np.maximum(counts, 1)
    dist = np.full(p, np.inf)
    dist[perennial] = np.hypot(cy[perennial] - cy[first], cx[perennial] - cx[first])
    group = np.argsort(dist)[: int(rng.integers(3, 7))]
    decline_mask = np.isin(parcel, group) & ~taken
    decline = Decline(
        decline_mask,
        start_day=365 + int(rng.uniform(100, 200)),
        ramp_days=int(rng.uniform(100, 180)),
        depth=float(rng.uniform(0.5, 0.8)),
    )
    taken |= _grow(decline_mask, CELL_PX // 2)

    events: list[Event] = []
    kinds = ["flood", "burn", "clear-cut", "construction"]
    kinds += list(rng.choice(kinds, 3, replace=False))
    near_water = _grow(water, 60) & ~water
    for name in kinds:
        label, allowed = EVENT_KINDS[name]
        cells = float(rng.uniform(3, 22))
        mask = _place(rng, cover, allowed, taken, cells, near_water if name == "flood" else None)
        if mask is None:
            mask = _place(rng, cover, allowed, taken, cells)
        if mask is None:
            continue
        # Only the pixels of the cover it belongs to change (a clear-cut stops at the field
        # beside the forest); a flood covers any land.
        land = ~np.isin(cover, (WATER, TOWN)) if name == "flood" else np.isin(cover, allowed)
        mask &= land
        start = int(rng.uniform(90, DAYS - 45))
        duration = int(rng.uniform(15, 60)) if name == "flood" else None
        events.append(Event(name, label, mask, start, duration))
        taken |= _grow(mask, CELL_PX // 2)

    haze = tuple(sorted(int(d) for d in rng.choice(np.arange(20, DAYS - 20, 5), 2, replace=False)))
    return World(
        seed=seed,
        size=size,
        cover=cover,
        parcel=parcel,
        parcel_cover=parcel_cover,
        green=green.astype(np.float32),
        dry=dry.astype(np.float32),
        soil=soil.astype(np.float32),
        timing=timing,
        mown=mown,
        texture=(1.0 + 0.05 * pink_noise(rng, size)).astype(np.float32),
        patchiness=(0.06 * pink_noise(rng, size, beta=1.6)).astype(np.float32),
        elevation=(0.5 + 0.18 * pink_noise(rng, size, beta=3.0)).astype(np.float32),
        water_spectrum=np.clip(0.5 + 0.3 * pink_noise(rng, size), 0, 1).astype(np.float32),
        town_sealed=np.clip(0.65 + 0.2 * pink_noise(rng, size, beta=0.8), 0, 1).astype(np.float32),
        events=events,
        decline=decline,
        greenup_shift_days=shift,
        s2a_gains=(1.0 + rng.uniform(-0.03, 0.03, 12)).astype(np.float32),
        haze_days=haze,
        cloud_base=float(rng.uniform(0.35, 0.55)),
    )
