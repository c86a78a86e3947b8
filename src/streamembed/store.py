"""Zarr embedding store: ``embeddings.zarr/<tile>/`` with one time step per acquisition.

Variables: ``embedding(time, y, x, dim)`` (float16 by default), ``clear(time, y, x)`` clear-sky
fraction per cell, ``snow(time, y, x)`` snow fraction, ``indices(time, y, x, index)`` spectral
indices over clear pixels (for anomaly labels), ``acquisition_id(time)``; coords ``time``, ``y``,
``x`` (UTM metres of cell centres). Attributes: CRS, transform, bands, model id, normalisation.

Appends are idempotent per acquisition id and crash-safe: rows past the last complete append
(shorter arrays, empty ids) are cut away when the tile is opened for writing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from .config import StoreConfig
from .grid import TileGrid
from .ingest import INDEX_NAMES

TIME_ENCODING = {
    "units": "seconds since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
}
TIME_CHUNK = 4096
_DIMS = {
    "embedding": ("time", "y", "x", "dim"),
    "clear": ("time", "y", "x"),
    "snow": ("time", "y", "x"),
    "indices": ("time", "y", "x", "index"),
}
_TIME_VARS = ("embedding", "clear", "snow", "indices", "acquisition_id", "time")


def _arr(g: zarr.Group, name: str) -> zarr.Array:
    arr = g[name]
    if not isinstance(arr, zarr.Array):
        raise StoreMismatchError(f"{g.store_path}/{name} is not an array")
    return arr


def _repair(g: zarr.Group) -> tuple[int, list[str], dict[str, zarr.Array]]:
    """Cut rows past the last complete append.

    Returns the rows removed, the complete rows' ids and the per-time arrays (opened once).
    """
    arrays = {name: _arr(g, name) for name in _TIME_VARS}
    n = min(a.shape[0] for a in arrays.values())
    ids = _ids(g, n)
    while ids and not ids[-1]:
        ids.pop()
    n = len(ids)
    removed = max(a.shape[0] for a in arrays.values()) - n
    for arr in arrays.values():
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))
    return removed, ids, arrays


def _ids(g: zarr.Group, n: int | None = None) -> list[str]:
    """The tile's acquisition ids (the first ``n``), one chunk read per 4096."""
    return [str(v) for v in np.asarray(_arr(g, "acquisition_id")[:n])]


