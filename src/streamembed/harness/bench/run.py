"""One benchmark run: the archive it needs, the measurements its profile asks for, the record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ...config import Config
from ...runtime.stages import StageSeconds
from .config import BenchConfig
from .machine import hardware, software
from .measure import pipeline_run, raw_encoder, read_paths, stats_bandwidth
from .records import BenchRecord, PipelineRun, StatsCore
from .report import update_results_md

Log = Callable[[str], None]


def archive(bench: BenchConfig, tile_px: int, acquisitions: int, tiles: int) -> Path:
    """A synthetic archive (real COGs + STAC items) for these sizes, written once and reused.

    Past ``IN_MEMORY_MAX_PX`` (full 10980 px tiles) products are written strip by strip.
    """
    from ..fullsize import IN_MEMORY_MAX_PX, generate_fullsize
    from ..synthetic import generate

    revisit = 5
    root = Path(bench.data) / f"px{tile_px}-acq{acquisitions}-tiles{tiles}"
    done = root / ("complete" if tile_px > IN_MEMORY_MAX_PX else "truth.parquet")
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        if tile_px > IN_MEMORY_MAX_PX:
            generate_fullsize(
                root, acquisitions=acquisitions, revisit_days=revisit, tile_px=tile_px,
                n_tiles=tiles, seed=42,
            )  # fmt: skip
            done.write_text("written by streamembed bench\n")
        else:
            generate(
                root, days=acquisitions * revisit, revisit_days=revisit, tile_px=tile_px,
                n_tiles=tiles, seed=42,
            )  # fmt: skip
    return root / "items"


def worker_steps(bench: BenchConfig) -> list[int]:
    """The scaling steps: the profile's, or 1, 2, 4 … up to the cores."""
    if bench.workers:
        return list(bench.workers)
    cores = os.cpu_count() or 1
    return [2**k for k in range(cores.bit_length()) if 2**k <= cores]


def run_bench(
    cfg: Config, bench: BenchConfig, output: Path, log: Log = print
) -> tuple[BenchRecord, Path]:
    """Everything the profile asks for: the record and the JSON file it was written to."""
    scratch = output / "scratch"
    hw = hardware()
    record = BenchRecord(
        label=bench.label,
        time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        hardware=hw,
        software=software(),
        config=cfg.model_dump(mode="json"),
        gpu_measured=bool(hw.gpus),
    )
    if bench.require_gpu and not hw.gpus:
        # No GPU here: say so in the record and the table, and make up no figure.
        record = dataclasses.replace(record, gpu_note="not measured: no GPU on this machine")
        log(f"[bench {bench.label}] {record.gpu_note}")
        return record, _write_record(record, output, bench)
    log(f"[bench {bench.label}] data: {bench.acquisitions} acquisitions x {bench.tiles} tile(s) "
        f"of {bench.tile_px} px")  # fmt: skip
    items = archive(bench, bench.tile_px, bench.acquisitions, bench.tiles)
    log("[bench] raw encoder on the same windows, one process …")
    raw = raw_encoder(cfg, items, bench.raw_blocks)
    log(f"[bench]   {raw.acquisitions_per_s:.3f} acquisitions/s, {raw.windows_per_s:.2f} windows/s")
    runs = _scaling(cfg, bench, items, raw.acquisitions_per_s, scratch, log)
    top = max(runs, key=lambda r: r.workers)
    record = dataclasses.replace(
        record,
        raw_encoder=raw,
        runs=runs,
        pipeline_share_of_raw_encoder=top.share_of_raw_encoder,
        bottleneck_stage=StageSeconds(**top.stage_seconds).slowest_besides_encode(),
        long_backfill=_long_backfill(cfg, bench, scratch, log),
        stats_core=_stats_core(bench, log),
        read_paths=read_paths(cfg, items, bench.read_paths_scenes)
        if bench.read_paths_scenes
        else None,
        gpu_note=None if hw.gpus else "no GPU on this machine: GPU figures not measured",
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return record, _write_record(record, output, bench)


def _scaling(
    cfg: Config, bench: BenchConfig, items: Path, raw_per_s: float, scratch: Path, log: Log
) -> tuple[PipelineRun, ...]:
    """The pipeline on each worker count, each against its raw-encoder bound."""
    gpu_groups = cfg.cluster.has_gpu_groups
    runs = []
    for n in worker_steps(bench):
        log(f"[bench] pipeline on {n} worker(s) …")
        r = pipeline_run(cfg, items, n, scratch / f"run-{n}", bench.tile_px, bench.tiles,
                         bench.memory_sample_seconds)  # fmt: skip
        # The bound: one raw process per worker (CPU) or per GPU worker.
        encoders = (
            sum(g.n_workers for g in cfg.cluster.groups if g.gpus) if gpu_groups else r.workers
        )
        bound = raw_per_s * max(1, encoders)
        r = dataclasses.replace(
            r, raw_bound_acquisitions_per_s=bound, share_of_raw_encoder=r.acquisitions_per_s / bound
        )
        runs.append(r)
        log(f"[bench]   {r.acquisitions_per_s:.3f} acquisitions/s = "
            f"{r.share_of_raw_encoder:.0%} of the raw bound; peak worker "
            f"{r.peak_worker_memory_mib:.0f} MiB")  # fmt: skip
    base = runs[0].acquisitions_per_s / max(1, runs[0].workers)
    return tuple(
        dataclasses.replace(r, scaling_efficiency=r.acquisitions_per_s / (base * max(1, r.workers)))
        for r in runs
    )


def _long_backfill(cfg: Config, bench: BenchConfig, scratch: Path, log: Log) -> PipelineRun | None:
    """Memory flatness: worker peaks by quarter over a long backfill of small tiles."""
    if not bench.long_acquisitions:
        return None
    n, px = bench.long_acquisitions, bench.long_tile_px
    log(f"[bench] long backfill: {n} acquisitions of {px} px …")
    items = archive(bench, px, n, 1)
    run = pipeline_run(cfg, items, max(worker_steps(bench)), scratch / "long", px, 1,
                       bench.memory_sample_seconds)  # fmt: skip
    q = run.worker_memory_quarter_peaks_mib
    log(f"[bench]   worker peak by quarter {[round(v) for v in q]} MiB")
    change = (q[3] - q[0]) / q[0] if q and q[0] else None
    return dataclasses.replace(run, memory_first_to_last_quarter_change=change)


def _stats_core(bench: BenchConfig, log: Log) -> tuple[StatsCore, ...]:
    out = []
    for dim in bench.stats_dims:
        for dtype in ("float32", "float16"):
            s = stats_bandwidth(dim, bench.stats_cells, dtype=dtype)
            out.append(s)
            log(f"[bench] stats core {dim}-d ({dtype} in): "
                f"{s.cell_updates_per_s_per_core:.0f} cell-updates/s per core, "
                f"{s.share_of_copy:.0%} of a NumPy copy's bandwidth")  # fmt: skip
    return tuple(out)


def _write_record(record: BenchRecord, out_dir: Path, bench: BenchConfig) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = record.time.replace(":", "").replace("-", "")
    path = out_dir / f"{bench.label}-{stamp}.json"
    path.write_text(record.to_json())
    update_results_md(Path(bench.results_md), record)
    return path
