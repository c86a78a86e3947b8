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
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from .. import storage
from ..config import StoreConfig
from ..faults import crash_point
from ..grid import TileGrid
from ..indices import INDEX_NAMES

TIME_ENCODING = {
    "units": "seconds since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
}
TIME_CHUNK = 4096
_DIMS = {
    "embedding": ("time", "y", "x", "dim"),
    "embedding_scale": ("time", "y", "x"),
    "embedding_offset": ("time", "y", "x"),
    "clear": ("time", "y", "x"),
    "snow": ("time", "y", "x"),
    "indices": ("time", "y", "x", "index"),
}
_TIME_VARS = ("embedding", "clear", "snow", "indices", "acquisition_id", "time")
_QUANT_VARS = ("embedding_scale", "embedding_offset")  # int8 stores only
# Decoding an int8 store in row slabs bounds the float32 temporaries (a full tile's embedding
# is 241 M values).
_DECODE_ROWS = 16


def _time_vars(members: zarr.Group | dict[str, Any]) -> tuple[str, ...]:
    """The time variables of a tile: its group, or the writer's array documents of it."""
    return _TIME_VARS + tuple(n for n in _QUANT_VARS if n in members)


def quantise(embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell affine int8: ``value ~ (q + 128) * scale + offset`` with the cell's own range.

    Each cell's vector keeps 256 levels over its own [min, max] (encoder features are mostly
    non-negative, so a symmetric range would waste half the levels); the error is at most half
    a level, ``scale / 2``. NaN cells stay NaN (scale NaN).
    """
    e = embedding.astype(np.float32, copy=False)
    lo = np.min(e, axis=-1)
    hi = np.max(e, axis=-1)
    scale = (hi - lo) / np.float32(255.0)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.rint((e - lo[..., None]) / safe[..., None]) - np.float32(128.0)
    q = np.nan_to_num(q, nan=0.0)
    return np.clip(q, -128, 127).astype(np.int8), scale.astype(np.float32), lo.astype(np.float32)


def dequantise(
    q: np.ndarray, scale: np.ndarray, offset: np.ndarray, dtype: Any = np.float16
) -> np.ndarray:
    """The embedding back from ``quantise``'s parts, in ``dtype``, a slab of rows at a time."""
    out = np.empty(q.shape, dtype)
    for r in range(0, q.shape[0], _DECODE_ROWS):
        sl = slice(r, r + _DECODE_ROWS)
        out[sl] = (q[sl].astype(np.float32) + np.float32(128.0)) * scale[sl][..., None] + offset[
            sl
        ][..., None]
    return out


def _compressors(name: str) -> Any:
    """The zarr v3 codec chain of ``store.compression``."""
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if name == "none":
        return None
    if name == "blosc-zstd-shuffle":
        return (BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle),)
    return (ZstdCodec(level=3),)


def _arr(g: zarr.Group, name: str) -> zarr.Array:
    arr = g[name]
    if not isinstance(arr, zarr.Array):
        raise StoreMismatchError(f"{g.store_path}/{name} is not an array")
    return arr


def _ids(g: zarr.Group) -> list[str]:
    """The id of every row ('' for a row not committed), one chunk read per 4096."""
    return [str(v) for v in np.asarray(_arr(g, "acquisition_id")[:])]


def _repair(g: zarr.Group) -> tuple[int, list[str]]:
    """Cut trailing rows that are neither committed nor reserved.

    Returns how many rows were cut and the id of every remaining row.
    """
    arrays = {name: _arr(g, name) for name in _time_vars(g)}
    ids, keep = _ids(g), set(_pending(g).values())
    # Rows every variable has (a crash mid-resize leaves some longer); a pending row cut here
    # is grown again by its acquisition's next begin.
    n = min(a.shape[0] for a in arrays.values())
    while n and not ids[n - 1] and (n - 1) not in keep:
        n -= 1
    longest = max(a.shape[0] for a in arrays.values())
    for arr in arrays.values():
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))
    return longest - n, ids[:n]


