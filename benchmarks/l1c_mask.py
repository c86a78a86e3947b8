"""The L1C mask computed from the bands against SCL, on one scene written as L1C and as L2A.

    python benchmarks/l1c_mask.py --l1c X.SAFE|X.zip --l2a Y.SAFE|Y.zip [--json F]

Both products come from `streamembed synth --format safe` with the same seed and date (the same
clouds and shadows; the L2A's SCL is where the writer put them). The tile is read block by
block as the pipeline reads it, the L1C masked by ``ingest.cloud_mask: computed`` and the L2A by
``scl``, and the pixels counted: for the cloud classes (SCL 8, 9, 10), shadows (3) and
everything masked, the share of SCL's pixels the computed mask also masks (recall) and the
share of pixels SCL leaves clear that it masks (over-masking). Also seconds of the computed
mask per block beside the SCL read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l1c", required=True, type=Path)
    parser.add_argument("--l2a", required=True, type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from streamembed.config import IngestConfig, ModelConfig
    from streamembed.runtime.ingest import _read_retrying, grid_for, read_masked, scene_bands
    from streamembed.runtime.windows import plan_blocks
    from streamembed.runtime.radiometry import quality_masks
    from streamembed.sources.safe import read_product

    l1c, l2a = read_product(args.l1c), read_product(args.l2a)
    computed, scl_mode = IngestConfig(cloud_mask="computed"), IngestConfig(cloud_mask="scl")
    model = ModelConfig()
    grid = grid_for(l2a, computed.cell_size)
    counts = {k: np.zeros(2, np.int64) for k in ("cloud", "shadow", "masked", "clear")}
    seconds = {"computed": 0.0, "scl": 0.0}
    blocks = plan_blocks(grid, computed)
    for i, block in enumerate(blocks):
        cell = grid.cell_size
        # each block's own cells only, so no pixel is counted twice
        rows = (block.cells_y[0] * cell, block.cells_y[1] * cell)
        cols = (block.cells_x[0] * cell, block.cells_x[1] * cell)
        t0 = time.perf_counter()
        _, mine, _, _ = read_masked(l1c, grid, rows, cols, scene_bands(l1c, model), computed)
        t1 = time.perf_counter()
        _, scl, nodata = _read_retrying(l2a, grid, rows, cols, ["B02"], "SCL", scl_mode)
        theirs, _ = quality_masks(scl, nodata, scl_mode, "scl")
        seconds["computed"] += t1 - t0
        seconds["scl"] += time.perf_counter() - t1
        for name, truth in (
            ("cloud", np.isin(scl, (8, 9, 10))),
            ("shadow", scl == 3),
            ("masked", theirs),
        ):
            counts[name] += ((mine & truth).sum(), truth.sum())
        counts["clear"] += ((mine & ~theirs).sum(), (~theirs).sum())
        print(f"block {i + 1}/{len(blocks)}", flush=True)
    result = {
        "recall_cloud": counts["cloud"][0] / max(1, counts["cloud"][1]),
        "recall_shadow": counts["shadow"][0] / max(1, counts["shadow"][1]),
        "recall_masked": counts["masked"][0] / max(1, counts["masked"][1]),
        "over_masking": counts["clear"][0] / max(1, counts["clear"][1]),
        "scl_masked_share": counts["masked"][1] / (counts["masked"][1] + counts["clear"][1]),
        "computed_seconds": seconds["computed"],
        "scl_seconds": seconds["scl"],
        "blocks": len(blocks),
    }
    result = {k: round(float(v), 4) for k, v in result.items()}
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"l1c": str(args.l1c), "l2a": str(args.l2a), **result}))


if __name__ == "__main__":
    main()
