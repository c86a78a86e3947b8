"""Precision and recall of anomaly cells against a ground-truth GeoParquet of event cells.

A truth row is one event cell (tile, cell_y, cell_x) with a [start, end] window. A predicted
cell is any (tile, cell_y, cell_x) with at least one anomalous row (status provisional or
confirmed; rows of alerts that ended are not anomalies). A truth cell is found if it
has an anomaly dated inside its window; a predicted cell is correct if it is a truth cell with an
anomaly inside that window. Precision = correct / predicted cells, recall = found / truth cells.
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


# ------------------------------------------------------------------ alert accuracy
#
# The scores users compare with (OPERA DIST-ALERT reports user's and producer's accuracy of its
# confirmed alerts), on either generator's truth:
# - a truth cell at least CORE_FRACTION inside an event is the event's (it must be found); a
#   cell partly inside is its edge (found or not, an alert there is not false; its recall is
#   reported apart); a cell no truth row touches is clean; an event cell with no scored look
#   before the event began (still warming up) is counted apart, not scored;
# - a confirmation (a cell's alert turning confirmed) is correct when its cell is the event's or
#   its edge, inside the event's window (reaching at least WINDOW_CLEAR_LOOKS clear looks of the
#   cell past the start); every other confirmation is false, those on a gradual change included;
# - precision (user's accuracy) = correct / all confirmations; recall (producer's accuracy) =
#   found event cells / event cells; per event type the same, a confirmation counted for the
#   type its label names;
# - looks to confirmation: a found cell's clear looks from the event's start to the confirming
#   one; an event is *in time* when at least half its cells are found within MAX_LOOKS of them;
# - false cell-looks: anomalous looks on clean cells per scored clean cell-look;
# - a gradual change is reported when its cells' gradual alert is raised after it begins;
# - the lifecycle's rows (retracted, recovered) are counted apart from detections.

CORE_FRACTION = 0.5
MAX_LOOKS = 2
LABEL_EVENT = {"water_gain": "flood", "burn": "burn", "vegetation_loss": "clear-cut",
               "bare_gain": "construction"}  # fmt: skip


@dataclass(frozen=True)
class EventOutcome:
    """One planted event: how many of its cells were found, and how fast."""

    event_id: str
    event: str
    start: float  # day number
    cells: int
    found: int
    looks: float  # median looks to confirmation over the found cells (NaN: none)

    @property
    def in_time(self) -> bool:
        return self.cells > 0 and 2 * self.found >= self.cells and self.looks <= MAX_LOOKS


@dataclass(frozen=True)
class AlertScore:
    scenario: str
    detector: str
    events: list[EventOutcome]
    confirmations: int
    correct: int
    event_cells: int
    found_cells: int
    edge_cells: int
    edge_found: int
    unmonitored: int  # event cells with no scored look before the event (still warming up)
    labelled_right: int  # found event cells whose alert carries the event's label
    per_type: dict[str, tuple[int, int, int, int]]  # type: (labelled as it, right, cells, found)
    flood_looks: int  # anomalous looks on flood cells while flooded
    flood_looks_water: int  # ... labelled water_gain
    gradual_cells: int
    gradual_reported: int
    gradual_sudden: int  # gradual cells with a confirmed sudden alert
    gradual_false: int  # cells with a gradual alert that no gradual change touches
    declines: int  # gradual changes (events)
    declines_reported: int  # ... with a gradual alert on at least one of their cells
    declines_sudden: int  # ... with a confirmed sudden alert on any of their cells
    clean_looks: int
    false_looks: int
    retracted: int
    recovered: int

    @property
    def precision(self) -> float:
        return self.correct / self.confirmations if self.confirmations else 1.0

    @property
    def recall(self) -> float:
        return self.found_cells / self.event_cells if self.event_cells else 1.0

    @property
    def label_agreement(self) -> float:
        return self.labelled_right / self.found_cells if self.found_cells else 1.0

    @property
    def false_look_rate(self) -> float:
        return self.false_looks / self.clean_looks if self.clean_looks else 0.0

    def users_accuracy(self, event: str) -> float:
        named, right, _, _ = self.per_type.get(event, (0, 0, 0, 0))
        return right / named if named else float("nan")

    def producers_accuracy(self, event: str) -> float:
        _, _, cells, found = self.per_type.get(event, (0, 0, 0, 0))
        return found / cells if cells else float("nan")


def _day(t: pd.Timestamp) -> float:
    return t.timestamp() / 86400.0


def score_alerts(replay: Replay, truth: pd.DataFrame, scenario: str) -> AlertScore:
    """Score one detector's replay of one tile against either generator's truth rows."""
    from ..detection.alerts import AlertStatus
    from ..detection.labels import LABELS

    ny, nx = replay.shape
    rows = truth[truth["tile"] == replay.tile].reset_index(drop=True)
    if "fraction" not in rows:
        rows = rows.assign(fraction=1.0)
    if "event_id" not in rows:
        rows = rows.assign(event_id=rows["event"] + "@" + rows["start"].astype(str))
    if "kind" not in rows:
        rows = rows.assign(kind="sudden")
    flat = (rows["cell_y"].to_numpy() * nx + rows["cell_x"].to_numpy()).astype(int)
    start = rows["start"].map(_day).to_numpy()
    end = rows["end"].map(_day).to_numpy()
    core = rows["fraction"].to_numpy() >= CORE_FRACTION
    sudden = rows["kind"].to_numpy() == "sudden"
    days = replay.days
    confirmed = replay.status == AlertStatus.CONFIRMED
    newly = confirmed.copy()
    newly[1:] &= ~confirmed[:-1]
    touched = np.zeros(ny * nx, bool)
    touched[flat] = True
    clean = ~touched

    # Each truth row's window: its end, or its cell's WINDOW_CLEAR_LOOKS-th clear look after it.
    until = end.copy()
    for i, cell in enumerate(flat):
        after = np.flatnonzero(replay.scored[:, cell] & (days >= start[i]))
        if after.size >= WINDOW_CLEAR_LOOKS:
            until[i] = max(until[i], days[after[WINDOW_CLEAR_LOOKS - 1]])

    t_idx, c_idx = np.nonzero(newly)
    correct = 0
    per_type: dict[str, list[int]] = {}
    for t, c in zip(t_idx, c_idx, strict=True):
        match = np.flatnonzero((flat == c) & sudden & (start <= days[t]) & (days[t] <= until))
        label = LABELS[replay.label[t, c]]
        named = LABEL_EVENT.get(label)
        if named:
            per_type.setdefault(named, [0, 0, 0, 0])[0] += 1
        if match.size:
            correct += 1
            if named and (rows["label"].to_numpy()[match] == label).any():
                per_type[named][1] += 1

    outcomes = []
    found_cells = labelled_right = 0
    event_cells = edge_cells = edge_found = 0
    flood_looks = flood_water = unmonitored = 0
    water = LABELS.index("water_gain")
    for eid, group in rows[sudden].groupby("event_id", sort=False):
        idx = group.index.to_numpy()
        looks = []
        found_here = counted = 0
        name = str(group["event"].iloc[0])
        for i in idx:
            cell = int(flat[i])
            inside = (days >= start[i]) & (days <= until[i])
            hits = np.flatnonzero(newly[:, cell] & inside)
            if name == "flood" and core[i]:
                wet = inside & (days <= end[i]) & replay.anomaly[:, cell] & replay.scored[:, cell]
                flood_looks += int(wet.sum())
                flood_water += int((replay.label[wet, cell] == water).sum())
            if not replay.scored[:, cell][days < start[i]].any():
                unmonitored += 1  # not yet warm when it began: no detector could tell
                continue
            if not core[i]:
                edge_cells += 1
                edge_found += int(hits.size > 0)
                continue
            event_cells += 1
            counted += 1
            tally = per_type.setdefault(name, [0, 0, 0, 0])
            tally[2] += 1
            if hits.size:
                t = hits[0]
                found_here += 1
                tally[3] += 1
                looks.append(float((replay.scored[: t + 1, cell] & inside[: t + 1]).sum()))
                labelled_right += int(LABELS[replay.label[t, cell]] == group["label"].iloc[0])
        found_cells += found_here
        outcomes.append(EventOutcome(str(eid), name, float(start[idx[0]]), counted, found_here,
                                     float(np.median(looks)) if looks else np.nan))  # fmt: skip

    gradual_rows = ~sudden & core
    gradual_cells = set(flat[gradual_rows].tolist())
    reported = 0
    sudden_on_gradual = 0
    for row in np.flatnonzero(gradual_rows):
        cell = int(flat[row])
        reported += int((replay.gradual[:, cell] & (days >= start[row])).any())
        sudden_on_gradual += int(newly[:, cell].any())
    declines = declines_reported = declines_sudden = 0
    for _, group in rows[gradual_rows].groupby("event_id", sort=False):
        cells = flat[group.index.to_numpy()]
        after = days[:, None] >= start[group.index.to_numpy()][None, :]
        declines += 1
        declines_reported += int((replay.gradual[:, cells] & after).any())
        declines_sudden += int(newly[:, cells].any())
    anywhere_gradual = np.zeros(ny * nx, bool)
    anywhere_gradual[flat[~sudden]] = True
    gradual_false = int((replay.gradual.any(axis=0) & ~anywhere_gradual).sum())
    status = replay.status
    changed = np.ones_like(status, bool)
    changed[1:] = status[1:] != status[:-1]
    return AlertScore(
        scenario=scenario,
        detector=replay.detector,
        events=outcomes,
        confirmations=int(t_idx.size),
        correct=correct,
        event_cells=event_cells,
        found_cells=found_cells,
        edge_cells=edge_cells,
        edge_found=edge_found,
        unmonitored=unmonitored,
        labelled_right=labelled_right,
        per_type={k: (v[0], v[1], v[2], v[3]) for k, v in per_type.items()},
        flood_looks=flood_looks,
        flood_looks_water=flood_water,
        gradual_cells=len(gradual_cells),
        gradual_reported=reported,
        gradual_sudden=sudden_on_gradual,
        gradual_false=gradual_false,
        declines=declines,
        declines_reported=declines_reported,
        declines_sudden=declines_sudden,
        clean_looks=int(replay.scored[:, clean].sum()),
        false_looks=int((replay.anomaly & replay.scored)[:, clean].sum()),
        retracted=int((changed & (status == AlertStatus.RETRACTED)).sum()),
        recovered=int((changed & (status == AlertStatus.RECOVERED)).sum()),
    )
