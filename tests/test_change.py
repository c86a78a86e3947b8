"""Sudden against gradual change, and a cell's own seasons (change.py), through stats.update."""

import numpy as np

from streamembed.config import StatsConfig
from streamembed.detection.alerts import AlertState, AlertStatus, advance
from streamembed.detection.change import ChangeState, evidence, fold, gradual_step
from streamembed.detection.stats import TileState, update
from streamembed.indices import INDEX_NAMES

K = len(INDEX_NAMES)
NDVI, NBR, MNDWI = (INDEX_NAMES.index(n) for n in ("ndvi", "nbr", "mndwi"))
SHAPE = (4, 4)
C = SHAPE[0] * SHAPE[1]


def _indices(ndvi: float, nbr: float = 0.4, mndwi: float = -0.5) -> np.ndarray:
    out = np.full((C, K), 0.1, np.float32)
    out[:, NDVI], out[:, NBR], out[:, MNDWI] = ndvi, nbr, mndwi
    return out


def test_a_step_past_the_cells_own_seasons_is_an_onset():
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)
    for day in range(0, 60, 5):
        fold(state, _indices(0.8), usable, usable, float(day))
    now = _indices(0.8)
    now[3, MNDWI], now[3, NDVI] = 0.5, -0.1  # a flood on one cell
    ev = evidence(state, now, _indices(0.8), usable, 60.0)
    onset = ev.onset(0.25, 0.2, 0.1)
    assert onset.tolist() == [i == 3 for i in range(C)]
    assert ev.dominant()[3] in (0, 2)  # NDVI or MNDWI, whichever moved most


def test_a_change_built_up_look_by_look_never_steps():
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)
    ndvi = np.full(C, 0.8, np.float32)
    for day in range(0, 300, 5):
        look = _indices(0.8)
        look[:, NDVI] = ndvi
        ev = evidence(state, look, _indices(0.8), usable, float(day))
        # Far from the expectation at the end (0.8 expected, 0.3 seen), but never a step.
        assert not ev.onset(0.25, 0.2, 0.1).any(), day
        fold(state, look, usable, usable, float(day))
        ndvi[:4] = np.maximum(0.3, ndvi[:4] - 0.01)
    assert ndvi[0] == np.float32(0.3)


def test_going_back_to_the_fields_own_bare_season_is_not_new():
    """A harvest: the cell was bare soil in spring, green in summer, bare again in autumn."""
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)
    day = 0.0
    for ndvi in [0.2] * 10 + [0.5, 0.7, 0.8, 0.85, 0.85, 0.85]:
        fold(state, _indices(ndvi, nbr=ndvi - 0.3), usable, usable, day)
        day += 5
    harvest = _indices(0.85, nbr=0.55)
    harvest[:6, NDVI], harvest[:6, NBR] = 0.21, -0.08  # six of the fields are harvested
    ev = evidence(state, harvest, _indices(0.85, nbr=0.55), usable, day)
    assert (ev.step[:6, 0] > 0.5).all()  # a step it is
    assert not ev.onset(0.25, 0.2, 0.1).any()  # but not past what the cell has been
    evergreen = ChangeState.empty(C)  # a cell with no bare season behind it
    for day in range(0, 80, 5):
        fold(evergreen, _indices(0.85, nbr=0.55), usable, usable, float(day))
    ev = evidence(evergreen, harvest, _indices(0.85, nbr=0.55), usable, 80.0)
    assert ev.onset(0.25, 0.2, 0.1).tolist() == [i < 6 for i in range(C)]  # the same look is new


def _year_of_looks(state: ChangeState, ndvi_on, days: range, normal: np.ndarray) -> None:
    usable = np.ones(C, bool)
    for day in days:
        fold(state, _indices(ndvi_on(day), nbr=ndvi_on(day) - 0.4), usable, normal, float(day))


def test_a_state_seen_only_in_another_season_excuses_a_look_only_in_part():
    """A deciduous forest: leafless (NDVI 0.45) in winter, 0.85 in summer. A clear-cut to 0.3 in
    its second June is barely past its winter, yet far from any June it has shown."""
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)

    def forest(day: float) -> float:
        return 0.45 if (day % 365.25) < 100 or (day % 365.25) > 300 else 0.85

    _year_of_looks(state, forest, range(0, 520, 5), usable)
    cut = _indices(0.85, nbr=0.45)
    cut[:4, NDVI], cut[:4, NBR] = 0.4, 0.02
    first_year = ChangeState.empty(C)  # the same cell seen only since January
    _year_of_looks(first_year, forest, range(0, 155, 5), usable)
    expected = _indices(0.85, nbr=0.45)
    early = evidence(first_year, cut, expected, usable, 155.0)
    assert early.novelty[0, 0] < 0.1  # its first June: the winter excuses the cut
    late = evidence(state, cut, expected, usable, 520.0)  # its second June (day 155 + 365)
    assert late.onset(0.25, 0.2, 0.1).tolist() == [i < 4 for i in range(C)]
    assert np.isclose(late.novelty[0, 0], early.novelty[0, 0] + 0.1, atol=0.01)  # SEASON_MARGIN


