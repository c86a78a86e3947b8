"""Late looks against the number of tiles: what putting a store's rows back in sensing order
costs the driver, per tile, at 10 and 1,000 tiles.

    python benchmarks/late_looks.py [--tiles 10,1000] [--looks 6] [--late 0.1]
                                    [--json results/late/late-looks.json]

Each tile (a 3 x 4 cell grid, 64-d, the default int8 store: the control plane, not the bytes)
gets ``--looks`` looks appended in sensing order, then a ``--late`` share of the tiles gets one
look older than its newest (a late product, a retry after a mend). The end of a run then does
what the pipeline does for each tile it touched: ``out_of_order`` (from the metadata the writer
keeps), and ``compact`` where it says so. Reported per tile: the check's seconds, a
compaction's seconds, objects and bytes copied; they must not grow with the tiles stored.
The full-size cost (a 10980 px tile's rows, 2048-d) is measured through `streamembed backfill`
(benchmarks/RESULTS.md, "Late looks").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamembed.config import StoreConfig
from streamembed.grid import TileGrid
from streamembed.outputs.store import EmbeddingBatch, EmbeddingStore, Provenance
from streamembed.indices import INDEX_NAMES

PROVENANCE = Provenance(
    "bench-64d", "seeded", True, "resnet18", ("B02",), "divide_10000", 256, 32, (0, 8, 9)
)
T0 = dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)


def _batch(tile: str, i: int, dim: int = 64) -> EmbeddingBatch:
    grid = TileGrid(tile, 32633, 499980.0, 5400000.0, 96, 128, 32)
    rng = np.random.default_rng(i)
    shape = (grid.n_cells_y, grid.n_cells_x)
    return EmbeddingBatch(
        f"{tile}_{i}", tile, T0 + dt.timedelta(days=5 * i), grid,
        rng.normal(size=(*shape, dim)).astype(np.float32), rng.random(shape).astype(np.float32),
        np.zeros(shape, np.float32), rng.random((*shape, len(INDEX_NAMES))).astype(np.float32),
        PROVENANCE,
    )  # fmt: skip


def run(n_tiles: int, looks: int, late: float, work: Path) -> dict[str, Any]:
    store = EmbeddingStore(work / f"store-{n_tiles}", StoreConfig())
    tiles = [f"T{k:05d}" for k in range(n_tiles)]
    late_tiles = set(tiles[:: max(1, round(1 / late))]) if late > 0 else set()
    t0 = time.perf_counter()
    for tile in tiles:
        for i in range(looks):
            if not (tile in late_tiles and i == looks - 2):  # its next-to-last look comes late
                store.append(_batch(tile, i))
    for tile in sorted(late_tiles):
        store.append(_batch(tile, looks - 2))
    build = time.perf_counter() - t0
    check, compact, moved, copied = [], [], [], []
    for tile in tiles:
        t = time.perf_counter()
        due = store.out_of_order(tile)
        check.append(time.perf_counter() - t)
        if due:
            t = time.perf_counter()
            done = store.compact(tile)
            compact.append(time.perf_counter() - t)
            assert done is not None
            moved.append(done.moved)
            copied.append(done.bytes_copied)
    for tile in sorted(late_tiles)[:3]:  # in order now, as a plain reader sees it
        times = store.open_dataset(tile, decode=False).time.values
        assert (np.diff(times) > np.timedelta64(0)).all() and len(times) == looks
    return {
        "tiles": n_tiles,
        "looks": looks,
        "late_tiles": len(late_tiles),
        "build_s": round(build, 2),
        "check_ms_per_tile": round(1e3 * float(np.mean(check)), 3),
        "compact_ms_per_late_tile": round(1e3 * float(np.mean(compact)), 2) if compact else None,
        "compact_ms_p95": round(1e3 * float(np.percentile(compact, 95)), 2) if compact else None,
        "rows_moved_per_late_tile": float(np.mean(moved)) if moved else 0,
        "bytes_copied_per_late_tile": int(np.mean(copied)) if copied else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", default="10,1000")
    ap.add_argument("--looks", type=int, default=6)
    ap.add_argument("--late", type=float, default=0.1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.tiles.split(",")):
            row = run(n, args.looks, args.late, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        record = {
            "machine": platform.processor() or platform.machine(),
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
