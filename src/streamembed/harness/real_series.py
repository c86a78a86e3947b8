"""The detector on real imagery: eo-learn's 68-date real NDVI series of a Slovenian patch
(shared/data/s2) through the configured detector's index half and the alert lifecycle, its
plot, and its section of docs/evaluation.md. No known event: what it measures is how quiet the
detector stays on real farmland with clouds and winters.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config


@dataclass(frozen=True)
class RealSeries:
    """The index detector on eo-learn's 68-date real NDVI series (shared/data/s2)."""

    days: np.ndarray  # (T,)
    ndvi: np.ndarray  # (T, C) per-cell NDVI over clear pixels (NaN: no clear look)
    expected: np.ndarray  # (T, C) the model's NDVI expectation before each look
    scored: np.ndarray  # (T, C)
    anomaly: np.ndarray  # (T, C)
    status: np.ndarray  # (T, C) int8 AlertStatus after each look
    cell_px: int
    gradual: np.ndarray  # (T, C) bool: a gradual alert stands after the look


def run_real_series(folder: Path, cfg: Config, cell_px: int = 10) -> RealSeries:
    """Cells of ``cell_px`` pixels (100 m) of the real patch through the configured detector's
    index half (the seasonal model, the sudden-change rule, the gradual test) and the alert
    lifecycle, masked by its s2cloudless cloud mask (CLM).

    Only NDVI exists for all 68 dates (the 13-band cube is not in the snapshot), so the other
    indices are held constant: what is tested is the NDVI seasonal expectation, the z-score,
    the masks and the lifecycle on a real farmland series with clouds and winters.
    """
    import json

    from ..detection.alerts import AlertState
    from ..detection.change import ChangeState, Gradual, evidence
    from ..detection.seasonal import IndexModel, index_anomalies, index_scores
    from ..detection.stats import advance_cells
    from ..indices import INDEX_NAMES

    ndvi_px = np.load(folder / "NDVI.npy")[..., 0]
    cloud = np.load(folder / "CLM.npy")[..., 0].astype(bool)
    stamps = json.loads((folder / "timestamps.json").read_text())
    days = np.array([dt.datetime.fromisoformat(s).timestamp() / 86400.0 for s in stamps])
    t, h, w = ndvi_px.shape
    ny, nx = h // cell_px, w // cell_px

    def cells(a: np.ndarray) -> np.ndarray:
        return a[:, : ny * cell_px, : nx * cell_px].reshape(t, ny, cell_px, nx, cell_px)

    clear = cells(~cloud).mean(axis=(2, 4)).reshape(t, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (cells(np.where(cloud, 0.0, ndvi_px)).sum(axis=(2, 4)) / cells(~cloud).sum(
            axis=(2, 4)
        )).reshape(t, -1)  # fmt: skip
    c = ny * nx
    k_ndvi = INDEX_NAMES.index("ndvi")
    model, alerts, memory = IndexModel.empty(c), AlertState.empty(c), ChangeState.empty(c)
    p = cfg.stats
    out_expected = np.full((t, c), np.nan)
    scored = np.zeros((t, c), bool)
    anomaly = np.zeros((t, c), bool)
    status = np.zeros((t, c), np.int8)
    gradual = np.zeros((t, c), bool)
    for i in range(t):
        idx = np.zeros((c, len(INDEX_NAMES)), np.float32)
        idx[:, k_ndvi] = ndvi[i]
        ok = (clear[i] >= p.min_clear) & np.isfinite(ndvi[i])
        sc = ok & (model.n >= p.min_obs)
        z, expected = index_scores(model, idx, ok, days[i], p.half_life_days, p.min_obs)
        change = evidence(memory, idx, expected, ok, float(days[i]))
        if p.detector == "index":
            onset, track = index_anomalies(z, p.index_threshold) & sc, False
        else:  # the index half of the default detector (no embeddings exist for this series)
            onset = change.onset(p.min_index_change, p.min_step, p.min_novelty) & sc
            track = True
        look = advance_cells(alerts, memory, model.seasonal(), idx, expected, change, onset, sc,
                             ok, days[i], p, track)  # fmt: skip
        out_expected[i] = expected[:, k_ndvi]
        scored[i], anomaly[i], status[i] = sc, look.anomalous, alerts.status
        gradual[i] = memory.gradual == Gradual.ACTIVE
    return RealSeries(days, ndvi, out_expected, scored, anomaly, status, cell_px, gradual)


def render_real_series(series: RealSeries, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..detection.alerts import AlertStatus

    when = np.array([dt.datetime.fromtimestamp(d * 86400.0, dt.timezone.utc) for d in series.days])
    fig, ax = plt.subplots(figsize=(8, 3.2))
    alerted = np.flatnonzero((series.status == AlertStatus.CONFIRMED).any(axis=0))
    quiet = [i for i in range(series.ndvi.shape[1]) if i not in set(alerted)][:12]
    for i in quiet:
        ok = np.isfinite(series.ndvi[:, i])
        ax.plot(when[ok], series.ndvi[ok, i], color="0.75", lw=0.8)
    for i in alerted[:6]:
        ok = np.isfinite(series.ndvi[:, i])
        ax.plot(when[ok], series.ndvi[ok, i], lw=1.2, label=f"cell {i} (confirmed alert)")
        hit = series.anomaly[:, i]
        ax.scatter(when[hit], series.ndvi[hit, i], marker="x", color="k", zorder=3)
    ax.set_ylabel("NDVI (clear pixels of a 100 m cell)")
    ax.set_title("eo-learn Slovenia patch, 68 real dates: grey = cells without a confirmed alert",
                 fontsize=9)  # fmt: skip
    if len(alerted):
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def real_lines(real: RealSeries | None, png: str | None) -> list[str]:
    from ..detection.alerts import AlertStatus

    head = ["## Real imagery", ""]
    l1c = (
        "The five real L1C scenes of `shared/data/s2/eolearn_slovenia_2015_2017` (13 bands, "
        "July-September 2015) go through the whole pipeline in `tests/test_real_scenes.py` and "
        "`docs/real_scenes.py`. They raise no alert, and cannot: five looks are fewer than "
        "`stats.min_obs` (6), so no cell of them is scored yet."
    )
    if real is None:
        return [*head, l1c, "", "The 68-date real NDVI series was not found (../shared).", ""]
    confirmed = (real.status == AlertStatus.CONFIRMED).any(axis=0)
    retracted = (real.status == AlertStatus.RETRACTED).any(axis=0)
    lines = [
        *head,
        l1c,
        "",
        f"The 68 real dates of the same patch (2015-07 to 2017-12, NDVI and s2cloudless cloud "
        f"mask; no known event) go through the configured detector's index half (the seasonal "
        f"expectation, the sudden-change rule, the gradual test; no embeddings exist for this "
        f"series) and the alert lifecycle in {real.ndvi.shape[1]} cells of {real.cell_px * 10} "
        f"m: {int(real.scored.sum())} scored clear looks, {int(real.anomaly.sum())} anomalous "
        f"looks, **{int(confirmed.sum())} confirmed alerts**, "
        f"{int(real.gradual.any(axis=0).sum())} gradual alerts; {int(retracted.sum())} cells "
        "had a provisional alert the next clear look retracted. Only NDVI exists for every date "
        "(the 13-band cube is not in the snapshot); it tests the seasonal expectation, the "
        "masks, the lifecycle and the gradual test on real farmland with clouds and winters.",
        "",
    ]
    if png:
        lines += [f"![real NDVI series]({png})", ""]
    if confirmed.any():
        lines += [
            "The confirmed alerts are on cells whose NDVI fell sharply between two clear "
            "looks (harvest or mowing of a field): real, sudden vegetation loss that a "
            "detector of change reports; they are plotted above.",
            "",
        ]
    return lines
