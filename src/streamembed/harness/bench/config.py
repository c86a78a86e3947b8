"""The ``bench`` section of a benchmark profile (benchmarks/*.yaml): what to measure.

A profile is an ordinary config file: its runtime sections configure the pipeline being
measured, and this section, which the runtime never reads, says how it is measured.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ...config import Config, Section, load_config, load_section


class BenchConfig(Section):
    """``streamembed bench``: what the benchmark profile measures (benchmarks/*.yaml)."""

    label: str = "cpu-local"
    data: str = Field("benchmarks/data", description="cached synthetic archives")
    tile_px: int = Field(512, ge=32)
    tiles: int = Field(1, ge=1, le=2)
    acquisitions: int = Field(24, ge=1, description="per tile, main throughput runs")
    workers: tuple[int, ...] = Field((), description="scaling steps; empty: 1, 2, 4 … cores")
    long_acquisitions: int = Field(200, ge=0, description="memory-flatness run (0: skip)")
    long_tile_px: int = Field(256, ge=32)
    stats_dims: tuple[int, ...] = (128, 2048)
    stats_cells: int = Field(16384, ge=64)
    memory_sample_seconds: float = Field(0.5, gt=0)
    raw_blocks: int | None = Field(
        None, ge=1, description="blocks the raw encoder is timed on (null: every block)"
    )
    read_paths_scenes: int = Field(
        0, ge=0, description="scenes read both with our windows and odc-stac (0: skip)"
    )
    many_tiles: tuple[int, ...] = Field(
        (), description="the scale benchmark: backfills of these tile counts (empty: not run)"
    )
    many_tiles_px: int = Field(256, ge=32, description="tile size of the scale benchmark")
    many_tiles_looks: int = Field(2, ge=1, description="acquisitions per tile there")
    require_gpu: bool = Field(
        False, description="record 'not measured' instead of running where no GPU is present"
    )
    output: str = "benchmarks/results"
    results_md: str = "benchmarks/RESULTS.md"


def load_profile(path: str | Path) -> tuple[Config, BenchConfig]:
    """The pipeline config and the bench section of one profile file."""
    return load_config(path), load_section(path, "bench", BenchConfig)
