"""The streaming graph on a dask.distributed Client: source -> ingest -> embed -> store -> stats -> sink.

Embedding is stateless and parallel (a bounded number of acquisitions in flight); applying to
the statistics is strictly ordered by acquisition time per tile, one actor shard per group of
tiles. The ledger records every step, so a rerun or a restart resumes where the last one stopped
and never embeds, applies or writes anything twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from distributed import Client, Future, KilledWorker, get_worker, wait
from tqdm import tqdm

from ..acquisition import Acquisition
from ..config import Config
from ..faults import crash_point
from ..grid import TileGrid
from ..layout import OutputFullError, is_disk_full
from ..outputs.catalog import write_catalog
from ..outputs.ledger import FINAL, Failure, Ledger, State
from ..outputs.store import EmbeddingStore, Provenance, Reservation, StoreMismatchError
from ..sources import SourceFailure, discover_for, source_key
from ..storage import ensure_writable
from .actor import ApplyResult, ApplyStatus, StatsActor, StatsShard, shard_of
from .encoder import EMBEDDING_DIM, EncoderPlugin, ModelIdentity, model_identity
from .ingest import (
    Block,
    BlockPixels,
    CorruptAssetError,
    GridMismatchError,
    IngestError,
    TransientReadError,
    block_cells,
    grid_for,
    plan_blocks,
    read_block_pixels,
    required_assets,
)
from .plan import RunPlan, TileSequencer, plan_run
from .stages import DriverSeconds, StageSeconds

log = logging.getLogger(__name__)
# How often the driver looks at applies in flight while it waits (actor futures cannot join
# distributed.wait)
APPLY_POLL_SECONDS = 0.02
# no apply finished for this long while a run ends: the actors are stuck, not busy (a full
# tile's apply takes seconds)
APPLY_STALL_SECONDS = 600.0
# One line per acquisition and stage (stored, applied), with its fields as `extra` for
# --log-format json; the CLI quiets it under a progress bar.
events = logging.getLogger("streamembed.events")


# ---------------------------------------------------------------- worker tasks


def read_task(acq: Acquisition, grid: TileGrid, block: Block, cfg: Config) -> BlockPixels:
    """Read and mask one block of an acquisition (CPU work; compact DN + mask out)."""
    crash_point("read")
    try:
        return read_block_pixels(acq, grid, block, cfg.ingest, cfg.model)
    except IngestError as err:
        error = type(err)(*err.args)
    # Raised outside the handler, without the chain: distributed pickles a task's exception
    # with its causes, and rasterio's errors do not unpickle, so a chained error reaches the
    # driver as a bare Exception and its class (transient, corrupt, grid) is lost.
    raise error


@dataclass(frozen=True)
class BlockResult:
    """One block encoded and written into its acquisition's reserved time step."""

    acquisition_id: str
    block: int
    cells: int
    bytes_in: int  # what the read task handed to this one (DN, mask, cell summaries)
    seconds: StageSeconds


def encode_task(pixels: BlockPixels, reservation: Reservation, cfg: Config) -> BlockResult:
    """Encode a block on this worker's resident model and write it into the store by region."""
    plugin = get_worker().plugins[EncoderPlugin.name]
    encoder = plugin.get(cfg.model)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    embedding = encoder.embed_block(pixels, cfg.model.normalisation, cfg.ingest.cell_size)
    t1 = time.perf_counter()
    crash_point("encode")
    block = pixels.block
    EmbeddingStore(cfg.layout.store, cfg.store).write_block(
        reservation, block.cells_y, block.cells_x, embedding, pixels.clear, pixels.snow,
        pixels.indices,
    )  # fmt: skip
    seconds = StageSeconds(
        read_decode_resample=pixels.read_seconds,
        mask_normalise=pixels.mask_seconds,
        encode=t1 - t0,
        store_write=time.perf_counter() - t1,
    )
    return BlockResult(
        pixels.acquisition_id, block.index, block.shape[0] * block.shape[1], pixels.nbytes, seconds
    )


