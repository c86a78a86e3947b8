"""Alert accuracy: the scores users compare with (OPERA DIST-ALERT reports user's and producer's
accuracy of its confirmed alerts), of a replay's confirmed alerts on either generator's truth:
- a truth cell at least CORE_FRACTION inside an event is the event's (it must be found); a
  cell partly inside is its edge (found or not, an alert there is not false; its recall is
  reported apart); a cell no truth row touches is clean; an event cell with no scored look
  before the event began (still warming up) is counted apart, not scored;
- a confirmation (a cell's alert turning confirmed) is correct when its cell is the event's or
  its edge, inside the event's window (reaching at least WINDOW_CLEAR_LOOKS clear looks of the
  cell past the start); every other confirmation is false, those on a gradual change included;
- precision (user's accuracy) = correct / all confirmations; recall (producer's accuracy) =
  found event cells / event cells; per event type the same, a confirmation counted for the
  type its label names;
- looks to confirmation: a found cell's clear looks from the event's start to the confirming
  one; an event is *in time* when at least half its cells are found within MAX_LOOKS of them;
- false cell-looks: anomalous looks on clean cells per scored clean cell-look;
- a gradual change is reported when its cells' gradual alert is raised after it begins;
- the lifecycle's rows (retracted, recovered) are counted apart from detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evaluate import WINDOW_CLEAR_LOOKS
from .replay import Replay

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
    from ..detection.labels import LABELS, WATER_GAIN

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
                flood_water += int((replay.label[wet, cell] == WATER_GAIN).sum())
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
