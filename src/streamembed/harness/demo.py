"""The embedded default's data: the ``demo`` section of config.yaml and the synthetic writers
behind ``streamembed synth`` and ``streamembed demo``.

Not part of the runtime: the pipeline never reads these settings, so they live apart from
:class:`~streamembed.config.Config` and are loaded with ``load_section(path, "demo", ...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import Field

from ..config import Section


class DemoConfig(Section):
    """``streamembed demo`` / ``synth``: the synthetic archive written on first run."""

    data: str = Field("demo-data", description="folder of the synthetic archive")
    tile_px: int = Field(512, ge=32)
    days: int = Field(365, ge=1)
    revisit_days: int = Field(5, ge=1)
    seed: int = 42


@contextlib.contextmanager
def synth_progress(unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for the synthetic writers, as the (done, total) callback they take."""
    from tqdm import tqdm

    bar = tqdm(desc="synthesising", unit=unit, dynamic_ncols=True)

    def step(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield step
    finally:
        bar.close()


def write_demo_archive(
    out: Path,
    demo: DemoConfig,
    cell_size: int,
    days: int | None = None,
    tile_px: int | None = None,
    tiles: int = 2,
) -> tuple[Path, Path]:
    """Demo-size tiles with planted events: (items folder, truth GeoParquet)."""
    from .synthetic import generate

    with synth_progress("acq") as step:
        return generate(
            out,
            days=days or demo.days,
            revisit_days=demo.revisit_days,
            tile_px=tile_px or demo.tile_px,
            seed=demo.seed,
            cell_size=cell_size,
            n_tiles=tiles,
            progress=step,
        )


def write_fullsize_archive(
    out: Path,
    demo: DemoConfig,
    days: int | None,
    tile_px: int,
    tiles: int,
    fmt: str = "cog",
    level: str = "L2A",
    zipped: bool = False,
) -> Path:
    """Products without planted events, written strip by strip (COGs + items, or SAFE
    products with JPEG 2000 bands): the items folder."""
    from .fullsize import generate_fullsize

    n = max(1, (days or 2 * demo.revisit_days) // demo.revisit_days)
    what = "SAFE (JPEG 2000)" + (", zipped" if zipped else "") if fmt == "safe" else "COG"
    print(f"writing {n} {level} {what} product(s) x {tiles} tile(s) of {tile_px} px, "
          "strip by strip", flush=True)  # fmt: skip
    with synth_progress("strip") as step:
        return generate_fullsize(
            out, acquisitions=n, revisit_days=demo.revisit_days, tile_px=tile_px,
            seed=demo.seed, n_tiles=tiles, progress=step, fmt=fmt, level=level, zipped=zipped,
        )  # fmt: skip