def software_versions() -> tuple[str, ...]:
    """The libraries that compute an embedding, "name version" (the store records them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("streamembed", "torch", "numpy", "rasterio"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return tuple(out)


def provenance(identity: ModelIdentity, cfg: Config) -> Provenance:
    """What the store records about how this run's embeddings are made."""
    return Provenance(
        model_id=identity.model_id,
        model_weights=identity.weights,
        model_seeded=identity.seeded,
        model_arch=cfg.model.arch,
        bands=cfg.model.bands,
        normalisation=cfg.model.normalisation,
        window_px=cfg.ingest.window,
        margin_px=cfg.ingest.margin,
        scl_mask_classes=cfg.ingest.scl_mask_classes,
        checkpoint_sha256=identity.checkpoint_sha256,
        software=software_versions(),
    )


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
    revised: int = 0  # applied looks whose anomaly rows a late one rewrote
    compacted: int = 0  # tiles whose store rows were put back in sensing order
    anomaly_rows: int = 0
    files: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_done: int = 0
    stopped_early: bool = False
    # seconds summed over blocks and acquisitions, per stage (worker-side timings)
    stage_seconds: StageSeconds = field(default_factory=StageSeconds)
    cells: int = 0
    blocks: int = 0
    block_bytes: int = 0  # handed from read tasks to encode tasks (DN, mask, summaries)
    actors_recreated: int = 0
    failed_by_class: dict[str, int] = field(default_factory=dict)
    driver: DriverSeconds = field(default_factory=DriverSeconds)
    # each task's own seconds as they arrive (the daemon's histograms); not part of the report
    observe: Callable[[StageSeconds], None] | None = field(default=None, repr=False)

    def add_seconds(self, seconds: StageSeconds) -> None:
        self.stage_seconds += seconds
        if self.observe is not None:
            self.observe(seconds)

    def add_failure(self, key: str, reason: str, failure: str) -> None:
        self.failed.append((key, reason))
        self.failed_by_class[failure] = self.failed_by_class.get(failure, 0) + 1

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
        if self.revised:
            out.append(
                f"revised: {self.revised} applied acquisitions replayed after a late one was "
                "folded in before them (streamembed status --revisions)."
            )
        if self.blocks:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.as_dict().items())
            out.append(
                f"worker seconds by stage: {stages}; {self.blocks} blocks, "
                f"{self.block_bytes / 2**20:.0f} MiB handed from read to encode."
            )
        if self.actors_recreated:
            out.append(
                f"statistics actors recreated after losing their worker: {self.actors_recreated}"
            )
        for acq_id, reason in self.failed[:10]:
            out.append(f"  failed {acq_id}: {reason}")
        if len(self.failed) > 10:
            out.append(f"  … and {len(self.failed) - 10} more (streamembed status --failed)")
        for acq_id, reason in self.skipped[:10]:
            out.append(f"  skipped {acq_id}: {reason}")
        if self.stopped_early:
            out.append("stopped on request; the rest resumes on the next run.")
        return out


@dataclass
class _Embedding:
    """One acquisition being embedded: its reserved time step and its blocks."""

    acq: Acquisition
    grid: TileGrid
    reservation: Reservation
    todo: deque[Block]
    n_blocks: int
    running: dict[Future, int] = field(default_factory=dict)  # block task -> block index
    done: int = 0
    failed: str | None = None  # the first failing block's one-line reason
    failure: Failure = Failure.OTHER

    @property
    def finished(self) -> bool:
        return not self.running and (self.failed is not None or not self.todo)


@dataclass
class _Applying:
    """One acquisition being folded into its tile's statistics (at most one per tile)."""

    acq: Acquisition
    future: Any  # BaseActorFuture[ApplyResult]
    actor: StatsShard  # the shard's actor it was sent to (a lost one is replaced)


