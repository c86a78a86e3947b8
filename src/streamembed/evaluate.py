"""Precision and recall of anomaly cells against a ground-truth GeoParquet of event cells.

A truth row is one event cell (tile, cell_y, cell_x) with a [start, end] window. A predicted
cell is any (tile, cell_y, cell_x) with at least one anomaly row. A truth cell is found if it
has an anomaly dated inside its window; a predicted cell is correct if it is a truth cell with an
anomaly inside that window. Precision = correct / predicted cells, recall = found / truth cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd

from .sink import read_anomalies


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
