"""What the synthetic archive plants and under which conditions: the demo and the scenario set.

A :class:`Scenario` is a ground truth (sudden events at known cells and dates, regions of
gradual change) plus the conditions a detector must stay quiet through: a phenology shift, a
drought, a cloudy season, a long snow season under a low sun, hazy dates, a sensor switch.
``synthetic.generate`` writes any of them; ``streamembed evaluate`` runs every detector on
each and scores it against the truth (docs/evaluation.md).

Days are counted from the archive's first acquisition; events of the second year start after
day 365, on other cells than the first year's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CROP, FOREST, GRASS, WATER, URBAN = range(5)


@dataclass(frozen=True)
class PlantedEvent:
    """A change planted on a block of cells from ``start`` (for ``duration_days``, or for good)."""

    tile_index: int
    name: str
    label: str
    cells_y: tuple[int, int]  # [start, stop) in cell units
    cells_x: tuple[int, int]
    start_day: int  # days after the archive's first acquisition
    duration_days: int | None
    cover: str  # spectrum while the event lasts
    land_cover: int  # land cover forced under the event before it happens


@dataclass(frozen=True)
class Drought:
    """Slow browning of a block of cells: the green fraction falls by ``depth`` over
    ``ramp_days`` from ``start_day``, holds, and recovers over ``ramp_days`` from ``end_day``."""

    cells_y: tuple[int, int]
    cells_x: tuple[int, int]
    start_day: int
    ramp_days: int
    end_day: int
    depth: float = 0.5

    def factor(self, day: int) -> float:
        """Multiplier of the green fraction on ``day`` (1: no drought)."""
        if day < self.start_day:
            return 1.0
        down = min(1.0, (day - self.start_day) / self.ramp_days)
        up = min(1.0, max(0.0, (day - self.end_day) / self.ramp_days))
        return 1.0 - self.depth * down * (1.0 - up)


@dataclass(frozen=True)
class Season:
    """A stretch of days (``start_day`` to ``end_day``, archive days) with its own weather."""

    start_day: int
    end_day: int

    def holds(self, day: int) -> bool:
        return self.start_day <= day < self.end_day


@dataclass(frozen=True)
class Scenario:
    """One synthetic archive: tiles, length, ground truth and the conditions around it."""

    name: str
    description: str
    days: int
    tiles: int
    events: tuple[PlantedEvent, ...]
    # Year-2 vegetation greens up (and browns) this many days earlier than year 1.
    phenology_shift_days: int = 0
    droughts: tuple[Drought, ...] = ()
    # Nearly every acquisition in these seasons is mostly clouded.
    cloud_seasons: tuple[Season, ...] = ()
    # Snow on most acquisitions and a low sun (darker scenes, longer shadows) in these seasons.
    snow_seasons: tuple[Season, ...] = ()
    # Whole-tile haze on these days that SCL does not flag (visible bands raised).
    haze_days: tuple[int, ...] = ()
    # From this day the acquisitions come from Sentinel-2A with its per-band gain offsets.
    sensor_switch_day: int | None = None
    sensor_gains: tuple[float, ...] = field(default=())

    def event_cells(self) -> int:
        return sum(
            (e.cells_y[1] - e.cells_y[0]) * (e.cells_x[1] - e.cells_x[0]) for e in self.events
        )


DEMO_EVENTS = (
    PlantedEvent(0, "flood", "water_gain", (3, 6), (9, 13), 110, 35, "floodwater", GRASS),
    PlantedEvent(0, "clear-cut", "vegetation_loss", (10, 13), (2, 5), 175, None, "soil", FOREST),
    PlantedEvent(1, "burn", "burn", (6, 10), (5, 9), 215, None, "char", FOREST),
    PlantedEvent(1, "construction", "bare_gain", (12, 14), (11, 14), 250, None, "concrete", CROP),
)

DEMO = Scenario(
    "demo",
    "one year on two tiles: a flood, a clear-cut, a burn scar and a construction site",
    days=365,
    tiles=2,
    events=DEMO_EVENTS,
)

# The scenario set: one 16 x 16-cell tile, two years, the four sudden events in each year (the
# second year's on other cells), and one condition each that must not raise alerts.
_YEAR = 365
TWO_YEAR_EVENTS = (
    PlantedEvent(0, "flood", "water_gain", (3, 6), (9, 13), 110, 35, "floodwater", GRASS),
    PlantedEvent(0, "clear-cut", "vegetation_loss", (10, 13), (2, 5), 175, None, "soil", FOREST),
    PlantedEvent(0, "burn", "burn", (6, 9), (5, 8), 215, None, "char", FOREST),
    PlantedEvent(0, "construction", "bare_gain", (12, 14), (11, 14), 250, None, "concrete", CROP),
    PlantedEvent(0, "flood", "water_gain", (0, 3), (2, 6), _YEAR + 100, 40, "floodwater", GRASS),
    PlantedEvent(
        0, "clear-cut", "vegetation_loss", (13, 16), (6, 9), _YEAR + 190, None, "soil", FOREST
    ),
    PlantedEvent(0, "burn", "burn", (5, 8), (0, 3), _YEAR + 160, None, "char", FOREST),
    PlantedEvent(
        0, "construction", "bare_gain", (13, 15), (0, 3), _YEAR + 240, None, "concrete", CROP
    ),
)
# Sentinel-2A against 2B: a few percent per band (B01 … B12), as the cross-calibration between
# the two MSIs before harmonisation.
S2A_GAINS = (1.03, 1.02, 1.025, 1.03, 0.98, 0.975, 0.97, 0.96, 0.965, 1.04, 1.035, 1.04)


def _two_years(name: str, description: str, **conditions: object) -> Scenario:
    return Scenario(name, description, days=2 * _YEAR, tiles=1, events=TWO_YEAR_EVENTS,
                    **conditions)  # type: ignore[arg-type]  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        _two_years(
            "phenology-shift",
            "year 2 greens up and browns 20 days earlier than year 1",
            phenology_shift_days=20,
        ),
        _two_years(
            "drought",
            "a 15-cell block browns slowly over 4 months of year 2 (gradual, not sudden)",
            droughts=(Drought((0, 5), (6, 9), _YEAR + 150, 120, _YEAR + 300),),
        ),
        _two_years(
            "heavy-cloud",
            "3 months of year 2 (late summer to autumn) almost always clouded",
            cloud_seasons=(Season(_YEAR + 200, _YEAR + 290),),
        ),
        _two_years(
            "snow-low-sun",
            "long snow seasons (mid-November to March) under a low winter sun",
            snow_seasons=(Season(315, _YEAR + 85), Season(_YEAR + 315, 2 * _YEAR)),
        ),
        _two_years(
            "haze",
            "8 dates of whole-tile haze that the scene classification does not flag",
            haze_days=(40, 150, 230, 300, _YEAR + 60, _YEAR + 170, _YEAR + 250, _YEAR + 330),
        ),
        _two_years(
            "sensor-switch",
            "Sentinel-2B in year 1, Sentinel-2A (per-band gains 0.96-1.04) in year 2",
            sensor_switch_day=_YEAR,
            sensor_gains=S2A_GAINS,
        ),
    )
}


def scenario(name: str) -> Scenario:
    """The demo or a named scenario; a clear error lists the names."""
    if name == DEMO.name:
        return DEMO
    if name not in SCENARIOS:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of: {', '.join([DEMO.name, *SCENARIOS])}"
        )
    return SCENARIOS[name]