def _visible_rows(ids: list[str], times: list[int], attrs: dict[str, Any]) -> int:
    """The readers' time dimension: the longest run of rows from the first that are committed
    and in sensing order, never as far as a row still reserved (an acquisition in flight) nor
    past where a compaction is rewriting rows.

    So a plain reader never sees a released row (a failed acquisition: a phantom step with
    fill values) or a late look out of order; rows past the cut become visible when the run's
    compaction (``EmbeddingStore.compact``) has put them in order.
    """
    n = 0
    while n < len(ids) and ids[n] and (n == 0 or times[n] > times[n - 1]):
        n += 1
    cuts = [*_pending_of(attrs).values()]
    if "compaction" in attrs:
        cuts.append(int(attrs["compaction"]["start"]))
    return min([n, *cuts])


def _row_vars(arrays: dict[str, Any]) -> tuple[str, ...]:
    """The time variables chunked one row a chunk (all but ``time`` and ``acquisition_id``,
    whose rows share chunks of TIME_CHUNK): a row of them is a folder of chunk objects."""
    return tuple(n for n in _time_vars(arrays) if n not in ("time", "acquisition_id"))


def _pending(g: zarr.Group) -> dict[str, int]:
    return _pending_of(dict(g.attrs))


def _pending_of(attrs: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in dict(attrs.get("pending", {})).items()}


def _sensing_second(when: dt.datetime) -> int:
    """Seconds since the epoch, floored: an acquisition is its tile and sensing second (its id
    says so), and whole seconds keep the stored time's units fixed for every append."""
    return int(when.timestamp() // 1)


def grid_mapping(grid: TileGrid) -> dict[str, Any]:
    """CF grid-mapping attributes of the tile's cell grid, plus GDAL's ``spatial_ref`` and
    ``GeoTransform`` (what rioxarray, odc-geo, GDAL and QGIS read to georeference the store)."""
    from pyproj import CRS

    crs = CRS.from_epsg(grid.epsg)
    cf = crs.to_cf()
    cf["spatial_ref"] = cf["crs_wkt"]
    cf["GeoTransform"] = f"{grid.x0!r} {grid.cell_m!r} 0.0 {grid.y0!r} 0.0 {-grid.cell_m!r}"
    return cf


def _cf_coordinates(ds: xr.Dataset, grid: TileGrid) -> None:
    """x/y/time attributes and the grid mapping every gridded variable points at (CF-1.8)."""
    ds.coords["spatial_ref"] = ((), np.int32(0), grid_mapping(grid))
    ds["x"].attrs.update(standard_name="projection_x_coordinate", long_name="x of the cell "
                         "centre", units="m", axis="X")  # fmt: skip
    ds["y"].attrs.update(standard_name="projection_y_coordinate", long_name="y of the cell "
                         "centre", units="m", axis="Y")  # fmt: skip
    ds["time"].attrs.update(standard_name="time", long_name="sensing time", axis="T")
    for name, var in ds.data_vars.items():
        if {"y", "x"} <= set(var.dims):
            ds[name].attrs["grid_mapping"] = "spatial_ref"


def _grid_attrs(g: zarr.Group) -> TileGrid:
    return TileGrid.from_attrs(dict(g.attrs["grid"]))  # type: ignore[arg-type]


# Provenance fields that change what the same weights compute, with their names for a person.
_SAME_EMBEDDING = {
    "bands": "the band order",
    "normalisation": "model.normalisation",
    "window_px": "ingest.window",
    "margin_px": "ingest.margin",
    "checkpoint_sha256": "the checkpoint file of sha256",
}


class StoreMismatchError(ValueError):
    """The store holds embeddings of another model or grid than this run produces."""


@dataclass(frozen=True)
class Provenance:
    """How a tile's embeddings were made: written as the tile group's attributes on its first
    acquisition and checked before every later one, so one tile never mixes two models."""

    model_id: str
    model_weights: str
    model_seeded: bool
    model_arch: str
    bands: tuple[str, ...]
    normalisation: str
    window_px: int
    margin_px: int
    scl_mask_classes: tuple[int, ...]
    checkpoint_sha256: str | None = None  # the whole file's; model_id carries its first 12
    software: tuple[str, ...] = ()  # "name version" of what computed them (recorded, not checked)

    def to_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }
        attrs["Conventions"] = "CF-1.8"
        attrs["source_note"] = "Contains modified Copernicus Sentinel data where the input is real"
        return attrs


