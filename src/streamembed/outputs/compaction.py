"""Compaction: a tile's committed rows put back in sensing order with no gap (a failed
acquisition's released row, a late or retried look stored at the end), recorded step by step in
the tile's attributes so a kill at any point is finished by the next open of the tile."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import zarr

from .. import storage
from ..faults import crash_point
from .store_format import Compaction, _arr, _row_vars, _time_vars, _visible_rows, open_group
from .tile_meta import TileMeta, TileMetadata


def out_of_order(metadata: TileMetadata, tile: str) -> bool:
    """Whether the tile has rows ``compact`` would move or cut (from what this writer
    knows: no read for a tile it wrote)."""
    meta = metadata.tile(tile)
    if meta is None:
        return False
    attrs = meta.doc.get("attributes", {})
    return _visible_rows(meta.ids, meta.times, attrs) != len(meta.ids) or bool(
        attrs.get("compaction")
    )


def compact(metadata: TileMetadata, tile: str) -> Compaction | None:
    """Put the tile's committed rows in sensing order with no gap (a failed acquisition's
    released row, a late or retried look stored at the end); None when there is nothing to
    do or an acquisition of the tile is still reserved (its row must stay where its blocks
    go: the next run's compaction does it).

    Only the rows from the first one out of place are rewritten, so the cost is what moved
    (a late look and the looks after it), not what the tile holds. Each row of the chunked
    variables is a folder of chunk objects, copied whole: first every source row to a
    scratch row past the end, then each scratch row to its place (hard links locally,
    server-side copies on an object store), then the time and id chunks, then the tail cut.
    The plan is recorded in the tile's attributes first and its phase as it advances, so a
    kill at any point is finished by the next open of the tile; meanwhile readers see the
    rows before the first one rewritten.
    """
    with metadata.writing(tile) as meta:
        if meta.pending:
            return None
        rows = sorted((meta.times[r], meta.ids[r], r) for r in range(len(meta.ids)) if meta.ids[r])
        start = next((t for t, (_, _, r) in enumerate(rows) if r != t), len(rows))
        if start == len(rows) == len(meta.ids):
            return None
        moved = rows[start:]
        job = {
            "start": start,
            "scratch": len(meta.ids),
            "old_rows": len(meta.ids),
            "sources": [r for _, _, r in moved],
            "ids": [i for _, i, _ in moved],
            "times": [t for t, _, _ in moved],
            "phase": "copy",
        }
        meta.doc.setdefault("attributes", {})["compaction"] = job
        metadata.publish_view(tile, meta, meta.pending)
    metadata.forget(tile)
    copied = finish_compaction(metadata, tile, job)
    metadata.tile(tile)
    return Compaction(tile, start, len(rows), len(moved), len(meta.ids) - len(rows), copied)


def _row(root: str, tile: str, name: str, row: int) -> str:
    return storage.join(root, tile, name, "c", str(row))


def finish_compaction(metadata: TileMetadata, tile: str, job: dict[str, Any]) -> int:
    """Carry out (or finish, after a kill) the compaction ``job``; returns bytes copied."""
    start, scratch = int(job["start"]), int(job["scratch"])
    sources, ids, times = list(job["sources"]), list(job["ids"]), list(job["times"])
    root = metadata.root
    g = open_group(root, tile)
    assert g is not None
    arrays = metadata.array_docs(tile, g)
    names = _row_vars(arrays)
    copied = 0
    if job["phase"] == "copy":
        for i, src in enumerate(sources):
            for name in names:
                copied += storage.copy_tree(
                    _row(root, tile, name, src), _row(root, tile, name, scratch + i)
                )
        crash_point("store.compaction_copied")
        job = _set_phase(root, tile, job, "place")
    if job["phase"] == "place":
        for i in range(len(sources)):
            for name in names:
                copied += storage.copy_tree(
                    _row(root, tile, name, scratch + i), _row(root, tile, name, start + i)
                )
        crash_point("store.compaction_placed")
        # the id and time of every row from the first moved to the old end: those past
        # the new end emptied, so that a later growth never shows a stale id
        old_end = int(job["old_rows"])
        tail = old_end - start - len(ids)
        for name, values, empty, dtype in (
            ("time", times, 0, np.int64),
            ("acquisition_id", ids, "", object),
        ):
            arr = zarr.open_array(root, path=f"{tile}/{name}", mode="r+")
            arr[start:old_end] = np.asarray([*values, *[empty] * tail], dtype=dtype)
        job = _set_phase(root, tile, job, "cut")
    end = start + len(sources)
    for name in names:
        for row in range(end, scratch + len(sources)):
            storage.remove_tree(_row(root, tile, name, row))
    for name in _time_vars(arrays):
        array_meta = arrays[name]
        if array_meta["shape"][0] != end:
            array_meta["shape"] = [end, *array_meta["shape"][1:]]
            where = storage.join(root, tile, name, "zarr.json")
            storage.publish(where, json.dumps(array_meta).encode())
    crash_point("store.compaction_cut")
    doc = metadata.read_doc(tile)
    # the documents as now written (the time variables' cut just above)
    done = TileMeta(
        doc,
        arrays,
        [str(v) for v in np.asarray(_arr(g, "acquisition_id")[:end])],
        [int(v) for v in np.asarray(_arr(g, "time")[:end])],
    )
    done.doc["attributes"].pop("compaction", None)
    metadata.publish_view(tile, done, done.pending)
    return copied


def _set_phase(root: str, tile: str, job: dict[str, Any], phase: str) -> dict[str, Any]:
    """Record the compaction's next phase in the tile's attributes (one object write)."""
    # the whole document, its readers' view (cut before the rows moving) kept as it is
    doc = json.loads(storage.read_bytes(storage.join(root, tile, "zarr.json")))
    job = {**job, "phase": phase}
    doc["attributes"]["compaction"] = job
    storage.publish(storage.join(root, tile, "zarr.json"), json.dumps(doc).encode())
    return job
