"""The streaming graph on a dask.distributed Client: source -> ingest -> embed -> store -> stats -> sink.

Embedding is stateless and parallel (a bounded number of acquisitions in flight); applying to
the statistics is strictly ordered by acquisition time per tile, one actor shard per group of
tiles. The ledger records every step, so a rerun or a restart resumes where the last one stopped
and never embeds, applies or writes anything twice.

``Pipeline.run`` reads as the flow; its three jobs are their own classes: ``BlockScheduler``
(blocks.py: block tasks under backpressure), ``AcquisitionLifecycle`` (lifecycle.py: each
acquisition over store and ledger) and ``StatsShards`` (shards.py: the statistics actors, their
placement and recovery) with ``ShardApplies`` (applies.py: the applies in flight to them).
``DerivedOutputs`` (derived.py) keeps the row order, the catalogue and the indexes current.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

from distributed import Client
from tqdm import tqdm

from ..acquisition import Acquisition
from ..config import Config
from ..layout import OutputFullError, is_disk_full
from ..outputs.ledger import Ledger, State
from ..outputs.store import EmbeddingStore
from ..sources import discover_for, source_key
from ..storage import ensure_writable
from .actor import ApplyResult, StatsShard
from .applies import APPLY_POLL_SECONDS, ShardApplies
from .blocks import BlockScheduler, EmbeddingJob
from .derived import DerivedOutputs
from .encoder import model_identity
from .lifecycle import AcquisitionLifecycle
from .plan import RunPlan, TileSequencer, plan_run
from .report import RunReport, one_line
from .shards import StatsShards
from .stages import DriverSeconds, StageSeconds
from .tasks import provenance

log = logging.getLogger(__name__)


class Pipeline:
    """One output directory processed on one Client; reused across monitor cycles."""

    def __init__(self, cfg: Config, client: Client):
        self.cfg = cfg
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
        # Unique keys (actors and tasks): several pipelines (outputs, configs) may share one
        # long-running cluster, and a task key seen before returns the old result.
        self.token = uuid.uuid4().hex[:8]
        self.blocks = BlockScheduler(cfg, client, self.token, self.volume)
        self.store = EmbeddingStore(cfg.layout.store, cfg.store)
        if self.store.drop_root_view():
            log.info("dropped the store root's consolidated view (each tile's group is its view)")
        self.lifecycle = AcquisitionLifecycle(cfg, self.ledger, self.store,
                                              provenance(self.identity, cfg))  # fmt: skip
        self.derived = DerivedOutputs(cfg, self.ledger, self.store, self.volume)
        # each task's seconds as they arrive (the daemon's metrics); None: summed only
        self.observe: Callable[[StageSeconds], None] | None = None
        self.shards = StatsShards(cfg, client, self.token, self.identity.model_id, self.ledger)
        self.applies = ShardApplies(self.shards)
        # Whether the actors' states were checked against the ledger: once per process (and
        # after a reattach), not every poll; within a process every apply goes through here.
        self._states_checked = False

    @property
    def actors(self) -> list[StatsShard]:
        return self.shards.actors

    def actor_for(self, tile: str) -> StatsShard:
        """The statistics shard holding ``tile``'s state."""
        return self.shards.actor_for(tile)

    def actor_alive(self, shard: int) -> bool:
        return self.shards.alive(shard)

    def close(self) -> None:
        try:
            self.checkpoint()
        except Exception as err:  # the actor's worker is gone: its last checkpoint stands
            log.warning("final checkpoint failed (%s); the last checkpoint stands", one_line(err))
        self.ledger.close()
        self.shards.release()

    def checkpoint(self) -> None:
        self.shards.checkpoint()

    def reattach(self, client: Client) -> int:
        """Carry on with ``client`` after the scheduler was lost (the daemon's recovery).

        The actors died with the old scheduler's workers: each shard that no longer answers
        is placed anew and loads its tiles' last checkpoints; the next run's replay applies
        what the ledger has beyond them. Returns how many shards were placed anew.
        """
        self.blocks.retarget(client)
        placed = self.shards.reattach(client)
        self._states_checked = False
        return placed

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
        life, shards = self.lifecycle, self.shards
        # how far back a late look is folded in: the daemon's bound; a backfill, any look
        self.applies.lateness = self.cfg.stats.allowed_lateness_days if incremental else None
        key = source_key(self.cfg)
        with driver.timed("discover"):
            watermark = self.ledger.watermark(key) if incremental else None
            acqs, failures = discover_for(self.cfg, watermark)
        report = RunReport(
            discovered=len(acqs) + len(failures), observe=self.observe, driver=driver
        )
        with driver.timed("plan"):
            life.record_discovery(acqs, failures, report)
            states = self.ledger.states(a.id for a in acqs)
            plan = plan_run(
                acqs, states, self.ledger.processed_at, life.missing_reason, retry_failed
            )
            life.record_decisions(plan, states, report)
            if self._states_checked:
                shards.check_answering()
                replay: list[Acquisition] = []
            else:
                replay = shards.replay_plan(states)
                for tile in self.ledger.compacting():  # one a kill interrupted
                    self.derived.compact_tile(tile, report)
            self._states_checked = True
        report.already_done = plan.already_done
        if plan.apply or replay:
            for a in plan.embed:
                states[a.id] = State.SEEN  # a retried failure starts again
            sequencer = TileSequencer([*replay, *plan.apply])
            self._drive(plan, sequencer, states, {a.id for a in replay}, report, stop, progress)
            report.stopped_early = sequencer.pending
            shards.heal(report)
            self.checkpoint()
            # what this run changed: the catalogue and indexes of other tiles stay as they are
            self.derived.update(sorted({a.tile for a in (*replay, *plan.apply)}), report)
        with driver.timed("plan"):
            life.advance_watermark(key, acqs)
        driver.cpu = time.process_time() - cpu0
        return report

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
        cfg, life, blocks, applies = self.cfg, self.lifecycle, self.blocks, self.applies
        to_embed = deque(plan.embed)
        capacity = blocks.capacity()
        max_blocks = cfg.pipeline.max_blocks_in_flight or 2 * capacity
        max_acqs = cfg.pipeline.max_in_flight or 2 * capacity
        bar = tqdm(total=len(plan.apply), unit="acq", desc="backfill", disable=not progress,
                   dynamic_ncols=True)  # fmt: skip
        active: list[EmbeddingJob] = []

        def record(a: Acquisition, res: ApplyResult) -> None:
            life.applied(a, res, states, replay_ids, report, bar)

        try:
            while True:
                while (
                    to_embed
                    and len(active) < max_acqs
                    and sum(len(j.todo) for j in active) < max_blocks
                    and not stop()
                ):
                    job = life.begin(to_embed.popleft(), states, report, bar)
                    if job is not None:
                        active.append(job)
                blocks.fill(active, max_blocks, report)
                applies.collect(report, record)
                applies.send_ready(sequencer, states, report)
                if not blocks.futures:
                    if applies.applying:
                        applies.collect(report, record, block=True)
                        continue
                    if not active and (not to_embed or stop()):
                        return
                    continue
                # within a moment while applies are in flight and their results wait
                timeout = APPLY_POLL_SECONDS if applies.applying else cfg.pipeline.wait_seconds
                for job in blocks.finished(report, bar, timeout):
                    active.remove(job)
                    life.commit(job, states, report, bar)
        finally:
            blocks.cancel_all()
            applies.drain(report, record)
            bar.close()