@dataclass(frozen=True)
class EmbeddingBatch:
    """One acquisition's per-cell embeddings, what is kept beside them, and their provenance."""

    acquisition_id: str
    tile: str
    time: dt.datetime
    grid: TileGrid
    embedding: np.ndarray  # (cells_y, cells_x, dim) float32
    clear: np.ndarray  # (cells_y, cells_x)
    snow: np.ndarray  # (cells_y, cells_x)
    indices: np.ndarray  # (cells_y, cells_x, index)
    provenance: Provenance


@dataclass(frozen=True)
class StoredAcquisition:
    acquisition_id: str
    time: dt.datetime
    embedding: np.ndarray  # (cells_y, cells_x, dim) float16 (int8 stores decoded), or float32
    clear: np.ndarray
    snow: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True)
class Reservation:
    """The time step an acquisition writes its blocks into (``row``), and the tile's chunks."""

    tile: str
    acquisition_id: str
    row: int
    chunk_cells: tuple[int, int]


@dataclass(frozen=True)
class Compaction:
    """What ``EmbeddingStore.compact`` did to a tile."""

    tile: str
    start: int  # the first row rewritten (the rows before it did not move)
    rows: int  # the tile's committed rows, now all visible in sensing order
    moved: int  # rows copied into place
    dropped: int  # rows removed (released by failed acquisitions)
    bytes_copied: int  # bytes of chunk objects copied (both passes; local copies are links)


@dataclass
class _TileMeta:
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


