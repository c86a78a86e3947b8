"""The applies in flight to the statistics shards: each tile has at most one, sent in sensing
order while other tiles' applies and blocks go on; a result is handed to the lifecycle as it
arrives, and an apply whose actor was lost is repeated on its recreated shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..acquisition import Acquisition
from ..outputs.ledger import State
from .actor import ApplyResult, StatsShard
from .plan import TileSequencer
from .report import RunReport
from .shards import StatsShards

log = logging.getLogger(__name__)
# How often the driver looks at applies in flight while it waits (actor futures cannot join
# distributed.wait)
APPLY_POLL_SECONDS = 0.02
# no apply finished for this long while a run ends: the actors are stuck, not busy (a full
# tile's apply takes seconds)
APPLY_STALL_SECONDS = 600.0

# What the driver does with an apply's result: the ledger and the report (AcquisitionLifecycle)
Record = Callable[[Acquisition, ApplyResult], None]


@dataclass
class Applying:
    """One acquisition being folded into its tile's statistics (at most one per tile)."""

    acq: Acquisition
    future: Any  # BaseActorFuture[ApplyResult]
    actor: StatsShard  # the shard's actor it was sent to (a lost one is replaced)


class ShardApplies:
    """The applies in flight to ``shards``' actors, one per tile at most."""

    def __init__(self, shards: StatsShards):
        self.shards = shards
        self.applying: dict[str, Applying] = {}  # tile -> its apply in flight
        # how far back a late look is folded in (the daemon's bound); None: any look
        self.lateness: float | None = None

    def send_ready(
        self, sequencer: TileSequencer, states: dict[str, State], report: RunReport
    ) -> None:
        """Send each idle tile's next embedded acquisition to its actor (strict time order per
        tile, tiles side by side)."""
        for a in sequencer.ready(states, busy=set(self.applying)):
            self.applying[a.tile] = self._send(a, report)

    def _send(self, a: Acquisition, report: RunReport) -> Applying:
        """Send one apply to its tile's actor; one whose worker is gone is recreated first."""
        shard = self.shards.shard(a.tile)
        actor = self.shards.actors[shard]
        try:
            return Applying(a, actor.apply(a.tile, a.id, self.lateness), actor)
        except Exception:  # distributed refuses calls on an actor whose worker was lost
            if not self._lost_actor_replaced(shard, actor, report):
                raise
        actor = self.shards.actors[shard]
        return Applying(a, actor.apply(a.tile, a.id, self.lateness), actor)

    def _lost_actor_replaced(self, shard: int, actor: StatsShard, report: RunReport) -> bool:
        """After a call on ``actor`` failed: whether the shard now has a live replacement (made
        here, or already by another of its tiles); False: ``actor`` answers, the error is the
        call's own."""
        if self.shards.actors[shard] is not actor:
            return True
        if self.shards.alive(shard):
            return False
        self.shards.recreate(shard, report)
        return True

    def collect(self, report: RunReport, record: Record, block: bool = False) -> None:
        """Hand each finished apply to ``record``; ``block``: wait until at least one has
        finished (at most ``pipeline.wait_seconds``)."""
        if block:
            with report.driver.timed("apply_wait"):
                deadline = time.monotonic() + self.shards.cfg.pipeline.wait_seconds
                while not any(x.future.done() for x in self.applying.values()):
                    if time.monotonic() > deadline:
                        return
                    time.sleep(APPLY_POLL_SECONDS)
        for tile, item in list(self.applying.items()):
            if item.future.done():
                del self.applying[tile]
                record(item.acq, self._result(item, report))

    def _result(self, item: Applying, report: RunReport) -> ApplyResult:
        """An apply's result; a lost actor is recreated once (by the first of its tiles to
        notice) and the apply repeated on the new one."""
        shard = self.shards.shard(item.acq.tile)
        try:
            result: ApplyResult = item.future.result()
            return result
        except Exception:
            if not self._lost_actor_replaced(shard, item.actor, report):
                raise
        with report.driver.timed("apply_wait"):
            return (
                self.shards.actors[shard].apply(item.acq.tile, item.acq.id, self.lateness).result()
            )

    def drain(self, report: RunReport, record: Record) -> None:
        """At the end of a run: the applies already sent finish and are recorded, so a stop
        never leaves one unrecorded (a crash may: its replay is a no-op, ApplyStatus.ALREADY).
        Actors that stop answering for APPLY_STALL_SECONDS leave their applies to the next run."""
        deadline = time.monotonic() + APPLY_STALL_SECONDS
        while self.applying and time.monotonic() < deadline:
            waiting = len(self.applying)
            self.collect(report, record, block=True)
            if len(self.applying) < waiting:
                deadline = time.monotonic() + APPLY_STALL_SECONDS
        if self.applying:
            log.error(
                "no answer from the statistics actors for %.0f s on %d apply(s) (tiles %s); "
                "left embedded in the ledger: the next run applies them",
                APPLY_STALL_SECONDS, len(self.applying), ", ".join(sorted(self.applying)[:5]),
            )  # fmt: skip
            self.applying.clear()
