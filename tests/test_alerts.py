"""The alert lifecycle: provisional -> confirmed -> recovered, retractions, cloud gaps."""

import numpy as np
import pytest

from streamembed.config import StatsConfig
from streamembed.detection.alerts import AlertState, AlertStatus, advance
from streamembed.detection.labels import LABELS, UNKNOWN
from streamembed.detection.stats import TileState, update
from streamembed.indices import INDEX_NAMES

K = len(INDEX_NAMES)
GRASS = np.array([0.55, -0.56, 0.30, -0.13, -0.46, 0.09], np.float32)
FLOOD = np.array([-0.44, 0.48, 0.63, -0.56, 0.82, 0.09], np.float32)
WATER_GAIN = np.int8(LABELS.index("water_gain"))


class Cell:
    """One cell's looks through ``advance``: what it returns and the state after each look."""

    def __init__(self, confirm_looks: int = 2, recover: float = 0.15):
        self.alerts = AlertState.empty(1)
        self.confirm_looks, self.recover = confirm_looks, recover
        self.day = 0.0

    def look(
        self,
        *,
        clear: bool = True,
        anomalous: bool = False,
        now: np.ndarray = GRASS,
        expected: np.ndarray = GRASS,
        label: np.int8 = WATER_GAIN,
        progress: float | None = None,
    ) -> tuple[bool, str]:
        self.day += 5.0
        row, _ = advance(
            self.alerts,
            np.array([clear]),
            np.array([anomalous]),
            np.array([label], np.int8),
            now[None],
            expected[None],
            self.day,
            self.confirm_looks,
            self.recover,
            None if progress is None else np.array([progress]),
        )
        return bool(row[0]), AlertStatus(int(self.alerts.status[0])).label


def test_two_agreeing_looks_confirm_and_the_return_recovers():
    cell = Cell()
    assert cell.look() == (False, "none")
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")
    assert cell.alerts.onset_day[0] == 10.0 and cell.alerts.looks[0] == 1
    assert cell.look(anomalous=True, now=FLOOD, expected=FLOOD) == (True, "confirmed")
    assert cell.alerts.confirmed_day[0] == 15.0
    # Still flooded but no longer anomalous (the expectation learnt it): stays confirmed.
    assert cell.look(now=FLOOD, expected=FLOOD) == (False, "confirmed")
    # Back to grass, anomalous against the learnt flood: that is the recovery.
    assert cell.look(anomalous=True, now=GRASS + 0.05, expected=FLOOD) == (True, "recovered")
    assert cell.alerts.label[0] == WATER_GAIN


@pytest.mark.parametrize("gap", [1, 3, 12])
def test_cloud_gaps_neither_confirm_nor_reset(gap):
    cell = Cell(confirm_looks=3)
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")
    for _ in range(gap):  # clouded looks: not a look of the cell
        assert cell.look(clear=False, anomalous=True, now=FLOOD) == (False, "provisional")
    assert cell.alerts.looks[0] == 1
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")
    for _ in range(gap):
        assert cell.look(clear=False) == (False, "provisional")
    assert cell.look(anomalous=True, now=FLOOD) == (True, "confirmed")
    assert cell.alerts.looks[0] == 3 and cell.alerts.onset_day[0] == 5.0


def test_a_provisional_alert_the_next_clear_look_disagrees_with_is_retracted():
    cell = Cell()
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")
    assert cell.look(clear=False) == (False, "provisional")
    assert cell.look(now=FLOOD) == (True, "retracted")
    assert cell.look() == (False, "retracted")
    # A new anomaly after a retraction is a new alert with its own onset.
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")
    assert cell.alerts.onset_day[0] == cell.day and cell.alerts.looks[0] == 1


