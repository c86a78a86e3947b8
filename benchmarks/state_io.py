"""Statistics state at the planet's size: bytes per tile and state I/O per apply, full tiles.

    python benchmarks/state_io.py [--tiles 3] [--looks 6] [--json results/state/state-io.json]

Under the planet's rotation a tile comes back every ~5 days and a shard's memory holds two
full tiles, so every apply reads its tile's state back from its checkpoint and writes it
again. This runs that: ``--tiles`` full MGRS tiles (343 x 343 embedding cells x 2048 dims,
the default config's int8 store) take turns, ``--looks`` acquisitions each, through one
``StatsActor`` whose memory bound (``stats.max_state_mib``) holds one tile, so each apply
loads the state of a tile evicted since its last look, exactly as at the planet's size.

Each acquisition's clouds: a smooth random field (features ~10 km, as cumulus fields and
fronts are at 320 m cells) cut at a cloud fraction drawn U-shaped (Beta(0.6, 0.4), mean 0.6;
Sentinel-2 scenes are mostly near-clear or near-overcast, and the archive's mean cover over
land is ~0.6). The same store, the same clouds for every variant:

- ``float32 / 343``: one block per tile, float32: what a checkpoint cost before (the whole
  mean read back and written on every apply that sees a clear cell);
- ``float16 / 64`` and ``float16 / 32``: the mean in float16 (computed in float32), in blocks
  of 64 or 32 cells a side, read where the look has a clear cell, written where it changed.

Per apply: cloud fraction, blocks read, MB read and written (manifest included), seconds to
load, apply, and checkpoint. Local disk; the bytes are what an object store would move.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CELLS, DIM = 343, 2048
TILES = ("31UDQ", "31UEQ", "31UFQ", "31UGQ", "32ULV", "32UMV")
T0 = dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)
VARIANTS = (("float32", 343), ("float16", 64), ("float16", 32))


def _cloud_fractions(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.6, 0.4, n)


def _clear(rng: np.random.Generator, cloud: float) -> np.ndarray:
    """(CELLS, CELLS) clear fraction per cell: 0 under the cloud field's top ``cloud`` share."""
    coarse = rng.standard_normal((CELLS // 32 + 2, CELLS // 32 + 2))
    field = np.kron(coarse, np.ones((32, 32)))[:CELLS, :CELLS]
    # smooth the blocky upsampling: a separable box blur of 33 cells (~10 km)
    k = np.ones(33) / 33
    field = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 0, field)
    field = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, field)
    field += 0.05 * rng.standard_normal(field.shape)
    cut = np.quantile(field, 1.0 - cloud) if cloud > 0 else np.inf
    return (field < cut).astype(np.float32) if cloud < 1 else np.zeros(field.shape, np.float32)


def build_store(root: Path, tiles: int, looks: int) -> list[tuple[str, str, float]]:
    """The embeddings the applies read: (tile, acquisition id, cloud fraction), look-major."""
    from streamembed.config import StoreConfig
    from streamembed.grid import TileGrid
    from streamembed.outputs.store import EmbeddingBatch, EmbeddingStore, Provenance
    from streamembed.indices import INDEX_NAMES

    shutil.rmtree(root, ignore_errors=True)  # an acquisition already stored is not rewritten
    store = EmbeddingStore(str(root / "embeddings.zarr"), StoreConfig())
    provenance = Provenance(
        "bench-state", "seeded", True, "resnet50", ("B02",), "divide_10000", 320, 0, (3, 8, 9)
    )
    clouds = _cloud_fractions(tiles * looks)
    order = []
    bases = {}
    for k in range(looks):
        for t in range(tiles):
            tile = TILES[t]
            rng = np.random.default_rng([t, k])
            if tile not in bases:
                bases[tile] = np.random.default_rng(t).standard_normal(
                    (CELLS, CELLS, DIM), dtype=np.float32
                )
            emb = bases[tile] + 0.2 * rng.standard_normal((CELLS, CELLS, DIM), dtype=np.float32)
            clear = _clear(rng, float(clouds[k * tiles + t]))
            cloud = 1.0 - float(clear.mean())
            idx = np.full((CELLS, CELLS, len(INDEX_NAMES)), 0.3, np.float32)
            grid = TileGrid(tile, 32631, 300000.0 + 109800 * t, 5600040.0, 32 * CELLS, 32 * CELLS)
            acq = f"{tile}-{k:02d}"
            when = T0 + dt.timedelta(days=5 * k)
            store.append(
                EmbeddingBatch(acq, tile, when, grid, emb, clear, np.zeros_like(clear), idx,
                               provenance)
            )  # fmt: skip
            order.append((tile, acq, cloud))
            print(f"stored {acq} (cloud {cloud:.2f})", file=sys.stderr)
    return order


