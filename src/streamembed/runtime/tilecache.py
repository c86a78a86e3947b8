"""Decoded JPEG 2000 tiles a worker keeps between the blocks it reads.

OpenJPEG decodes a JPEG 2000 band tile by tile (ESA writes 1024 px tiles): a read of any
window costs every tile the window touches, whole. A block's window is 2048 px plus a 32 px
margin on each side, so it touches four tiles per side instead of two, and at 20 m three
instead of one: read block by block, a full-size L2A product costs 3,684 tile decodes, 4.95
times its 744 tiles. Reading tile by tile and keeping the decoded tiles (bounded in bytes;
those the row-major block order needs last go first) lets a worker's next blocks take the tiles
they share with its last ones: at the default 384 MiB, 1,827 decodes with two workers (2.46x),
1,362 with one (benchmarks/RESULTS.md "JPEG 2000"). Pixels are the same either way: a tile
read whole is the tile.

Only formats whose decode dominates use it (JPEG 2000); a COG's tiles are cheap to inflate
and GDAL's own cache covers them. One cache per worker process, sized by
``ingest.decode_cache_mib``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

CACHED_DRIVERS = frozenset({"JP2OpenJPEG"})


class TileCache:
    """Decoded tiles by key, those needed last evicted past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # A worker with several threads reads several blocks at once.
        self._lock = threading.Lock()
        self._tiles: dict[Hashable, np.ndarray] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self.hits += 1
            return tile

    def put(self, key: Hashable, tile: np.ndarray) -> None:
        with self._lock:
            self.misses += 1
            if tile.nbytes > self.max_bytes:
                return
            old = self._tiles.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._tiles[key] = tile
            self.nbytes += tile.nbytes
            self._evict()

    def _evict(self) -> None:
        """Past the budget, drop the tiles needed last. Blocks go row-major: a tile this block
        row has passed is next needed by the next block row at its column, so the tile
        farthest right is needed last (Belady's choice; keys end in (row, column))."""
        while self.nbytes > self.max_bytes and self._tiles:
            key = max(self._tiles, key=lambda k: k[-1] if isinstance(k, tuple) else 0)
            self.nbytes -= self._tiles.pop(key).nbytes

    def forget(self, done: Callable[[Hashable], bool]) -> None:
        """Drop the tiles ``done`` says no later read needs."""
        with self._lock:
            for key in [k for k in self._tiles if done(k)]:
                self.nbytes -= self._tiles.pop(key).nbytes

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()


_CACHE = TileCache(0)


def worker_cache(max_mib: int) -> TileCache:
    """This process's cache, at ``max_mib`` (the config's size wins over an earlier one)."""
    if _CACHE.max_bytes != max_mib << 20:
        _CACHE.resize(max_mib << 20)
    return _CACHE


def vsizip_parts(href: str) -> tuple[str, str] | None:
    """(zip file, member) of a GDAL ``/vsizip/`` href, or None for any other href."""
    if not href.startswith("/vsizip/"):
        return None
    inner = href[len("/vsizip/") :]
    cut = inner.lower().find(".zip/")
    return (inner[: cut + 4], inner[cut + 5 :]) if cut >= 0 else (inner, "")


def file_identity(href: str) -> Hashable:
    """What names a file's content in a key: its href, and for a local file (or the zip a
    /vsizip/ member lives in) its size and modification time, so a file mended in place is
    decoded again."""
    parts = vsizip_parts(href)
    path = parts[0] if parts else href
    try:
        st = os.stat(path)
    except OSError:
        return href
    return (href, st.st_size, st.st_mtime_ns)


def read_window(
    src: Any, index: int, rows: tuple[int, int], cols: tuple[int, int], cache: TileCache | None
) -> np.ndarray:
    """Pixels [rows, cols) of band ``index`` (inside the raster), tile by tile through
    ``cache`` where the format is one whose tiles are worth keeping; else one GDAL read."""
    from rasterio.windows import Window

    r0, r1 = rows
    c0, c1 = cols
    th, tw = src.block_shapes[index - 1]
    if cache is None or cache.max_bytes == 0 or src.driver not in CACHED_DRIVERS:
        return np.asarray(src.read(index, window=Window(c0, r0, c1 - c0, r1 - r0)))
    out = np.empty((r1 - r0, c1 - c0), src.dtypes[index - 1])
    identity = file_identity(src.name)
    # Blocks are read in row-major order: tiles wholly above this read are not read again.
    top = r0 // th
    cache.forget(lambda k: k[0] == identity and k[1] == index and k[2] < top)  # type: ignore[index]
    for ty in range(r0 // th, (r1 - 1) // th + 1):
        for tx in range(c0 // tw, (c1 - 1) // tw + 1):
            key = (identity, index, ty, tx)
            tile = cache.get(key)
            y0, x0 = ty * th, tx * tw
            if tile is None:
                h, w = min(th, src.height - y0), min(tw, src.width - x0)
                tile = np.asarray(src.read(index, window=Window(x0, y0, w, h)))
                cache.put(key, tile)
            ya, yb = max(r0, y0), min(r1, y0 + tile.shape[0])
            xa, xb = max(c0, x0), min(c1, x0 + tile.shape[1])
            out[ya - r0 : yb - r0, xa - c0 : xb - c0] = tile[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out
