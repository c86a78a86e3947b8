"""Precision and recall of anomaly cells against a ground-truth GeoParquet of event cells.

A truth row is one event cell (tile, cell_y, cell_x) with a [start, end] window. A predicted
cell is any (tile, cell_y, cell_x) with at least one anomalous row (status provisional or
confirmed; rows of alerts that ended are not anomalies). A truth cell is found if it
has an anomaly dated inside its window; a predicted cell is correct if it is a truth cell with an
anomaly inside that window. Precision = correct / predicted cells, recall = found / truth cells.
The confirmed alerts' accuracy, the scores users compare with: ``alert_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from ..outputs.sink import read_anomalies
from .replay import Replay


@dataclass(frozen=True)
class Evaluation:
    truth_cells: int
    predicted_cells: int
    true_positive_cells: int
    found_truth_cells: int
    label_agreement: float
    per_event: dict[str, float]

    @property
    def precision(self) -> float:
        return self.true_positive_cells / self.predicted_cells if self.predicted_cells else 0.0

    @property
    def recall(self) -> float:
        return self.found_truth_cells / self.truth_cells if self.truth_cells else 0.0

    def lines(self) -> list[str]:
        out = [
            f"precision {self.precision:.2f} ({self.true_positive_cells}/{self.predicted_cells} "
            f"anomalous cells are planted event cells, in their time window)",
            f"recall    {self.recall:.2f} ({self.found_truth_cells}/{self.truth_cells} event cells found)",
            f"labels    {self.label_agreement:.2f} of found event cells carry the expected label",
        ]
        out += [f"  {name}: recall {value:.2f}" for name, value in self.per_event.items()]
        return out


def evaluate(anomalies_dir: str | Path, truth_path: str | Path) -> Evaluation:
    truth = gpd.read_parquet(truth_path)
    pred = pd.DataFrame(read_anomalies(anomalies_dir).drop(columns="geometry"))
    if "status" in pred:
        pred = pred[pred["status"].isin(["provisional", "confirmed"])]
    key = ["tile", "cell_y", "cell_x"]
    if pred.empty:
        pred = pd.DataFrame({"tile": [], "cell_y": [], "cell_x": [], "datetime": [], "label": []})
    pred = pred.assign(tile=pred["mgrs_tile"].astype(str)) if "mgrs_tile" in pred else pred
    pred["cell_y"] = pred["cell_y"].astype(int)
    pred["cell_x"] = pred["cell_x"].astype(int)
    t = pd.DataFrame(truth.drop(columns="geometry"))
    joined = pred.merge(t, on=key, how="inner", suffixes=("", "_truth"))
    in_window = joined[
        (joined["datetime"] >= joined["start"]) & (joined["datetime"] <= joined["end"])
    ]
    hits = in_window.drop_duplicates(key)
    found = set(map(tuple, hits[key].to_numpy().tolist()))
    predicted = set(map(tuple, pred[key].to_numpy().tolist()))
    first = in_window.sort_values("datetime").drop_duplicates(key)
    labels_ok = float((first["label"] == first["label_truth"]).mean()) if len(first) else 0.0
    per_event = {}
    for name, group in t.groupby("event"):
        cells = set(map(tuple, group[key].to_numpy().tolist()))
        per_event[str(name)] = len(cells & found) / len(cells)
    return Evaluation(
        truth_cells=len(t.drop_duplicates(key)),
        predicted_cells=len(predicted),
        true_positive_cells=len(found & predicted),
        found_truth_cells=len(found),
        label_agreement=labels_ok,
        per_event=per_event,
    )


# ------------------------------------------------------------------ scenario metrics
#
# On the scenario set (harness/scenarios.py) a detector is scored by its *confirmed* alerts:
# - an event cell is found when its alert is confirmed inside the event's truth window, which
#   for a cell under a cloudy season reaches at least to its WINDOW_CLEAR_LOOKS-th clear look
#   after the event (a detector cannot confirm what it has not seen; the delay reports it);
# - a false cell is a clean cell (no event, no gradual change) whose alert is ever confirmed;
# - per event type, precision = found / (found + false cells), recall = found / event cells;
# - delay: the clear looks of the cell from the event's start to the confirming look;
# - false looks: anomalous looks on clean cells per scored clean cell-look (the per-acquisition
#   false-positive rate, whether or not the alert is later confirmed);
# - gradual cells alerted: cells of a slow change (a drought) with a confirmed sudden alert.


WINDOW_CLEAR_LOOKS = 4


@dataclass(frozen=True)
class EventScore:
    event: str
    cells: int
    found: int
    false_cells: int
    delay_looks: float  # median over found cells (NaN: none found)
    label_agreement: float  # share of found cells whose alert carries the event's label

    @property
    def precision(self) -> float:
        d = self.found + self.false_cells
        return self.found / d if d else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.cells if self.cells else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(frozen=True)
class DetectorScore:
    scenario: str
    detector: str
    events: dict[str, EventScore]
    false_cells: int
    false_look_rate: float  # anomalous clean cell-looks / scored clean cell-looks
    clean_looks: int
    gradual_cells: int
    gradual_alerted: int
    label_agreement: float  # over every found event cell


def score_replay(replay: Replay, truth: pd.DataFrame, scenario: str) -> DetectorScore:
    """Score one detector's replay of one tile against the scenario's truth rows."""
    from ..detection.alerts import AlertStatus
    from ..detection.labels import LABELS

    ny, nx = replay.shape
    rows = truth[truth["tile"] == replay.tile]
    flat = (rows["cell_y"].to_numpy() * nx + rows["cell_x"].to_numpy()).astype(int)
    start = rows["start"].map(lambda t: t.timestamp() / 86400.0).to_numpy()
    end = rows["end"].map(lambda t: t.timestamp() / 86400.0).to_numpy()
    confirmed = replay.status == AlertStatus.CONFIRMED
    newly = confirmed.copy()
    newly[1:] &= ~confirmed[:-1]
    clean = np.ones(ny * nx, bool)
    clean[flat] = False
    false_cells = int(newly[:, clean].any(axis=0).sum())
    looks = int(replay.scored[:, clean].sum())
    false_looks = int((replay.anomaly & replay.scored)[:, clean].sum())

    per: dict[str, list[tuple[bool, float, bool]]] = {}
    gradual = rows["kind"].to_numpy() == "gradual" if "kind" in rows else np.zeros(len(rows), bool)
    gradual_alerted = 0
    for i, cell in enumerate(flat):
        after = np.flatnonzero(replay.scored[:, cell] & (replay.days >= start[i]))
        until = end[i]
        if after.size >= WINDOW_CLEAR_LOOKS:
            until = max(until, replay.days[after[WINDOW_CLEAR_LOOKS - 1]])
        inside = (replay.days >= start[i]) & (replay.days <= until)
        hits = np.flatnonzero(newly[:, cell] & inside)
        if gradual[i]:
            gradual_alerted += int(newly[:, cell].any())
            continue
        if hits.size:
            t = hits[0]
            delay = float((replay.scored[: t + 1, cell] & inside[: t + 1]).sum())
            ok = LABELS[replay.label[t, cell]] == rows["label"].iloc[i]
            per.setdefault(rows["event"].iloc[i], []).append((True, delay, ok))
        else:
            per.setdefault(rows["event"].iloc[i], []).append((False, np.nan, False))
    events = {}
    for name, found in sorted(per.items()):
        hit = [f for f in found if f[0]]
        events[name] = EventScore(
            name,
            len(found),
            len(hit),
            false_cells,
            float(np.median([f[1] for f in hit])) if hit else float("nan"),
            float(np.mean([f[2] for f in hit])) if hit else 0.0,
        )
    all_hits = [f for found in per.values() for f in found if f[0]]
    return DetectorScore(
        scenario,
        replay.detector,
        events,
        false_cells,
        false_looks / looks if looks else 0.0,
        looks,
        int(gradual.sum()),
        gradual_alerted,
        float(np.mean([f[2] for f in all_hits])) if all_hits else 0.0,
    )
