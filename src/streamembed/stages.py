"""Worker-side seconds per pipeline stage: what each task reports and the run report sums."""

from __future__ import annotations

import dataclasses
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
