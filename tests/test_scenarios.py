"""The scenario set: each condition does what it says to the scenes, and the truth says what
was planted (no archive is written: the scene builder is called directly)."""

import datetime as dt
import itertools

import numpy as np
import pytest

from streamembed.harness.scenarios import DEMO, SCENARIOS, scenario
from streamembed.harness.synthetic import _landscape, _scene, write_truth

CELL, SIZE = 32, 512


def _look(name: str, day: int, seed: int = 1):
    sc = scenario(name)
    land = _landscape(np.random.default_rng(0), SIZE, CELL, 0, sc.events)
    doy = (dt.date(2024, 1, 3) + dt.timedelta(days=day)).timetuple().tm_yday
    return _scene(np.random.default_rng(seed), land, day, doy, 0, CELL, sc,
                  np.random.default_rng(seed + 100))  # fmt: skip


def test_every_scenario_has_both_years_of_events_on_distinct_cells():
    for sc in SCENARIOS.values():
        assert sc.days == 730 and sc.tiles == 1
        taken = np.zeros((16, 16), int)
        for ev in sc.events:
            taken[slice(*ev.cells_y), slice(*ev.cells_x)] += 1
        assert taken.max() == 1
        for year in (0, 1):
            names = {e.name for e in sc.events if (e.start_day >= 365) == bool(year)}
            assert names == {"flood", "burn", "clear-cut", "construction"}
    with pytest.raises(ValueError, match="choose one of: demo, phenology-shift"):
        scenario("flood")


def test_haze_raises_the_visible_bands_unflagged():
    day = SCENARIOS["haze"].haze_days[2]
    hazy, scl_hazy, _ = _look("haze", day)
    clear, scl_clear, _ = _look("phenology-shift", day)  # same stream, no haze
    gain = np.nanmedian(hazy[1] - clear[1])  # B02
    assert 0.05 < gain < 0.09 and np.nanmedian(hazy[10] - clear[10]) < 0.01  # B11 barely
    assert np.array_equal(scl_hazy, scl_clear)


def test_sensor_switch_applies_the_s2a_gains_in_year_two():
    for day, expect in ((360, 1.0), (370, None)):
        switched, scl, _ = _look("sensor-switch", day)
        plain, _, _ = _look("phenology-shift", day)
        ok = np.isin(scl, (4, 5, 6)) & (plain[7] > 0.05)  # clear surface (clouds are added on top)
        assert ok.mean() > 0.1
        ratio = np.median(switched[7][ok] / plain[7][ok])  # B08
        want = SCENARIOS["sensor-switch"].sensor_gains[7] if expect is None else expect
        assert ratio == pytest.approx(want, abs=0.01)


def test_drought_browns_its_block_gradually_and_the_truth_marks_it_gradual(tmp_path):
    sc = SCENARIOS["drought"]
    dr = sc.droughts[0]
    factors = [dr.factor(d) for d in range(dr.start_day, dr.end_day, 5)]
    assert factors[0] == 1.0 and min(factors) == pytest.approx(1 - dr.depth)
    assert max(abs(a - b) for a, b in itertools.pairwise(factors)) < 0.05
    import geopandas as gpd

    truth = gpd.read_parquet(
        write_truth(tmp_path / "t.parquet", dt.date(2024, 1, 3), SIZE, CELL, 1, sc)
    )
    gradual = truth[truth["kind"] == "gradual"]
    assert len(gradual) == 15 and set(gradual["label"]) == {"gradual"}
    assert len(truth[truth["kind"] == "sudden"]) == sc.event_cells()


def test_snow_season_snows_and_darkens():
    day = 365 + 20  # January of year 2
    snow_share, plain_share, ratios = [], [], []
    for seed in range(12):
        snowy, scl, _ = _look("snow-low-sun", day, seed=seed)
        plain, scl_plain, _ = _look("phenology-shift", day, seed=seed)
        snow_share.append((scl == 11).mean())
        plain_share.append((scl_plain == 11).mean())
        free = np.isin(scl, (4, 5, 6)) & np.isin(scl_plain, (4, 5, 6)) & (plain[7] > 0.05)
        if free.mean() > 0.02:
            ratios.append(np.median(snowy[7][free] / plain[7][free]))
    assert np.mean(snow_share) > np.mean(plain_share) + 0.2
    assert ratios and max(ratios) < 0.85  # the low sun darkens every snow-free look


def test_demo_is_unchanged_by_the_scenario_machinery():
    assert DEMO.days == 365 and DEMO.tiles == 2 and len(DEMO.events) == 4
