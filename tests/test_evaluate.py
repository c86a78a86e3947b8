"""The scenario metrics on a hand-made replay: every number is counted by hand here."""

import numpy as np
import pandas as pd
import pytest

from streamembed.alerts import AlertStatus
from streamembed.evaluate import WINDOW_CLEAR_LOOKS, score_replay
from streamembed.labels import LABELS
from streamembed.replay import Replay

DAY0 = 19800.0  # day numbers (days since 1970)


def _ts(day: float) -> pd.Timestamp:
    return pd.Timestamp(day * 86400, unit="s", tz="UTC")


def _replay(status, anomaly, scored, label) -> Replay:
    t = status.shape[0]
    return Replay("33UWP", "embedding+index", (2, 3), [f"a{i}" for i in range(t)],
                  DAY0 + 5.0 * np.arange(t), scored, anomaly, anomaly, status, label)  # fmt: skip


def test_found_missed_false_and_gradual_cells_are_counted():
    t, c = 10, 6
    status = np.zeros((t, c), np.int8)
    anomaly = np.zeros((t, c), bool)
    scored = np.ones((t, c), bool)
    label = np.full((t, c), LABELS.index("unknown"), np.int8)
    water = LABELS.index("water_gain")
    # cell 0 (flood): provisional at look 2, confirmed at look 3, labelled water gain
    status[2:, 0] = AlertStatus.PROVISIONAL
    status[3:, 0] = AlertStatus.CONFIRMED
    anomaly[2:4, 0] = True
    label[2:, 0] = water
    scored[2, 0] = False  # look 2 was cloudy for cell 0 after all: the delay counts 1 look
    # cell 1 (flood): a provisional alert, retracted: not found
    status[3, 1], status[4:, 1] = AlertStatus.PROVISIONAL, AlertStatus.RETRACTED
    # cell 3 (clean): two anomalous looks, confirmed: one false cell, two false looks
    anomaly[7:9, 3] = True
    status[7, 3], status[8:, 3] = AlertStatus.PROVISIONAL, AlertStatus.CONFIRMED
    # cell 5 (drought): confirmed: a gradual cell alerted (not a false cell)
    status[6:, 5] = AlertStatus.CONFIRMED
    truth = pd.DataFrame(
        {
            "tile": "33UWP",
            "cell_y": [0, 0, 1],
            "cell_x": [0, 1, 2],
            "event": ["flood", "flood", "drought"],
            "label": ["water_gain", "water_gain", "gradual"],
            "kind": ["sudden", "sudden", "gradual"],
            "start": [_ts(DAY0 + 10), _ts(DAY0 + 10), _ts(DAY0)],
            "end": [_ts(DAY0 + 20), _ts(DAY0 + 20), _ts(DAY0 + 45)],
        }
    )
    s = score_replay(_replay(status, anomaly, scored, label), truth, "test")
    flood = s.events["flood"]
    assert (flood.cells, flood.found, flood.false_cells) == (2, 1, 1)
    assert flood.precision == 0.5 and flood.recall == 0.5 and flood.f1 == pytest.approx(0.5)
    assert flood.delay_looks == 1.0 and flood.label_agreement == 1.0
    assert s.false_cells == 1 and s.clean_looks == 3 * t
    assert s.false_look_rate == pytest.approx(2 / 30)
    assert (s.gradual_cells, s.gradual_alerted) == (1, 1)


def test_a_cloudy_window_reaches_to_the_cells_clear_looks():
    t, c = 12, 6
    status = np.zeros((t, c), np.int8)
    scored = np.zeros((t, c), bool)
    # the event at look 1; cell 0 is clouded until look 8, then clear; confirmed at look 9
    scored[8:, 0] = True
    status[9:, 0] = AlertStatus.CONFIRMED
    truth = pd.DataFrame(
        {"tile": ["33UWP"], "cell_y": [0], "cell_x": [0], "event": ["burn"],
         "label": ["burn"], "kind": ["sudden"], "start": [_ts(DAY0 + 5)],
         "end": [_ts(DAY0 + 15)]}
    )  # fmt: skip
    label = np.zeros((t, c), np.int8)
    s = score_replay(_replay(status, np.zeros((t, c), bool), scored, label), truth, "test")
    assert s.events["burn"].found == 1 and s.events["burn"].delay_looks == 2.0
    assert WINDOW_CLEAR_LOOKS >= 2


def test_the_document_tables_carry_the_scores():
    from streamembed.evaluation import ScenarioRun, render_markdown

    t, c = 10, 6
    status = np.zeros((t, c), np.int8)
    status[3:, 0] = AlertStatus.CONFIRMED
    scored = np.ones((t, c), bool)
    label = np.full((t, c), LABELS.index("water_gain"), np.int8)
    rep = _replay(status, np.zeros((t, c), bool), scored, label)
    truth = pd.DataFrame(
        {"tile": ["33UWP"] * 2, "cell_y": [0, 0], "cell_x": [0, 1], "event": ["flood"] * 2,
         "label": ["water_gain"] * 2, "kind": ["sudden"] * 2, "start": [_ts(DAY0)] * 2,
         "end": [_ts(DAY0 + 30)] * 2}
    )  # fmt: skip
    score = score_replay(rep, truth, "haze")
    run = ScenarioRun("haze", {"embedding+index": rep}, {"embedding+index": score}, True, 1.0, True)
    md = render_markdown([run], 60.0, "make evaluate")
    assert "| haze | embedding+index | 0.67 (1.00/0.50) | - | - | - | 4.0 | 1.00 | 0 |" in md
    assert "| haze | embedding+index | 4.0 / 1.00 | - | - | - |" in md
    assert "haze yes" in md and "reusing" not in md
    assert "## Per encoder" not in md
    # The per-encoder table: mean F1 over the event types found in the truth, false cells.
    from streamembed.evaluation import EncoderRuns

    encoders = [EncoderRuns("resnet18", 512, [run]), EncoderRuns("vit_small_patch16_224", 384,
                                                                  [run])]  # fmt: skip
    md = render_markdown([run], 60.0, "make evaluate", encoders=encoders)
    assert "| haze | resnet18 | 512 | 0.67 / 0 | - | 1 |" in md
    assert "| haze | vit_small_patch16_224 | 384 | 0.67 / 0 | - | 1 |" in md
