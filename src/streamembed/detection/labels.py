"""Anomaly labels from each cell's own spectral indices: what kind of change an anomaly is.

Pure NumPy; ``stats.update`` labels every anomalous cell and the alert lifecycle keeps the
first named label of each alert.
"""

from __future__ import annotations

import numpy as np

from ..indices import INDEX_NAMES

# Label rules, first match wins; thresholds are on the cell's own clear pixels (current) and on
# the change against its expected state (delta). Each separates the named surface from the
# others it is confused with (tests/test_stats.py runs each rule on the spectra of the surfaces;
# the thresholds were set on the scenario set and the second generator's tuning seeds, see
# docs/evaluation.md):
# - water gain: MNDWI rising sharply to near or above 0 (open water is above 0.3, Xu 2006; a
#   cell half under floodwater is near 0), and dark: water absorbs, where a new built surface
#   that also raises MNDWI is bright;
# - burn: dNBR of 0.27 is the low/moderate severity break (Key & Benson 2006); char is dark
#   (visible brightness under 0.075), where the soil and slash of a clear-cut are brighter;
# - construction (bare gain): concrete and roofs have a flat spectrum, MNDWI near -0.15 where
#   soil and vegetation are below -0.33, so MNDWI rising into (-0.33, 0.2) on a bright surface
#   with little vegetation left is a built surface, not bare soil;
# - vegetation loss: NDVI down by 0.2 or more (harvest-like loss to soil);
# - anything else: unknown.
LABEL_RULES: dict[str, dict[str, float]] = {
    "water_gain": {"min_mndwi": -0.12, "min_d_mndwi": 0.35, "max_brightness": 0.15},
    "burn": {"max_d_nbr": -0.27, "max_nbr": 0.2, "max_brightness": 0.075},
    "bare_gain": {
        "min_mndwi": -0.33, "max_mndwi": 0.2, "min_d_mndwi": 0.1, "max_ndvi": 0.35,
        "min_brightness": 0.1,
    },
    "vegetation_loss": {"max_d_ndvi": -0.2},
}  # fmt: skip
LABELS: tuple[str, ...] = (*LABEL_RULES, "unknown")


UNKNOWN = LABELS.index("unknown")
WATER_GAIN = LABELS.index("water_gain")


def label_index(delta: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Anomaly labels as int8 positions in ``LABELS``, from spectral indices: ``delta``
    (current minus expected) and ``current``, both (cells, len(INDEX_NAMES)); the first
    matching rule of ``LABEL_RULES`` wins."""
    d = {name: delta[:, i] for i, name in enumerate(INDEX_NAMES)}
    c = {name: current[:, i] for i, name in enumerate(INDEX_NAMES)}
    w, b, g = LABEL_RULES["water_gain"], LABEL_RULES["burn"], LABEL_RULES["bare_gain"]
    with np.errstate(invalid="ignore"):  # NaN (no clear pixel, no expectation) matches nothing
        rules = {
            "water_gain": (c["mndwi"] >= w["min_mndwi"])
            & (d["mndwi"] >= w["min_d_mndwi"])
            & (c["brightness"] <= w["max_brightness"]),
            "burn": (d["nbr"] <= b["max_d_nbr"])
            & (c["nbr"] <= b["max_nbr"])
            & (c["brightness"] <= b["max_brightness"]),
            "bare_gain": (c["mndwi"] > g["min_mndwi"])
            & (c["mndwi"] < g["max_mndwi"])
            & (d["mndwi"] >= g["min_d_mndwi"])
            & (c["ndvi"] <= g["max_ndvi"])
            & (c["brightness"] >= g["min_brightness"]),
            "vegetation_loss": d["ndvi"] <= LABEL_RULES["vegetation_loss"]["max_d_ndvi"],
        }
    out = np.full(delta.shape[0], UNKNOWN, np.int8)
    for name in reversed(LABEL_RULES):  # the first rule in LABEL_RULES is written last: it wins
        out[rules[name]] = LABELS.index(name)
    return out


def label_cells(delta: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The same labels by name (object array)."""
    return np.array(LABELS, dtype=object)[label_index(delta, current)]
