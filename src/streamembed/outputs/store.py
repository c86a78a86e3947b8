"""Zarr embedding store: ``embeddings.zarr/<tile>/`` with one time step per acquisition.

Variables: ``embedding(time, y, x, dim)`` (int8 codes by default, with ``embedding_scale`` and
``embedding_offset(time, y, x)``; or float16/float32), ``clear(time, y, x)`` clear-sky
fraction per cell, ``snow(time, y, x)`` snow fraction, ``indices(time, y, x, index)`` spectral
indices over clear pixels (for anomaly labels), ``acquisition_id(time)``; coords ``time``, ``y``,
``x`` (UTM metres of cell centres). Attributes: CRS, transform, bands, model id, normalisation.
The store is a folder or an object-store URL (``s3://bucket/run/embeddings.zarr``).

An acquisition is written in three steps, so that it can arrive as many block tasks on many
workers (a full tile is 117,649 cells, ~480 MB of float16 at 2048-d, half that as int8):
1. ``begin`` (the driver) reserves the acquisition's time step: a row whose ``acquisition_id`` is
   still empty, recorded in the group's ``pending`` attribute so a restart reuses it;
2. ``write_block`` (any worker, no lock) writes one block of cells into that row by region;
   block edges fall on chunk edges, so no two writers ever touch the same chunk;
3. ``commit`` (the driver, once every block is stored) writes the time, the id, and last the
   tile's reader view.

Two views of a tile: the arrays' own metadata (the writers' view) grows when a row is reserved;
the tile group's consolidated metadata (the readers' view: ``xarray.open_zarr(f"{store}/{tile}")``)
ends at the last committed row and is replaced, in one object write, only by a commit. There is
no store-wide view: a commit touches its own tile's objects only, whatever the number of tiles
(``xarray.open_zarr(store, group=tile)`` still reads the tile's view, after xarray's warning
that the root is not consolidated). So a
reader never sees a reserved row, a half-written block or arrays caught mid-resize, on a local
disk or a bucket; a crash mid-acquisition leaves the reader's view as it was, and a restart
redoes the acquisition in the same row, so nothing is visible twice.

The pieces: ``store_format`` (variables, records, row bookkeeping), ``tile_meta`` (the writer's
cached metadata of each tile), ``tile_group`` (a tile's group created and checked),
``compaction`` (rows put back in sensing order), ``store_reads`` (committed acquisitions read
back); this module is the store they make.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import zarr

from .. import storage
from ..config import StoreConfig
from ..faults import crash_point
from ..grid import TileGrid
from . import compaction
from .store_format import (
    TIME_CHUNK,
    TIME_ENCODING,
    Compaction,
    EmbeddingBatch,
    Provenance,
    Reservation,
    StoredAcquisition,
    StoreMismatchError,
    _pending,
    _repair,
    _sensing_second,
    dequantise,
    grid_mapping,
    open_group,
    quantise,
)
from .store_reads import StoreReads
from .tile_group import check_compatible, create_tile_group
from .tile_meta import META_TILES, TileMetadata

__all__ = [
    "META_TILES", "TIME_CHUNK", "TIME_ENCODING", "Compaction", "EmbeddingBatch", "EmbeddingStore",
    "Provenance", "Reservation", "StoreMismatchError", "StoredAcquisition", "dequantise",
    "grid_mapping", "quantise",
]  # fmt: skip


class EmbeddingStore(StoreReads):
    """The store at ``root``; one Zarr group per MGRS tile."""

    def __init__(self, root: str | Path, cfg: StoreConfig | None = None):
        # A folder or an object-store URL: zarr opens both from the string (fsspec for URLs,
        # credentials from the environment).
        self.root = storage.normalise(root)
        self.cfg = cfg or StoreConfig()
        self.metadata = TileMetadata(self.root)  # the writer's view of each tile

    def tiles(self) -> list[str]:
        """The tiles stored: the groups under the root, listed afresh (workers create them)."""
        found = storage.glob(self.root, "*/zarr.json")
        return sorted({f.replace("\\", "/").rsplit("/", 2)[-2] for f in found})

    def _group(self, tile: str) -> zarr.Group | None:
        """The writers' view of the tile (its arrays' own metadata, reserved rows included)."""
        return open_group(self.root, tile)

    def drop_root_view(self) -> bool:
        """Remove a store-root consolidated view written by versions before 0.23 (it listed
        every tile and was rewritten by every commit); returns whether there was one.

        The readers' view is each tile's own group metadata: an old root view left in place
        would go stale as tiles grow, so a run drops it once before its first commit.
        """
        path = storage.join(self.root, "zarr.json")
        if not storage.exists(path):
            return False
        root = json.loads(storage.read_bytes(path))
        if root.get("consolidated_metadata") is None:
            return False
        root.pop("consolidated_metadata")
        storage.publish(path, json.dumps(root).encode())
        return True

    def grid(self, tile: str) -> TileGrid | None:
        """The tile's stored grid; None for a new tile (a tile's grid never changes)."""
        meta = self.metadata.cached(tile)
        if meta is not None:
            attrs = meta.doc.get("attributes", {})
        else:  # a read, never a repair: readers (actors, the web map) share the store
            where = storage.join(self.root, tile, "zarr.json")
            if not storage.exists(where):
                return None
            attrs = json.loads(storage.read_bytes(where)).get("attributes", {})
        return TileGrid.from_attrs(attrs["grid"]) if "grid" in attrs else None

    def dim(self, tile: str) -> int:
        """The tile's embedding length."""
        meta = self.metadata.cached(tile)
        if meta is not None:
            return int(meta.arrays["embedding"]["shape"][-1])
        doc = json.loads(
            storage.read_bytes(storage.join(self.root, tile, "embedding", "zarr.json"))
        )
        return int(doc["shape"][-1])

    def pending(self, tile: str) -> dict[str, int]:
        """Acquisitions begun and not committed (in flight, or interrupted): id -> row."""
        g = self._group(tile)
        return {} if g is None else _pending(g)

    def repair(self, tile: str) -> int:
        """Cut trailing rows that are neither committed nor reserved; returns how many."""
        g = self._group(tile)
        return 0 if g is None else _repair(g)[0]

    # ------------------------------------------------------------ the three-step write

    def begin(
        self, acquisition_id: str, grid: TileGrid, dim: int, provenance: Provenance
    ) -> Reservation | None:
        """Reserve the acquisition's time step (driver side); None if it is already committed.

        The tile's group is created on its first acquisition. A begun but uncommitted
        acquisition (a crash, a failed block) gets its old row back.
        """
        tile = grid.tile
        if self.metadata.tile(tile) is None:
            create_tile_group(self.root, self.cfg, grid, dim, provenance)
            self.metadata.forget(tile)
            created = self.metadata.tile(tile)  # reads what to_zarr wrote, cut to zero rows
            assert created is not None
            self.metadata.publish_view(tile, created, {})
        with self.metadata.writing(tile) as meta:
            if meta.checked != (provenance, grid, dim):
                g = self._group(tile)
                assert g is not None
                check_compatible(
                    self.root, self.cfg, g, tile, acquisition_id, grid, dim, provenance
                )
                meta.checked = (provenance, grid, dim)
            self.metadata.trim(tile, meta)
            pending = meta.pending
            if acquisition_id in meta.ids:
                if acquisition_id in pending:  # a crash between its id and its view
                    self.metadata.publish_view(tile, meta, pending)
                return None
            row = pending.get(acquisition_id)
            if row is None:
                row = max([len(meta.ids) - 1, *pending.values()]) + 1
                pending[acquisition_id] = row
                # The reservation is recorded before the arrays grow: a crash in between
                # leaves a pending row past the end, which the next begin grows into.
                self.metadata.publish_view(tile, meta, pending)
                crash_point("store.reserved")
            self.metadata.grow(tile, meta, row + 1)
            emb = meta.arrays["embedding"]["chunk_grid"]["configuration"]["chunk_shape"]
            return Reservation(tile, acquisition_id, row, (int(emb[1]), int(emb[2])))

    def write_block(
        self,
        reservation: Reservation,
        cells_y: tuple[int, int],
        cells_x: tuple[int, int],
        embedding: np.ndarray,
        clear: np.ndarray,
        snow: np.ndarray,
        indices: np.ndarray,
    ) -> None:
        """One block of cells into the reserved row, by region (any worker, no lock)."""
        values = self._step_values(embedding, clear, snow, indices)
        region = (reservation.row, slice(*cells_y), slice(*cells_x))
        for name, value in values.items():
            arr = zarr.open_array(self.root, path=f"{reservation.tile}/{name}", mode="r+")
            arr[region] = value
            if name == "embedding":
                crash_point("store.write_block")

    def commit(self, reservation: Reservation, when: dt.datetime) -> None:
        """Make the acquisition visible: its time, then its id (the commit point)."""
        tile, row = reservation.tile, reservation.row
        with self.metadata.writing(tile) as meta:
            time_arr = zarr.open_array(self.root, path=f"{tile}/time", mode="r+")
            time_arr[row] = np.int64(_sensing_second(when))
            crash_point("store.commit")
            ids_arr = zarr.open_array(self.root, path=f"{tile}/acquisition_id", mode="r+")
            ids_arr[row] = np.asarray(reservation.acquisition_id, dtype=object)
            meta.ids[row] = reservation.acquisition_id
            meta.times[row] = _sensing_second(when)
            pending = meta.pending
            pending.pop(reservation.acquisition_id, None)
            self.metadata.publish_view(tile, meta, pending)

    def release(self, reservation: Reservation) -> None:
        """Give up a reserved row (its acquisition failed): a retry takes a new row. The row
        stays out of the readers' view (and the commits after it with it) until the run's
        compaction closes the gap, or the next begin cuts it if it is last."""
        with self.metadata.writing(reservation.tile) as meta:
            pending = meta.pending
            if pending.pop(reservation.acquisition_id, None) is not None:
                self.metadata.publish_view(reservation.tile, meta, pending)

    # ------------------------------------------------------------ compaction (compaction.py)

    def out_of_order(self, tile: str) -> bool:
        """Whether the tile has rows ``compact`` would move or cut (from what this writer
        knows: no read for a tile it wrote)."""
        return compaction.out_of_order(self.metadata, tile)

    def compact(self, tile: str) -> Compaction | None:
        """Put the tile's committed rows in sensing order with no gap; None when there is
        nothing to do or an acquisition of the tile is still reserved (compaction.py)."""
        return compaction.compact(self.metadata, tile)

    # ------------------------------------------------------------ whole acquisitions, reads

    def append(self, batch: EmbeddingBatch) -> bool:
        """A whole acquisition in one call (begin, one block, commit); False if already stored."""
        dim = batch.embedding.shape[-1]
        res = self.begin(batch.acquisition_id, batch.grid, dim, batch.provenance)
        if res is None:
            return False
        ny, nx = batch.grid.n_cells_y, batch.grid.n_cells_x
        self.write_block(
            res, (0, ny), (0, nx), batch.embedding, batch.clear, batch.snow, batch.indices
        )
        self.commit(res, batch.time)
        return True

    def _step_values(
        self, embedding: np.ndarray, clear: np.ndarray, snow: np.ndarray, indices: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One acquisition's (or block's) data variables in their stored dtypes."""
        values = {
            "clear": clear.astype(np.float32),
            "snow": snow.astype(np.float32),
            "indices": indices.astype(np.float32),
        }
        if self.cfg.dtype == "int8":
            q, scale, offset = quantise(embedding)
            return {"embedding": q, "embedding_scale": scale, "embedding_offset": offset, **values}
        return {"embedding": embedding.astype(self.cfg.dtype), **values}
