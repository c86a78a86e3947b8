"""The streaming graph on a dask.distributed Client: source -> ingest -> embed -> store -> stats -> sink.

Embedding is stateless and parallel (a bounded number of acquisitions in flight); applying to
the statistics is strictly ordered by acquisition time per tile, one actor shard per group of
tiles. The ledger records every step, so a rerun or a restart resumes where the last one stopped
and never embeds, applies or writes anything twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, Lock, get_worker, wait

from .acquisition import Acquisition, latest_baselines
from .actor import ALREADY, LATE, StatsActor, shard_of
from .config import Config
from .encoder import EncoderPlugin, ModelIdentity, model_identity
from .ingest import IngestError, SceneWindows, grid_for, prepare_scene, required_assets
from .ledger import APPLIED, EMBEDDED, FAILED, FINAL, SEEN, SKIPPED, Ledger
from .ledger import LATE as LEDGER_LATE
from .sources import discover_for, source_key
from .store import EmbeddingBatch, EmbeddingStore

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- worker tasks


def store_path(cfg: Config) -> Path:
    return cfg.output_dir / "embeddings.zarr"


def ingest_task(acq: Acquisition, cfg: Config) -> SceneWindows:
    """Read, mask and normalise one acquisition onto its tile's fixed grid (CPU work)."""
    store = EmbeddingStore(store_path(cfg), cfg.store)
    grid = store.grid(acq.tile) or grid_for(acq, cfg.ingest.cell_size)
    return prepare_scene(acq, grid, cfg.ingest, cfg.model)


def store_attrs(identity: ModelIdentity, cfg: Config) -> dict[str, Any]:
    return {
        "model_id": identity.model_id,
        "model_weights": identity.weights,
        "model_seeded": identity.seeded,
        "model_arch": cfg.model.arch,
        "bands": list(cfg.model.bands),
        "normalisation": cfg.model.normalisation,
        "window_px": cfg.ingest.window,
        "margin_px": cfg.ingest.margin,
        "scl_mask_classes": list(cfg.ingest.scl_mask_classes),
        "Conventions": "CF-1.8",
        "source_note": "Contains modified Copernicus Sentinel data where the input is real",
    }


def encode_task(scene: SceneWindows, acq: Acquisition, cfg: Config) -> dict[str, Any]:
    """Encode on this worker's resident model and append to the store (serialised per tile)."""
    plugin = get_worker().plugins[EncoderPlugin.name]
    encoder = plugin.get(cfg.model)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    embedding = encoder.embed_scene(scene)
    t1 = time.perf_counter()
    batch = EmbeddingBatch(
        acquisition_id=acq.id,
        tile=acq.tile,
        time=acq.datetime,
        grid=scene.grid,
        embedding=embedding,
        clear=scene.clear,
        snow=scene.snow,
        indices=scene.indices,
    )
    store = EmbeddingStore(store_path(cfg), cfg.store)
    with Lock(f"streamembed-store-{acq.tile}"):
        t2 = time.perf_counter()
        written = store.append(batch, store_attrs(encoder.identity, cfg))
    timings = {
        **scene.timings,
        "encode": t1 - t0,
        "store_lock": t2 - t1,
        "store_append": time.perf_counter() - t2,
    }
    return {
        "written": written,
        "cells": int(embedding.shape[0] * embedding.shape[1]),
        "timings": timings,
    }


# ---------------------------------------------------------------- driver


def task_resources(
    cfg: Config, client: Client
) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    """Where encode and read/mask tasks may run: GPU-tagged workers encode, the others read.

    From the config (jobqueue/kubernetes GPU groups, whose workers may still be queued) or,
    for a running scheduler, from the resources its workers advertise. With no GPU workers
    every task runs anywhere.
    """
    workers = client.scheduler_info().get("workers", {}).values()
    advertised = {r for w in workers for r in (w.get("resources") or {})}
    gpu = cfg.cluster.has_gpu_groups or "GPU" in advertised
    cpu = cfg.cluster.has_gpu_groups or "CPU" in advertised
    if gpu and not cpu:
        log.warning(
            "GPU-tagged workers but no CPU-tagged ones: read/mask tasks may also run on GPU "
            "workers (start CPU workers with --resources CPU=<threads> to keep them apart)"
        )
    return ({"GPU": 1} if gpu else None), ({"CPU": 1} if cpu else None)


