"""The measurements: the raw encoder, a whole backfill on a warm cluster, the statistics core,
and the two read paths. Each returns its typed record; nothing here is asserted against a time.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...config import ClusterConfig, Config
from ...storage import tree_bytes
from .machine import last_level_cache_bytes
from .records import PipelineRun, RawEncoder, ReadPaths, StatsCore

if TYPE_CHECKING:
    from distributed import Client

    from ...runtime.actor import ShardMetrics
    from ...runtime.report import RunReport


# ---------------------------------------------------------------- the raw encoder


def raw_encoder(cfg: Config, items: Path, max_blocks: int | None = None) -> RawEncoder:
    """The encoder alone on the prepared blocks of every acquisition, in this process.

    ``max_blocks``: time only the first blocks (a full tile's blocks do not fit in memory at
    once); the rates are per window and per cell, so they compare with the pipeline's.
    """
    from ...runtime.encoder import Encoder
    from ...runtime.ingest import BlockPixels, grid_for, read_block_pixels
    from ...runtime.windows import plan_blocks
    from ...sources import discover

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
    return RawEncoder(
        acquisitions=len({p.acquisition_id for p in blocks}),
        windows=windows,
        seconds=seconds,
        # per window, expressed per whole acquisition (the timed blocks may be a sample)
        acquisitions_per_s=windows / seconds / windows_per_acquisition,
        windows_per_s=windows / seconds,
        cells_per_s=cells / seconds,
        device=str(encoder.device),
        torch_threads=cfg.model.torch_threads,
        blocks=len(blocks),
        windows_per_acquisition=windows_per_acquisition,
    )


# ---------------------------------------------------------------- worker memory


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

    client: Client
    every: float
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    gpu: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self.client.run(_worker_sample)  # one round trip per sample
                rss = {w: r for w, (r, _) in sample.items()}
                self.samples.append((time.perf_counter() - self._t0, rss))
                self.gpu.extend(u for _, u in sample.values() if u is not None)
            except Exception:  # a worker restarting mid-sample: skip this sample
                pass
            self._stop.wait(self.every)

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


# ---------------------------------------------------------------- the whole pipeline


@dataclass(frozen=True)
class _Backfill:
    """What one timed backfill left behind, before it is summarised."""

    report: RunReport
    wall: float
    metrics: list[ShardMetrics]
    task_seconds: dict[str, float]
    workers: int


def pipeline_run(
    cfg: Config,
    items: Path,
    n_workers: int,
    out: Path,
    tile_px: int,
    tiles: int,
    sample_seconds: float,
) -> PipelineRun:
    """One backfill of ``items`` on a warm cluster of ``n_workers`` (local) processes."""
    shutil.rmtree(out, ignore_errors=True)
    run_cfg = cfg.with_overrides(**{"source.path": str(items), "output": str(out)})
    sampler, run = _timed_backfill(run_cfg, n_workers, sample_seconds)
    report, n = run.report, run.report.applied + run.report.late
    busy = sum(m.busy_seconds for m in run.metrics)
    updates = sum(m.cell_updates for m in run.metrics)
    per_acquisition = max(1, n)
    return PipelineRun(
        workers=run.workers,
        acquisitions=n,
        failed=len(report.failed),
        wall_seconds=run.wall,
        acquisitions_per_s=n / run.wall,
        km2_per_s=n * (tile_px * 0.01) ** 2 / run.wall,
        cells_per_s=report.cells / run.wall,
        stage_seconds=report.stage_seconds.as_dict(),
        task_compute_seconds=run.task_seconds,
        peak_worker_memory_mib=sampler.peak_mib(),
        worker_memory_quarter_peaks_mib=sampler.quarter_peaks_mib(),
        gpu_utilisation_percent=float(np.mean(sampler.gpu)) if sampler.gpu else None,
        stats_cell_updates=updates,
        stats_cell_updates_per_busy_s=updates / busy if busy else None,
        anomaly_rows=report.anomaly_rows,
        blocks=report.blocks,
        block_bytes_per_acquisition=report.block_bytes / max(1, report.embedded),
        stage_seconds_per_acquisition={
            k: v / per_acquisition for k, v in report.stage_seconds.as_dict().items()
        },
        store_bytes_per_acquisition=tree_bytes(run_cfg.layout.store) / max(1, report.stored),
        state_bytes_per_tile=tree_bytes(run_cfg.layout.state_dir) / tiles,
        actor_resident_state_mib=sum(m.resident_state_mib for m in run.metrics),
    )


def warm_encoders(client: Any, cfg: Config) -> None:
    """Load the encoder on every worker before a timed run (as a daemon's are, once)."""
    from ...runtime.encoder import EncoderPlugin

    def warm(dask_worker: Any) -> int:
        dask_worker.plugins[EncoderPlugin.name].get(cfg.model)
        return 1

    client.run(warm)


def _timed_backfill(
    cfg: Config, n_workers: int, sample_seconds: float
) -> tuple[Sampler, _Backfill]:
    from distributed import get_task_stream

    from ...deployment.cluster import make_client
    from ...runtime.pipeline import Pipeline

    cluster = cfg.cluster
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

        warm_encoders(client, cfg)  # a daemon loads its model once: time the warm pipeline
        pipe = Pipeline(cfg, client)
        try:
            with Sampler(client, sample_seconds) as sampler, get_task_stream(client) as stream:
                t0 = time.perf_counter()
                report = pipe.run(progress=False)
                wall = time.perf_counter() - t0
            metrics = [a.metrics().result() for a in pipe.actors]
        finally:
            pipe.close()
        workers = len(client.scheduler_info()["workers"])
    return sampler, _Backfill(report, wall, metrics, _compute_seconds(stream.data), workers)


def _compute_seconds(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Compute seconds per task prefix (read, encode, …) from the task stream."""
    spans: dict[str, float] = {}
    for task in tasks:
        name = str(task["key"]).split("-", 1)[0]
        for part in task.get("startstops", ()):
            if part.get("action") == "compute":
                spans[name] = spans.get(name, 0.0) + part["stop"] - part["start"]
    return spans


# ---------------------------------------------------------------- the statistics core


def stats_bandwidth(dim: int, cells: int, repeats: int = 15, dtype: str = "float32") -> StatsCore:
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
    from ...config import StatsConfig
    from ...detection.stats import TileState, update
    from ...indices import INDEX_NAMES

    side = int(np.sqrt(cells))
    cy, cx = side, max(1, cells // side)
    rng = np.random.default_rng(0)
    params = StatsConfig(min_obs=2)
    state = TileState.empty(cy, cx, dim, dtype=params.state_dtype)
    clear = np.ones((cy, cx), np.float32)
    snow = np.zeros((cy, cx), np.float32)
    indices = rng.uniform(-0.2, 0.8, (cy, cx, len(INDEX_NAMES))).astype(np.float32)
    embeddings = _inputs(rng, (cy, cx, dim), dtype, repeats + 3)
    for k in range(3):  # warm state: scoring path active
        update(state, embeddings[k], clear, snow, indices, float(k * 5), params)
    # embeddings read; the mean state and the per-cell scalars read and written
    moved = embeddings[0].nbytes + 2 * state.nbytes
    src = np.ones(moved // 8, np.float32)  # moved/2 bytes read + moved/2 written
    dst = np.empty_like(src)
    np.copyto(dst, src)
    flush = np.zeros(2 * last_level_cache_bytes() // 8, np.float64)
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
    return StatsCore(
        dim=dim,
        cells=cy * cx,
        seconds_per_update=seconds,
        cell_updates_per_s_per_core=cy * cx / seconds,
        bytes_moved_per_update=int(moved),
        bandwidth_gib_s=moved / seconds / 2**30,
        numpy_copy_bandwidth_gib_s=copy_bw / 2**30,
        share_of_copy=moved / seconds / copy_bw,
        embedding_dtype=dtype,
        cold_caches=True,
    )


def _inputs(
    rng: np.random.Generator, shape: tuple[int, int, int], dtype: str, n: int
) -> list[np.ndarray]:
    """``n`` embeddings inputs: distinct up to ~1 GiB, then reused in turn (the cache flush
    before each timed call makes a reused buffer as cold as a new one; a full tile at 2048-d
    is 1 GB per input)."""
    one = int(np.prod(shape)) * np.dtype(dtype).itemsize
    distinct = int(min(n, max(2, 2**30 // max(1, one))))
    inputs = [rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(distinct)]
    return [inputs[k % distinct] for k in range(n)]


# ---------------------------------------------------------------- the read paths


def read_paths(cfg: Config, items: Path, scenes: int) -> ReadPaths | None:
    """Our windowed reads against odc-stac's load of the same 10 m grid, values compared.

    None where odc-stac is not installed (it is an optional reference, not a dependency).
    """
    try:
        import odc.stac
        import pystac
        from odc.geo.geobox import GeoBox
    except ImportError:
        return None
    from ...acquisition import BANDS_L2A
    from ...runtime.ingest import grid_for, open_bands, read_dn
    from ...sources import discover

    acqs, _ = discover(items, cfg.source.band_mapping, BANDS_L2A)
    bands = list(BANDS_L2A)
    ours, theirs, equal = [], [], True
    for acq in acqs[:scenes]:
        grid = grid_for(acq, cfg.ingest.cell_size)
        t0 = time.perf_counter()
        with open_bands(acq, bands) as opened:
            dn, scl, _ = read_dn(
                acq, opened, grid, (0, grid.height), (0, grid.width), bands, "nearest"
            )
        ours.append(time.perf_counter() - t0)
        item = pystac.Item.from_file(acq.item_href)
        item.make_asset_hrefs_absolute()
        geobox = GeoBox.from_bbox(
            (grid.x0, grid.y0 - grid.height * 10.0, grid.x0 + grid.width * 10.0, grid.y0),
            crs=f"EPSG:{grid.epsg}",
            resolution=10.0,
        )
        keys = [acq.assets[b].key for b in [*bands, "SCL"]]
        t0 = time.perf_counter()
        ds = odc.stac.load([item], bands=keys, geobox=geobox, resampling="nearest").load()
        theirs.append(time.perf_counter() - t0)
        equal &= all(
            np.array_equal(ds[acq.assets[b].key].values[0], dn[i]) for i, b in enumerate(bands)
        )
        equal &= bool((ds[acq.assets["SCL"].key].values[0] == scl).all())
    if not ours:
        return None
    return ReadPaths(len(ours), statistics.median(ours), statistics.median(theirs), equal)
