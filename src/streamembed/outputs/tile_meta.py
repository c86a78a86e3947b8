"""The writer's view of each tile's metadata: the group document, every array's document and
every row's id and time, read (and repaired) once and then kept current by the writer's own
writes, so a begin or a commit reads no metadata. One process writes an output's metadata (the
driver); readers never use this.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from .. import storage
from .store_format import _arr, _pending_of, _repair, _time_vars, _visible_rows, open_group


@dataclass
class TileMeta:
    """What the writing process knows of a tile's metadata between its own writes: the group
    document (attributes, ``pending`` included), every array's metadata document as written,
    and every row's id. One process writes an output's metadata (the driver), so after one
    read a begin or a commit needs no metadata read at all."""

    doc: dict[str, Any]
    arrays: dict[str, dict[str, Any]]
    ids: list[str]
    times: list[int]  # each row's sensing second (0 for a row not committed)
    checked: tuple[Any, ...] = ()  # the (provenance, grid, dim) last found compatible

    @property
    def pending(self) -> dict[str, int]:
        """Acquisitions reserved and not committed (a fresh dict: callers change it)."""
        return _pending_of(self.doc.get("attributes", {}))


# Tiles whose metadata a writer keeps between acquisitions (~20 KB each)
META_TILES = 1024


class TileMetadata:
    """The writer's cached metadata of the tiles of the store at ``root`` (LRU, META_TILES)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._meta: OrderedDict[str, TileMeta] = OrderedDict()

    def cached(self, tile: str) -> TileMeta | None:
        """What this writer knows of ``tile`` without reading anything (None: nothing yet)."""
        return self._meta.get(tile)

    def forget(self, tile: str) -> None:
        self._meta.pop(tile, None)

    def tile(self, tile: str) -> TileMeta | None:
        """The writer's view of a tile's metadata: read (and repaired) on first use, then kept
        current by this store's own writes; None for a tile not stored yet."""
        meta = self._meta.get(tile)
        if meta is not None:
            self._meta.move_to_end(tile)
            return meta
        g = open_group(self.root, tile)
        if g is None:
            return None
        job = self.read_doc(tile).get("attributes", {}).get("compaction")
        if job is not None:  # a compaction was killed part way: finished before anything else
            from .compaction import finish_compaction

            finish_compaction(self, tile, job)
        _, ids = _repair(g)
        doc = self.read_doc(tile)
        times = [int(v) for v in np.asarray(_arr(g, "time")[: len(ids)])]
        meta = self._meta[tile] = TileMeta(doc, self.array_docs(tile, g), ids, times)
        while len(self._meta) > META_TILES:
            self._meta.popitem(last=False)
        return meta

    def read_doc(self, tile: str) -> dict[str, Any]:
        """The tile group's document without its consolidated view."""
        doc = json.loads(storage.read_bytes(storage.join(self.root, tile, "zarr.json")))
        doc.pop("consolidated_metadata", None)
        return dict(doc)

    def array_docs(self, tile: str, g: zarr.Group) -> dict[str, dict[str, Any]]:
        """Every array's own metadata document of the tile (the writers' view)."""
        return {
            name: json.loads(storage.read_bytes(storage.join(self.root, tile, name, "zarr.json")))
            for name in sorted(g.array_keys())
        }

    @contextmanager
    def writing(self, tile: str) -> Iterator[TileMeta]:
        """The tile's metadata for a write; forgotten if the write fails half way, so the next
        one reads what is on disk again."""
        meta = self.tile(tile)
        if meta is None:
            raise KeyError(f"tile {tile} is not in {self.root}")
        try:
            yield meta
        except BaseException:
            self._meta.pop(tile, None)
            raise

    def publish_view(self, tile: str, meta: TileMeta, pending: dict[str, int]) -> None:
        """Write the tile group's metadata with the readers' view consolidated into it.

        Every array's own metadata, its time dimension cut at the last committed row; and the
        group's attributes with ``pending`` replaced. One object, published whole: this write
        is what makes a commit visible. Group attributes are only ever written here, so no
        other write can drop the view.
        """
        attrs = dict(meta.doc.get("attributes", {}))
        ids = meta.ids
        # An acquisition committed before a crash took its view with it is no longer pending.
        attrs["pending"] = {k: v for k, v in pending.items() if not (v < len(ids) and ids[v] == k)}
        visible = _visible_rows(ids, meta.times, attrs)
        arrays: dict[str, Any] = {}
        for name, array_meta in meta.arrays.items():
            dims = array_meta.get("dimension_names") or []
            if dims and dims[0] == "time":
                array_meta = {**array_meta, "shape": [visible, *array_meta["shape"][1:]]}
            arrays[name] = array_meta
        doc = {
            **meta.doc,
            "attributes": attrs,
            "consolidated_metadata": {
                "kind": "inline", "must_understand": False, "metadata": arrays,
            },
        }  # fmt: skip
        storage.publish(storage.join(self.root, tile, "zarr.json"), json.dumps(doc).encode())
        meta.doc["attributes"] = attrs

    def grow(self, tile: str, meta: TileMeta, rows: int) -> None:
        """Grow every time variable to ``rows``: their metadata documents rewritten with the new
        shape (growing a zarr array writes nothing else), the cached ids extended."""
        for name in _time_vars(meta.arrays):
            array_meta = meta.arrays[name]
            if array_meta["shape"][0] >= rows:
                continue
            array_meta["shape"] = [rows, *array_meta["shape"][1:]]
            where = storage.join(self.root, tile, name, "zarr.json")
            storage.publish(where, json.dumps(array_meta).encode())
        meta.ids.extend([""] * (rows - len(meta.ids)))
        meta.times.extend([0] * (rows - len(meta.times)))

    def trim(self, tile: str, meta: TileMeta) -> None:
        """Cut trailing rows neither committed nor reserved (a failed acquisition's released
        row at the end), as ``_repair`` does on disk."""
        keep = set(meta.pending.values())
        n = len(meta.ids)
        while n and not meta.ids[n - 1] and (n - 1) not in keep:
            n -= 1
        if n < len(meta.ids):
            g = open_group(self.root, tile)
            assert g is not None
            _repair(g)
            for name in _time_vars(meta.arrays):
                meta.arrays[name]["shape"] = [n, *meta.arrays[name]["shape"][1:]]
            del meta.ids[n:]
            del meta.times[n:]
