"""JPEG 2000 against COG decode: core-seconds per band and per tile, by thread setting and by
read pattern, on the same full-size product written both ways.

    python benchmarks/decode_speed.py --safe DIR/X.SAFE|X.zip --cog ITEMS/TILE/ID [--json F]

Both come from `streamembed synth --tile-px 10980` (``--format safe`` for the SAFE product,
seed and date the same, so the pixels are the same). One band per kind stands for its kind:
B04 for the four 10 m bands, B11 for the six 20 m ones, B01 for the 60 m ones (two in L2A,
three in L1C) and SCL. Patterns:

- **whole band**: one ``read(1)`` of the band, with ``GDAL_NUM_THREADS`` (which the JPEG 2000
  driver also hands to OpenJPEG) at 1 and 2;
- **pipeline blocks**: every block of the tile's default block plan read as the pipeline reads
  it (a fresh open per block, the block's rows and columns with their 32 px margins, the band
  at its own resolution), one thread as a worker runs it; for JPEG 2000 also through the
  decoded-tile cache (``tilecache.py``, the band's 1/13 share of the default 384 MiB), by one
  worker taking every block and by two taking them in turn.

Seconds are CPU seconds of this process (``time.process_time``: every thread's share), and wall.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

BAND_KINDS = {"B04": "10 m", "B11": "20 m", "B01": "60 m", "SCL": "SCL (20 m)"}
PER_TILE = {"B04": 4, "B11": 6, "B01": 2, "SCL": 1}  # an L2A product's 12 bands + SCL


def _timed(fn: Any) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def _whole(href: str, threads: int) -> tuple[float, float]:
    import rasterio

    with rasterio.Env(GDAL_NUM_THREADS=threads, GDAL_CACHEMAX=64), rasterio.open(href) as src:
        return _timed(lambda: src.read(1))


def _blocks(
    href: str, acq: Any, band: str, cache_mib: int = 0, workers: int = 1
) -> tuple[float, float, int]:
    """Every default block of the tile, read as ``ingest._read_band`` reads it: without the
    decoded-tile cache, or with one cache of ``cache_mib`` per worker, ``workers`` workers
    taking the blocks in turn (as two Dask workers do)."""
    import rasterio

    from streamembed.config import IngestConfig
    from streamembed.runtime.ingest import _read_band, grid_for
    from streamembed.runtime.windows import plan_blocks
    from streamembed.runtime.tilecache import TileCache

    ingest = IngestConfig()
    grid = grid_for(acq, ingest.cell_size)
    blocks = plan_blocks(grid, ingest)
    cpu = wall = 0.0
    for worker in range(workers):
        cache = TileCache(cache_mib << 20) if cache_mib else None
        for block in blocks[worker::workers]:
            rows, cols = block.read_rows(grid.cell_size), block.read_cols(grid.cell_size)
            with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(href) as src:
                c, w = _timed(
                    lambda s=src, r=rows, k=cols, m=cache: _read_band(
                        acq, s, band, grid, r, k, "nearest", m
                    )
                )
            cpu, wall = cpu + c, wall + w
    return cpu, wall, len(blocks)


def _acquisitions(safe: Path, cog: Path) -> dict[str, Any]:
    from streamembed.sources.local import discover

    out = {}
    for name, path in (("jp2", safe), ("cog", cog)):
        acqs, failures = discover(path)
        if failures or len(acqs) != 1:
            raise SystemExit(f"{path}: expected one product, found {len(acqs)} ({failures})")
        out[name] = acqs[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--safe", required=True, type=Path)
    parser.add_argument("--cog", required=True, type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    acqs = _acquisitions(args.safe, args.cog)
    rows: list[dict[str, Any]] = []
    for fmt, acq in acqs.items():
        for band in BAND_KINDS:
            href = acq.assets[band].href
            row: dict[str, Any] = {"format": fmt, "band": band, "kind": BAND_KINDS[band]}
            for threads in (1, 2):
                cpu, wall = _whole(href, threads)
                row[f"whole_t{threads}_cpu_s"], row[f"whole_t{threads}_wall_s"] = cpu, wall
            cpu, wall, n = _blocks(href, acq, band)
            row.update(blocks_cpu_s=cpu, blocks_wall_s=wall, blocks=n)
            if fmt == "jp2":
                # One band's tiles alone in the cache: the budget a band gets of the default.
                share = 384 // 13
                for workers in (1, 2):
                    cpu, _, _ = _blocks(href, acq, band, share, workers)
                    row[f"blocks_cached_w{workers}_cpu_s"] = cpu
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)  # fmt: skip
    tiles = {}
    for fmt in acqs:
        mine = {r["band"]: r for r in rows if r["format"] == fmt}
        tiles[fmt] = {
            key: round(sum(PER_TILE[b] * mine[b][key] for b in PER_TILE), 1)
            for key in (
                "whole_t1_cpu_s", "whole_t2_wall_s", "blocks_cpu_s",
                "blocks_cached_w1_cpu_s", "blocks_cached_w2_cpu_s",
            )
            if all(key in mine[b] for b in PER_TILE)
        }  # fmt: skip
    print(json.dumps({"per_l2a_tile": tiles}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
            },
            "safe": str(args.safe),
            "cog": str(args.cog),
            "bands": rows,
            "per_l2a_tile": tiles,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
