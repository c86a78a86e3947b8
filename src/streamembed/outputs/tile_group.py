"""A tile's group created on its first acquisition (every variable at zero time steps, the
coordinates, CF attributes and provenance), and checked before every later one: one tile never
mixes two models, grids, encodings or dtypes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from ..config import StoreConfig
from ..grid import TileGrid
from ..indices import INDEX_NAMES
from .store_format import (
    _DIMS,
    _QUANT_VARS,
    _SAME_EMBEDDING,
    TIME_CHUNK,
    TIME_ENCODING,
    Provenance,
    StoreMismatchError,
    _arr,
    _cf_coordinates,
    _compressors,
    _grid_attrs,
)


def create_tile_group(
    root: str, cfg: StoreConfig, grid: TileGrid, dim: int, provenance: Provenance
) -> None:
    """The tile's group with every variable at zero time steps (metadata and coords only)."""
    # Never larger than the tile: a chunk past the tile's edge is padding that every write
    # allocates and compresses.
    cy = min(cfg.chunk_cells, grid.n_cells_y)
    cx = min(cfg.chunk_cells, grid.n_cells_x)
    import dask.array as da

    y, x = grid.cell_centres()
    ny, nx, k = grid.n_cells_y, grid.n_cells_x, len(INDEX_NAMES)
    # A one-step template of lazy zeros written with compute=False: metadata, coordinates
    # and the (empty) id only, no data chunk; the step is then cut to zero rows.
    shapes = {
        "embedding": ((1, ny, nx, dim), (1, cy, cx, dim), cfg.dtype),
        "clear": ((1, ny, nx), (1, cy, cx), np.float32),
        "snow": ((1, ny, nx), (1, cy, cx), np.float32),
        "indices": ((1, ny, nx, k), (1, cy, cx, k), np.float32),
    }
    if cfg.dtype == "int8":
        for name in _QUANT_VARS:
            shapes[name] = ((1, ny, nx), (1, cy, cx), np.float32)
    encoding: dict[str, dict[str, Any]] = {
        n: {"chunks": chunks} for n, (_, chunks, _) in shapes.items()
    }
    encoding["embedding"]["compressors"] = _compressors(cfg.compression)
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
    ds["embedding"].attrs["description"] = "encoder feature map at the output stride, one per cell"
    ds["clear"].attrs["description"] = "fraction of the cell's pixels not masked by SCL"
    if cfg.dtype == "int8":
        ds["embedding"].attrs["quantisation"] = (
            "per-cell affine int8: embedding = (q + 128) * embedding_scale + embedding_offset "
            "(EmbeddingStore.open_dataset(decode=True) applies it)"
        )
    ds.to_zarr(
        root,
        group=grid.tile,
        mode="w-",
        encoding=encoding,
        consolidated=False,
        compute=False,
    )


def check_compatible(
    root: str,
    cfg: StoreConfig,
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
            f"{root}/{tile} holds embeddings of model {stored}, this run makes "
            f"{provenance.model_id}; use another --output or the same model config"
        )
    # What else changes the vectors of the same weights (absent from stores written before
    # it was recorded: not checked there).
    for key, what in _SAME_EMBEDDING.items():
        mine = provenance.to_attrs()[key]
        theirs = g.attrs.get(key, mine)
        if theirs != mine:
            raise StoreMismatchError(
                f"{root}/{tile} holds embeddings made with {what} {theirs}, this run "
                f"uses {mine}; appending would mix two encodings of the tile: use another "
                f"--output or set the config back ({key})"
            )
    stored_grid = _grid_attrs(g)
    if stored_grid != grid:
        raise StoreMismatchError(
            f"{root}/{tile}: acquisition {acquisition_id} is on grid "
            f"{grid} but the tile's grid is {stored_grid}"
        )
    stored_index = [str(v) for v in np.asarray(_arr(g, "index")[:])] if "index" in g else []
    if stored_index != list(INDEX_NAMES):
        raise StoreMismatchError(
            f"{root}/{tile} holds the per-cell indices {stored_index}, this version "
            f"writes {list(INDEX_NAMES)}; write to a new --output (the store was made by "
            "an older streamembed)"
        )
    stored_dtype = str(_arr(g, "embedding").dtype)
    if stored_dtype != cfg.dtype:
        raise StoreMismatchError(
            f"{root}/{tile} stores {stored_dtype} embeddings, this run's store.dtype is "
            f"{cfg.dtype}; write to a new --output or set store.dtype: {stored_dtype}"
        )
    stored_dim = _arr(g, "embedding").shape[-1]
    if stored_dim != dim:
        raise StoreMismatchError(
            f"{root}/{tile} holds {stored_dim}-d embeddings, this run makes {dim}-d"
        )
