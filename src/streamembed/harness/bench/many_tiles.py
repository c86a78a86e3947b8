"""The scale benchmark (profile ``cpu-many-tiles``): the driver's cost per acquisition against
the number of tiles the output holds.

One synthetic archive of the largest tile count (real MGRS codes over many UTM zones, a few
looks each) is written once; each step backfills its first N tiles into a new output on a warm
local cluster and reports, per acquisition, the driver's CPU seconds and each control-plane
step (discovery and planning, ledger writes, store begin/commit, waiting on the statistics
actors, the catalogue), the actors' state and anomaly I/O, the rate over the first and the
last tenth of the run, the driver's memory after it, and how long the web map takes to
answer a tile/date/bbox view of the output.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...config import ClusterConfig, Config
from .config import BenchConfig
from .machine import hardware, software
from .report import save_figure

Log = Callable[[str], None]
SCHEMA = "streamembed-bench-many-tiles/1"
# Below this many acquisitions the first/last tenth of a run (from the ledger's whole-second
# times) is not resolved, and is not reported
MIN_ACQ_FOR_TENTHS = 100


@dataclass(frozen=True)
class ManyTilesStep:
    """One backfill of N tiles: per-acquisition figures (seconds unless named)."""

    tiles: int
    acquisitions: int
    failed: int
    wall_seconds: float
    wall_per_acquisition: float
    first_tenth_per_acquisition: float  # wall seconds between ledger updates, first 10 %
    last_tenth_per_acquisition: float  # and last 10 % of the applied acquisitions
    driver_cpu_per_acquisition: float
    driver_steps_per_acquisition: dict[str, float]
    actor_steps_per_acquisition: dict[str, float]  # state read/apply, anomaly write, checkpoint
    state_evictions: int
    driver_rss_mib: float
    web_summary_seconds: float
    web_view_seconds: float  # one tile on one date, and a bbox of a few tiles
    web_bbox_seconds: float


def archive(bench: BenchConfig, tiles: int) -> Path:
    """The archive of ``tiles`` tiles x ``bench.many_tiles_looks`` looks, written once."""
    from ..synthetic import generate

    root = (
        Path(bench.data)
        / f"many-px{bench.many_tiles_px}-tiles{tiles}-looks{bench.many_tiles_looks}"
    )
    if not (root / "truth.parquet").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, days=5 * bench.many_tiles_looks, revisit_days=5,
                 tile_px=bench.many_tiles_px, n_tiles=tiles, seed=42)  # fmt: skip
    return root / "items"


def run_many_tiles(cfg: Config, bench: BenchConfig, output: Path, log: Log = print) -> Path:
    """Every step of ``bench.many_tiles``; the JSON record's path."""
    from ..synthetic import synthetic_tiles

    steps = sorted(bench.many_tiles)
    codes = [t.tile for t in synthetic_tiles(steps[-1])]
    log(f"[bench {bench.label}] archive: {steps[-1]} tiles x {bench.many_tiles_looks} looks of "
        f"{bench.many_tiles_px} px")  # fmt: skip
    items = archive(bench, steps[-1])
    rows = []
    for n in steps:
        log(f"[bench] backfill of {n} tiles …")
        step = _step(cfg, items, codes[:n], output / "scratch" / f"tiles-{n}")
        rows.append(step)
        log(f"[bench]   {step.wall_per_acquisition:.3f} s/acq wall, driver CPU "
            f"{step.driver_cpu_per_acquisition * 1000:.1f} ms/acq, first/last tenth "
            f"{step.first_tenth_per_acquisition:.3f}/{step.last_tenth_per_acquisition:.3f} s/acq, "
            f"web view {step.web_view_seconds:.2f} s")  # fmt: skip
    shutil.rmtree(output / "scratch", ignore_errors=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = {
        "schema": SCHEMA,
        "label": bench.label,
        "time": now,
        "hardware": asdict(hardware()),
        "software": software(),
        "config": cfg.model_dump(mode="json"),
        "tile_px": bench.many_tiles_px,
        "looks_per_tile": bench.many_tiles_looks,
        "steps": [asdict(r) for r in rows],
    }
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{bench.label}-{now.replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(record, indent=1))
    log(markdown_table(rows))
    log(f"plot: {plot(rows, output / 'many-tiles.png')}")
    return path


def _step(cfg: Config, items: Path, tiles: list[str], out: Path) -> ManyTilesStep:
    import psutil

    from ...deployment.cluster import make_client
    from ...outputs.ledger import Ledger, State
    from ...runtime.pipeline import Pipeline
    from .measure import warm_encoders

    shutil.rmtree(out, ignore_errors=True)
    run_cfg = cfg.with_overrides(
        **{"source.path": str(items), "source.tiles": tiles, "output": str(out)}
    )
    cluster = ClusterConfig(
        kind="local", n_workers=cfg.cluster.n_workers or os.cpu_count() or 1,
        threads_per_worker=cfg.cluster.threads_per_worker, memory_limit=cfg.cluster.memory_limit,
        dashboard_address=":0",
    )  # fmt: skip
    with make_client(cluster) as client:
        warm_encoders(client, run_cfg)
        pipe = Pipeline(run_cfg, client)
        try:
            t0 = time.perf_counter()
            report = pipe.run(progress=False)
            wall = time.perf_counter() - t0
            metrics = [a.metrics().result() for a in pipe.actors]
        finally:
            pipe.close()
    rss = psutil.Process().memory_info().rss / 2**20
    with Ledger(run_cfg.layout.ledger) as ledger:
        updated = [dt.datetime.fromisoformat(t) for t in ledger.updated_times(State.APPLIED)]
    n = max(1, report.applied)
    tenth = max(2, len(updated) // 10)
    first = (updated[tenth - 1] - updated[0]).total_seconds() / (tenth - 1)
    last = (updated[-1] - updated[-tenth]).total_seconds() / (tenth - 1)
    driver = report.driver.as_dict()
    actor = {
        k: v / n
        for k, v in report.stage_seconds.as_dict().items()
        if k in ("stats_read", "state_load", "stats_apply", "sink_write", "stats_checkpoint")
    }
    summary_s, view_s, bbox_s = _web_timings(run_cfg, tiles)
    return ManyTilesStep(
        tiles=len(tiles),
        acquisitions=report.applied,
        failed=len(report.failed),
        wall_seconds=wall,
        wall_per_acquisition=wall / n,
        first_tenth_per_acquisition=first,
        last_tenth_per_acquisition=last,
        driver_cpu_per_acquisition=driver.pop("cpu") / n,
        driver_steps_per_acquisition={k: v / n for k, v in driver.items()},
        actor_steps_per_acquisition=actor,
        state_evictions=sum(m.evictions for m in metrics),
        driver_rss_mib=rss,
        web_summary_seconds=summary_s,
        web_view_seconds=view_s,
        web_bbox_seconds=bbox_s,
    )


def _web_timings(cfg: Config, tiles: list[str]) -> tuple[float, float, float]:
    """Seconds the web map takes for its summary, one tile on one date, and a bbox view."""
    from ...operations.web.view import OutputView

    view = OutputView(cfg.layout)
    t0 = time.perf_counter()
    summary = view.summary()
    t1 = time.perf_counter()
    date = summary["dates"][-1] if summary["dates"] else None
    view.geojson(view.select(date, tiles[-1]))
    t2 = time.perf_counter()
    west, south, east, north = summary["tile_bounds"][tiles[-1]]
    view.geojson(view.select(date, None, bbox=(west - 1, south - 1, east + 1, north + 1)))
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def markdown_table(rows: list[ManyTilesStep]) -> str:
    """The RESULTS.md table: per-acquisition seconds against the number of tiles."""
    steps = list(rows[0].driver_steps_per_acquisition)
    head = ["tiles", "acq", "wall s/acq", "first/last tenth s/acq", "driver CPU ms/acq",
            *[f"{s} ms" for s in steps],
            "actor ms: read + apply / state load / anomaly write / checkpoint+evict",
            "driver RSS MiB",
            "web summary / view / bbox s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = {k: v * 1000 for k, v in r.actor_steps_per_acquisition.items()}
        actor = (
            f"{a['stats_read'] + a['stats_apply']:.1f} / {a.get('state_load', 0.0):.1f} / "
            f"{a['sink_write']:.1f} / {a['stats_checkpoint']:.1f}"
        )
        cells = [str(r.tiles), str(r.acquisitions), f"{r.wall_per_acquisition:.3f}",
                 f"{r.first_tenth_per_acquisition:.3f} / {r.last_tenth_per_acquisition:.3f}"
                 if r.acquisitions >= MIN_ACQ_FOR_TENTHS else "–",
                 f"{r.driver_cpu_per_acquisition * 1000:.1f}",
                 *[f"{r.driver_steps_per_acquisition[s] * 1000:.1f}" for s in steps],
                 actor, f"{r.driver_rss_mib:.0f}",
                 f"{r.web_summary_seconds:.2f} / {r.web_view_seconds:.2f} / "
                 f"{r.web_bbox_seconds:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[ManyTilesStep], png: Path) -> Path:
    """Per-acquisition driver seconds and each control-plane step against the tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = [r.tiles for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ax1.plot(tiles, [r.wall_per_acquisition for r in rows], "o-", label="wall (2 workers)")
    ax1.plot(tiles, [r.driver_cpu_per_acquisition for r in rows], "o-", label="driver CPU")
    # the ledger's times are whole seconds: a tenth of a short run is not resolved
    long = [r for r in rows if r.acquisitions >= MIN_ACQ_FOR_TENTHS]
    ax1.plot([r.tiles for r in long], [r.last_tenth_per_acquisition for r in long], "o--",
             label="wall, last tenth of the run")  # fmt: skip
    _log_tiles_axis(ax1, "seconds per acquisition", "Cost per acquisition")
    for step in rows[0].driver_steps_per_acquisition:
        values = [r.driver_steps_per_acquisition[step] * 1000 for r in rows]
        if max(values) >= 0.5:
            ax2.plot(tiles, values, "o-", label=step)
    _log_tiles_axis(ax2, "driver ms per acquisition", "Control-plane steps (driver)")
    return save_figure(fig, png)


def _log_tiles_axis(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("tiles in the output")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def from_record(path: Path) -> list[ManyTilesStep]:
    """The steps of a record written by ``run_many_tiles`` (to redraw its table and plot)."""
    return [ManyTilesStep(**step) for step in json.loads(path.read_text())["steps"]]
