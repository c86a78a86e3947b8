"""The embedding store's reads of committed acquisitions: their ids and days, one acquisition
back as arrays (the statistics actor), a tile as an xarray Dataset (readers). ``StoreReads`` is
mixed into ``EmbeddingStore`` (``store.py``), which adds the writes.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import xarray as xr
import zarr

from .. import storage
from .store_format import _QUANT_VARS, StoredAcquisition, _arr, _ids, dequantise


class StoreReads:
    """Reads over the store at ``root``; ``_group`` opens a tile's group (the writers' view)."""

    root: str

    def _group(self, tile: str) -> zarr.Group | None:
        raise NotImplementedError

    def days(self, tile: str) -> dict[str, float]:
        """Committed acquisitions of the tile and their sensing days since the epoch."""
        g = self._group(tile)
        if g is None:
            return {}
        ids = _ids(g)
        seconds = np.asarray(_arr(g, "time")[: len(ids)])
        return {i: int(t) / 86400.0 for i, t in zip(ids, seconds, strict=True) if i}

    def acquisition_ids(self, tile: str) -> list[str]:
        """Committed acquisitions of the tile, in row order."""
        g = self._group(tile)
        return [] if g is None else [i for i in _ids(g) if i]

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
