"""Statistics shards: where each shard's actor lives, how a lost one comes back, and the
applies in flight to them.

``stats.shards`` actors hold the tiles' statistics (a tile belongs to one shard); they are
placed round the workers. An actor whose worker died (memory, pre-emption, adaptive scaling)
is recreated from its tiles' last checkpoints and caught up from the store with what the ledger
has as applied beyond them. The applies in flight to them are ``applies.py``'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from distributed import Client, Future

from ..acquisition import Acquisition
from ..config import Config
from ..outputs.ledger import Ledger, State
from .actor import StatsActor, StatsShard, shard_of
from .report import RunReport

log = logging.getLogger(__name__)


class StatsShards:
    """The statistics actors of one pipeline: placed, recreated, caught up."""

    def __init__(self, cfg: Config, client: Client, token: str, model_id: str, ledger: Ledger):
        self.cfg = cfg
        self.client = client
        self.token = token
        self.model_id = model_id
        self.ledger = ledger  # what was applied: a recreated shard is caught up to it
        self._generation = 0
        self.futures = [self._submit(k) for k in range(cfg.stats.shards)]
        self.actors: list[StatsShard] = [f.result() for f in self.futures]

    def _submit(self, shard: int) -> Future:
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
            self.model_id,
            actor=True,
            key=f"streamembed-stats-shard-{shard}-{self.token}-{self._generation}",
            workers=[workers[shard % len(workers)]] if workers else None,
            allow_other_workers=bool(workers),
        )

    def release(self) -> None:
        self.actors = []
        for fut in self.futures:
            fut.release()

    def checkpoint(self) -> None:
        for actor in self.actors:
            actor.checkpoint().result()

    def check_answering(self) -> None:
        """One call per shard (not per tile): a lost cluster fails here, as the daemon's outage
        handling expects, even when nothing is new."""
        for actor in self.actors:
            actor.metrics().result(timeout=30)

    def shard(self, tile: str) -> int:
        return shard_of(tile, len(self.actors))

    def actor_for(self, tile: str) -> StatsShard:
        """The statistics shard holding ``tile``'s state."""
        return self.actors[self.shard(tile)]

    def alive(self, shard: int) -> bool:
        try:
            self.actors[shard].metrics().result(timeout=30)
            return True
        except Exception:
            return False

    def heal(self, report: RunReport) -> None:
        """Recreate every shard whose worker went while none of its tiles had an apply to
        notice (adaptive scaling closes idle workers, actors or not), caught up from the
        ledger, before the run's final checkpoint."""
        for shard in range(len(self.actors)):
            if not self.alive(shard):
                self.recreate(shard, report)

    def recreate(self, shard: int, report: RunReport) -> None:
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
        self._place(shard)
        report.actors_recreated += 1
        for a in self.missing_from_state(shard):
            self.actors[shard].apply(a.tile, a.id).result()
            report.replayed += 1

    def reattach(self, client: Client) -> int:
        """Place anew, on ``client``, each shard that no longer answers (they died with the old
        scheduler's workers); each loads its tiles' last checkpoints. How many were placed."""
        self.client = client
        placed = 0
        for shard in range(len(self.actors)):
            if self.alive(shard):
                continue
            self._place(shard)
            placed += 1
        return placed

    def _place(self, shard: int) -> None:
        """A new actor for ``shard`` in place of the dead one (it loads the last checkpoints)."""
        with contextlib.suppress(Exception):  # the old future may belong to a closed client
            self.futures[shard].release()
        self.futures[shard] = self._submit(shard)
        self.actors[shard] = self.futures[shard].result()

    def replay_plan(self, states: dict[str, State]) -> list[Acquisition]:
        """Applied acquisitions missing from a tile's state (a checkpoint older than the ledger),
        marked embedded again so the sequencer applies them before anything newer."""
        replay = self.missing_from_state()
        for tile in sorted({a.tile for a in replay}):
            n = sum(1 for a in replay if a.tile == tile)
            log.warning("tile %s: replaying %d acquisitions the last checkpoint missed", tile, n)
        for a in replay:
            states[a.id] = State.EMBEDDED
        return replay

    def missing_from_state(self, shard: int | None = None) -> list[Acquisition]:
        """What the ledger has as applied but the actors' states (of one shard, or all) lack,
        by tile and sensing time.

        Taken from the ledger, not the source: an incremental poll does not list old products,
        and a replay reads the store only. Counts first (one SQL query, one actor call per
        shard), ids only for a tile whose state holds fewer than the ledger applied.
        """
        applied = {
            t: n
            for t, n in self.ledger.applied_counts().items()
            if shard is None or self.shard(t) == shard
        }
        by_shard: dict[int, list[str]] = {}
        for tile in sorted(applied):
            by_shard.setdefault(self.shard(tile), []).append(tile)
        behind: list[str] = []
        for k, tiles in by_shard.items():
            held = self.actors[k].applied_counts(tiles).result()
            behind += [t for t in tiles if held.get(t, 0) < applied[t]]
        missing: list[Acquisition] = []
        for tile in sorted(behind):
            in_state = set(self.actor_for(tile).applied_ids(tile).result())
            rows = self.ledger.rows(State.APPLIED, tile=tile)
            missing += [
                Acquisition(r.id, r.tile, dt.datetime.fromisoformat(r.datetime), None, {},
                            item_href=r.item_href)
                for r in rows if r.id not in in_state
            ]  # fmt: skip
        return missing
