"""docs/evaluation.md from the scenario runs: the per-scenario and pooled tables (events, alert
timing, labels, false cells), the per-encoder table, the real series' section, and one map per
scenario of each detector's confirmed cells over the truth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np

from .alert_scores import LABEL_EVENT, MAX_LOOKS, AlertScore
from .evaluate import DetectorScore, EventScore
from .evaluation import EVENT_ORDER, EncoderRuns, ScenarioRun
from .real_series import RealSeries, real_lines
from .scenarios import scenario


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if np.isnan(x) else f"{x:.{digits}f}"


def _event_cells(score: DetectorScore, cell: Callable[[EventScore], str]) -> list[str]:
    """One table cell per event type of ``EVENT_ORDER`` ("-" where the scenario has none)."""
    return [cell(score.events[e]) if e in score.events else "-" for e in EVENT_ORDER]


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
        "`labels.py`, the constants of `change.py` and `stats.py` such as the bare-surface "
        "MNDWI share, the sure-water departure and the sure embedding z-score) were chosen on "
        "the second generator's **tuning** seeds "
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
        *real_lines(real, real_png),
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
    from . import fieldsim, fieldsim_world

    for run in field_runs:
        seed = fieldsim.seed_of(run.name)
        assert seed is not None
        size = run.replays[next(iter(run.replays))].shape[0] * fieldsim.CELL_PX
        lines += [
            f"### {run.name} ({run.split})",
            "",
            f"{fieldsim.describe(fieldsim_world.draw_world(seed, size))}. Maps: confirmed alerts per "
            "detector over the truth cells (the decline outlined in brown).",
            "",
            f"![{run.name}](evaluation/{run.name}.png)",
            "",
        ]
    return "\n".join(lines) + "\n"


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