def test_a_persistent_change_stays_confirmed_until_the_cell_is_back():
    cell = Cell()
    cell.look(anomalous=True, now=FLOOD)
    cell.look(anomalous=True, now=FLOOD)
    for _ in range(10):
        assert cell.look(now=FLOOD, expected=FLOOD) == (False, "confirmed")
    assert cell.look(now=GRASS - 0.1, expected=FLOOD) == (True, "recovered")
    # A cell that recovered and changes again opens a new alert.
    assert cell.look(anomalous=True, now=FLOOD) == (True, "provisional")


def test_the_first_named_label_is_kept():
    cell = Cell(confirm_looks=3)
    cell.look(anomalous=True, now=FLOOD, label=np.int8(UNKNOWN))
    assert cell.alerts.label[0] == UNKNOWN
    cell.look(anomalous=True, now=FLOOD, label=WATER_GAIN)
    cell.look(anomalous=True, now=FLOOD, label=np.int8(LABELS.index("burn")))
    assert cell.alerts.label[0] == WATER_GAIN


def test_update_rows_carry_the_lifecycle_and_survive_a_checkpoint(tmp_path):
    rng = np.random.default_rng(3)
    p = StatsConfig()
    shape, dim = (6, 6), 32
    state = TileState.empty(*shape, dim)
    base = rng.normal(0, 1, (*shape, dim)).astype(np.float32)
    clear, snow = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    idx = np.broadcast_to(GRASS, (*shape, K)).copy()
    day = 0.0
    for _ in range(12):
        day += 5
        update(state, base + rng.normal(0, 0.05, base.shape).astype(np.float32), clear, snow,
               idx, day, p)  # fmt: skip
    changed = base + rng.normal(0, 0.05, base.shape).astype(np.float32)
    changed[2, 3] += rng.normal(0, 3.0, dim).astype(np.float32)
    flooded = idx.copy()
    flooded[2, 3] = FLOOD
    # shallow water: less of a rise of MNDWI than a sure flood look confirmed at once (stats.py)
    flooded[2, 3, INDEX_NAMES.index("mndwi")] = -0.1
    res = update(state, changed, clear, snow, flooded, day + 5, p)
    assert res.rows.tolist() == [2 * 6 + 3] and res.status.tolist() == ["provisional"]
    assert res.labels.tolist() == ["water_gain"]
    state.save(tmp_path / "s.npz")
    state = TileState.load(tmp_path / "s.npz")
    # A clouded look over the cell: no row, nothing changes.
    cloudy = clear.copy()
    cloudy[1:4, 2:5] = 0.0
    res = update(state, changed, cloudy, snow, flooded, day + 10, p)
    assert 2 * 6 + 3 not in res.rows.tolist()
    res = update(state, changed, clear, snow, flooded, day + 15, p)
    assert res.status[res.rows.tolist().index(2 * 6 + 3)] == "confirmed"


def test_a_checkpoint_from_before_the_lifecycle_loads_with_no_alerts(tmp_path):
    """What the previous version wrote: no alert_* or index_* arrays, an EW index mean."""
    state = TileState.empty(2, 3, 4)
    state.n[:] = 7
    state.last_day[:] = 100.0
    old = {k: v for k, v in state.arrays().items() if not k.startswith(("alert_", "index_"))}
    old["idx_mean"] = np.full((6, K), 0.4, np.float32)
    np.savez(tmp_path / "old.npz", **old)
    back = TileState.load(tmp_path / "old.npz")
    assert (back.alerts.status == 0).all() and back.alerts.status.size == 6
    assert np.allclose(back.index_model.level, 0.4) and (back.index_model.n == 7).all()
    assert not back.index_model.seasonal().any()  # the harmonic starts from this checkpoint on
    # and it goes on working
    update(back, np.zeros((2, 3, 4), np.float32), np.ones((2, 3), np.float32),
           np.zeros((2, 3), np.float32), np.full((2, 3, K), 0.4, np.float32), 105.0,
           StatsConfig())  # fmt: skip
    assert (back.n == 8).all()
