"""The scenario metrics on a hand-made replay: every number is counted by hand here."""

import numpy as np
import pandas as pd
import pytest

from streamembed.detection.alerts import AlertStatus
from streamembed.detection.labels import LABELS
from streamembed.harness.alert_scores import score_alerts
from streamembed.harness.evaluate import WINDOW_CLEAR_LOOKS, score_replay
from streamembed.harness.replay import Replay

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
    from streamembed.harness.evaluation import ScenarioRun
    from streamembed.harness.evaluation_report import render_markdown

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
    from streamembed.harness.evaluation import EncoderRuns

    encoders = [EncoderRuns("resnet18", 512, [run]), EncoderRuns("vit_small_patch16_224", 384,
                                                                  [run])]  # fmt: skip
    md = render_markdown([run], 60.0, "make evaluate", encoders=encoders)
    assert "| haze | resnet18 | 512 | 0.67 / 0 | - | 1 |" in md
    assert "| haze | vit_small_patch16_224 | 384 | 0.67 / 0 | - | 1 |" in md
    # The summary: the held-out half of the second generator first, the tuning half and the
    # set beside it, from the alert scores.
    from streamembed.harness import fieldsim

    later = truth.assign(start=_ts(DAY0 + 5))  # a look before it: the cells are warm
    alerts = score_alerts(rep, later, "x")
    held = ScenarioRun(fieldsim.scenario_name(fieldsim.HELD_OUT_SEEDS[0]), {"embedding+index": rep},
                       {"embedding+index": score}, True, 1.0, True,
                       {"embedding+index": alerts})  # fmt: skip
    tuned = ScenarioRun(fieldsim.scenario_name(fieldsim.TUNING_SEEDS[0]), {"embedding+index": rep},
                        {"embedding+index": score}, True, 1.0, True,
                        {"embedding+index": alerts})  # fmt: skip
    assert held.split == "held-out" and tuned.split == "tuning" and run.split == "set"
    from streamembed.harness.evaluation_report import summary_lines

    lines = summary_lines([held, tuned], "embedding+index")
    text = "\n".join(lines)
    assert text.index("second generator, held-out seeds") < text.index("tuning seeds |")
    # one event (cells 0 and 1) from look 1, cell 0 confirmed at look 3: not in time
    assert "| second generator, held-out seeds | 1 | 0/1 | 0.50 (1/2) | 1.00 (1/1) |" in text
    assert "| flood (1/2 cells) |" in text