def test_a_harvest_alerted_in_its_first_year_is_the_fields_season_the_next():
    """A field harvested each July: the first year's harvest is new to it (an alert, which the
    all-time envelope never takes in); the second July's is a state of its own season."""
    state = ChangeState.empty(C)

    def field(day: float) -> float:
        return 0.25 if 185 <= (day % 365.25) <= 240 else 0.8

    for day in range(0, 550, 5):
        look = _indices(field(day), nbr=field(day) - 0.4)
        harvested = 185 <= day % 365.25 <= 240
        normal = np.full(C, not harvested)  # the first harvest was alerted on
        fold(state, look, np.ones(C, bool), normal, float(day))
    harvest = _indices(0.25, nbr=-0.15)
    ev = evidence(state, harvest, _indices(0.8, nbr=0.4), np.ones(C, bool), 550.0 + 5)
    assert (-0.25 - state.envelope[:, 0] > 0.3).all()  # the all-time envelope never saw it ...
    assert not ev.onset(0.25, 0.2, 0.1).any()  # ... but last July did


def _seasonal(cells: int) -> np.ndarray:
    return np.ones(cells, bool)  # the baseline itself needs a year: see the tests below


def _gradual_run(change_from: int, change) -> tuple[ChangeState, list[int]]:
    """A year of steady looks, then cells 0-3 change from day ``change_from`` (``change(day)``
    gives their NDVI); returns the state and the days a gradual alert was raised."""
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)
    quiet = np.zeros(C, bool)
    raised_on = []
    for day in range(0, 800, 5):
        look = _indices(0.8)
        look[:, NDVI] += np.float32(0.005) * np.cos(np.arange(C) * 3.0 + day)  # a little noise
        if day >= change_from:
            look[:4, NDVI] = change(day)
        raised, _ = gradual_step(state, look, usable, _seasonal(C), quiet, float(day), 0.1, 0.08)
        fold(state, look, usable, usable, float(day))
        if raised.any():
            assert raised.tolist() == [i < 4 for i in range(C)]
            raised_on.append(day)
    return state, raised_on


def test_the_gradual_test_raises_a_decline_and_dates_it_from_its_start():
    # cells 0-3 brown by 0.01 a look from day 500 (a year and more of history behind them)
    state, raised_on = _gradual_run(500, lambda day: max(0.4, 0.8 - 0.01 * (day - 495) / 5))
    assert len(raised_on) == 1 and 530 <= raised_on[0] <= 600
    # dated from the looks its decline began (the trend leaves noise level within two looks)
    assert (np.abs(state.gradual_onset[:4] - 500.0) <= 10).all()


def test_a_step_then_flat_is_not_gradual():
    """A harvest or a mowing: one step down, then flat or regrowing."""
    state, raised_on = _gradual_run(500, lambda day: 0.4)
    assert raised_on == []
    assert (state.trend[:4] < 0.1).all()


def test_no_gradual_alert_before_a_year_of_looks():
    """The baseline is the same time last year: a decline in the first year is not judged."""
    state, raised_on = _gradual_run(100, lambda day: max(0.4, 0.8 - 0.01 * (day - 95) / 5))
    assert all(day >= 365 for day in raised_on)


def test_an_ambiguous_look_neither_confirms_nor_retracts_and_the_next_decides():
    def fresh() -> AlertState:
        alerts = AlertState.empty(1)
        idx = np.zeros((1, K), np.float32)
        advance(alerts, np.array([True]), np.array([True]), np.zeros(1, np.int8), idx, idx, 5.0,
                2, 0.15, np.array([1.0]))  # fmt: skip
        assert alerts.status[0] == AlertStatus.PROVISIONAL
        return alerts

    def look(alerts: AlertState, progress: float) -> str:
        idx = np.zeros((1, K), np.float32)
        advance(alerts, np.array([True]), np.array([False]), np.zeros(1, np.int8), idx, idx,
                10.0, 2, 0.15, np.array([progress]))  # fmt: skip
        return AlertStatus(int(alerts.status[0])).label

    alerts = fresh()
    assert look(alerts, 0.45) == "provisional"  # ambiguous: held
    assert look(alerts, 0.9) == "confirmed"  # the third look persists: confirmed
    alerts = fresh()
    assert look(alerts, 0.45) == "provisional"
    assert look(alerts, 0.1) == "retracted"  # the third look is back: retracted
    alerts = fresh()
    assert look(alerts, 0.45) == "provisional"
    assert look(alerts, 0.45) == "retracted"  # two ambiguous looks in a row: not a change
    alerts = fresh()
    assert look(alerts, 0.1) == "retracted"  # back at once (haze, a missed cloud)