@dataclass
class RunReport:
    """What one backfill or monitor cycle did."""

    discovered: int = 0
    new: int = 0
    embedded: int = 0
    stored: int = 0
    applied: int = 0
    replayed: int = 0
    late: int = 0
    anomaly_rows: int = 0
    files: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_done: int = 0
    stopped_early: bool = False
    # seconds summed over acquisitions, per stage (worker-side timings)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    cells: int = 0

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + float(seconds)

    @property
    def nothing_new(self) -> bool:
        return not (
            self.embedded
            or self.applied
            or self.failed
            or self.late
            or self.replayed
            or self.skipped
        )

    def lines(self) -> list[str]:
        if self.nothing_new:
            return [
                f"Nothing new: all {self.discovered} acquisitions were already processed; "
                "no embedding, anomaly row or file was written."
            ]
        out = [
            f"{self.discovered} acquisitions in the source, {self.new} new this run.",
            f"embedded {self.embedded} (stored {self.stored}), applied {self.applied}"
            + (f" (+{self.replayed} replayed after a lost checkpoint)" if self.replayed else "")
            + f", late {self.late}, failed {len(self.failed)}, skipped {len(self.skipped)}.",
            f"anomalies: {self.anomaly_rows} rows in {len(self.files)} new files.",
        ]
        for acq_id, reason in self.failed[:10]:
            out.append(f"  failed {acq_id}: {reason}")
        if len(self.failed) > 10:
            out.append(f"  … and {len(self.failed) - 10} more (streamembed status --failed)")
        for acq_id, reason in self.skipped[:10]:
            out.append(f"  skipped {acq_id}: {reason}")
        if self.stopped_early:
            out.append("stopped on request; the rest resumes on the next run.")
        return out


