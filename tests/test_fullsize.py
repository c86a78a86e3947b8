"""The full-size synthetic writer: strips streamed into real COGs that the reader takes as any
product (a small size here; `streamembed synth --tile-px 10980` writes the real one)."""

from __future__ import annotations

import json

import numpy as np
import rasterio

from streamembed.acquisition import parse_item
from streamembed.config import IngestConfig, ModelConfig
from streamembed.harness.fullsize import STRIP_PX, generate_fullsize
from streamembed.runtime.ingest import grid_for, read_block_pixels
from streamembed.runtime.windows import plan_blocks


def test_strip_by_strip_products_are_cogs_the_pipeline_reads(tmp_path):
    px = 2 * STRIP_PX + 96  # three strips, the last one short
    seen = []
    items = generate_fullsize(tmp_path, acquisitions=2, tile_px=px,
                              progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen[-1] == (6, 6)
    paths = sorted(items.rglob("*.json"))
    assert len(paths) == 2
    acq = parse_item(json.loads(paths[0].read_text()), str(paths[0]))
    for band, size in (("B02", px), ("B05", px // 2), ("B01", px // 6), ("SCL", px // 2)):
        with rasterio.open(acq.assets[band].href) as src:
            assert src.shape == (size, size) and src.crs.to_epsg() == 32633
            assert src.profile["tiled"] and src.overviews(1) == []
            data = src.read(1)
            # every strip written: no row left at the nodata fill
            assert (data > 0).all() if band != "SCL" else np.isin(data, [3, 4, 5, 6, 8, 9]).all()
    grid = grid_for(acq, 32)
    assert (grid.n_cells_y, grid.n_cells_x) == (px // 32, px // 32)
    ingest = IngestConfig()
    (block,) = plan_blocks(grid, ingest)
    pixels = read_block_pixels(acq, grid, block, ingest, ModelConfig())
    assert pixels.dn.dtype == np.uint16 and pixels.clear.shape == (px // 32, px // 32)
    assert 0 < float(pixels.clear.mean()) <= 1