class Pipeline:
    """One output directory processed on one Client; reused across monitor cycles."""

    def __init__(self, cfg: Config, client: Client):
        self.cfg = cfg
        self.client = client
        ensure_writable(cfg.layout.root)
        cfg.layout.ledger.parent.mkdir(parents=True, exist_ok=True)
        # The volume whose filling stops the run: the output folder, or (outputs at a URL) the
        # ledger's disk.
        self.volume = cfg.layout.local_root or cfg.layout.ledger.parent
        self.identity = model_identity(cfg.model)
        if self.identity.seeded:
            log.warning(
                "No model.checkpoint configured: the encoder uses %s. Embeddings are only "
                "comparable within this store; point model.checkpoint at SSL4EO-S12 weights "
                "for meaningful features.",
                self.identity.weights,
            )
        self.ledger = Ledger(cfg.layout.ledger)
        self.encode_resources, self.ingest_resources = task_resources(cfg, client)
        self.store = EmbeddingStore(cfg.layout.store, cfg.store)
        if self.store.drop_root_view():
            log.info("dropped the store root's consolidated view (each tile's group is its view)")
        self.provenance = provenance(self.identity, cfg)
        # Unique keys (actors and tasks): several pipelines (outputs, configs) may share one
        # long-running cluster, and a task key seen before returns the old result.
        self.token = uuid.uuid4().hex[:8]
        self._generation = 0
        # each task's seconds as they arrive (the daemon's metrics); None: summed only
        self.observe: Callable[[StageSeconds], None] | None = None
        self._actor_futures = [self._submit_actor(k) for k in range(cfg.stats.shards)]
        self.actors: list[StatsShard] = [f.result() for f in self._actor_futures]
        # Whether the actors' states were checked against the ledger: once per process (and
        # after a reattach), not every poll; within a process every apply goes through here.
        self._states_checked = False
        self._applying: dict[str, _Applying] = {}  # tile -> its apply in flight

    def _submit_actor(self, shard: int) -> Future:
        """Place shard ``shard``'s actor: shards go round the workers (sorted by address), so
        many shards spread their tiles' state over many workers instead of stacking where
        dask first finds room; any worker takes it if that one is gone."""
        self._generation += 1
        workers = sorted(self.client.scheduler_info().get("workers", {}))
        if self.client.status != "running":
            raise RuntimeError(
                f"lost the scheduler ({self.client.status}) while placing statistics shard "
                f"{shard}; check the scheduler is up and reachable, then run again"
            )
        return self.client.submit(
            StatsActor,
            self.cfg.layout.root,
            self.cfg.stats,
            self.cfg.store,
            self.identity.model_id,
            actor=True,
            key=f"streamembed-stats-shard-{shard}-{self.token}-{self._generation}",
            workers=[workers[shard % len(workers)]] if workers else None,
            allow_other_workers=bool(workers),
        )

    def close(self) -> None:
        try:
            self.checkpoint()
        except Exception as err:  # the actor's worker is gone: its last checkpoint stands
            log.warning("final checkpoint failed (%s); the last checkpoint stands", one_line(err))
        self.ledger.close()
        self.actors = []
        for fut in self._actor_futures:
            fut.release()

    def checkpoint(self) -> None:
        for actor in self.actors:
            actor.checkpoint().result()

    def _heal_actors(self, report: RunReport) -> None:
        """Recreate every shard whose worker went while none of its tiles had an apply to
        notice (adaptive scaling closes idle workers, actors or not), caught up from the
        ledger, before the run's final checkpoint."""
        for shard in range(len(self.actors)):
            if not self.actor_alive(shard):
                self._recreate_actor(shard, report)

    def _shard(self, tile: str) -> int:
        return shard_of(tile, len(self.actors))

    def actor_for(self, tile: str) -> StatsShard:
        """The statistics shard holding ``tile``'s state."""
        return self._actor(tile)

    def _actor(self, tile: str) -> StatsShard:
        return self.actors[self._shard(tile)]

    def actor_alive(self, shard: int) -> bool:
        try:
            self.actors[shard].metrics().result(timeout=30)
            return True
        except Exception:
            return False

    def _recreate_actor(self, shard: int, report: RunReport) -> None:
        """A new actor for ``shard`` from its tiles' last checkpoints, caught up from the store.

        The worker that held it died (memory, pre-emption): the ledger says what was applied,
        the checkpoints what the state holds; the difference is re-applied in time order, which
        rewrites the same anomaly files with the same rows.
        """
        log.warning(
            "the worker holding statistics shard %d was lost; recreating the shard from its "
            "last checkpoints",
            shard,
        )
        self._place_actor(shard)
        report.actors_recreated += 1
        for a in self._missing_from_state(shard):
            self.actors[shard].apply(a.tile, a.id).result()
            report.replayed += 1

    def reattach(self, client: Client) -> int:
        """Carry on with ``client`` after the scheduler was lost (the daemon's recovery).

        The actors died with the old scheduler's workers: each shard that no longer answers
        is placed anew and loads its tiles' last checkpoints; the next run's replay applies
        what the ledger has beyond them. Returns how many shards were placed anew.
        """
        self.client = client
        self.encode_resources, self.ingest_resources = task_resources(self.cfg, client)
        placed = 0
        for shard in range(len(self.actors)):
            if self.actor_alive(shard):
                continue
            self._place_actor(shard)
            placed += 1
        self._states_checked = False
        return placed

    def _place_actor(self, shard: int) -> None:
        """A new actor for ``shard`` in place of the dead one (it loads the last checkpoints)."""
        with contextlib.suppress(Exception):  # the old future may belong to a closed client
            self._actor_futures[shard].release()
        self._actor_futures[shard] = self._submit_actor(shard)
        self.actors[shard] = self._actor_futures[shard].result()

    def run(
        self,
        retry_failed: bool = False,
        stop: Callable[[], bool] = lambda: False,
        progress: bool = True,
        incremental: bool = False,
    ) -> RunReport:
        """Discover, embed what is new (block by block), apply in time order, write anomalies.

        ``incremental``: a STAC source searches only from its watermark minus the overlap (the
        daemon's polls); otherwise the whole configured window (backfill). A full output
        volume stops the run with OutputFullError; every output written before is intact.
        """
        try:
            return self._run(retry_failed, stop, progress, incremental)
        except Exception as err:
            if not is_disk_full(err, self.volume):
                raise
            message = (
                f"the output volume of {self.cfg.output} is full ({one_line(err)}); every "
                "output written before is intact: free space and run again, nothing is lost "
                "or doubled"
            )
        raise OutputFullError(message)

    def _run(
        self, retry_failed: bool, stop: Callable[[], bool], progress: bool, incremental: bool
    ) -> RunReport:
        cpu0 = time.process_time()
        driver = DriverSeconds()
        # how far back a late look is folded in: the daemon's bound; a backfill, any look
        self._lateness = self.cfg.stats.allowed_lateness_days if incremental else None
        key = source_key(self.cfg)
        with driver.timed("discover"):
            watermark = self.ledger.watermark(key) if incremental else None
            acqs, failures = discover_for(self.cfg, watermark)
        report = RunReport(
            discovered=len(acqs) + len(failures), observe=self.observe, driver=driver
        )
        with driver.timed("plan"):
            self._record_discovery(acqs, failures, report)
            states = self.ledger.states(a.id for a in acqs)
            plan = plan_run(
                acqs, states, self.ledger.processed_at, self._missing_reason, retry_failed
            )
            self._record_decisions(plan, states, report)
            if self._states_checked:
                # One call per shard (not per tile): a lost cluster fails this poll here, as
                # the daemon's outage handling expects, even when nothing is new.
                for actor in self.actors:
                    actor.metrics().result(timeout=30)
                replay = []
            else:
                replay = self._replay_plan(states)
                for tile in self.ledger.compacting():  # one a kill interrupted
                    self.compact_tile(tile, report)
            self._states_checked = True
        report.already_done = plan.already_done
        if plan.apply or replay:
            for a in plan.embed:
                states[a.id] = State.SEEN  # a retried failure starts again
            sequencer = TileSequencer([*replay, *plan.apply])
            self._drive(plan, sequencer, states, {a.id for a in replay}, report, stop, progress)
            report.stopped_early = sequencer.pending
            self._heal_actors(report)
            self.checkpoint()
            layout, sim = self.cfg.layout, self.cfg.similarity
            # what this run changed: the catalogue and indexes of other tiles stay as they are
            touched = sorted({a.tile for a in (*replay, *plan.apply)})
            with driver.timed("store_compact"):
                for tile in touched:
                    self.after_run(f"the store's rows of {tile}",
                                    partial(self.compact_tile, tile, report))  # fmt: skip
            with driver.timed("catalog"):
                catalog = partial(write_catalog, layout, touched)
                self.after_run("the outputs' STAC catalogue", catalog)
            if sim.index_on_commit:
                from ..outputs.similar import update_index

                # after the run's applies: the index reads the store, never delays a commit
                for tile in touched:
                    step = partial(update_index, layout, tile, sim.min_clear)
                    self.after_run(f"the similarity index of {tile}", step)
        with driver.timed("plan"):
            self._advance_watermark(key, acqs)
        driver.cpu = time.process_time() - cpu0
        return report

    def compact_tile(self, tile: str, report: RunReport | None = None) -> None:
        """Put the tile's stored looks in sensing order (a late or retried look, a failed
        one's row) once the run's applies are done: the actors read rows by id meanwhile."""
        if not self.store.out_of_order(tile):
            return
        self.ledger.mark_compacting(tile)
        t0 = time.perf_counter()
        done = self.store.compact(tile)
        self.ledger.mark_compacting(tile, done=True)
        if done is not None:
            if report is not None:
                report.compacted += 1
            log.info(
                "tile %s: store rows put in sensing order from row %d in %.2f s (%d moved, %d "
                "released rows removed, %.0f MiB of chunks copied)", tile, done.start,
                time.perf_counter() - t0, done.moved, done.dropped, done.bytes_copied / 2**20,
            )  # fmt: skip

    def after_run(self, what: str, step: Callable[[], object]) -> None:
        """A step that keeps a derived output current: its failure is logged, not the run's
        (a full volume still stops the run, as everywhere)."""
        try:
            step()
        except Exception as err:
            if is_disk_full(err, self.volume):
                raise
            log.error("%s was not updated: %s", what, one_line(err))

    def _drive(
        self,
        plan: RunPlan,
        sequencer: TileSequencer,
        states: dict[str, State],
        replay_ids: set[str],
        report: RunReport,
        stop: Callable[[], bool],
        progress: bool,
    ) -> None:
        """Submit blocks under backpressure, commit finished acquisitions, apply in order.

        Acquisitions of many tiles are in flight together, as many as keep the block queue
        full (``pipeline.max_in_flight`` at most); each tile's applies are sent to its actor
        one at a time in sensing order while other tiles' blocks and applies go on.
        """
        cfg = self.cfg
        to_embed = deque(plan.embed)
        capacity = self._capacity()
        max_blocks = cfg.pipeline.max_blocks_in_flight or 2 * capacity
        max_acqs = cfg.pipeline.max_in_flight or 2 * capacity
        bar = tqdm(total=len(plan.apply), unit="acq", desc="backfill", disable=not progress,
                   dynamic_ncols=True)  # fmt: skip
        active: list[_Embedding] = []
        futures: dict[Future, _Embedding] = {}
        try:
            while True:
                while (
                    to_embed
                    and len(active) < max_acqs
                    and sum(len(j.todo) for j in active) < max_blocks
                    and not stop()
                ):
                    job = self._begin(to_embed.popleft(), states, report, bar)
                    if job is not None:
                        active.append(job)
                # Oldest acquisitions first: the blocks of one acquisition finish together and
                # its time step is committed before the next one's blocks take the workers.
                for job in active:
                    while job.todo and job.failed is None and len(futures) < max_blocks:
                        block = job.todo.popleft()
                        with report.driver.timed("submit"):
                            fut = self._submit_block(job, block)
                        job.running[fut] = block.index
                        futures[fut] = job
                self._apply_ready(sequencer, states, replay_ids, report, bar)
                if not futures:
                    if self._applying:
                        self._collect_applies(states, replay_ids, report, bar, block=True)
                        continue
                    if not active and (not to_embed or stop()):
                        return
                    continue
                for fut in self._wait(futures, quick=bool(self._applying)):
                    if fut not in futures:
                        continue  # cancelled with its acquisition, failed in this same wait
                    job = futures.pop(fut)
                    self._block_done(fut, job.running.pop(fut), job, report)
                    bar.set_postfix_str(f"block {job.done}/{job.n_blocks} of {job.acq.id}")
                    if job.failed is not None:
                        for other in job.running:
                            other.cancel()
                            futures.pop(other, None)
                        job.running.clear()
                    if job.finished:
                        active.remove(job)
                        self._commit(job, states, report, bar)
        finally:
            for fut in futures:
                fut.cancel()
            # Applies already sent finish and are recorded: a stop never leaves one unrecorded
            # (a crash may: its replay is a no-op, ApplyStatus.ALREADY). Actors that stop
            # answering for APPLY_STALL_SECONDS leave their applies to the next run.
            deadline = time.monotonic() + APPLY_STALL_SECONDS
            while self._applying and time.monotonic() < deadline:
                waiting = len(self._applying)
                self._collect_applies(states, replay_ids, report, bar, block=True)
                if len(self._applying) < waiting:
                    deadline = time.monotonic() + APPLY_STALL_SECONDS
            if self._applying:
                log.error(
                    "no answer from the statistics actors for %.0f s on %d apply(s) (tiles %s); "
                    "left embedded in the ledger: the next run applies them",
                    APPLY_STALL_SECONDS, len(self._applying),
                    ", ".join(sorted(self._applying)[:5]),
                )  # fmt: skip
                self._applying.clear()
            bar.close()

    def _capacity(self) -> int:
        """Worker threads to keep busy: those connected now, or as many as adaptive scaling may
        start (a queue sized to the workers of the moment would never ask for more)."""
        threads = sum(self.client.nthreads().values())
        cluster = self.cfg.cluster
        if cluster.adapt_maximum is not None:
            per_worker = cluster.threads_per_worker if cluster.kind == "local" else (
                cluster.groups[0].cores
            )  # fmt: skip
            threads = max(threads, cluster.adapt_maximum * per_worker)
        return max(1, threads)

    def _wait(self, futures: dict[Future, _Embedding], quick: bool = False) -> set[Future]:
        """The block futures done within ``pipeline.wait_seconds`` (maybe none); ``quick``:
        within a moment, while applies are in flight and their results wait to be recorded."""
        timeout = APPLY_POLL_SECONDS if quick else self.cfg.pipeline.wait_seconds
        try:
            done, _ = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            # distributed's wait raises when nothing finished in time: an acquisition may take
            # as long as it takes, the loop only wakes to check for a stop request.
            return set()
        return set(done)

    def _record_discovery(
        self, acqs: list[Acquisition], failures: list[SourceFailure], report: RunReport
    ) -> None:
        """Unreadable items as source failures (reported once), every product as seen."""
        for f in failures:
            if self.ledger.record_source_failure(f.key, f.href, f.reason):
                report.add_failure(f.key, f.reason, "source")
        report.new = self.ledger.record_seen(acqs)

    def _record_decisions(self, plan: RunPlan, states: dict[str, State], report: RunReport) -> None:
        for d in plan.decisions:
            # the plan fails only products missing a band asset
            failure = Failure.MISSING if d.state == State.FAILED else None
            self.ledger.set_state(d.acquisition_id, d.state, d.reason, failure=failure)
            states[d.acquisition_id] = d.state
            (report.skipped if d.state == State.SKIPPED else report.failed).append(
                (d.acquisition_id, d.reason)
            )

    def _missing_reason(self, a: Acquisition) -> str | None:
        """Why ``a`` cannot be read at all (a band asset missing), or None."""
        try:
            return a.missing_reason(required_assets(a, self.cfg.ingest, self.cfg.model))
        except IngestError as err:
            return str(err)

    def _begin(
        self, a: Acquisition, states: dict[str, State], report: RunReport, bar: Any
    ) -> _Embedding | None:
        """The acquisition's grid, its reserved time step and its blocks (driver side)."""
        try:
            stored = self.store.grid(a.tile)
            # a tile's first acquisition creates its group: timed apart (once per tile)
            with report.driver.timed("store_begin" if stored else "store_create"):
                grid = stored or grid_for(a, self.cfg.ingest.cell_size)
                dim = EMBEDDING_DIM[self.cfg.model.arch]
                reservation = self.store.begin(a.id, grid, dim, self.provenance)
            if reservation is not None:
                _check_block_chunks(self.cfg, grid, reservation)
        except (IngestError, StoreMismatchError) as err:
            self._fail(a, one_line(err), failure_class(err), states, report, bar)
            return None
        if reservation is None:  # stored by an earlier run that stopped before the ledger
            self._mark_embedded(a, states, report)
            return None
        blocks = plan_blocks(grid, self.cfg.ingest)
        return _Embedding(a, grid, reservation, deque(blocks), len(blocks))

    def _submit_block(self, job: _Embedding, block: Block) -> Future:
        a, grid = job.acq, job.grid
        tag = f"{a.id}-b{block.index}-{self.token}"
        pixels = self.client.submit(
            read_task, a, grid, block, self.cfg, key=f"read-{tag}", pure=False,
            resources=self.ingest_resources,
        )  # fmt: skip
        return self.client.submit(
            encode_task, pixels, job.reservation, self.cfg, key=f"encode-{tag}", pure=False,
            resources=self.encode_resources,
        )  # fmt: skip

    def _block_done(self, fut: Future, index: int, job: _Embedding, report: RunReport) -> None:
        try:
            result: BlockResult = fut.result()
        except KilledWorker as err:
            job.failed = (
                f"block {index} of {job.n_blocks}: the workers running it died "
                f"({one_line(err)}); most often the worker memory limit: lower "
                f"ingest.block_px (now {self.cfg.ingest.block_px}) or raise cluster.memory_limit"
            )
            job.failure = Failure.WORKER
            return
        except Exception as err:  # a task error names its input; keep the rest going
            if is_disk_full(err, self.volume):
                raise  # not the acquisition's fault: the run stops, the block is written later
            if job.failed is None:
                job.failed, job.failure = one_line(err), failure_class(err)
            return
        job.done += 1
        report.blocks += 1
        report.cells += result.cells
        report.block_bytes += result.bytes_in
        report.add_seconds(result.seconds)

    def _commit(
        self, job: _Embedding, states: dict[str, State], report: RunReport, bar: Any
    ) -> None:
        """Make a finished acquisition visible in the store and the ledger (or fail it)."""
        a = job.acq
        if job.failed is not None:
            # The row is given up: later commits become visible past it, a retry takes a new one.
            with report.driver.timed("store_commit"):
                self.store.release(job.reservation)
            self._fail(a, job.failed, job.failure, states, report, bar)
            return
        t0 = time.perf_counter()
        with report.driver.timed("store_commit"):
            self.store.commit(job.reservation, a.datetime)
        seconds = time.perf_counter() - t0
        report.add_seconds(StageSeconds(store_commit=seconds))
        events.info(
            "stored %s (%d blocks)", a.id, job.n_blocks,
            extra={"acquisition_id": a.id, "tile": a.tile, "stage": "store_commit",
                   "seconds": round(seconds, 3)},
        )  # fmt: skip
        report.stored += 1
        crash_point("pipeline.committed")
        self._mark_embedded(a, states, report)

    def _mark_embedded(self, a: Acquisition, states: dict[str, State], report: RunReport) -> None:
        with report.driver.timed("ledger"):
            self.ledger.set_state(a.id, State.EMBEDDED)
        crash_point("pipeline.embedded")
        states[a.id] = State.EMBEDDED
        report.embedded += 1

    def _fail(
        self,
        a: Acquisition,
        reason: str,
        failure: Failure,
        states: dict[str, State],
        report: RunReport,
        bar: Any,
    ) -> None:
        log.error(
            "acquisition %s failed (%s): %s", a.id, failure, reason,
            extra={"acquisition_id": a.id, "tile": a.tile, "failure_class": str(failure)},
        )  # fmt: skip
        with report.driver.timed("ledger"):
            self.ledger.set_state(a.id, State.FAILED, reason, failure=failure)
        states[a.id] = State.FAILED
        report.add_failure(a.id, reason, str(failure))
        bar.update(1)

    def _advance_watermark(self, key: str, acqs: list[Acquisition]) -> None:
        """Move the source's watermark to where every discovered product is final."""
        if not acqs or not self.cfg.source.is_stac_api:
            return
        states = self.ledger.states(a.id for a in acqs)
        open_ = [a.datetime for a in acqs if states.get(a.id) not in FINAL]
        self.ledger.set_watermark(key, min(open_) if open_ else max(a.datetime for a in acqs))

    def _replay_plan(self, states: dict[str, State]) -> list[Acquisition]:
        """Applied acquisitions missing from a tile's state (a checkpoint older than the ledger),
        marked embedded again so the sequencer applies them before anything newer."""
        replay = self._missing_from_state()
        for tile in sorted({a.tile for a in replay}):
            n = sum(1 for a in replay if a.tile == tile)
            log.warning("tile %s: replaying %d acquisitions the last checkpoint missed", tile, n)
        for a in replay:
            states[a.id] = State.EMBEDDED
        return replay

    def _missing_from_state(self, shard: int | None = None) -> list[Acquisition]:
        """What the ledger has as applied but the actors' states (of one shard, or all) lack,
        by tile and sensing time.

        Taken from the ledger, not the source: an incremental poll does not list old products,
        and a replay reads the store only. Counts first (one SQL query, one actor call per
        shard), ids only for a tile whose state holds fewer than the ledger applied.
        """
        applied = {
            t: n
            for t, n in self.ledger.applied_counts().items()
            if shard is None or self._shard(t) == shard
        }
        by_shard: dict[int, list[str]] = {}
        for tile in sorted(applied):
            by_shard.setdefault(self._shard(tile), []).append(tile)
        behind: list[str] = []
        for k, tiles in by_shard.items():
            held = self.actors[k].applied_counts(tiles).result()
            behind += [t for t in tiles if held.get(t, 0) < applied[t]]
        missing: list[Acquisition] = []
        for tile in sorted(behind):
            in_state = set(self._actor(tile).applied_ids(tile).result())
            rows = self.ledger.rows(State.APPLIED, tile=tile)
            missing += [
                Acquisition(r.id, r.tile, dt.datetime.fromisoformat(r.datetime), None, {},
                            item_href=r.item_href)
                for r in rows if r.id not in in_state
            ]  # fmt: skip
        return missing

    def _apply_ready(
        self,
        sequencer: TileSequencer,
        states: dict[str, State],
        replay_ids: set[str],
        report: RunReport,
        bar: Any,
    ) -> None:
        """Record the applies that finished, then send each idle tile's next embedded
        acquisition to its actor (strict time order per tile, tiles side by side)."""
        self._collect_applies(states, replay_ids, report, bar)
        for a in sequencer.ready(states, busy=set(self._applying)):
            self._applying[a.tile] = self._send_apply(a, report)

    def _send_apply(self, a: Acquisition, report: RunReport) -> _Applying:
        """Send one apply to its tile's actor; one whose worker is gone is recreated first."""
        shard = self._shard(a.tile)
        actor = self.actors[shard]
        try:
            return _Applying(a, actor.apply(a.tile, a.id, self._lateness), actor)
        except Exception:  # distributed refuses calls on an actor whose worker was lost
            if not self._lost_actor_replaced(shard, actor, report):
                raise
        actor = self.actors[shard]
        return _Applying(a, actor.apply(a.tile, a.id, self._lateness), actor)

    def _lost_actor_replaced(self, shard: int, actor: StatsShard, report: RunReport) -> bool:
        """After a call on ``actor`` failed: whether the shard now has a live replacement (made
        here, or already by another of its tiles); False: ``actor`` answers, the error is the
        call's own."""
        if self.actors[shard] is not actor:
            return True
        if self.actor_alive(shard):
            return False
        self._recreate_actor(shard, report)
        return True

    def _collect_applies(
        self,
        states: dict[str, State],
        replay_ids: set[str],
        report: RunReport,
        bar: Any,
        block: bool = False,
    ) -> None:
        """Record finished applies; ``block``: wait until at least one has finished."""
        if block:
            with report.driver.timed("apply_wait"):
                deadline = time.monotonic() + self.cfg.pipeline.wait_seconds
                while not any(x.future.done() for x in self._applying.values()):
                    if time.monotonic() > deadline:
                        return
                    time.sleep(APPLY_POLL_SECONDS)
        for tile, item in list(self._applying.items()):
            if item.future.done():
                del self._applying[tile]
                self._applied(item, self._apply_result(item, report), states, replay_ids,
                              report, bar)  # fmt: skip

    def _apply_result(self, item: _Applying, report: RunReport) -> ApplyResult:
        """An apply's result; a lost actor is recreated once (by the first of its tiles to
        notice) and the apply repeated on the new one."""
        shard = self._shard(item.acq.tile)
        try:
            result: ApplyResult = item.future.result()
            return result
        except Exception:
            if not self._lost_actor_replaced(shard, item.actor, report):
                raise
        with report.driver.timed("apply_wait"):
            return self.actors[shard].apply(item.acq.tile, item.acq.id, self._lateness).result()

    def _applied(
        self,
        item: _Applying,
        res: ApplyResult,
        states: dict[str, State],
        replay_ids: set[str],
        report: RunReport,
        bar: Any,
    ) -> None:
        """The ledger and the report after one apply."""
        a = item.acq
        report.add_seconds(res.seconds)
        if a.id in replay_ids:
            report.replayed += 1
            states[a.id] = State.APPLIED
            if res.status == ApplyStatus.APPLIED:  # its rows may differ (a killed rewind)
                with report.driver.timed("ledger"):
                    self.ledger.set_state(a.id, State.APPLIED, n_anomalies=res.n_anomalies)
            return
        if res.status == ApplyStatus.LATE:
            reason = (
                f"acquired {a.datetime.isoformat()}, more than stats.allowed_lateness_days "
                f"({self.cfg.stats.allowed_lateness_days:g}) before tile {a.tile}'s last applied "
                "acquisition: embedded and stored, not in the statistics; fold it in with "
                f"`streamembed rebuild --tile {a.tile}`"
            )
            with report.driver.timed("ledger"):
                self.ledger.set_state(a.id, State.LATE, reason)
            states[a.id] = State.LATE
            report.late += 1
        else:
            with report.driver.timed("ledger"):
                self.ledger.set_state(
                    a.id,
                    State.APPLIED,
                    n_anomalies=res.n_anomalies,
                    snow_cells=res.snow_cells,
                    masked_cells=res.masked_cells,
                )
            states[a.id] = State.APPLIED
            report.applied += 1
            self._record_revisions(a, res, report)
            events.info(
                "applied %s: %d anomaly rows", a.id, res.n_anomalies,
                extra={"acquisition_id": a.id, "tile": a.tile, "stage": "stats_apply",
                       "seconds": round(res.seconds.stats_apply, 3),
                       "anomaly_rows": res.n_anomalies},
            )  # fmt: skip
            if res.status != ApplyStatus.ALREADY:
                report.anomaly_rows += res.n_anomalies
                if res.path:
                    report.files.append(res.path)
        bar.update(1)

    def _record_revisions(self, a: Acquisition, res: ApplyResult, report: RunReport) -> None:
        """A late look folded in: the looks it replayed, their new row counts, in the ledger."""
        if res.rewind is None:
            return
        with report.driver.timed("ledger"):
            for rev in res.revised:
                self.ledger.record_revision(rev.acquisition_id, a.id, rev.rows_before,
                                            rev.rows_after)  # fmt: skip
        report.revised += len(res.revised)
        changed = sum(r.rows_before != r.rows_after for r in res.revised)
        events.info(
            "folded %s into tile %s: %d looks replayed from checkpoint %d in %.1f s (%.0f MiB "
            "of looks and state read, %.0f MiB of state written), %d with other anomaly row "
            "counts", a.id, a.tile, res.rewind.replayed, res.rewind.base_generation,
            res.rewind.seconds, res.rewind.bytes_read / 2**20, res.rewind.bytes_written / 2**20,
            changed,
            extra={"acquisition_id": a.id, "tile": a.tile, "stage": "rewind",
                   "seconds": round(res.rewind.seconds, 3), "replayed": res.rewind.replayed,
                   "bytes_read": res.rewind.bytes_read,
                   "bytes_written": res.rewind.bytes_written},
        )  # fmt: skip