class Pipeline:
    """One output directory processed on one Client; reused across monitor cycles."""

    def __init__(self, cfg: Config, client: Client):
        self.cfg = cfg
        self.client = client
        self.out = cfg.output_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.identity = model_identity(cfg.model)
        if self.identity.seeded:
            log.warning(
                "No model.checkpoint configured: the encoder uses %s. Embeddings are only "
                "comparable within this store; point model.checkpoint at SSL4EO-S12 weights "
                "for meaningful features.",
                self.identity.weights,
            )
        self.ledger = Ledger(self.out / "ledger.sqlite")
        self.encode_resources, self.ingest_resources = task_resources(cfg, client)
        self.store = EmbeddingStore(store_path(cfg), cfg.store)
        # Unique keys (actors and tasks): several pipelines (outputs, configs) may share one
        # long-running cluster, and a task key seen before returns the old result.
        token = self.token = uuid.uuid4().hex[:8]
        self._actor_futures = [
            client.submit(
                StatsActor,
                str(self.out),
                cfg.stats,
                cfg.store,
                self.identity.model_id,
                actor=True,
                key=f"streamembed-stats-shard-{k}-{token}",
            )
            for k in range(cfg.stats.shards)
        ]
        self.actors: list[Any] = [f.result() for f in self._actor_futures]

    def close(self) -> None:
        self.checkpoint()
        self.ledger.close()
        self.actors = []
        for fut in self._actor_futures:
            fut.release()

    def checkpoint(self) -> None:
        for actor in self.actors:
            actor.checkpoint().result()

    def _actor(self, tile: str) -> Any:
        return self.actors[shard_of(tile, len(self.actors))]

    def run(
        self,
        retry_failed: bool = False,
        stop: Callable[[], bool] = lambda: False,
        progress: bool = True,
        incremental: bool = False,
    ) -> RunReport:
        """Discover, embed what is new, apply in time order, write anomalies.

        ``incremental``: a STAC source searches only from its watermark minus the overlap (the
        daemon's polls); otherwise the whole configured window (backfill).
        """
        cfg = self.cfg
        key = source_key(cfg)
        watermark = self.ledger.watermark(key) if incremental else None
        acqs, failures = discover_for(cfg, watermark)
        report = RunReport(discovered=len(acqs) + len(failures))
        known = self.ledger.states()
        for f in failures:
            if known.get(f.key) != FAILED:
                self.ledger.record_failure_seen(f.key, "?", "", f.href, f.reason)
                report.failed.append((f.key, f.reason))
        report.new = self.ledger.record_seen(acqs)
        states = self.ledger.states()
        acqs = self._one_baseline_each(acqs, states, report)
        retry = {FAILED} if retry_failed else set()
        work: list[Acquisition] = []
        for a in acqs:
            st = states[a.id]
            if st not in {SEEN, EMBEDDED} | retry:
                continue
            try:
                reason = a.missing_reason(required_assets(a, cfg.ingest, cfg.model))
            except IngestError as err:
                reason = str(err)
            if reason:
                if st != FAILED:
                    self.ledger.set_state(a.id, FAILED, reason)
                    report.failed.append((a.id, reason))
                states[a.id] = FAILED
                continue
            if st == FAILED:
                states[a.id] = SEEN
            work.append(a)
        replay = self._replay_plan(states)
        report.already_done = len(acqs) - len(work)
        by_tile: dict[str, deque[Acquisition]] = {}
        for a in sorted(replay + work, key=lambda a: (a.tile, a.datetime, a.id)):
            by_tile.setdefault(a.tile, deque()).append(a)
        to_embed = deque(a for a in work if states[a.id] == SEEN)
        if not work and not replay:
            self._advance_watermark(key, acqs)
            return report
        bar = _progress(len(work), progress)
        replay_ids = {a.id for a in replay}
        pending: dict[Future, Acquisition] = {}
        try:
            while True:
                while to_embed and len(pending) < cfg.pipeline.max_in_flight and not stop():
                    a = to_embed.popleft()
                    scene = self.client.submit(
                        ingest_task,
                        a,
                        cfg,
                        key=f"ingest-{a.id}-{self.token}",
                        pure=False,
                        resources=self.ingest_resources,
                    )
                    fut = self.client.submit(
                        encode_task,
                        scene,
                        a,
                        cfg,
                        key=f"encode-{a.id}-{self.token}",
                        pure=False,
                        resources=self.encode_resources,
                    )
                    pending[fut] = a
                self._apply_ready(by_tile, states, replay_ids, report, bar)
                if not pending:
                    if not to_embed or stop():
                        break
                    continue
                done, _ = wait(list(pending), timeout=5, return_when="FIRST_COMPLETED")
                for fut in done:
                    a = pending.pop(fut)
                    self._embedded(fut, a, states, report, bar)
        finally:
            for fut in pending:
                fut.cancel()
            bar.close()
        report.stopped_early = bool(to_embed) or any(by_tile.values())
        self.checkpoint()
        self._advance_watermark(key, acqs)
        return report

    def _one_baseline_each(
        self, acqs: list[Acquisition], states: dict[str, str], report: RunReport
    ) -> list[Acquisition]:
        """The reprocessing rule (docs/operations.md): one product per acquisition.

        Of products listed together, the newest processing baseline is processed and the
        others are skipped. A newer baseline of an acquisition already embedded is skipped:
        the statistics and the published anomalies keep the product they were built from.
        """
        kept, dropped = latest_baselines(acqs)
        for old, new in dropped:
            if states[old.id] == SEEN:
                reason = (
                    f"processing baseline {old.processing_baseline} superseded by "
                    f"{new.id} (baseline {new.processing_baseline})"
                )
                self._skip(old.id, reason, states, report)
        for a in kept:
            if states[a.id] != SEEN:
                continue
            row = self.ledger.processed_at(a.tile, a.datetime)
            if row is not None and row.id != a.id:
                reason = (
                    f"reprocessing (baseline {a.processing_baseline}) of {row.id}, already "
                    f"{row.state}; the statistics keep the first product (rebuild the tile "
                    "from a new --output to switch)"
                )
                self._skip(a.id, reason, states, report)
        return [a for a in kept if states[a.id] != SKIPPED]

    def _skip(self, acq_id: str, reason: str, states: dict[str, str], report: RunReport) -> None:
        self.ledger.set_state(acq_id, SKIPPED, reason)
        states[acq_id] = SKIPPED
        report.skipped.append((acq_id, reason))

    def _advance_watermark(self, key: str, acqs: list[Acquisition]) -> None:
        """Move the source's watermark to where every discovered product is final."""
        if not acqs or not self.cfg.source.is_stac_api:
            return
        states = self.ledger.states()
        open_ = [a.datetime for a in acqs if states.get(a.id) not in FINAL]
        self.ledger.set_watermark(key, min(open_) if open_ else max(a.datetime for a in acqs))

    def _replay_plan(self, states: dict[str, str]) -> list[Acquisition]:
        """Applied acquisitions missing from a tile's state (a checkpoint older than the ledger).

        Taken from the ledger, not the source: an incremental poll does not list old products,
        and a replay reads the store only.
        """
        import datetime as dt

        replay: list[Acquisition] = []
        by_tile: dict[str, list[Acquisition]] = {}
        for r in self.ledger.rows(APPLIED):
            when = dt.datetime.fromisoformat(r.datetime)
            a = Acquisition(r.id, r.tile, when, None, {}, item_href=r.item_href)
            by_tile.setdefault(r.tile, []).append(a)
        for tile, applied in by_tile.items():
            in_state = set(self._actor(tile).applied_ids(tile).result())
            missing = [a for a in applied if a.id not in in_state]
            if missing:
                log.warning(
                    "tile %s: replaying %d acquisitions the last checkpoint missed",
                    tile,
                    len(missing),
                )
                for a in missing:
                    states[a.id] = EMBEDDED
                replay += missing
        return replay

    def _embedded(
        self, fut: Future, a: Acquisition, states: dict[str, str], report: RunReport, bar: Any
    ) -> None:
        try:
            result = fut.result()
        except Exception as err:  # a task error names its input; keep the rest going
            reason = _one_line(err)
            log.error("acquisition %s failed: %s", a.id, reason)
            self.ledger.set_state(a.id, FAILED, reason)
            states[a.id] = FAILED
            report.failed.append((a.id, reason))
            bar.update(1)
            return
        self.ledger.set_state(a.id, EMBEDDED)
        states[a.id] = EMBEDDED
        report.embedded += 1
        report.stored += int(result["written"])
        report.cells += int(result["cells"])
        report.add_timings(result.get("timings", {}))

    def _apply_ready(
        self,
        by_tile: dict[str, deque[Acquisition]],
        states: dict[str, str],
        replay_ids: set[str],
        report: RunReport,
        bar: Any,
    ) -> None:
        """Apply each tile's next acquisitions while they are embedded (strict time order)."""
        for tile, queue in by_tile.items():
            while queue:
                a = queue[0]
                st = states[a.id]
                if st == FAILED:
                    queue.popleft()
                    continue
                if st != EMBEDDED:
                    break
                queue.popleft()
                res = self._actor(tile).apply(tile, a.id).result()
                report.add_timings(res.get("timings", {}))
                if a.id in replay_ids:
                    report.replayed += 1
                    states[a.id] = APPLIED
                    continue
                if res["status"] == LATE:
                    reason = (
                        f"acquired {a.datetime.isoformat()} before tile {tile}'s last applied "
                        "acquisition: embedded and stored, not applied to the statistics"
                    )
                    self.ledger.set_state(a.id, LEDGER_LATE, reason)
                    states[a.id] = LEDGER_LATE
                    report.late += 1
                else:
                    self.ledger.set_state(
                        a.id,
                        APPLIED,
                        n_anomalies=res["n_anomalies"],
                        snow_cells=res.get("snow_cells"),
                        masked_cells=res.get("masked_cells"),
                    )
                    states[a.id] = APPLIED
                    report.applied += 1
                    if res["status"] != ALREADY:
                        report.anomaly_rows += res["n_anomalies"]
                        if res["path"]:
                            report.files.append(res["path"])
                bar.update(1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else ""
    return msg if msg else type(err).__name__


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="acq", desc="backfill", dynamic_ncols=True)
