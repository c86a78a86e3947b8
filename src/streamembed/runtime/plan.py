"""What a run does with what it discovered: the pure, Dask-free planning step and the per-tile
order of applies.

``plan_run`` turns discovered products and their ledger states into what to embed, what is
embedded and waits for its apply, what to skip (the reprocessing rule) and what fails before any
task runs (a missing asset). ``TileSequencer`` hands out each tile's acquisitions strictly in
sensing order as they become embedded. Neither touches Dask, files or the network; the tests
call them with plain values.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..acquisition import Acquisition, latest_baselines
from ..outputs.ledger import LedgerRow, State

# A row of the same tile sensed in the same second that was embedded or beyond (the ledger's
# ``processed_at``), or None.
ProcessedAt = Callable[[str, dt.datetime], LedgerRow | None]
# Why an acquisition cannot be read at all (a missing band asset), or None.
MissingReason = Callable[[Acquisition], str | None]


@dataclass(frozen=True)
class Decision:
    """A state the run records for an acquisition before any task, with its reason."""

    acquisition_id: str
    state: State
    reason: str


@dataclass(frozen=True)
class RunPlan:
    """What one run does with the discovered products."""

    embed: tuple[Acquisition, ...]  # to read, encode and store
    apply: tuple[Acquisition, ...]  # to apply once embedded (the embed ones, and those embedded
    # by an earlier run), in sensing order per tile
    decisions: tuple[Decision, ...]  # skipped or failed now, with the reason
    already_done: int  # final already (applied, late, skipped, failed and not retried)


def plan_run(
    acqs: Iterable[Acquisition],
    states: Mapping[str, State],
    processed_at: ProcessedAt,
    missing_reason: MissingReason,
    retry_failed: bool = False,
) -> RunPlan:
    """The run's plan from the discovered products and their ledger states.

    The reprocessing rule (docs/operations.md): of products of one acquisition listed together
    the newest processing baseline is processed and the others skipped; a newer baseline of an
    acquisition already embedded is skipped (the statistics keep the product they were built
    from). A product missing a band fails here, at once, with the band named.
    """
    acqs = list(acqs)
    kept, dropped = latest_baselines(acqs)
    decisions: list[Decision] = []
    for old, new in dropped:
        if states[old.id] == State.SEEN:
            reason = (
                f"processing baseline {old.processing_baseline} superseded by {new.id} "
                f"(baseline {new.processing_baseline})"
            )
            decisions.append(Decision(old.id, State.SKIPPED, reason))
    runnable = {State.SEEN, State.EMBEDDED} | ({State.FAILED} if retry_failed else set())
    work: list[Acquisition] = []
    skipped_now = 0
    for a in kept:
        st = states[a.id]
        if st not in runnable:
            continue
        if st == State.SEEN:
            row = processed_at(a.tile, a.datetime)
            if row is not None and row.id != a.id:
                reason = (
                    f"reprocessing (baseline {a.processing_baseline}) of {row.id}, already "
                    f"{row.state}; the statistics keep the first product (rebuild the tile "
                    "from a new --output to switch)"
                )
                decisions.append(Decision(a.id, State.SKIPPED, reason))
                skipped_now += 1
                continue
        missing = missing_reason(a)
        if missing:
            if st != State.FAILED:  # a retried failure failing again is recorded once
                decisions.append(Decision(a.id, State.FAILED, missing))
            continue
        work.append(a)
    embed = tuple(a for a in work if states[a.id] != State.EMBEDDED)
    return RunPlan(embed, tuple(work), tuple(decisions), len(kept) - skipped_now - len(work))


class TileSequencer:
    """Each tile's acquisitions in sensing order; an acquisition is handed out for its apply
    only once it is embedded and every earlier one of its tile is applied or failed."""

    def __init__(self, acqs: Iterable[Acquisition]):
        self._queues: dict[str, deque[Acquisition]] = {}
        for a in sorted(acqs, key=lambda a: (a.tile, a.datetime, a.id)):
            self._queues.setdefault(a.tile, deque()).append(a)

    def ready(
        self, states: Mapping[str, State], busy: Collection[str] = ()
    ) -> Iterator[Acquisition]:
        """Each tile's next acquisition to apply now, at most one per tile, none for a tile in
        ``busy`` (its previous apply is still in flight); failed ones are passed over.

        The caller sends each one handed out to its tile's actor and marks its state once the
        apply is done; the tile's next acquisition is handed out only after that.
        """
        for tile, queue in self._queues.items():
            if tile in busy:
                continue
            while queue and states[queue[0].id] == State.FAILED:
                queue.popleft()
            if queue and states[queue[0].id] == State.EMBEDDED:
                yield queue.popleft()

    @property
    def pending(self) -> bool:
        return any(self._queues.values())