def _check_block_chunks(cfg: Config, grid: TileGrid, reservation: Reservation) -> None:
    """Blocks must cover whole chunks of the tile as stored (they are written concurrently)."""
    side = block_cells(cfg.ingest)
    cy, cx = reservation.chunk_cells
    for n_cells, chunk in ((grid.n_cells_y, cy), (grid.n_cells_x, cx)):
        if side < n_cells and side % chunk:
            raise StoreMismatchError(
                f"tile {grid.tile} is stored in chunks of {chunk} cells but ingest.block_px="
                f"{cfg.ingest.block_px} makes blocks of {side} cells; set ingest.block_px to a "
                f"multiple of {chunk * grid.cell_size} px for this store"
            )


def failure_class(err: BaseException) -> Failure:
    """The class of a task's or a step's error, as the ledger and ``status`` count it."""
    classes: tuple[tuple[type[BaseException], Failure], ...] = (
        (TransientReadError, Failure.TRANSIENT),
        (CorruptAssetError, Failure.CORRUPT),
        (GridMismatchError, Failure.GRID),
        (StoreMismatchError, Failure.STORE),
        (KilledWorker, Failure.WORKER),
    )
    return next((f for cls, f in classes if isinstance(err, cls)), Failure.OTHER)


def one_line(err: BaseException) -> str:
    """The first line of an error (its type where it has no text): what the ledger and logs keep."""
    text = str(err).strip().splitlines()
    msg = text[0] if text else ""
    return msg if msg else type(err).__name__
