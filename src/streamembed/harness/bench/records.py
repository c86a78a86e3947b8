"""What one ``streamembed bench`` run measured, as typed records (written and read as JSON).

Field names are the JSON keys (schema ``streamembed-bench/1``); fields added after the first
records have defaults, so every committed record in benchmarks/results still reads.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SCHEMA = "streamembed-bench/1"

RecordT = TypeVar("RecordT")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    memory_gib: float
    gpus: tuple[Gpu, ...]
    hostname: str = ""
    platform: str = ""

    def describe(self) -> str:
        machine = f"{self.cores}-core {self.cpu[:40]}".strip()
        return f"{machine}, {self.gpus[0].name}" if self.gpus else machine


@dataclass(frozen=True)
class RawEncoder:
    """The encoder alone on prepared blocks, in one process: the bound the pipeline is held to."""

    acquisitions: int
    windows: int
    seconds: float
    acquisitions_per_s: float
    windows_per_s: float
    cells_per_s: float
    device: str
    torch_threads: int
    blocks: int = 0
    windows_per_acquisition: int = 0


@dataclass(frozen=True)
class PipelineRun:
    """One backfill on a warm cluster."""

    workers: int
    acquisitions: int
    failed: int
    wall_seconds: float
    acquisitions_per_s: float
    km2_per_s: float
    cells_per_s: float
    stage_seconds: dict[str, float]
    task_compute_seconds: dict[str, float]
    peak_worker_memory_mib: float
    worker_memory_quarter_peaks_mib: list[float]
    gpu_utilisation_percent: float | None
    stats_cell_updates: int
    stats_cell_updates_per_busy_s: float | None
    anomaly_rows: int
    blocks: int = 0
    block_bytes_per_acquisition: float = 0.0
    stage_seconds_per_acquisition: dict[str, float] = field(default_factory=dict)
    store_bytes_per_acquisition: float = 0.0
    state_bytes_per_tile: float = 0.0
    actor_resident_state_mib: float = 0.0
    # against the raw encoder, set once the run is placed in its profile
    raw_bound_acquisitions_per_s: float | None = None
    share_of_raw_encoder: float | None = None
    scaling_efficiency: float | None = None
    memory_first_to_last_quarter_change: float | None = None


@dataclass(frozen=True)
class StatsCore:
    """The statistics core against a NumPy copy of the same bytes, on one core."""

    dim: int
    cells: int
    seconds_per_update: float
    cell_updates_per_s_per_core: float
    bytes_moved_per_update: int
    bandwidth_gib_s: float
    numpy_copy_bandwidth_gib_s: float
    share_of_copy: float
    embedding_dtype: str = "float32"
    cold_caches: bool = False


@dataclass(frozen=True)
class ReadPaths:
    """Our windowed rasterio reads against odc-stac on the same scenes (median s per scene)."""

    scenes: int
    ours_seconds: float
    odc_stac_seconds: float
    values_equal: bool


@dataclass(frozen=True)
class BenchRecord:
    label: str
    time: str
    hardware: Hardware
    software: dict[str, str | None]
    config: dict[str, Any]  # the profile's runtime Config as JSON, for reproduction
    gpu_measured: bool
    schema: str = SCHEMA
    gpu_note: str | None = None
    raw_encoder: RawEncoder | None = None
    runs: tuple[PipelineRun, ...] = ()
    pipeline_share_of_raw_encoder: float | None = None
    bottleneck_stage: str | None = None
    long_backfill: PipelineRun | None = None
    stats_core: tuple[StatsCore, ...] = ()
    read_paths: ReadPaths | None = None

    @property
    def top_run(self) -> PipelineRun | None:
        """The run on the most workers (what the summary reports)."""
        return max(self.runs, key=lambda r: r.workers) if self.runs else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> BenchRecord:
        return from_dict(cls, json.loads(text))

    @classmethod
    def read(cls, path: Path) -> BenchRecord:
        try:
            return cls.from_json(path.read_text())
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a {SCHEMA} record ({err})") from None


def from_dict(cls: type[RecordT], data: dict[str, Any]) -> RecordT:
    """A record dataclass from its JSON form: nested records and tuples rebuilt, unknown keys
    (a newer writer's) ignored, missing ones left to their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _value(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**kwargs)


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        return tuple(_value(item, v) for v in value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value)
    return value
