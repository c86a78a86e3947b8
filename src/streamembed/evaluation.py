"""``streamembed evaluate --scenarios``: every detector on every synthetic scenario, side by side.

For each scenario (sources/scenarios.py): write its archive once (real COGs + STAC items +
truth), backfill it with the runtime's configuration on one local cluster (the real pipeline:
encoder, Zarr store, statistics actor, GeoParquet), then replay the stored acquisitions
through each detector (replay.py) and score the confirmed alerts (evaluate.score_replay).
The encoding is done once per scenario; the detectors differ only in what they do with it.
``make evaluate`` writes docs/evaluation.md and one map per scenario from this.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np

from .config import Config
from .evaluate import DetectorScore, EventScore, score_replay
from .replay import DETECTORS, Replay, replay_tile
from .sink import read_anomalies
from .sources.scenarios import SCENARIOS, scenario
from .store import EmbeddingStore

EVENT_ORDER = ("flood", "burn", "clear-cut", "construction")


@dataclass(frozen=True)
class ScenarioRun:
    name: str
    replays: dict[str, Replay]
    scores: dict[str, DetectorScore]
    reproduces_backfill: bool  # the configured detector's replay has the backfill's anomalies
    seconds: float
    archive_written: bool  # False: the archive of an earlier run was reused


def _write_archive(args: tuple[str, str, int, int, int]) -> str:
    from .sources.synthetic import generate

    name, out, tile_px, revisit, seed = args
    generate(out, revisit_days=revisit, tile_px=tile_px, seed=seed, scenario=scenario(name))
    (Path(out) / "complete").write_text(dt.datetime.now(dt.timezone.utc).isoformat())
    return name


def write_archives(
    names: Sequence[str], data: Path, tile_px: int, revisit: int, seed: int, workers: int
) -> list[str]:
    """The scenarios' archives that are missing, written side by side (one process each);
    returns the names written."""
    todo = [n for n in names if not (data / n / "complete").exists()]
    if not todo:
        return []
    print(f"writing {len(todo)} scenario archive(s) to {data} …", flush=True)
    jobs = [(n, str(data / n), tile_px, revisit, seed) for n in todo]
    with concurrent.futures.ProcessPoolExecutor(max(1, min(workers, len(jobs)))) as pool:
        for name in pool.map(_write_archive, jobs):
            print(f"  {name}: written", flush=True)
    return todo


def run_scenarios(
    cfg: Config,
    work: Path,
    names: Sequence[str] = tuple(SCENARIOS),
    detectors: Sequence[str] = DETECTORS,
    tile_px: int = 512,
    revisit: int = 5,
    seed: int = 42,
    progress: bool = True,
    runs_dir: str = "runs",
) -> list[ScenarioRun]:
    """Archives, one backfill each, replays and scores; the archives are reused next time."""
    from .cluster import make_client
    from .pipeline import Pipeline

    for n in names:
        scenario(n)  # an unknown name fails here, before anything runs
    data, runs = work / "data", work / runs_dir
    fresh = set(write_archives(names, data, tile_px, revisit, seed, workers=2))
    out: list[ScenarioRun] = []
    with make_client(cfg.cluster) as client:
        for name in names:
            t0 = time.perf_counter()
            run_cfg = cfg.with_overrides(
                **{"source.path": str(data / name / "items"), "output": str(runs / name)}
            )
            # A fresh run each time: a run left by an earlier evaluation would resume with
            # nothing to do, and its embeddings would be another encoder's or runtime's.
            shutil.rmtree(runs / name, ignore_errors=True)
            print(f"{name}: backfill {data / name / 'items'} -> {runs / name}", flush=True)
            pipe = Pipeline(run_cfg, client)
            try:
                pipe.run(progress=progress)
            finally:
                pipe.close()
            seconds = time.perf_counter() - t0
            out.append(_score(name, run_cfg, data / name, detectors, seconds, name in fresh))
            print("  " + _summary(out[-1]), flush=True)
    return out


def _score(
    name: str, cfg: Config, data: Path, detectors: Sequence[str], seconds: float, written: bool
) -> ScenarioRun:
    truth = gpd.read_parquet(data / "truth.parquet")
    store = EmbeddingStore(cfg.layout.store, cfg.store)
    tiles = store.tiles()
    if len(tiles) != 1:  # the scenario set is one tile each (sources/scenarios.py)
        raise ValueError(f"scenario {name}: expected one tile in {store.root}, found {tiles}")
    replays = replay_tile(store, tiles[0], detectors, cfg.stats)
    scores = {det: score_replay(rep, truth, name) for det, rep in replays.items()}
    rows = read_anomalies(cfg.layout.anomalies)
    default = replays.get(cfg.stats.detector)
    same = default is not None and _same_rows(default, rows)
    return ScenarioRun(name, replays, scores, same, seconds, written)


def _same_rows(replay: Replay, rows: gpd.GeoDataFrame) -> bool:
    """Whether the replay has exactly the backfill's rows: (acquisition, cell, status)."""
    from .alerts import STATUS_NAMES

    nx = replay.shape[1]
    t, c = np.nonzero(replay.row)
    mine = {
        (replay.acquisition_ids[i], int(j // nx), int(j % nx), STATUS_NAMES[replay.status[i, j]])
        for i, j in zip(t, c, strict=True)
    }
    written = set(
        zip(rows["acquisition_id"], rows["cell_y"].astype(int), rows["cell_x"].astype(int),
            rows["status"], strict=True)
    )  # fmt: skip
    return mine == written


def _summary(run: ScenarioRun) -> str:
    parts = []
    for det, s in run.scores.items():
        f1 = " ".join(f"{e}:{s.events[e].f1:.2f}" for e in EVENT_ORDER if e in s.events)
        parts.append(f"{det}: F1 {f1}, false looks {100 * s.false_look_rate:.3f}%")
    return "; ".join(parts)


# ------------------------------------------------------------------ the document


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if np.isnan(x) else f"{x:.{digits}f}"


def _event_cells(score: DetectorScore, cell: Callable[[EventScore], str]) -> list[str]:
    """One table cell per event type of ``EVENT_ORDER`` ("-" where the scenario has none)."""
    return [cell(score.events[e]) if e in score.events else "-" for e in EVENT_ORDER]


@dataclass(frozen=True)
class EncoderRuns:
    """The scenario set run again with another (seeded) encoder, for the per-encoder table."""

    arch: str
    dim: int
    runs: list[ScenarioRun]


def run_encoders(
    cfg: Config, work: Path, archs: Sequence[str], names: Sequence[str], progress: bool = True,
    configured: list[ScenarioRun] | None = None,
) -> list[EncoderRuns]:  # fmt: skip
    """The embedding detectors on every scenario once per encoder in ``archs`` (the configured
    one's runs reused); the index detector does not depend on the encoder."""
    from .backbones import EMBEDDING_DIM

    dets = [d for d in DETECTORS if d != "index"]
    out = []
    for arch in archs:
        if arch == cfg.model.arch and configured is not None:
            runs = configured
        else:
            print(f"encoder {arch}: the scenario set again", flush=True)
            runs = run_scenarios(cfg.with_overrides(**{"model.arch": arch}), work, names, dets,
                                 progress=progress, runs_dir=f"runs-{arch}")  # fmt: skip
        out.append(EncoderRuns(arch, EMBEDDING_DIM[arch], runs))
    return out


def _mean_f1(score: DetectorScore) -> float:
    return float(np.mean([ev.f1 for ev in score.events.values()])) if score.events else 0.0


def encoder_lines(encoders: Sequence[EncoderRuns]) -> list[str]:
    """The per-encoder table: per scenario, each embedding detector's mean F1 over the four
    event types and its false cells, per encoder (seeded weights: what the architecture gives
    before any pretraining)."""
    if not encoders:
        return []
    lines = [
        "## Per encoder",
        "",
        "The embedding detectors again with each seeded encoder (`make evaluate` runs "
        "`--encoders resnet18,resnet50,vit_small_patch16_224`); the index detector does not "
        "depend on the encoder. Mean F1 over the four event types / false cells; seconds: the "
        "whole scenario's backfill (146 acquisitions of 512 px) on this 2-core machine.",
        "",
        "| scenario | encoder | dim | embedding+index F1 / false cells | embedding F1 / false cells "
        "| backfill seconds |",
        "| --- | --- | ---: | --- | --- | ---: |",
    ]
    for i, run in enumerate(encoders[0].runs):
        for enc in encoders:
            r = enc.runs[i]
            cells = []
            for det in ("embedding+index", "embedding"):
                s = r.scores.get(det)
                cells.append(f"{_mean_f1(s):.2f} / {s.false_cells}" if s else "-")
            lines.append(f"| {run.name} | {enc.arch} | {enc.dim} | {cells[0]} | {cells[1]} "
                         f"| {r.seconds:.0f} |")  # fmt: skip
    return [*lines, ""]


def render_markdown(
    runs: Sequence[ScenarioRun],
    seconds: float,
    command: str,
    real: RealSeries | None = None,
    real_png: str | None = None,
    encoders: Sequence[EncoderRuns] = (),
) -> str:
    detectors = list(runs[0].scores) if runs else []
    reused = sum(not r.archive_written for r in runs)
    lines = [
        "# Detection quality on the synthetic scenarios",
        "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min"
        + (f", reusing {reused} scenario archive(s) of an earlier run" if reused else "")
        + " (this file and `docs/evaluation/*.png`; do not edit by hand). Seeded encoder "
        "(no pretrained weights here), default `config.yaml`, 512 px tiles (16 x 16 cells of "
        "320 m), an acquisition every 5 days for two years; each scenario plants a flood, a "
        "burn, a clear-cut and a construction site in each year, under the condition it names.",
        "",
        "Scores count **confirmed** alerts (`stats.confirm_looks` agreeing clear looks). Per "
        "event type: F1 of found event cells (confirmed inside the event's window) against "
        "false cells (clean cells ever confirmed); delay is the median number of clear looks "
        "from the event to its confirmation; labels is the share of found cells whose alert "
        "carries the event's label. *False looks* is the per-acquisition false-positive rate: "
        "anomalous looks on clean cells per scored clean cell-look (confirmed later or not).",
        "",
        "| scenario | detector | " + " | ".join(f"{e} F1 (P/R)" for e in EVENT_ORDER)
        + " | delay (looks) | labels | false cells | false looks | gradual cells alerted |",
        "| --- | --- | " + " | ".join("---" for _ in EVENT_ORDER) + " | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for run in runs:
        for det in detectors:
            s = run.scores[det]
            cells = _event_cells(s, lambda ev: f"{ev.f1:.2f} ({ev.precision:.2f}/{ev.recall:.2f})")
            delays = [s.events[e].delay_looks for e in EVENT_ORDER if e in s.events]
            delay = float(np.nanmedian(delays)) if np.isfinite(delays).any() else float("nan")
            gradual = f"{s.gradual_alerted}/{s.gradual_cells}" if s.gradual_cells else "-"
            lines.append(
                f"| {run.name} | {det} | " + " | ".join(cells)
                + f" | {_fmt(delay, 1)} | {s.label_agreement:.2f} | {s.false_cells} | "
                f"{100 * s.false_look_rate:.3f}% | {gradual} |"
            )  # fmt: skip
    lines += [
        "",
        "Per event type, the median delay in clear looks from the event to its confirmation "
        "and the label agreement of the found cells:",
        "",
        "| scenario | detector | " + " | ".join(f"{e} delay / labels" for e in EVENT_ORDER) + " |",
        "| --- | --- | " + " | ".join("---" for _ in EVENT_ORDER) + " |",
    ]  # fmt: skip
    for run in runs:
        for det in detectors:
            s = run.scores[det]
            cells = _event_cells(
                s, lambda ev: f"{_fmt(ev.delay_looks, 1)} / {ev.label_agreement:.2f}"
            )
            lines.append(f"| {run.name} | {det} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The configured detector's replay reproduces what the backfill wrote: "
        + ", ".join(f"{r.name} {'yes' if r.reproduces_backfill else 'NO'}" for r in runs)
        + ".",
        "",
        *encoder_lines(encoders),
        *_real_lines(real, real_png),
        "## Scenarios",
        "",
    ]
    for run in runs:
        sc = scenario(run.name)
        lines += [
            f"### {run.name}",
            "",
            f"{sc.description}. Maps: confirmed alerts per detector over the truth cells.",
            "",
            f"![{run.name}](evaluation/{run.name}.png)",
            "",
        ]
    return "\n".join(lines) + "\n"


def _real_lines(real: RealSeries | None, png: str | None) -> list[str]:
    from .alerts import AlertStatus

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
        f"mask; no known event) go through the seasonal index model and the alert lifecycle "
        f"in {real.ndvi.shape[1]} cells of {real.cell_px * 10} m: {int(real.scored.sum())} "
        f"scored clear looks, {int(real.anomaly.sum())} anomalous looks, "
        f"**{int(confirmed.sum())} confirmed alerts**; {int(retracted.sum())} cells had a "
        "provisional alert the next clear look retracted. Only NDVI exists for every date "
        "(the 13-band cube is not in the snapshot), so the embedding detectors cannot run "
        "on this series; it tests the seasonal expectation, the masks and the lifecycle.",
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


def render_maps(runs: Sequence[ScenarioRun], truth_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per scenario: per detector, confirmed cells over the event and drought cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from .alerts import AlertStatus

    colours = {"flood": "#1f78ff", "burn": "#ff3b1f", "clear-cut": "#e0a800",
               "construction": "#b31fff", "drought": "#7a5c2e"}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        truth = gpd.read_parquet(truth_dir / run.name / "truth.parquet")
        fig, axes = plt.subplots(1, len(run.replays), figsize=(3.2 * len(run.replays), 3.6))
        axes = np.atleast_1d(axes)
        for ax, (det, rep) in zip(axes, run.replays.items(), strict=True):
            ny, nx = rep.shape
            ever = (rep.status == AlertStatus.CONFIRMED).any(axis=0).reshape(ny, nx)
            ax.imshow(ever, cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
            for _, row in truth.iterrows():
                ax.add_patch(
                    Rectangle((row["cell_x"] - 0.5, row["cell_y"] - 0.5), 1, 1, fill=False,
                              lw=1.2, ec=colours.get(row["event"], "k"))
                )  # fmt: skip
            ax.set_title(det, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{run.name}: confirmed alerts (dark) over planted cells (outlined)",
                     fontsize=9)  # fmt: skip
        present = [e for e in colours if e in set(truth["event"])]
        fig.legend(
            handles=[Patch(edgecolor=colours[e], fill=False, label=e) for e in present],
            loc="lower center", ncol=len(present), fontsize=7, frameon=False,
        )  # fmt: skip
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out_dir / f"{run.name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ the real series


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


def run_real_series(folder: Path, cfg: Config, cell_px: int = 10) -> RealSeries:
    """Cells of ``cell_px`` pixels (100 m) of the real patch through the seasonal index model
    and the alert lifecycle, masked by its s2cloudless cloud mask (CLM).

    Only NDVI exists for all 68 dates (the 13-band cube is not in the snapshot), so the other
    indices are held constant: what is tested is the NDVI seasonal expectation, the z-score,
    the masks and the lifecycle on a real farmland series with clouds and winters.
    """
    import json

    from .alerts import AlertState, advance
    from .ingest import INDEX_NAMES
    from .labels import UNKNOWN
    from .seasonal import IndexModel, index_anomalies, index_scores

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
    model, alerts = IndexModel.empty(c), AlertState.empty(c)
    p = cfg.stats
    out_expected = np.full((t, c), np.nan)
    scored = np.zeros((t, c), bool)
    anomaly = np.zeros((t, c), bool)
    status = np.zeros((t, c), np.int8)
    for i in range(t):
        idx = np.zeros((c, len(INDEX_NAMES)), np.float32)
        idx[:, k_ndvi] = ndvi[i]
        ok = (clear[i] >= p.min_clear) & np.isfinite(ndvi[i])
        sc = ok & (model.n >= p.min_obs)
        z, expected = index_scores(model, idx, ok, days[i], p.half_life_days, p.min_obs)
        flagged = index_anomalies(z, p.index_threshold) & sc
        advance(alerts, sc, flagged, np.full(c, UNKNOWN, np.int8), idx,
                expected.astype(np.float32), days[i], p.confirm_looks,
                p.recover_index_change)  # fmt: skip
        out_expected[i] = expected[:, k_ndvi]
        scored[i], anomaly[i], status[i] = sc, flagged, alerts.status
    return RealSeries(days, ndvi, out_expected, scored, anomaly, status, cell_px)


def render_real_series(series: RealSeries, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .alerts import AlertStatus

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
