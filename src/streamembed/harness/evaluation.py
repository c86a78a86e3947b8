"""``streamembed evaluate --scenarios``: every detector on every synthetic scenario, side by side.

For each scenario (harness/scenarios.py): write its archive once (real COGs + STAC items +
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
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np

from ..config import Config
from ..outputs.sink import read_anomalies
from ..outputs.store import EmbeddingStore
from .evaluate import (
    LABEL_EVENT,
    MAX_LOOKS,
    AlertScore,
    DetectorScore,
    EventScore,
    score_alerts,
    score_replay,
)
from .replay import DETECTORS, Replay, replay_tile
from .scenarios import SCENARIOS, scenario

EVENT_ORDER = ("flood", "burn", "clear-cut", "construction")


def known_scenario(name: str) -> None:
    """Raise a clear error for a name that is neither a scenario of the set nor
    ``fieldsim-<seed>``."""
    from . import fieldsim

    if fieldsim.seed_of(name) is None:
        scenario(name)


@dataclass(frozen=True)
class ScenarioRun:
    name: str
    replays: dict[str, Replay]
    scores: dict[str, DetectorScore]
    reproduces_backfill: bool  # the configured detector's replay has the backfill's anomalies
    seconds: float
    archive_written: bool  # False: the archive of an earlier run was reused
    alerts: dict[str, AlertScore] = field(default_factory=dict)  # user's/producer's accuracy

    @property
    def split(self) -> str:
        """``tuning``, ``held-out`` or ``extra`` (fieldsim seeds), or ``set`` (the scenario set)."""
        from . import fieldsim

        seed = fieldsim.seed_of(self.name)
        return "set" if seed is None else fieldsim.split_of(seed)


def _write_archive(args: tuple[str, str, int, int, int]) -> str:
    from . import fieldsim
    from .synthetic import generate

    name, out, tile_px, revisit, seed = args
    world_seed = fieldsim.seed_of(name)
    if world_seed is not None:  # the second generator: the name carries its seed
        fieldsim.generate(out, world_seed, size=tile_px, revisit_days=revisit)
    else:
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
    from ..deployment.cluster import make_client
    from ..runtime.pipeline import Pipeline

    for n in names:
        known_scenario(n)  # an unknown name fails here, before anything runs
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
    if len(tiles) != 1:  # the scenario set is one tile each (harness/scenarios.py)
        raise ValueError(f"scenario {name}: expected one tile in {store.root}, found {tiles}")
    replays = replay_tile(store, tiles[0], detectors, cfg.stats)
    scores = {det: score_replay(rep, truth, name) for det, rep in replays.items()}
    alerts = {det: score_alerts(rep, truth, name) for det, rep in replays.items()}
    rows = read_anomalies(cfg.layout.anomalies)
    default = replays.get(cfg.stats.detector)
    same = default is not None and _same_rows(default, rows)
    return ScenarioRun(name, replays, scores, same, seconds, written, alerts)


def _same_rows(replay: Replay, rows: gpd.GeoDataFrame) -> bool:
    """Whether the replay has exactly the backfill's rows: (acquisition, cell, kind, status)."""
    from ..detection.alerts import STATUS_NAMES

    nx = replay.shape[1]
    t, c = np.nonzero(replay.row)
    mine = {
        (replay.acquisition_ids[i], int(j // nx), int(j % nx), "sudden",
         STATUS_NAMES[replay.status[i, j]])
        for i, j in zip(t, c, strict=True)
    }  # fmt: skip
    t, c = np.nonzero(replay.gradual_row)
    mine |= {
        (replay.acquisition_ids[i], int(j // nx), int(j % nx), "gradual",
         "confirmed" if replay.gradual[i, j] else "recovered")
        for i, j in zip(t, c, strict=True)
    }  # fmt: skip
    kinds = rows["kind"].fillna("sudden") if "kind" in rows else ["sudden"] * len(rows)
    written = set(
        zip(rows["acquisition_id"], rows["cell_y"].astype(int), rows["cell_x"].astype(int),
            kinds, rows["status"], strict=True)
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
    from ..runtime.backbones import EMBEDDING_DIM

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


@dataclass(frozen=True)
class Totals:
    """The alert scores of several scenarios added up (one detector)."""

    scenarios: int
    events: int
    in_time: int
    event_cells: int
    found_cells: int
    confirmations: int
    correct: int
    labelled_right: int
    flood_looks: int
    flood_water: int
    gradual_cells: int
    gradual_reported: int
    gradual_sudden: int
    gradual_false: int
    declines: int
    declines_reported: int
    declines_sudden: int
    clean_looks: int
    false_looks: int
    retracted: int
    recovered: int
    edge_cells: int
    edge_found: int
    unmonitored: int

    @classmethod
    def of(cls, scores: Sequence[AlertScore]) -> Totals:
        def total(name: str) -> int:
            return int(sum(getattr(s, name) for s in scores))

        return cls(
            scenarios=len(scores),
            events=sum(len(s.events) for s in scores),
            in_time=sum(e.in_time for s in scores for e in s.events),
            **{name: total(name) for name in (
                "event_cells", "found_cells", "confirmations", "correct", "labelled_right",
                "flood_looks", "gradual_cells", "gradual_reported", "gradual_sudden",
                "gradual_false", "declines", "declines_reported", "declines_sudden", "clean_looks", "false_looks", "retracted", "recovered",
                "edge_cells", "edge_found", "unmonitored")},
            flood_water=total("flood_looks_water"),
        )  # fmt: skip


def _ratio(a: int, b: int, digits: int = 2) -> str:
    return f"{a / b:.{digits}f} ({a}/{b})" if b else "-"


def summary_lines(runs: Sequence[ScenarioRun], detector: str) -> list[str]:
    """The headline: the configured detector on the held-out half of the second generator,
    beside its tuning half and the scenario set, per event type and per scenario."""
    halves = [("held-out", "second generator, held-out seeds"),
              ("tuning", "second generator, tuning seeds"), ("set", "scenario set")]  # fmt: skip
    groups = {h: [r for r in runs if r.split == h and detector in r.alerts] for h, _ in halves}
    if not any(groups.values()):
        return []
    from .fieldsim import HELD_OUT_SEEDS, TUNING_SEEDS

    lines = [
        f"## Summary: `{detector}` on data it was not tuned on",
        "",
        "The thresholds and rules (`config.yaml` `stats`: `min_index_change`, `min_step`, "
        "`min_novelty`, `gradual_threshold`, `gradual_min_loss`, the label rules of "
        "`labels.py`) were chosen on the second generator's **tuning** seeds "
        f"({', '.join(map(str, TUNING_SEEDS))}) and the scenario set; the **held-out** seeds "
        f"({', '.join(map(str, HELD_OUT_SEEDS))}) were run only for this report and never used "
        "to choose anything.",
        "",
        "| data | scenarios | events confirmed in time | cell recall (PA) | precision (UA) | "
        "labels | flood looks water_gain | declines reported gradual (with a sudden alert) | "
        "gradual cells reported | sudden alerts on gradual cells | false gradual cells | false "
        "cell-looks | retracted / recovered rows | edge recall | cells not yet warm |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | ---: | ---: | --- | --- | --- "
        "| ---: |",
    ]
    for half, title in halves:
        if not groups[half]:
            continue
        t = Totals.of([r.alerts[detector] for r in groups[half]])
        false = f"{100 * t.false_looks / t.clean_looks:.3f}% ({t.false_looks}/{t.clean_looks})"
        lines.append(
            f"| {title} | {t.scenarios} | {t.in_time}/{t.events} | "
            f"{_ratio(t.found_cells, t.event_cells)} | {_ratio(t.correct, t.confirmations)} | "
            f"{_ratio(t.labelled_right, t.found_cells)} | {_ratio(t.flood_water, t.flood_looks)} "
            f"| {t.declines_reported}/{t.declines} ({t.declines_sudden}) "
            f"| {t.gradual_reported}/{t.gradual_cells} | {t.gradual_sudden} | {t.gradual_false} "
            f"| {false} | {t.retracted} / {t.recovered} | {_ratio(t.edge_found, t.edge_cells)} "
            f"| {t.unmonitored} |"
        )
    lines += [
        "",
        f"*Events confirmed in time*: at least half of an event's cells confirmed within "
        f"{MAX_LOOKS} clear looks of its start. *Cell recall* (producer's accuracy): cells at "
        "least half inside an event with a confirmed alert inside its window. *Precision* "
        "(user's accuracy): confirmations on an event's cells or its edge inside its window, "
        "of all confirmations (those on a gradual change count as false). *Labels*: found "
        "cells whose alert carries the event's label. *Declines reported gradual*: slow "
        "declines with a gradual alert on at least one of their cells after they began (in "
        "brackets, those with a confirmed sudden alert on any of their cells: 0 is the aim). "
        "*False cell-looks*: anomalous looks on "
        "cells no event or decline touches, per scored look of them. Retracted and recovered "
        "rows are the lifecycle's, not detections. Cells of an event that had no scored look "
        "before it began (still warming up) are counted apart. OPERA DIST-ALERT reports UA "
        "94.5 % and PA 89.4 % for its confirmed vegetation-loss alerts.",
        "",
        "Per event type (user's accuracy counts the confirmations whose label names the type):",
        "",
        "| data | event | UA | PA | median looks to confirmation | events in time |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for half, title in halves:
        scores = [r.alerts[detector] for r in groups[half]]
        for event in LABEL_EVENT.values():
            named = sum(s.per_type.get(event, (0, 0, 0, 0))[0] for s in scores)
            right = sum(s.per_type.get(event, (0, 0, 0, 0))[1] for s in scores)
            cells = sum(s.per_type.get(event, (0, 0, 0, 0))[2] for s in scores)
            found = sum(s.per_type.get(event, (0, 0, 0, 0))[3] for s in scores)
            outcomes = [e for s in scores for e in s.events if e.event == event]
            looks = [e.looks for e in outcomes if np.isfinite(e.looks)]
            if not outcomes:
                continue
            lines.append(
                f"| {title} | {event} | {_ratio(right, named)} | {_ratio(found, cells)} | "
                f"{_fmt(float(np.median(looks)) if looks else float('nan'), 1)} | "
                f"{sum(e.in_time for e in outcomes)}/{len(outcomes)} |"
            )
    lines += [
        "",
        "Per scenario:",
        "",
        "| scenario | data | events in time | cell recall | precision | labels | gradual "
        "reported | false cell-looks | missed events |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for half, title in halves:
        for r in groups[half]:
            s = r.alerts[detector]
            missed = ", ".join(
                f"{e.event} ({e.found}/{e.cells} cells)" for e in s.events if not e.in_time
            )
            lines.append(
                f"| {r.name} | {title} | {sum(e.in_time for e in s.events)}/{len(s.events)} | "
                f"{_ratio(s.found_cells, s.event_cells)} | {_ratio(s.correct, s.confirmations)} "
                f"| {_ratio(s.labelled_right, s.found_cells)} | "
                f"{s.gradual_reported}/{s.gradual_cells} | {100 * s.false_look_rate:.3f}% | "
                f"{missed or '-'} |"
            )
    others = list(groups["held-out"][0].alerts) if groups["held-out"] else []
    if len(others) > 1:
        lines += [
            "",
            "Every detector on the held-out half:",
            "",
            "| detector | events in time | cell recall | precision | labels | gradual reported "
            "| false cell-looks |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for det in others:
            t = Totals.of([r.alerts[det] for r in groups["held-out"]])
            lines.append(
                f"| {det} | {t.in_time}/{t.events} | {_ratio(t.found_cells, t.event_cells)} | "
                f"{_ratio(t.correct, t.confirmations)} | "
                f"{_ratio(t.labelled_right, t.found_cells)} | "
                f"{t.gradual_reported}/{t.gradual_cells} | "
                f"{100 * t.false_looks / max(t.clean_looks, 1):.3f}% |"
            )
    return [*lines, ""]


def render_markdown(
    runs: Sequence[ScenarioRun],
    seconds: float,
    command: str,
    real: RealSeries | None = None,
    real_png: str | None = None,
    encoders: Sequence[EncoderRuns] = (),
    detector: str = "embedding+index",
) -> str:
    everything = runs
    runs = [r for r in everything if r.split == "set"]
    field_runs = [r for r in everything if r.split != "set"]
    detectors = list(everything[0].scores) if everything else []
    reused = sum(not r.archive_written for r in everything)
    lines = [
        "# Detection quality",
        "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min"
        + (f", reusing {reused} scenario archive(s) of an earlier run" if reused else "")
        + " (this file and `docs/evaluation/*.png`; do not edit by hand). Seeded encoder "
        "(no pretrained weights here), default `config.yaml`, 512 px tiles (16 x 16 cells of "
        "320 m), an acquisition every 5 days for two years. Two generators write the archives: "
        "the **scenario set** (`harness/scenarios.py` through `harness/synthetic.py`: a flood, "
        "a burn, a clear-cut and a construction site in each year, under the condition each "
        "scenario names) and the **second generator** (`harness/fieldsim.py`, written apart "
        "from the first: real and library spectra, Voronoi parcels with crop harvests and "
        "mown meadows, random event shapes, sizes and dates, a gradual decline, cumulus "
        "clouds with projected shadows, haze, snow, Sentinel-2A/2B alternating, partial "
        "products), whose seeds split into a tuning and a held-out half.",
        "",
        *summary_lines(everything, detector),
        "## The scenario set, detector by detector",
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
    from . import fieldsim

    for run in field_runs:
        seed = fieldsim.seed_of(run.name)
        assert seed is not None
        size = run.replays[next(iter(run.replays))].shape[0] * fieldsim.CELL_PX
        lines += [
            f"### {run.name} ({run.split})",
            "",
            f"{fieldsim.describe(fieldsim.draw_world(seed, size))}. Maps: confirmed alerts per "
            "detector over the truth cells (the decline outlined in brown).",
            "",
            f"![{run.name}](evaluation/{run.name}.png)",
            "",
        ]
    return "\n".join(lines) + "\n"


def _real_lines(real: RealSeries | None, png: str | None) -> list[str]:
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


def render_maps(runs: Sequence[ScenarioRun], truth_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per scenario: per detector, confirmed cells over the event and drought cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from ..detection.alerts import AlertStatus

    colours = {"flood": "#1f78ff", "burn": "#ff3b1f", "clear-cut": "#e0a800",
               "construction": "#b31fff", "drought": "#7a5c2e", "decline": "#7a5c2e"}  # fmt: skip
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
