"""Each acquisition's lifecycle over the store and the ledger: seen, planned, begun (its time
step reserved), committed or failed, applied, late or revised, and the source's watermark. (A tile's rows put back in order after the run:
``derived.py``.)

The ledger is written after the store at every step (stored, then ``embedded``; applied, then
``applied``), so a crash between the two leaves work the next run finds done and only records:
nothing is embedded, applied or written twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..acquisition import Acquisition
from ..config import Config
from ..faults import crash_point
from ..grid import TileGrid
from ..outputs.ledger import FINAL, Failure, Ledger, State
from ..outputs.store import EmbeddingStore, Provenance, Reservation, StoreMismatchError
from ..sources import SourceFailure
from .actor import ApplyResult, ApplyStatus
from .blocks import EmbeddingJob
from .encoder import EMBEDDING_DIM
from .ingest import IngestError, grid_for, required_assets
from .plan import RunPlan
from .report import RunReport, failure_class, one_line
from .stages import StageSeconds
from .windows import block_cells, plan_blocks

log = logging.getLogger(__name__)
# One line per acquisition and stage (stored, applied), with its fields as `extra` for
# --log-format json; the CLI quiets it under a progress bar.
events = logging.getLogger("streamembed.events")


class AcquisitionLifecycle:
    """The driver's side of every acquisition of one output: store and ledger, in that order."""

    def __init__(
        self, cfg: Config, ledger: Ledger, store: EmbeddingStore, provenance: Provenance
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.store = store
        self.provenance = provenance

    def record_discovery(
        self, acqs: list[Acquisition], failures: list[SourceFailure], report: RunReport
    ) -> None:
        """Unreadable items as source failures (reported once), every product as seen."""
        for f in failures:
            if self.ledger.record_source_failure(f.key, f.href, f.reason):
                report.add_failure(f.key, f.reason, "source")
        report.new = self.ledger.record_seen(acqs)

    def record_decisions(self, plan: RunPlan, states: dict[str, State], report: RunReport) -> None:
        for d in plan.decisions:
            # the plan fails only products missing a band asset
            failure = Failure.MISSING if d.state == State.FAILED else None
            self.ledger.set_state(d.acquisition_id, d.state, d.reason, failure=failure)
            states[d.acquisition_id] = d.state
            (report.skipped if d.state == State.SKIPPED else report.failed).append(
                (d.acquisition_id, d.reason)
            )

    def missing_reason(self, a: Acquisition) -> str | None:
        """Why ``a`` cannot be read at all (a band asset missing), or None."""
        try:
            return a.missing_reason(required_assets(a, self.cfg.ingest, self.cfg.model))
        except IngestError as err:
            return str(err)

    def begin(
        self, a: Acquisition, states: dict[str, State], report: RunReport, bar: Any
    ) -> EmbeddingJob | None:
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
            self.fail(a, one_line(err), failure_class(err), states, report, bar)
            return None
        if reservation is None:  # stored by an earlier run that stopped before the ledger
            self.mark_embedded(a, states, report)
            return None
        blocks = plan_blocks(grid, self.cfg.ingest)
        return EmbeddingJob(a, grid, reservation, deque(blocks), len(blocks))

    def commit(
        self, job: EmbeddingJob, states: dict[str, State], report: RunReport, bar: Any
    ) -> None:
        """Make a finished acquisition visible in the store and the ledger (or fail it)."""
        a = job.acq
        if job.failed is not None:
            # The row is given up: later commits become visible past it, a retry takes a new one.
            with report.driver.timed("store_commit"):
                self.store.release(job.reservation)
            self.fail(a, job.failed, job.failure, states, report, bar)
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
        self.mark_embedded(a, states, report)

    def mark_embedded(self, a: Acquisition, states: dict[str, State], report: RunReport) -> None:
        with report.driver.timed("ledger"):
            self.ledger.set_state(a.id, State.EMBEDDED)
        crash_point("pipeline.embedded")
        states[a.id] = State.EMBEDDED
        report.embedded += 1

    def fail(
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

    def applied(
        self,
        a: Acquisition,
        res: ApplyResult,
        states: dict[str, State],
        replay_ids: set[str],
        report: RunReport,
        bar: Any,
    ) -> None:
        """The ledger and the report after one apply."""
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
            _record_revisions(self.ledger, a, res, report)
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

    def advance_watermark(self, key: str, acqs: list[Acquisition]) -> None:
        """Move the source's watermark to where every discovered product is final."""
        if not acqs or not self.cfg.source.is_stac_api:
            return
        states = self.ledger.states(a.id for a in acqs)
        open_ = [a.datetime for a in acqs if states.get(a.id) not in FINAL]
        self.ledger.set_watermark(key, min(open_) if open_ else max(a.datetime for a in acqs))


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


def _record_revisions(ledger: Ledger, a: Acquisition, res: ApplyResult, report: RunReport) -> None:
    """A late look folded in: the looks it replayed, their new row counts, in the ledger."""
    if res.rewind is None:
        return
    with report.driver.timed("ledger"):
        for rev in res.revised:
            ledger.record_revision(rev.acquisition_id, a.id, rev.rows_before,
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