def test_alert_accuracy_counts_core_edge_warm_up_gradual_and_lifecycle_apart():
    """score_alerts on a hand-made replay of 3 x 3 cells, 12 looks, every number by hand."""
    t, c = 12, 9
    status = np.zeros((t, c), np.int8)
    anomaly = np.zeros((t, c), bool)
    scored = np.ones((t, c), bool)
    label = np.full((t, c), LABELS.index("unknown"), np.int8)
    water, veg = LABELS.index("water_gain"), LABELS.index("vegetation_loss")
    # cell 0 (flood core, 0.9 inside): anomalous at looks 4 and 5, confirmed at 5, water_gain
    anomaly[4:6, 0] = True
    status[4, 0], status[5:, 0] = AlertStatus.PROVISIONAL, AlertStatus.CONFIRMED
    label[4:, 0] = water
    # cell 1 (flood core): confirmed at look 6 but labelled vegetation_loss, a late look missed
    scored[5, 1] = False
    anomaly[4, 1] = anomaly[6, 1] = True
    status[4:6, 1], status[6:, 1] = AlertStatus.PROVISIONAL, AlertStatus.CONFIRMED
    label[4:, 1] = veg
    # cell 2 (flood edge, 0.3 inside): nothing, which is no fault
    # cell 3 (flood core, but scored only from look 5: not yet warm when it began)
    scored[:5, 3] = False
    # cell 4 (clean): a provisional alert retracted, and one anomalous look: a false look
    anomaly[8, 4] = True
    status[8, 4], status[9:, 4] = AlertStatus.PROVISIONAL, AlertStatus.RETRACTED
    # cell 5 (clean): confirmed at look 10: a false confirmation
    status[9, 5], status[10:, 5] = AlertStatus.PROVISIONAL, AlertStatus.CONFIRMED
    label[9:, 5] = veg
    # cell 8 (decline core): a gradual alert from look 9, and no sudden one
    gradual = np.zeros((t, c), bool)
    gradual[9:, 8] = True
    # cell 0 recovers at look 11
    status[11, 0] = AlertStatus.RECOVERED
    truth = pd.DataFrame(
        {
            "tile": "33UWP",
            "cell_y": [0, 0, 0, 1, 2],
            "cell_x": [0, 1, 2, 0, 2],
            "fraction": [0.9, 0.6, 0.3, 1.0, 0.8],
            "event": ["flood"] * 4 + ["decline"],
            "event_id": ["flood-0"] * 4 + ["decline-0"],
            "label": ["water_gain"] * 4 + ["gradual"],
            "kind": ["sudden"] * 4 + ["gradual"],
            "start": [_ts(DAY0 + 20)] * 4 + [_ts(DAY0 + 30)],
            "end": [_ts(DAY0 + 40)] * 4 + [_ts(DAY0 + 60)],
        }
    )
    rep = Replay("33UWP", "embedding+index", (3, 3), [f"a{i}" for i in range(t)],
                 DAY0 + 5.0 * np.arange(t), scored, anomaly, anomaly, status, label,
                 gradual)  # fmt: skip
    s = score_alerts(rep, truth, "hand")
    assert (s.event_cells, s.found_cells, s.unmonitored) == (2, 2, 1)
    assert (s.edge_cells, s.edge_found) == (1, 0)
    assert (s.confirmations, s.correct) == (3, 2) and s.precision == pytest.approx(2 / 3)
    assert s.labelled_right == 1 and s.label_agreement == 0.5
    assert s.per_type["flood"] == (1, 1, 2, 2)  # named water_gain once, right once; 2 of 2
    assert s.per_type["clear-cut"][:2] == (2, 0)  # two vegetation_loss confirmations, both wrong
    (event,) = s.events
    assert (event.cells, event.found, event.looks) == (2, 2, 2.0) and event.in_time
    # the flood lasted looks 4-8: cells 0 and 1 anomalous twice each, cell 0 labelled water_gain
    assert (s.flood_looks, s.flood_looks_water) == (4, 2)
    assert (s.gradual_cells, s.gradual_reported, s.gradual_sudden, s.gradual_false) == (1, 1, 0, 0)
    assert (s.declines, s.declines_reported, s.declines_sudden) == (1, 1, 0)
    before = np.zeros_like(gradual)
    before[2:5, 8] = True  # looks 2-4: days 10-20, before the decline began (day 30)
    early = Replay("33UWP", "embedding+index", (3, 3), rep.acquisition_ids, rep.days, scored,
                   anomaly, anomaly, status, label, before)  # fmt: skip
    assert score_alerts(early, truth, "hand").declines_reported == 0  # raised before it began
    assert (s.false_looks, s.clean_looks) == (1, 4 * t)  # cells 4-7 are clean; cell 4 at look 8
    assert (s.retracted, s.recovered) == (1, 1)


def test_the_replay_matches_written_rows_by_kind_and_status():
    """evaluation._same_rows: sudden rows by their alert status, gradual rows by theirs."""
    import geopandas as gpd

    from streamembed.harness.evaluation import _same_rows

    t, c = 3, 6
    status = np.zeros((t, c), np.int8)
    status[1:, 0] = AlertStatus.PROVISIONAL
    row = np.zeros((t, c), bool)
    row[1, 0] = True
    gradual = np.zeros((t, c), bool)
    gradual[2:, 4] = True
    gradual_row = np.zeros((t, c), bool)
    gradual_row[2, 4] = True
    label = np.zeros((t, c), np.int8)
    rep = Replay("33UWP", "embedding+index", (2, 3), ["a0", "a1", "a2"], DAY0 + np.arange(t),
                 np.ones((t, c), bool), row, row, status, label, gradual, gradual_row)  # fmt: skip
    written = gpd.GeoDataFrame({
        "acquisition_id": ["a1", "a2"], "cell_y": [0, 1], "cell_x": [0, 1],
        "kind": ["sudden", "gradual"], "status": ["provisional", "confirmed"],
    })  # fmt: skip
    assert _same_rows(rep, written)
    assert not _same_rows(rep, written.assign(kind=["sudden", "sudden"]))
    # files from before gradual alerts have no kind: their rows are sudden
    assert not _same_rows(rep, written.drop(columns="kind"))
