"""Decoded JPEG 2000 tiles kept between blocks: the same pixels as a plain read, each tile
decoded once when one worker reads a product block by block, a mended file decoded again, and
the budget held."""

from __future__ import annotations

import os

import numpy as np
import rasterio

from streamembed.config import IngestConfig
from streamembed.harness.fullsize import generate_fullsize
from streamembed.runtime.ingest import _read_band, grid_for
from streamembed.runtime.tilecache import TileCache, file_identity, read_window
from streamembed.runtime.windows import plan_blocks
from streamembed.sources.local import discover


def _product(tmp_path, px=2304):
    items = generate_fullsize(tmp_path, acquisitions=1, tile_px=px, fmt="safe", seed=5)
    (acq,), _ = discover(items)
    return acq


def test_blocks_read_through_the_cache_are_the_plain_reads(tmp_path):
    acq = _product(tmp_path)
    ingest = IngestConfig(block_px=1024)
    grid = grid_for(acq, ingest.cell_size)
    blocks = plan_blocks(grid, ingest)
    assert len(blocks) == 9
    cache = TileCache(64 << 20)
    for band in ("B04", "B11", "B01", "SCL"):
        with rasterio.open(acq.assets[band].href) as src:
            assert src.driver == "JP2OpenJPEG"
            assert src.block_shapes[0] == (min(1024, src.height), min(1024, src.width))
            for block in blocks:
                rows, cols = block.read_rows(32), block.read_cols(32)
                plain = _read_band(acq, src, band, grid, rows, cols, "nearest")
                cached = _read_band(acq, src, band, grid, rows, cols, "nearest", cache)
                assert np.array_equal(plain, cached), (band, block.index)
    # 10 m B04: a 3 x 3 tile grid, each tile decoded once however many blocks touched it
    # (the budget holds every tile here); nothing above the cache's budget is kept.
    assert cache.misses == 9 + 4 + 1 + 4 and cache.hits > cache.misses
    assert cache.nbytes <= cache.max_bytes


def test_budget_keeps_the_tiles_needed_soonest():
    cache = TileCache(3 * 8)
    for tx in range(4):
        cache.put(("f", 1, 0, tx), np.zeros(4, np.uint16))  # 8 bytes each
    # over budget: the tile farthest right (needed last by the next block row) went
    assert cache.get(("f", 1, 0, 3)) is None
    assert all(cache.get(("f", 1, 0, tx)) is not None for tx in range(3))
    assert cache.nbytes == 24


def test_a_file_mended_in_place_is_decoded_again(tmp_path):
    acq = _product(tmp_path, px=1024)
    href = acq.assets["B04"].href
    before = file_identity(href)
    with rasterio.open(href) as src:
        first = read_window(src, 1, (0, 64), (0, 64), TileCache(16 << 20))
    st = os.stat(href)
    os.utime(href, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_identity(href) != before
    assert first.shape == (64, 64) and first.dtype == np.uint16


def test_cogs_bypass_the_cache(tmp_path):
    items = generate_fullsize(tmp_path, acquisitions=1, tile_px=512, seed=5)
    (acq,), _ = discover(items)
    cache = TileCache(16 << 20)
    with rasterio.open(acq.assets["B04"].href) as src:
        read_window(src, 1, (0, 300), (0, 300), cache)
    assert cache.misses == 0 and cache.nbytes == 0
