"""The on-disk format of a tile's group in the embedding store: its variables and their
dimensions, the time encoding and codecs, the records the store hands out (``Provenance``,
``Reservation``, ``StoredAcquisition``, ``EmbeddingBatch``, ``Compaction``), the int8
quantisation, the CF attributes readers georeference it by, and the row bookkeeping (ids,
reserved rows, the readers' visible rows) the writer, the compaction and the readers share.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from .. import storage
from ..grid import TileGrid

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


def open_group(root: str, tile: str) -> zarr.Group | None:
    """The writers' view of the tile (its arrays' own metadata, reserved rows included)."""
    if not storage.exists(storage.join(root, tile, "zarr.json")):
        return None
    return zarr.open_group(root, mode="r+", path=tile, use_consolidated=False)
