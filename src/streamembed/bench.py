"""``streamembed bench``: throughput of the whole pipeline against the raw encoder, measured in
the same run, with per-stage times, worker memory, scaling and the statistics core's bandwidth.

One run writes one JSON record (``bench.output``) and a row of ``bench.results_md``; ``--plot``
draws every record found. Nothing here is asserted against a time: the numbers are reported.

Definitions (also in benchmarks/README.md):
- raw encoder bound: the same encoder (config, weights, threads per worker) on the same prepared
  windows in this process, nothing else running; for N CPU workers the bound is N times the
  one-process rate (perfect scaling), for GPU workers one process per GPU;
- pipeline throughput: acquisitions from discovery to anomaly file, divided by the wall time
  of the backfill on a warm cluster (model already loaded on every worker: a daemon loads once);
- per-stage seconds: worker-side timings returned by each task (the task stream gives the
  wall span of every task; stage timings split it);
- peak worker memory: RSS of every worker process sampled every ``bench.memory_sample_seconds``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfig, ClusterConfig, Config

SCHEMA = "streamembed-bench/1"


# ---------------------------------------------------------------- environment


def hardware() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus: list[dict[str, Any]] = []
    try:
        import torch

        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    except Exception:  # no torch CUDA runtime: no GPU to report
        gpus = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "hostname": platform.node(),
        "platform": platform.platform(),
    }


def software() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("streamembed", "torch", "numpy", "dask", "distributed", "zarr", "xarray",
                "rasterio", "pyarrow"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


# ---------------------------------------------------------------- data


def archive(bench: BenchConfig, tile_px: int, acquisitions: int, tiles: int) -> Path:
    """A synthetic archive (real COGs + STAC items) for these sizes, written once and reused.

    Past ``IN_MEMORY_MAX_PX`` (full 10980 px tiles) products are written strip by strip.
    """
    from .sources.fullsize import IN_MEMORY_MAX_PX, generate_fullsize
    from .sources.synthetic import generate

    revisit = 5
    root = Path(bench.data) / f"px{tile_px}-acq{acquisitions}-tiles{tiles}"
    items = root / "items"
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
    return items


# ---------------------------------------------------------------- measurements


def raw_encoder(cfg: Config, items: Path, max_blocks: int | None = None) -> dict[str, Any]:
    """The encoder alone on the prepared blocks of every acquisition, in this process.

    ``max_blocks``: time only the first blocks (a full tile's blocks do not fit in memory at
    once); the rates are per window and per cell, so they compare with the pipeline's.
    """
    from .encoder import Encoder
    from .ingest import BlockPixels, grid_for, plan_blocks, read_block_pixels
    from .sources import discover

    acqs, _ = discover(items, cfg.source.band_mapping, cfg.model.bands)
    plan = plan_blocks(grid_for(acqs[0], cfg.ingest.cell_size), cfg.ingest)
    windows_per_acquisition = sum(len(b.parts) for b in plan)
    blocks: list[BlockPixels] = []
    for a in acqs:
        grid = grid_for(a, cfg.ingest.cell_size)
        for block in plan_blocks(grid, cfg.ingest):
            if max_blocks is not None and len(blocks) >= max_blocks:
                break
            blocks.append(read_block_pixels(a, grid, block, cfg.ingest, cfg.model))
    encoder = Encoder(cfg.model)
    normalisation, cell = cfg.model.normalisation, cfg.ingest.cell_size
    encoder.embed_block(blocks[0], normalisation, cell)  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    for pixels in blocks:
        encoder.embed_block(pixels, normalisation, cell)
    seconds = time.perf_counter() - t0
    windows = sum(len(p.block.parts) for p in blocks)
    cells = sum(p.block.shape[0] * p.block.shape[1] for p in blocks)
    return {
        "acquisitions": len({p.acquisition_id for p in blocks}),
        "blocks": len(blocks),
        "windows": windows,
        "windows_per_acquisition": windows_per_acquisition,
        "seconds": seconds,
        # per window, expressed per whole acquisition (the timed blocks may be a sample)
        "acquisitions_per_s": windows / seconds / windows_per_acquisition,
        "windows_per_s": windows / seconds,
        "cells_per_s": cells / seconds,
        "device": str(encoder.device),
        "torch_threads": cfg.model.torch_threads,
    }


def _worker_sample() -> tuple[int, float | None]:
    """This worker's RSS and, where it has a GPU, the GPU's utilisation (percent)."""
    import psutil

    rss = int(psutil.Process().memory_info().rss)
    try:
        import torch

        if torch.cuda.is_available():
            return rss, float(torch.cuda.utilization())
    except Exception:  # pynvml missing or no device: not measured
        pass
    return rss, None


@dataclass
class Sampler:
    """Samples every worker's RSS (and GPU utilisation) in a background thread."""

    client: Any
    every: float
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    gpu: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._t0 = time.perf_counter()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    sample = self.client.run(_worker_sample)  # one round trip per sample
                    rss = {w: r for w, (r, _) in sample.items()}
                    self.samples.append((time.perf_counter() - self._t0, rss))
                    self.gpu.extend(u for _, u in sample.values() if u is not None)
                except Exception:  # a worker restarting mid-sample: skip this sample
                    pass
                self._stop.wait(self.every)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def peak_mib(self) -> float:
        return max((max(s.values()) for _, s in self.samples if s), default=0) / 2**20

    def quarter_peaks_mib(self) -> list[float]:
        """Peak worker RSS in each quarter of the run (by time)."""
        if not self.samples:
            return []
        end = self.samples[-1][0] or 1.0
        peaks = [0.0] * 4
        for t, s in self.samples:
            q = min(3, int(4 * t / end))
            peaks[q] = max(peaks[q], max(s.values(), default=0) / 2**20)
        return peaks