def _run(state, looks, p, start=0.0):
    """Feed (ndvi per cell, nbr per cell, mndwi per cell) looks of an otherwise steady tile."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (*SHAPE, 16)).astype(np.float32)
    clear = np.ones(SHAPE, np.float32)
    snow = np.zeros(SHAPE, np.float32)
    out = []
    for t, (ndvi, nbr, mndwi) in enumerate(looks):
        idx = np.full((C, K), 0.1, np.float32)
        idx[:, NDVI], idx[:, NBR], idx[:, MNDWI] = ndvi, nbr, mndwi
        emb = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
        out.append(update(state, emb, clear, snow, idx.reshape(*SHAPE, K), start + 5.0 * t, p))
    return out


def test_update_reports_a_slow_decline_as_gradual_rows_and_never_sudden():
    p = StatsConfig(gradual_threshold=0.12, gradual_min_loss=0.12)
    state = TileState.empty(*SHAPE, 16)
    doy = np.arange(146) * 5.0
    season = 0.55 + 0.25 * np.sin(2 * np.pi * (doy - 100) / 365.25)
    looks = []
    for t, s in enumerate(season):
        ndvi = np.full(C, s, np.float32) + np.float32(0.005) * np.cos(np.arange(C) + t)
        if t >= 100:  # year 2: cells 0-2 brown by 0.008 a look, to 0.3 below their season
            ndvi[:3] -= min(0.3, 0.008 * (t - 99))
        looks.append((ndvi, ndvi - 0.3, np.full(C, -0.5, np.float32)))
    results = _run(state, looks, p)
    kinds = [
        (int(c), k, s) for r in results for c, k, s in zip(r.rows, r.kinds, r.status, strict=True)
    ]
    assert not [k for k in kinds if k[1] == "sudden"]  # no sudden row anywhere
    gradual = {c for c, k, s in kinds if k == "gradual" and s == "confirmed"}
    assert gradual == {0, 1, 2}
    day_of_start = 100 * 5.0
    assert np.all(np.abs(state.change.gradual_onset[:3] - day_of_start) <= 30)


def test_update_confirms_a_flood_labels_it_water_gain_while_it_lasts_then_recovers():
    p = StatsConfig()
    state = TileState.empty(*SHAPE, 16)
    green = (np.full(C, 0.8, np.float32), np.full(C, 0.5, np.float32), np.full(C, -0.6, np.float32))
    flood = [a.copy() for a in green]
    # shallow water over the field: MNDWI up by less than a sure flood look's (stats.py)
    flood[0][5], flood[1][5], flood[2][5] = -0.3, 0.5, -0.11
    results = _run(state, [green] * 12 + [flood] * 4 + [green] * 3, p)
    on_cell = [(r.status[list(r.rows).index(5)], r.labels[list(r.rows).index(5)])
               for r in results if 5 in r.rows]  # fmt: skip
    assert on_cell[0] == ("provisional", "water_gain")
    assert on_cell[1] == ("confirmed", "water_gain")
    assert all(label == "water_gain" for status, label in on_cell if status == "confirmed")
    assert on_cell[-1][0] == "recovered"
    assert all(set(r.rows.tolist()) <= {5} for r in results)  # no other cell has a row


def test_open_water_seen_clear_once_is_confirmed_on_that_look_and_recovers_once_drained():
    """A flood that drains before the next clear look: sure water confirms on its own look;
    a weaker rise of MNDWI on another cell waits for a second look (and is retracted)."""
    p = StatsConfig()
    state = TileState.empty(*SHAPE, 16)
    green = (np.full(C, 0.8, np.float32), np.full(C, 0.5, np.float32), np.full(C, -0.6, np.float32))
    flood = [a.copy() for a in green]
    flood[0][5], flood[1][5], flood[2][5] = -0.3, 0.5, 0.7  # open water
    flood[0][9], flood[1][9], flood[2][9] = -0.3, 0.5, -0.11  # water under vegetation
    results = _run(state, [green] * 12 + [flood] + [green] * 3, p)
    status = {
        cell: [r.status[list(r.rows).index(cell)] for r in results if cell in r.rows]
        for cell in (5, 9)
    }
    assert status[5] == ["confirmed", "recovered"]
    assert status[9] == ["provisional", "retracted"]
    assert state.alerts.confirmed_day[5] == 12 * 5.0  # the flood's own look


def test_a_smaller_rise_of_mndwi_opens_an_alert_on_a_bare_surface_but_not_on_vegetation():
    """A building site on a field already bare moves MNDWI by ~0.2 and NDVI hardly at all;
    the same rise over green vegetation (haze brightening the green band) is not an onset."""
    state = ChangeState.empty(C)
    usable = np.ones(C, bool)
    base = _indices(0.8, mndwi=-0.5)
    base[:4, NDVI] = 0.15  # four bare fields
    for day in range(0, 60, 5):
        fold(state, base, usable, usable, float(day))
    now = base.copy()
    now[[0, 1, 8, 9], MNDWI] = -0.3  # +0.2 on two bare cells and two green ones
    ev = evidence(state, now, base, usable, 60.0)
    assert ev.onset(0.25, 0.2, 0.1).tolist() == [i in (0, 1) for i in range(C)]
    stronger = base.copy()
    stronger[[0, 8], MNDWI] = -0.2  # +0.3: past the full departure on either surface
    ev = evidence(state, stronger, base, usable, 60.0)
    assert ev.onset(0.25, 0.2, 0.1).tolist() == [i in (0, 8) for i in range(C)]


def test_a_step_back_to_a_state_the_cell_has_had_opens_an_alert_only_with_its_embedding():
    """A forest felled in its first spring goes back to what its leafless winter showed (no
    novelty on the indices): the embedding, far out of its history, opens the alert; the same
    indices with a steady embedding, or on a cell already browning (a ripening crop), do not."""
    p = StatsConfig()
    state = TileState.empty(*SHAPE, 16)
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, (*SHAPE, 16)).astype(np.float32)
    clear, snow = np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    ndvi_of = [0.4] * 6 + [0.5, 0.6, 0.7] + [0.8] * 12 + [None]
    results = []
    for t, ndvi in enumerate(ndvi_of):
        v = np.full(C, 0.8 if ndvi is None else ndvi, np.float32)
        emb = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
        if t == len(ndvi_of) - 2:
            v[1] = 0.72  # cell 1 browns a look before its step (a crop ripening)
        if ndvi is None:  # the step: cells 0-2 back to just past their winter's NDVI
            v[:3] = 0.38
            emb.reshape(C, 16)[:2] += 3.0  # cells 0 and 1 look like nothing they have been
        idx = np.full((C, K), 0.1, np.float32)
        idx[:, NDVI], idx[:, NBR], idx[:, MNDWI] = v, v - 0.3, -0.5
        results.append(update(state, emb, clear, snow, idx.reshape(*SHAPE, K), 5.0 * t, p))
    assert not any(r.rows.size for r in results[:-1])
    last = results[-1]
    assert last.rows.tolist() == [0]
    assert last.status.tolist() == ["provisional"]
    assert last.score[1] > 9.0 and last.score[2] < 2.5  # cell 1 was far out too: excused


def test_a_checkpoint_keeps_the_change_memories_and_an_older_one_starts_them_empty(tmp_path):
    p = StatsConfig()
    state = TileState.empty(*SHAPE, 16)
    green = (np.full(C, 0.8, np.float32), np.full(C, 0.5, np.float32), np.full(C, -0.6, np.float32))
    _run(state, [green] * 8, p)
    state.save(tmp_path / "s.npz")
    back = TileState.load(tmp_path / "s.npz")
    assert np.array_equal(back.change.last, state.change.last)
    assert np.array_equal(back.change.envelope, state.change.envelope, equal_nan=True)
    older = {k: v for k, v in np.load(tmp_path / "s.npz").items() if not k.startswith("change_")}
    older = {k: v for k, v in older.items() if k not in ("alert_axis", "alert_magnitude",
                                                         "alert_pending")}  # fmt: skip
    np.savez(tmp_path / "old.npz", **older)
    old = TileState.load(tmp_path / "old.npz", blocks_at=str(tmp_path / "s.npz"))
    assert np.isnan(old.change.last).all() and (old.alerts.axis == -1).all()
    _run(old, [green] * 2, p, start=40.0)  # and it goes on working
    assert np.isfinite(old.change.last).all()