class EmbeddingStore:
    """The store at ``root``; one Zarr group per MGRS tile."""

    def __init__(self, root: str | Path, cfg: StoreConfig | None = None):
        # A folder or an object-store URL: zarr opens both from the string (fsspec for URLs,
        # credentials from the environment).
        self.root = storage.normalise(root)
        self.cfg = cfg or StoreConfig()
        self._meta: OrderedDict[str, _TileMeta] = OrderedDict()  # the writer's, LRU

    def tiles(self) -> list[str]:
        """The tiles stored: the groups under the root, listed afresh (workers create them)."""
        found = storage.glob(self.root, "*/zarr.json")
        return sorted({f.replace("\\", "/").rsplit("/", 2)[-2] for f in found})

    def _group(self, tile: str) -> zarr.Group | None:
        """The writers' view of the tile (its arrays' own metadata, reserved rows included)."""
        if not storage.exists(storage.join(self.root, tile, "zarr.json")):
            return None
        return zarr.open_group(self.root, mode="r+", path=tile, use_consolidated=False)

    def _tile(self, tile: str) -> _TileMeta | None:
        """The writer's view of a tile's metadata: read (and repaired) on first use, then kept
        current by this store's own writes; None for a tile not stored yet."""
        meta = self._meta.get(tile)
        if meta is not None:
            self._meta.move_to_end(tile)
            return meta
        g = self._group(tile)
        if g is None:
            return None
        job = self._read_doc(tile).get("attributes", {}).get("compaction")
        if job is not None:  # a compaction was killed part way: finished before anything else
            self._finish_compaction(tile, job)
        _, ids = _repair(g)
        doc = self._read_doc(tile)
        times = [int(v) for v in np.asarray(_arr(g, "time")[: len(ids)])]
        meta = self._meta[tile] = _TileMeta(doc, self._array_docs(tile, g), ids, times)
        while len(self._meta) > META_TILES:
            self._meta.popitem(last=False)
        return meta

    def _read_doc(self, tile: str) -> dict[str, Any]:
        """The tile group's document without its consolidated view."""
        doc = json.loads(storage.read_bytes(storage.join(self.root, tile, "zarr.json")))
        doc.pop("consolidated_metadata", None)
        return dict(doc)

    def _array_docs(self, tile: str, g: zarr.Group) -> dict[str, dict[str, Any]]:
        """Every array's own metadata document of the tile (the writers' view)."""
        return {
            name: json.loads(storage.read_bytes(storage.join(self.root, tile, name, "zarr.json")))
            for name in sorted(g.array_keys())
        }

    @contextmanager
    def _writing(self, tile: str) -> Iterator[_TileMeta]:
        """The tile's metadata for a write; forgotten if the write fails half way, so the next
        one reads what is on disk again."""
        meta = self._tile(tile)
        if meta is None:
            raise KeyError(f"tile {tile} is not in {self.root}")
        try:
            yield meta
        except BaseException:
            self._meta.pop(tile, None)
            raise

    def _publish_view(self, tile: str, meta: _TileMeta, pending: dict[str, int]) -> None:
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

    def _grow(self, tile: str, meta: _TileMeta, rows: int) -> None:
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
        meta = self._meta.get(tile)
        if meta is not None:
            attrs = meta.doc.get("attributes", {})
        else:  # a read, never a repair: readers (actors, the web map) share the store
            where = storage.join(self.root, tile, "zarr.json")
            if not storage.exists(where):
                return None
            attrs = json.loads(storage.read_bytes(where)).get("attributes", {})
        return TileGrid.from_attrs(attrs["grid"]) if "grid" in attrs else None

    def days(self, tile: str) -> dict[str, float]:
        """Committed acquisitions of the tile and their sensing days since the epoch."""
        g = self._group(tile)
        if g is None:
            return {}
        ids = _ids(g)
        seconds = np.asarray(_arr(g, "time")[: len(ids)])
        return {i: int(t) / 86400.0 for i, t in zip(ids, seconds, strict=True) if i}

    def dim(self, tile: str) -> int:
        """The tile's embedding length."""
        meta = self._meta.get(tile)
        if meta is not None:
            return int(meta.arrays["embedding"]["shape"][-1])
        doc = json.loads(
            storage.read_bytes(storage.join(self.root, tile, "embedding", "zarr.json"))
        )
        return int(doc["shape"][-1])

    def acquisition_ids(self, tile: str) -> list[str]:
        """Committed acquisitions of the tile, in row order."""
        g = self._group(tile)
        return [] if g is None else [i for i in _ids(g) if i]

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
        if self._tile(tile) is None:
            self._create(grid, dim, provenance)
        with self._writing(tile) as meta:
            if meta.checked != (provenance, grid, dim):
                g = self._group(tile)
                assert g is not None
                self._check_compatible(g, tile, acquisition_id, grid, dim, provenance)
                meta.checked = (provenance, grid, dim)
            self._trim(tile, meta)
            pending = meta.pending
            if acquisition_id in meta.ids:
                if acquisition_id in pending:  # a crash between its id and its view
                    self._publish_view(tile, meta, pending)
                return None
            row = pending.get(acquisition_id)
            if row is None:
                row = max([len(meta.ids) - 1, *pending.values()]) + 1
                pending[acquisition_id] = row
                # The reservation is recorded before the arrays grow: a crash in between
                # leaves a pending row past the end, which the next begin grows into.
                self._publish_view(tile, meta, pending)
                crash_point("store.reserved")
            self._grow(tile, meta, row + 1)
            emb = meta.arrays["embedding"]["chunk_grid"]["configuration"]["chunk_shape"]
            return Reservation(tile, acquisition_id, row, (int(emb[1]), int(emb[2])))

    def _trim(self, tile: str, meta: _TileMeta) -> None:
        """Cut trailing rows neither committed nor reserved (a failed acquisition's released
        row at the end), as ``_repair`` does on disk."""
        keep = set(meta.pending.values())
        n = len(meta.ids)
        while n and not meta.ids[n - 1] and (n - 1) not in keep:
            n -= 1
        if n < len(meta.ids):
            g = self._group(tile)
            assert g is not None
            _repair(g)
            for name in _time_vars(meta.arrays):
                meta.arrays[name]["shape"] = [n, *meta.arrays[name]["shape"][1:]]
            del meta.ids[n:]
            del meta.times[n:]

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
        with self._writing(tile) as meta:
            time_arr = zarr.open_array(self.root, path=f"{tile}/time", mode="r+")
            time_arr[row] = np.int64(_sensing_second(when))
            crash_point("store.commit")
            ids_arr = zarr.open_array(self.root, path=f"{tile}/acquisition_id", mode="r+")
            ids_arr[row] = np.asarray(reservation.acquisition_id, dtype=object)
            meta.ids[row] = reservation.acquisition_id
            meta.times[row] = _sensing_second(when)
            pending = meta.pending
            pending.pop(reservation.acquisition_id, None)
            self._publish_view(tile, meta, pending)

    def release(self, reservation: Reservation) -> None:
        """Give up a reserved row (its acquisition failed): a retry takes a new row. The row
        stays out of the readers' view (and the commits after it with it) until the run's
        compaction closes the gap, or the next begin cuts it if it is last."""
        with self._writing(reservation.tile) as meta:
            pending = meta.pending
            if pending.pop(reservation.acquisition_id, None) is not None:
                self._publish_view(reservation.tile, meta, pending)

    # ------------------------------------------------------------ compaction

    def out_of_order(self, tile: str) -> bool:
        """Whether the tile has rows ``compact`` would move or cut (from what this writer
        knows: no read for a tile it wrote)."""
        meta = self._tile(tile)
        if meta is None:
            return False
        attrs = meta.doc.get("attributes", {})
        return _visible_rows(meta.ids, meta.times, attrs) != len(meta.ids) or bool(
            attrs.get("compaction")
        )

    def compact(self, tile: str) -> Compaction | None:
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
        with self._writing(tile) as meta:
            if meta.pending:
                return None
            rows = sorted(
                (meta.times[r], meta.ids[r], r) for r in range(len(meta.ids)) if meta.ids[r]
            )
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
            self._publish_view(tile, meta, meta.pending)
        self._meta.pop(tile, None)
        copied = self._finish_compaction(tile, job)
        self._tile(tile)
        return Compaction(tile, start, len(rows), len(moved), len(meta.ids) - len(rows), copied)

    def _row(self, tile: str, name: str, row: int) -> str:
        return storage.join(self.root, tile, name, "c", str(row))

    def _finish_compaction(self, tile: str, job: dict[str, Any]) -> int:
        """Carry out (or finish, after a kill) the compaction ``job``; returns bytes copied."""
        start, scratch = int(job["start"]), int(job["scratch"])
        sources, ids, times = list(job["sources"]), list(job["ids"]), list(job["times"])
        g = self._group(tile)
        assert g is not None
        arrays = self._array_docs(tile, g)
        names = _row_vars(arrays)
        copied = 0
        if job["phase"] == "copy":
            for i, src in enumerate(sources):
                for name in names:
                    copied += storage.copy_tree(
                        self._row(tile, name, src), self._row(tile, name, scratch + i)
                    )
            crash_point("store.compaction_copied")
            job = self._set_phase(tile, job, "place")
        if job["phase"] == "place":
            for i in range(len(sources)):
                for name in names:
                    copied += storage.copy_tree(
                        self._row(tile, name, scratch + i), self._row(tile, name, start + i)
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
                arr = zarr.open_array(self.root, path=f"{tile}/{name}", mode="r+")
                arr[start:old_end] = np.asarray([*values, *[empty] * tail], dtype=dtype)
            job = self._set_phase(tile, job, "cut")
        end = start + len(sources)
        for name in names:
            for row in range(end, scratch + len(sources)):
                storage.remove_tree(self._row(tile, name, row))
        for name in _time_vars(arrays):
            array_meta = arrays[name]
            if array_meta["shape"][0] != end:
                array_meta["shape"] = [end, *array_meta["shape"][1:]]
                where = storage.join(self.root, tile, name, "zarr.json")
                storage.publish(where, json.dumps(array_meta).encode())
        crash_point("store.compaction_cut")
        doc = self._read_doc(tile)
        # the documents as now written (the time variables' cut just above)
        done = _TileMeta(
            doc,
            arrays,
            [str(v) for v in np.asarray(_arr(g, "acquisition_id")[:end])],
            [int(v) for v in np.asarray(_arr(g, "time")[:end])],
        )
        done.doc["attributes"].pop("compaction", None)
        self._publish_view(tile, done, done.pending)
        return copied

    def _set_phase(self, tile: str, job: dict[str, Any], phase: str) -> dict[str, Any]:
        """Record the compaction's next phase in the tile's attributes (one object write)."""
        # the whole document, its readers' view (cut before the rows moving) kept as it is
        doc = json.loads(storage.read_bytes(storage.join(self.root, tile, "zarr.json")))
        job = {**job, "phase": phase}
        doc["attributes"]["compaction"] = job
        storage.publish(storage.join(self.root, tile, "zarr.json"), json.dumps(doc).encode())
        return job

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

    def _create(self, grid: TileGrid, dim: int, provenance: Provenance) -> None:
        """The tile's group with every variable at zero time steps (metadata and coords only)."""
        # Never larger than the tile: a chunk past the tile's edge is padding that every write
        # allocates and compresses.
        cy = min(self.cfg.chunk_cells, grid.n_cells_y)
        cx = min(self.cfg.chunk_cells, grid.n_cells_x)
        import dask.array as da

        y, x = grid.cell_centres()
        ny, nx, k = grid.n_cells_y, grid.n_cells_x, len(INDEX_NAMES)
        # A one-step template of lazy zeros written with compute=False: metadata, coordinates
        # and the (empty) id only, no data chunk; the step is then cut to zero rows.
        shapes = {
            "embedding": ((1, ny, nx, dim), (1, cy, cx, dim), self.cfg.dtype),
            "clear": ((1, ny, nx), (1, cy, cx), np.float32),
            "snow": ((1, ny, nx), (1, cy, cx), np.float32),
            "indices": ((1, ny, nx, k), (1, cy, cx, k), np.float32),
        }
        if self.cfg.dtype == "int8":
            for name in _QUANT_VARS:
                shapes[name] = ((1, ny, nx), (1, cy, cx), np.float32)
        encoding: dict[str, dict[str, Any]] = {
            n: {"chunks": chunks} for n, (_, chunks, _) in shapes.items()
        }
        encoding["embedding"]["compressors"] = _compressors(self.cfg.compression)
        # One chunk holds many ids and times: listing a tile's acquisitions (every begin
        # does) reads one chunk, not one file per acquisition.
        encoding["time"] = {**TIME_ENCODING, "chunks": (TIME_CHUNK,)}
        encoding["acquisition_id"] = {"chunks": (TIME_CHUNK,)}
        ds = xr.Dataset(
            {
                **{
                    n: (_DIMS[n], da.zeros(shape, chunks=chunks, dtype=dtype))
                    for n, (shape, chunks, dtype) in shapes.items()
                },
                "acquisition_id": (("time",), np.array([""], dtype=object)),
            },
            coords={
                "time": pd.DatetimeIndex([pd.Timestamp(0, unit="s")]),
                "y": y,
                "x": x,
                "index": np.array(INDEX_NAMES, dtype=object),
            },
        )
        ds.attrs.update(provenance.to_attrs())
        ds.attrs.update({"grid": grid.to_attrs(), "crs": f"EPSG:{grid.epsg}", "pending": {}})
        _cf_coordinates(ds, grid)
        ds["embedding"].attrs["description"] = (
            "encoder feature map at the output stride, one per cell"
        )
        ds["clear"].attrs["description"] = "fraction of the cell's pixels not masked by SCL"
        if self.cfg.dtype == "int8":
            ds["embedding"].attrs["quantisation"] = (
                "per-cell affine int8: embedding = (q + 128) * embedding_scale + embedding_offset "
                "(EmbeddingStore.open_dataset(decode=True) applies it)"
            )
        ds.to_zarr(
            self.root,
            group=grid.tile,
            mode="w-",
            encoding=encoding,
            consolidated=False,
            compute=False,
        )
        self._meta.pop(grid.tile, None)
        meta = self._tile(grid.tile)  # reads what to_zarr wrote, cut to zero rows
        assert meta is not None
        self._publish_view(grid.tile, meta, {})

    def _check_compatible(
        self,
        g: zarr.Group,
        tile: str,
        acquisition_id: str,
        grid: TileGrid,
        dim: int,
        provenance: Provenance,
    ) -> None:
        stored = g.attrs.get("model_id")
        if stored != provenance.model_id:
            raise StoreMismatchError(
                f"{self.root}/{tile} holds embeddings of model {stored}, this run makes "
                f"{provenance.model_id}; use another --output or the same model config"
            )
        # What else changes the vectors of the same weights (absent from stores written before
        # it was recorded: not checked there).
        for key, what in _SAME_EMBEDDING.items():
            mine = provenance.to_attrs()[key]
            theirs = g.attrs.get(key, mine)
            if theirs != mine:
                raise StoreMismatchError(
                    f"{self.root}/{tile} holds embeddings made with {what} {theirs}, this run "
                    f"uses {mine}; appending would mix two encodings of the tile: use another "
                    f"--output or set the config back ({key})"
                )
        stored_grid = _grid_attrs(g)
        if stored_grid != grid:
            raise StoreMismatchError(
                f"{self.root}/{tile}: acquisition {acquisition_id} is on grid "
                f"{grid} but the tile's grid is {stored_grid}"
            )
        stored_index = [str(v) for v in np.asarray(_arr(g, "index")[:])] if "index" in g else []
        if stored_index != list(INDEX_NAMES):
            raise StoreMismatchError(
                f"{self.root}/{tile} holds the per-cell indices {stored_index}, this version "
                f"writes {list(INDEX_NAMES)}; write to a new --output (the store was made by "
                "an older streamembed)"
            )
        stored_dtype = str(_arr(g, "embedding").dtype)
        if stored_dtype != self.cfg.dtype:
            raise StoreMismatchError(
                f"{self.root}/{tile} stores {stored_dtype} embeddings, this run's store.dtype is "
                f"{self.cfg.dtype}; write to a new --output or set store.dtype: {stored_dtype}"
            )
        stored_dim = _arr(g, "embedding").shape[-1]
        if stored_dim != dim:
            raise StoreMismatchError(
                f"{self.root}/{tile} holds {stored_dim}-d embeddings, this run makes {dim}-d"
            )

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

    def read(self, tile: str, acquisition_id: str) -> StoredAcquisition:
        """One committed acquisition back from the store, embedding in the stored dtype.

        No cast here: the statistics core decodes float16 inside its pass, several times
        faster than NumPy's float16 cast.
        """
        g = self._group(tile)
        ids = [] if g is None else _ids(g)
        if g is None or acquisition_id not in ids:
            raise KeyError(f"acquisition {acquisition_id} is not in {self.root}/{tile}")
        i = ids.index(acquisition_id)
        seconds = int(_arr(g, "time")[i])  # type: ignore[arg-type]
        embedding = np.asarray(_arr(g, "embedding")[i])
        if "embedding_scale" in g:  # int8: decoded to float16, as a float16 store reads
            embedding = dequantise(
                embedding,
                np.asarray(_arr(g, "embedding_scale")[i]),
                np.asarray(_arr(g, "embedding_offset")[i]),
            )
        return StoredAcquisition(
            acquisition_id=acquisition_id,
            time=dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc),
            embedding=embedding,
            clear=np.asarray(_arr(g, "clear")[i]),
            snow=np.asarray(_arr(g, "snow")[i]),
            indices=np.asarray(_arr(g, "indices")[i]),
        )

    def open_dataset(self, tile: str, decode: bool = True) -> xr.Dataset:
        """The tile's committed acquisitions as an xarray Dataset (lazy, dask-backed): the
        readers' view, as ``xarray.open_zarr(f"{store}/{tile}")`` opens it anywhere.

        ``decode``: an int8 store's ``embedding`` comes back as float32 values (lazily).
        """
        try:
            ds = xr.open_zarr(storage.join(self.root, tile), consolidated=True)
        except ValueError:  # written before the readers' view existed: the writers' arrays
            ds = xr.open_zarr(self.root, group=tile, consolidated=False)
        # a failed acquisition's row before the last commit has no id: not an acquisition
        committed = np.asarray(ds["acquisition_id"].values != "")
        ds = ds if committed.all() else ds.isel(time=np.flatnonzero(committed))
        if decode and "embedding_scale" in ds:
            attrs = ds["embedding"].attrs
            ds["embedding"] = (ds["embedding"].astype(np.float32) + 128.0) * ds[
                "embedding_scale"
            ] + ds["embedding_offset"]
            ds["embedding"].attrs.update(attrs)
            ds = ds.drop_vars(list(_QUANT_VARS))
        return ds
