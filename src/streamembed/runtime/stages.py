"""Seconds per pipeline stage: what each task reports and the run report sums (workers), and
the driver's own seconds per control-plane step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSeconds:
    """Seconds spent in each stage (one block, one apply, or summed over a run)."""

    read_decode_resample: float = 0.0
    mask_normalise: float = 0.0
    encode: float = 0.0
    store_write: float = 0.0
    store_commit: float = 0.0
    stats_read: float = 0.0
    stats_apply: float = 0.0
    sink_write: float = 0.0
    stats_checkpoint: float = 0.0
    state_load: float = 0.0  # a tile's state read back (the blocks an acquisition can see)

    def __add__(self, other: StageSeconds) -> StageSeconds:
        return StageSeconds(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def slowest_besides_encode(self) -> str:
        """The stage that costs most after the encoder: where to look first."""
        stages = {k: v for k, v in self.as_dict().items() if k != "encode"}
        return max(stages, key=lambda k: stages[k])


@dataclass
class DriverSeconds:
    """The driver's own seconds in one run, per control-plane step (the scale benchmark's
    figures: none of them may grow with the number of tiles the output holds).

    ``apply_wait`` is the driver waiting on statistics actors (their work is in StageSeconds);
    ``cpu`` the driver process's CPU seconds over the run, its client's threads included.
    """

    discover: float = 0.0
    plan: float = 0.0  # ledger reads, the run's plan, the replay check
    ledger: float = 0.0  # ledger writes as acquisitions move on
    store_create: float = 0.0  # a tile's first acquisition: its Zarr group written
    store_begin: float = 0.0
    store_commit: float = 0.0
    store_compact: float = 0.0  # the run's late looks put in sensing order (after its applies)
    submit: float = 0.0  # building and submitting block tasks
    apply_wait: float = 0.0
    catalog: float = 0.0  # the STAC catalogue (and indexes) after the run
    cpu: float = 0.0

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, step, getattr(self, step) + time.perf_counter() - t0)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)