def run_variant(
    store_root: Path, work: Path, order: list[tuple[str, str, float]], dtype: str, block: int
) -> dict[str, Any]:
    from streamembed.config import StatsConfig, StoreConfig
    from streamembed.detection.stats import TileState
    from streamembed.runtime.actor import ApplyStatus, StatsActor

    root = work / f"{dtype}-{block}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "embeddings.zarr").symlink_to(store_root / "embeddings.zarr")
    one_tile = TileState.empty(CELLS, CELLS, DIM, dtype, block).nbytes / 2**20
    cfg = StatsConfig(
        min_obs=2, state_dtype=dtype, state_block_cells=block, max_state_mib=1.2 * one_tile
    )
    actor = StatsActor(str(root), cfg, StoreConfig(), "bench-state")
    applies = []
    before = actor.metrics()
    for tile, acq, cloud in order:
        result = actor.apply(tile, acq)
        assert result.status == ApplyStatus.APPLIED, result
        after = actor.metrics()
        state = actor.cache.states[tile]
        s = result.seconds
        applies.append(
            {
                "tile": tile,
                "acquisition": acq,
                "cloud": round(cloud, 3),
                "blocks_read": int(state.loaded.sum()),
                "blocks": int(state.loaded.size),
                "read_mb": round((after.state_read_mib - before.state_read_mib) * 1.048576, 2),
                "written_mb": round(
                    (after.state_written_mib - before.state_written_mib) * 1.048576, 2
                ),
                "load_s": round(s.state_load, 3),
                "apply_s": round(s.stats_apply, 3),
                "checkpoint_s": round(s.stats_checkpoint, 3),
            }
        )
        before = after
        print(f"{dtype}/{block} {applies[-1]}", file=sys.stderr)
    state_bytes = sum(p.stat().st_size for p in (root / "state").rglob("*") if p.is_file())
    tiles = len({t for t, _, _ in order})
    # the first look of a tile reads nothing (no checkpoint yet): the rotation's steady state
    # is every later one
    steady = [a for a in applies if not a["acquisition"].endswith("-00")]
    return {
        "dtype": dtype,
        "block_cells": block,
        "state_mb_per_tile": round(state_bytes / tiles / 1e6, 1),
        "evictions": actor.metrics().evictions,
        "mean_read_mb": round(float(np.mean([a["read_mb"] for a in steady])), 1),
        "mean_written_mb": round(float(np.mean([a["written_mb"] for a in steady])), 1),
        "mean_load_s": round(float(np.mean([a["load_s"] for a in steady])), 2),
        "mean_apply_s": round(float(np.mean([a["apply_s"] for a in steady])), 2),
        "mean_checkpoint_s": round(float(np.mean([a["checkpoint_s"] for a in steady])), 2),
        "applies": applies,
    }


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "| state | MB per tile | read MB / apply | written MB / apply | load s | apply s "
        "| checkpoint s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in record["variants"]:
        lines.append(
            f"| {v['dtype']}, blocks of {v['block_cells']} | {v['state_mb_per_tile']:,} "
            f"| {v['mean_read_mb']:,} | {v['mean_written_mb']:,} | {v['mean_load_s']} "
            f"| {v['mean_apply_s']} | {v['mean_checkpoint_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--looks", type=int, default=6)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="state-io-"))
    t0 = time.perf_counter()
    store_root = work / "store"
    order = build_store(store_root, args.tiles, args.looks)
    store_s = time.perf_counter() - t0
    variants = [run_variant(store_root, work, order, d, b) for d, b in VARIANTS]
    record = {
        "schema": "streamembed-bench-state-io/1",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "tiles": args.tiles,
        "looks": args.looks,
        "cells": CELLS,
        "dim": DIM,
        "store_build_s": round(store_s, 1),
        "variants": variants,
    }
    print(markdown(record))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
