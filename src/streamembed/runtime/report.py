"""What one run did (``RunReport``), and how an error is told in the ledger: its failure class
and its one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from distributed import KilledWorker

from ..outputs.ledger import Failure
from ..outputs.store import StoreMismatchError
from .ingest import CorruptAssetError, GridMismatchError, TransientReadError
from .stages import DriverSeconds, StageSeconds


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