def _sensing_second(when: dt.datetime) -> int:
    """Seconds since the epoch, floored: an acquisition is its tile and sensing second (its id
    says so), and whole seconds keep the stored time's units fixed for every append."""
    return int(when.timestamp() // 1)


def _grid_attrs(g: zarr.Group) -> TileGrid:
    return TileGrid.from_attrs(dict(g.attrs["grid"]))  # type: ignore[arg-type]


class StoreMismatchError(ValueError):
    """The store holds embeddings of another model or grid than this run produces."""


@dataclass(frozen=True)
class EmbeddingBatch:
    """One acquisition's per-cell embeddings and what is kept beside them."""

    acquisition_id: str
    tile: str
    time: dt.datetime
    grid: TileGrid
    embedding: np.ndarray  # (cells_y, cells_x, dim) float32
    clear: np.ndarray  # (cells_y, cells_x)
    snow: np.ndarray  # (cells_y, cells_x)
    indices: np.ndarray  # (cells_y, cells_x, index)


@dataclass(frozen=True)
class StoredAcquisition:
    acquisition_id: str
    time: dt.datetime
    embedding: np.ndarray  # (cells_y, cells_x, dim) in the store's dtype (float16 by default)
    clear: np.ndarray
    snow: np.ndarray
    indices: np.ndarray


class EmbeddingStore:
    """The store at ``root``; one Zarr group per MGRS tile."""

    def __init__(self, root: str | Path, cfg: StoreConfig | None = None):
        self.root = Path(root)
        self.cfg = cfg or StoreConfig()

    def tiles(self) -> list[str]:
        if not (self.root / "zarr.json").exists():
            return []
        return sorted(zarr.open_group(self.root, mode="r").group_keys())

    def _group(self, tile: str) -> zarr.Group | None:
        path = self.root / tile
        if not (path / "zarr.json").exists():
            return None
        return zarr.open_group(self.root, mode="r+", path=tile)

    def grid(self, tile: str) -> TileGrid | None:
        """The tile's stored grid; None for a new tile, and also while the tile's first write
        (on another worker, under the tile's lock) has created the group but not yet set its
        attributes: readers outside the lock then derive the same grid from the product."""
        g = self._group(tile)
        return None if g is None or "grid" not in g.attrs else _grid_attrs(g)

    def acquisition_ids(self, tile: str) -> list[str]:
        g = self._group(tile)
        return [] if g is None else _ids(g)

    def repair(self, tile: str) -> int:
        """Cut rows left by an interrupted append; returns how many were removed."""
        g = self._group(tile)
        return 0 if g is None else _repair(g)[0]

    def append(self, batch: EmbeddingBatch, attrs: dict[str, Any]) -> bool:
        """Write one acquisition; False (a no-op) if its id is already stored.

        Callers serialise appends per tile (``distributed.Lock`` in the pipeline): Zarr resizes
        are not safe against concurrent writers.
        """
        g = self._group(batch.tile)
        if g is not None:
            self._check_compatible(g, batch, attrs)
            _, ids, arrays = _repair(g)
            if batch.acquisition_id in ids:
                return False
            self._append_rows(arrays, batch)
            return True
        # Never larger than the tile: a chunk past the tile's edge is padding that every write
        # allocates and compresses (16 MiB per append for 16 x 16 cells of 2048-d in 64-cell
        # chunks).
        cy = min(self.cfg.chunk_cells, batch.grid.n_cells_y)
        cx = min(self.cfg.chunk_cells, batch.grid.n_cells_x)
        dim = batch.embedding.shape[-1]
        encoding = {
            "embedding": {"chunks": (1, cy, cx, dim)},
            "clear": {"chunks": (1, cy, cx)},
            "snow": {"chunks": (1, cy, cx)},
            "indices": {"chunks": (1, cy, cx, len(INDEX_NAMES))},
            # One chunk holds many ids and times: listing a tile's acquisitions (every
            # append does) reads one chunk, not one file per acquisition.
            "time": {**TIME_ENCODING, "chunks": (TIME_CHUNK,)},
            "acquisition_id": {"chunks": (TIME_CHUNK,)},
        }
        self._dataset(batch, attrs).to_zarr(
            self.root, group=batch.tile, mode="w-", encoding=encoding, consolidated=False
        )
        return True

    def _append_rows(self, arrays: dict[str, zarr.Array], batch: EmbeddingBatch) -> None:
        """One more time step, written with zarr directly.

        xarray's ``to_zarr(append_dim=...)`` re-reads and re-validates every variable's
        metadata and coordinates per call (~140 ms); a resize and one chunk write per variable
        is all an append needs. The id goes last: a row with data but no id is an interrupted
        append, which ``repair`` cuts.
        """
        rows = {
            **self._step_values(batch),
            "time": np.asarray(_sensing_second(batch.time), np.int64),
            "acquisition_id": np.asarray(batch.acquisition_id, dtype=object),
        }
        for name, value in rows.items():
            arr = arrays[name]
            n = arr.shape[0]
            arr.resize((n + 1, *arr.shape[1:]))
            arr[n] = value

    def _check_compatible(
        self, g: zarr.Group, batch: EmbeddingBatch, attrs: dict[str, Any]
    ) -> None:
        stored = g.attrs.get("model_id")
        if stored != attrs["model_id"]:
            raise StoreMismatchError(
                f"{self.root}/{batch.tile} holds embeddings of model {stored}, this run makes "
                f"{attrs['model_id']}; use another --output or the same model config"
            )
        grid = _grid_attrs(g)
        if grid != batch.grid:
            raise StoreMismatchError(
                f"{self.root}/{batch.tile}: acquisition {batch.acquisition_id} is on grid "
                f"{batch.grid} but the tile's grid is {grid}"
            )

    def _step_values(self, batch: EmbeddingBatch) -> dict[str, np.ndarray]:
        """One acquisition's data variables in their stored dtypes, without the time axis
        (the first write and every append store exactly these)."""
        return {
            "embedding": batch.embedding.astype(self.cfg.dtype),
            "clear": batch.clear.astype(np.float32),
            "snow": batch.snow.astype(np.float32),
            "indices": batch.indices.astype(np.float32),
        }

    def _dataset(self, batch: EmbeddingBatch, attrs: dict[str, Any]) -> xr.Dataset:
        y, x = batch.grid.cell_centres()
        t = pd.DatetimeIndex([pd.Timestamp(_sensing_second(batch.time), unit="s")])
        values = self._step_values(batch)
        ds = xr.Dataset(
            {
                **{name: (_DIMS[name], v[None]) for name, v in values.items()},
                "acquisition_id": (("time",), np.array([batch.acquisition_id], dtype=object)),
            },
            coords={"time": t, "y": y, "x": x, "index": np.array(INDEX_NAMES, dtype=object)},
        )
        ds.attrs.update({**attrs, "grid": batch.grid.to_attrs(), "crs": f"EPSG:{batch.grid.epsg}"})
        ds["embedding"].attrs["description"] = (
            "encoder feature map at the output stride, one per cell"
        )
        ds["clear"].attrs["description"] = "fraction of the cell's pixels not masked by SCL"
        return ds

    def read(self, tile: str, acquisition_id: str) -> StoredAcquisition:
        """One acquisition back from the store, embedding in the stored dtype.

        No cast here: the statistics core decodes float16 inside its pass, several times
        faster than NumPy's float16 cast.
        """
        g = self._group(tile)
        ids = [] if g is None else _ids(g)
        if g is None or acquisition_id not in ids:
            raise KeyError(f"acquisition {acquisition_id} is not in {self.root}/{tile}")
        i = ids.index(acquisition_id)
        seconds = int(_arr(g, "time")[i])  # type: ignore[arg-type]
        return StoredAcquisition(
            acquisition_id=acquisition_id,
            time=dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc),
            embedding=np.asarray(_arr(g, "embedding")[i]),
            clear=np.asarray(_arr(g, "clear")[i]),
            snow=np.asarray(_arr(g, "snow")[i]),
            indices=np.asarray(_arr(g, "indices")[i]),
        )

    def open_dataset(self, tile: str) -> xr.Dataset:
        """The tile as an xarray Dataset (lazy, dask-backed)."""
        return xr.open_zarr(self.root, group=tile, consolidated=False)