def pipeline_run(cfg: Config, items: Path, n_workers: int, out: Path) -> dict[str, Any]:
    """One backfill of ``items`` on a warm LocalCluster of ``n_workers`` processes."""
    from distributed import get_task_stream

    from .cluster import make_client
    from .encoder import EncoderPlugin
    from .pipeline import Pipeline

    shutil.rmtree(out, ignore_errors=True)
    run_cfg = cfg.with_overrides(**{"source.path": str(items), "output": str(out)})
    cluster = run_cfg.cluster
    if cluster.kind == "local":
        cluster = ClusterConfig(
            kind="local",
            n_workers=n_workers,
            threads_per_worker=cluster.threads_per_worker,
            memory_limit=cluster.memory_limit,
            dashboard_address=":0",
        )
    with make_client(cluster) as client:
        if cluster.kind != "local":
            client.wait_for_workers(max(1, n_workers), timeout=600)

        def warm(dask_worker: Any) -> int:
            dask_worker.plugins[EncoderPlugin.name].get(run_cfg.model)
            return 1

        client.run(warm)
        pipe = Pipeline(run_cfg, client)
        try:
            sampler = Sampler(client, run_cfg.bench.memory_sample_seconds)
            with sampler, get_task_stream(client) as stream:
                t0 = time.perf_counter()
                report = pipe.run(progress=False)
                wall = time.perf_counter() - t0
            metrics = [a.metrics().result() for a in pipe.actors]
        finally:
            pipe.close()
        n_actual = len(client.scheduler_info()["workers"])
    spans: dict[str, float] = {}
    for task in stream.data:
        name = str(task["key"]).split("-", 1)[0]
        for part in task.get("startstops", ()):
            if part.get("action") == "compute":
                spans[name] = spans.get(name, 0.0) + part["stop"] - part["start"]
    grid_cells = report.cells
    n = report.applied + report.late
    tile_km2 = (run_cfg.bench.tile_px * 0.01) ** 2
    busy = sum(m.busy_seconds for m in metrics)
    updates = sum(m.cell_updates for m in metrics)
    store_bytes = _tree_bytes(run_cfg.layout.store)
    state_bytes = _tree_bytes(run_cfg.layout.state_dir)
    return {
        "blocks": report.blocks,
        "block_bytes_per_acquisition": report.block_bytes / max(1, report.embedded),
        "stage_seconds_per_acquisition": {
            k: v / max(1, n) for k, v in report.stage_seconds.items()
        },
        "store_bytes_per_acquisition": store_bytes / max(1, report.stored),
        "state_bytes_per_tile": state_bytes / max(1, run_cfg.bench.tiles),
        "actor_resident_state_mib": sum(m.resident_state_mib for m in metrics),
        "workers": n_actual,
        "acquisitions": n,
        "failed": len(report.failed),
        "wall_seconds": wall,
        "acquisitions_per_s": n / wall,
        "km2_per_s": n * tile_km2 / wall,
        "cells_per_s": grid_cells / wall,
        "stage_seconds": report.stage_seconds,
        "task_compute_seconds": spans,
        "peak_worker_memory_mib": sampler.peak_mib(),
        "worker_memory_quarter_peaks_mib": sampler.quarter_peaks_mib(),
        "gpu_utilisation_percent": (float(np.mean(sampler.gpu)) if sampler.gpu else None),
        "stats_cell_updates": updates,
        "stats_cell_updates_per_busy_s": updates / busy if busy else None,
        "anomaly_rows": report.anomaly_rows,
    }


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs; 64 MiB where it cannot be read)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except ValueError:
            continue
    return max(sizes, default=64 << 20)


def stats_bandwidth(
    dim: int, cells: int, repeats: int = 15, dtype: str = "float32"
) -> dict[str, Any]:
    """The statistics core at ``dim`` dimensions against a plain NumPy copy of the same bytes.

    Bytes moved per update: the embeddings read, the float32 mean state read and written, the
    per-cell scalars read and written. The copy baseline moves the same number of bytes (half
    read, half written) with ``np.copyto``. Both start from cold caches (a buffer twice the
    last-level cache is written before each timed call): an acquisition's embeddings are
    always new to the core, while a copy repeated on a buffer that fits the cache would be
    timed at cache speed, not memory speed. The two are timed alternately and the best of
    each compared (best-of-N keeps a noisy neighbour on a shared machine out of both), on one
    core. ``dtype`` is the embeddings as the core receives them: float16 as stored (the
    actor's path) or float32.
    """
    from .stats import StatsParams, TileState, update

    side = int(np.sqrt(cells))
    cy, cx = side, max(1, cells // side)
    c = cy * cx
    rng = np.random.default_rng(0)
    state = TileState.empty(cy, cx, dim)
    params = StatsParams(min_obs=2)
    clear = np.ones((cy, cx), np.float32)
    snow = np.zeros((cy, cx), np.float32)
    indices = rng.uniform(-0.2, 0.8, (cy, cx, 4)).astype(np.float32)
    # Distinct inputs up to ~1 GiB, then reused in turn: the cache flush before each timed call
    # makes a reused buffer as cold as a new one, and a full tile at 2048-d is 1 GB per input.
    one = c * dim * np.dtype(dtype).itemsize
    n_inputs = int(min(repeats + 3, max(2, 2**30 // max(1, one))))
    inputs = [
        rng.standard_normal((cy, cx, dim), dtype=np.float32).astype(dtype) for _ in range(n_inputs)
    ]
    embeddings = [inputs[k % n_inputs] for k in range(repeats + 3)]
    for k in range(3):  # warm state: scoring path active
        update(state, embeddings[k], clear, snow, indices, float(k * 5), params)
    scalars = state.n.nbytes + state.dist_mean.nbytes + state.dist_var.nbytes
    scalars += state.idx_mean.nbytes + state.last_day.nbytes
    moved = embeddings[0].nbytes + 2 * state.mean.nbytes + 2 * scalars
    src = np.ones(moved // 8, np.float32)  # moved/2 bytes read + moved/2 written
    dst = np.empty_like(src)
    np.copyto(dst, src)
    flush = np.zeros(2 * _last_level_cache_bytes() // 8, np.float64)
    t_update, t_copy = [], []
    for k in range(3, repeats + 3):
        flush += 1.0
        t0 = time.perf_counter()
        update(state, embeddings[k], clear, snow, indices, float(k * 5), params)
        t_update.append(time.perf_counter() - t0)
        flush += 1.0
        t1 = time.perf_counter()
        np.copyto(dst, src)
        t_copy.append(time.perf_counter() - t1)
    seconds = float(np.min(t_update))
    copy_bw = 2 * src.nbytes / float(np.min(t_copy))
    bw = moved / seconds
    return {
        "dim": dim,
        "cells": c,
        "embedding_dtype": dtype,
        "seconds_per_update": seconds,
        "cell_updates_per_s_per_core": c / seconds,
        "bytes_moved_per_update": int(moved),
        "bandwidth_gib_s": bw / 2**30,
        "numpy_copy_bandwidth_gib_s": copy_bw / 2**30,
        "share_of_copy": bw / copy_bw,
        "cold_caches": True,
    }


# ---------------------------------------------------------------- the run


def worker_steps(bench: BenchConfig) -> list[int]:
    if bench.workers:
        return list(bench.workers)
    cores = os.cpu_count() or 1
    steps, n = [], 1
    while n <= cores:
        steps.append(n)
        n *= 2
    return steps


def run_bench(cfg: Config, output: Path | None = None, log: Any = print) -> dict[str, Any]:
    """Everything the profile asks for; returns the record (also written as JSON)."""
    bench = cfg.bench
    out_dir = Path(output or bench.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "scratch"
    gpu_groups = cfg.cluster.has_gpu_groups
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "label": bench.label,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "software": software(),
        "config": cfg.model_dump(mode="json"),
    }
    record["gpu_measured"] = bool(record["hardware"]["gpus"])
    if bench.require_gpu and not record["gpu_measured"]:
        # No GPU here: say so in the record and the table, and make up no figure.
        record["gpu_note"] = "not measured: no GPU on this machine"
        log(f"[bench {bench.label}] {record['gpu_note']}")
        return _write_record(record, out_dir, bench)
    log(f"[bench {bench.label}] data: {bench.acquisitions} acquisitions x {bench.tiles} tile(s) "
        f"of {bench.tile_px} px")  # fmt: skip
    items = archive(bench, bench.tile_px, bench.acquisitions, bench.tiles)

    log("[bench] raw encoder on the same windows, one process …")
    raw = raw_encoder(cfg, items, bench.raw_blocks)
    record["raw_encoder"] = raw
    log(
        f"[bench]   {raw['acquisitions_per_s']:.3f} acquisitions/s, {raw['windows_per_s']:.2f} windows/s"
    )

    runs = []
    for n in worker_steps(bench):
        log(f"[bench] pipeline on {n} worker(s) …")
        r = pipeline_run(cfg, items, n, scratch / f"run-{n}")
        # The bound: one raw process per worker (CPU) or per GPU worker.
        encode_workers = (
            sum(g.n_workers for g in cfg.cluster.groups if g.gpus) if gpu_groups else r["workers"]
        )
        r["raw_bound_acquisitions_per_s"] = raw["acquisitions_per_s"] * max(1, encode_workers)
        r["share_of_raw_encoder"] = r["acquisitions_per_s"] / r["raw_bound_acquisitions_per_s"]
        runs.append(r)
        log(f"[bench]   {r['acquisitions_per_s']:.3f} acquisitions/s = "
            f"{r['share_of_raw_encoder']:.0%} of the raw bound; peak worker "
            f"{r['peak_worker_memory_mib']:.0f} MiB")  # fmt: skip
    base = runs[0]["acquisitions_per_s"] / max(1, runs[0]["workers"])
    for r in runs:
        r["scaling_efficiency"] = r["acquisitions_per_s"] / (base * max(1, r["workers"]))
    record["runs"] = runs
    top = max(runs, key=lambda r: r["workers"])
    record["pipeline_share_of_raw_encoder"] = top["share_of_raw_encoder"]
    stages = top["stage_seconds"]
    record["bottleneck_stage"] = max(
        (s for s in stages if s != "encode"), key=lambda s: stages[s], default=None
    )

    if bench.long_acquisitions:
        n_long = bench.long_acquisitions
        log(f"[bench] long backfill: {n_long} acquisitions of {bench.long_tile_px} px …")
        long_items = archive(bench, bench.long_tile_px, n_long, 1)
        lr = pipeline_run(
            cfg.with_overrides(**{"bench.tile_px": bench.long_tile_px}),
            long_items,
            max(worker_steps(bench)),
            scratch / "long",
        )
        q = lr["worker_memory_quarter_peaks_mib"]
        lr["memory_first_to_last_quarter_change"] = (q[3] - q[0]) / q[0] if q and q[0] else None
        record["long_backfill"] = lr
        log(f"[bench]   worker peak by quarter {[round(v) for v in q]} MiB")

    record["stats_core"] = []
    for dim in bench.stats_dims:
        for dtype in ("float32", "float16"):
            s = stats_bandwidth(dim, bench.stats_cells, dtype=dtype)
            record["stats_core"].append(s)
            log(f"[bench] stats core {dim}-d ({dtype} in): "
                f"{s['cell_updates_per_s_per_core']:.0f} cell-updates/s per core, "
                f"{s['share_of_copy']:.0%} of a NumPy copy's bandwidth")  # fmt: skip
    if not record["gpu_measured"]:
        record["gpu_note"] = "no GPU on this machine: GPU figures not measured"
    shutil.rmtree(scratch, ignore_errors=True)
    return _write_record(record, out_dir, bench)


def _write_record(record: dict[str, Any], out_dir: Path, bench: BenchConfig) -> dict[str, Any]:
    stamp = record["time"].replace(":", "").replace("-", "")
    path = out_dir / f"{bench.label}-{stamp}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    record["path"] = str(path)
    update_results_md(Path(bench.results_md), record)
    return record


# ---------------------------------------------------------------- reporting

_TABLE_START = "<!-- bench-table:start -->"
_TABLE_END = "<!-- bench-table:end -->"
_HEADER = (
    "| profile | when | machine | workers | acq/s | km²/s | cells/s | raw bound acq/s | "
    "share of raw | bottleneck (non-encode) | peak worker MiB | long-run memory Δ | "
    "stats 128-d / 2048-d cell-updates/s/core, float16 as stored (share of copy) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def table_row(record: dict[str, Any]) -> str:
    hw = record["hardware"]
    machine = f"{hw['cores']}-core {hw['cpu'][:40]}".strip()
    if hw["gpus"]:
        machine += f", {hw['gpus'][0]['name']}"
    if not record.get("runs"):
        note = record.get("gpu_note", "not measured")
        return (
            f"| {record['label']} | {record['time'][:16]} | {machine} | "
            + " | ".join([note] + [""] * 9)
            + " |"
        )
    top = max(record["runs"], key=lambda r: r["workers"])
    long = record.get("long_backfill") or {}
    change = long.get("memory_first_to_last_quarter_change")
    # the actor hands the core the store's float16 as read
    stats = " / ".join(
        f"{s['cell_updates_per_s_per_core']:.3g} ({s['share_of_copy']:.0%})"
        for s in record["stats_core"]
        if s.get("embedding_dtype", "float32") == "float16"
    )
    return (
        f"| {record['label']} | {record['time'][:16]} | {machine} | {top['workers']} | "
        f"{top['acquisitions_per_s']:.3f} | {top['km2_per_s']:.2f} | {top['cells_per_s']:.0f} | "
        f"{top['raw_bound_acquisitions_per_s']:.3f} | {top['share_of_raw_encoder']:.0%} | "
        f"{record.get('bottleneck_stage')} | {top['peak_worker_memory_mib']:.0f} | "
        f"{'' if change is None else f'{change:+.1%}'} | {stats} |"
    )


def update_results_md(path: Path, record: dict[str, Any]) -> None:
    """Add the record's row to the summary table (one row per profile: the latest replaces)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if _TABLE_START not in text:
        text += f"\n## Summary (`streamembed bench`)\n\n{_TABLE_START}\n{_HEADER}\n{_TABLE_END}\n"
    head, rest = text.split(_TABLE_START, 1)
    table, tail = rest.split(_TABLE_END, 1)
    rows = [
        ln for ln in table.strip().splitlines()[2:] if not ln.startswith(f"| {record['label']} |")
    ]
    rows.append(table_row(record))
    path.write_text(
        f"{head}{_TABLE_START}\n{_HEADER}\n" + "\n".join(rows) + f"\n{_TABLE_END}{tail}"
    )


def plot(results_dir: Path, png: Path) -> Path:
    """Pipeline vs raw-encoder throughput of the latest record per profile, and scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("schema") == SCHEMA and rec.get("runs"):
            latest[rec["label"]] = rec
    if not latest:
        raise ValueError(f"no benchmark records in {results_dir}; run streamembed bench first")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    labels = list(latest)
    x = np.arange(len(labels))
    pipe = [
        max(r["runs"], key=lambda r: r["workers"])["acquisitions_per_s"] for r in latest.values()
    ]
    raw = [
        max(r["runs"], key=lambda r: r["workers"])["raw_bound_acquisitions_per_s"]
        for r in latest.values()
    ]
    ax1.bar(x - 0.2, raw, 0.4, label="raw encoder bound", color="#bbbbbb")
    ax1.bar(x + 0.2, pipe, 0.4, label="whole pipeline", color="#1f78b4")
    ax1.set_xticks(x, labels)
    ax1.set_ylabel("acquisitions / s")
    ax1.set_title("Throughput (same run)")
    ax1.legend(fontsize=8)
    for label, rec in latest.items():
        w = [r["workers"] for r in rec["runs"]]
        ax2.plot(w, [r["acquisitions_per_s"] for r in rec["runs"]], "o-", label=label)
    ax2.set_xlabel("workers")
    ax2.set_ylabel("acquisitions / s")
    ax2.set_title("Scaling")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
