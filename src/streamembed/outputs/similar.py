"""Find places like this one: the cells whose embeddings are nearest a given cell's.

One approximate-nearest-neighbour index per tile, at ``<output>/index/<tile>.faiss`` with the
acquisitions it holds beside it (``<tile>.json``): FAISS inverted lists over float32 vectors
(IVF-flat, cosine as inner product). The lists are trained on the first vectors indexed
(up to 1024 lists, 39 vectors each at least); ``update_index`` adds the acquisitions committed
since the last update, so the index grows with the store (it is built again only while its
lists are too few for the tile, see ``_updated``); a query scans the 16 lists nearest it. Why IVF and not HNSW (FAISS's or USearch's): at a million
cells a tile's looks of one place are near duplicates and the HNSW graph leaves a tenth of the
true neighbours out of reach at any search breadth; IVF keeps them in one list (recall@20
0.9995 against exact search) and builds in a seventh of the time (benchmarks/RESULTS.md).

Similarity is the cosine of *centred* embeddings: each L2-normalised vector less one reference
vector for the whole store (``index/centre.npy``: the mean of the first indexed acquisition's
clear cells, fixed once written), normalised again. Encoder features after a ReLU share one
large common direction: raw cosines between any two cells of a tile are 0.98-1.0, and at a
million cells a median 136 cells tie at the 20th place within 1e-5, below the int8 store's
precision, so the ranking is set by rounding. Centred, the ties shrink to a cell or two.

A key is ``row * cells + cell``: the acquisition's row in the tile's store and the cell's
flat index, so a hit names its acquisition and cell without a lookup table.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import storage
from ..layout import OutputLayout
from .store import EmbeddingStore

log = logging.getLogger(__name__)
# Inverted lists (IVF, flat float32 vectors): at most LISTS_MAX lists, at least
# VECTORS_PER_LIST training vectors each (FAISS's k-means floor); a query scans NPROBE lists.
# At 1,132,213 cells: recall@20 0.9995 at ~30 ms a query, built in 75 s (benchmarks/RESULTS.md).
LISTS_MAX, VECTORS_PER_LIST, NPROBE = 1024, 39, 16
TRAINING_VECTORS = LISTS_MAX * VECTORS_PER_LIST
INDEX_KIND = "ivf-flat"


@dataclass(frozen=True)
class Match:
    """One similar cell: where and when, and its cosine similarity to the query."""

    tile: str
    acquisition_id: str
    date: str
    cell_y: int
    cell_x: int
    similarity: float


def _normalised(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)


def centre_key(centre: np.ndarray) -> str:
    """A short name for a centre vector: an index records the centre its vectors are built on."""
    return hashlib.sha256(np.ascontiguousarray(centre, np.float32).tobytes()).hexdigest()[:16]


def centred(vecs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The vectors as the index holds them: L2-normalised, less the store's centre, normalised
    again (so the inner product is the cosine of centred embeddings)."""
    return _normalised(_normalised(vecs) - centre)


def store_centre(layout: OutputLayout, store: EmbeddingStore, min_clear: float) -> np.ndarray:
    """The store's reference vector: read from ``index/centre.npy``, or computed (the mean of
    the L2-normalised clear cells of the first acquisition of the first tile that has any) and
    written there for every later index and query. A remote ``--output`` computes it each time
    (the store's first acquisitions do not change: the store only appends)."""
    path = Path(storage.join(layout.root, "index", "centre.npy")) if not layout.remote else None
    if path is not None and path.exists():
        return np.load(path)
    for tile in store.tiles():
        ds = store.open_dataset(tile, decode=True)
        dim = ds.sizes["dim"]
        for row in range(ds.sizes["time"]):
            clear = ds["clear"].isel(time=row).values.reshape(-1) >= min_clear
            if clear.any():
                emb = ds["embedding"].isel(time=row).values.reshape(-1, dim)[clear]
                centre = _normalised(emb).mean(axis=0, dtype=np.float64).astype(np.float32)
                if path is not None:
                    buf = io.BytesIO()
                    np.save(buf, centre)
                    storage.publish(path, buf.getvalue())
                return centre
    raise ValueError(
        f"the store {layout.store} holds no clear cell to search; run a backfill first"
    )


class TileIndex:
    """The ANN index of one tile's clear cells, and which acquisitions it holds."""

    def __init__(
        self, layout: OutputLayout, tile: str, dim: int, n_cells: int, centre_key: str | None = None
    ):
        """``centre_key``: the store centre's key (``centre_key()``); an index built around
        another centre, before centring, or of another kind is started again (its vectors or
        lists are not comparable)."""
        import faiss

        if layout.remote:
            raise ValueError("the similarity index needs a local --output (it is a local file)")
        self.dir = Path(storage.join(layout.root, "index"))
        self.path = self.dir / f"{tile}.faiss"
        self.meta_path = self.dir / f"{tile}.json"
        self.dim = dim
        self.n_cells = n_cells
        self.ids: list[str] = []
        self.centre_key = centre_key
        self.index: Any = None  # trained at the first vectors added
        self.mapped = False
        meta = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else None
        if meta is not None and (
            (centre_key is not None and meta.get("centre") != centre_key)
            or meta.get("kind") != INDEX_KIND
        ):
            log.warning("similarity index of %s was built around another centre or of another "
                        "kind: building it again", tile)  # fmt: skip
            meta = None
        if meta is not None:
            self.ids = meta["acquisition_ids"]
            self.centre_key = meta.get("centre")
            if self.path.exists():
                # mapped, not read: a query touches only the lists it scans (a tile-year's
                # index is tens of GB); ``add`` reads it whole first (mapped lists are read-only)
                self.index = faiss.read_index(str(self.path), faiss.IO_FLAG_MMAP)
                self.mapped = True

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their keys; the first ones added train the lists (``lists()``)."""
        import faiss

        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.mapped and self.index is not None:
            self.index = faiss.read_index(str(self.path))
        self.mapped = False
        if self.index is None:
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim,
                                            lists(len(vectors)), faiss.METRIC_INNER_PRODUCT)  # fmt: skip
            self.index.train(vectors)
        self.index.add_with_ids(vectors, keys.astype(np.int64))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(key, cosine similarity) of the ``k`` nearest, a key once (a crash between saving
        the index and its ids re-adds an acquisition: its keys then appear twice)."""
        if self.index is None:
            return []
        self.index.nprobe = NPROBE
        sims, keys = self.index.search(query[None].astype(np.float32), 2 * k)
        seen: dict[int, float] = {}
        for key, sim in zip(keys[0].tolist(), sims[0].tolist(), strict=True):
            if key >= 0 and key not in seen:
                seen[key] = sim
        return list(seen.items())[:k]

    def save(self) -> None:
        import faiss

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.index is not None:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            faiss.write_index(self.index, str(tmp))
            tmp.replace(self.path)  # the index before the ids: a crash re-adds, never loses
        meta = {"acquisition_ids": self.ids, "centre": self.centre_key, "kind": INDEX_KIND}
        storage.publish(self.meta_path, json.dumps(meta).encode())


def lists(n_training: int) -> int:
    """How many inverted lists a tile's index gets from its first ``n_training`` vectors."""
    return max(1, min(LISTS_MAX, n_training // VECTORS_PER_LIST))


def update_index(layout: OutputLayout, tile: str, min_clear: float = 0.9) -> int:
    """Add the tile's committed acquisitions not yet indexed; returns how many were added."""
    return _updated(layout, tile, min_clear)[2]


def _updated(
    layout: OutputLayout, tile: str, min_clear: float, centre: np.ndarray | None = None
) -> tuple[TileIndex, Any, int]:
    """The tile's index with every committed acquisition in it, the tile's dataset (decoded),
    and how many acquisitions were added now (``centre``: the store's, when the caller has it).

    The lists are trained on the first ``TRAINING_VECTORS`` vectors to index (gathered over
    acquisitions: a cloudy first look has few clear cells). An index trained on fewer, once the
    tile holds enough for twice its lists, is built again from the store: a doubling each
    time, so at most ~10 rebuilds until the lists are full, and never after.
    """
    store = EmbeddingStore(layout.store)
    if centre is None:
        centre = store_centre(layout, store, min_clear)
    ds = store.open_dataset(tile, decode=True)
    ny, nx, dim = ds.sizes["y"], ds.sizes["x"], ds.sizes["dim"]
    acquisitions = [str(v) for v in ds["acquisition_id"].values]
    clear = ds["clear"].values.reshape(len(acquisitions), -1) >= min_clear
    idx = TileIndex(layout, tile, dim, ny * nx, centre_key(centre))
    if idx.index is not None and lists(int(clear.sum())) >= 2 * idx.index.nlist:
        log.info("similarity index of %s: %d lists for %d clear cells, building it again",
                 tile, idx.index.nlist, int(clear.sum()))  # fmt: skip
        idx.index, idx.ids = None, []
    known = set(idx.ids)
    added = 0
    training: list[tuple[np.ndarray, np.ndarray]] = []
    for row, acq in enumerate(acquisitions):
        if acq in known:
            continue
        cells = np.flatnonzero(clear[row])
        if len(cells):
            emb = ds["embedding"].isel(time=row).values.reshape(-1, dim)
            training.append((row * idx.n_cells + cells, centred(emb[cells], centre)))
            if idx.index is not None or sum(len(k) for k, _ in training) >= TRAINING_VECTORS:
                idx.add(*_joined(training))
                training = []
        idx.ids.append(acq)
        added += 1
    if training:
        idx.add(*_joined(training))
    if added:
        idx.save()
        log.info("similarity index of %s: %d acquisitions added (%d vectors)", tile, added,
                 len(idx))  # fmt: skip
    return idx, ds, added


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts])


def _query_vector(
    store: EmbeddingStore, tile: str, date: str, cell_y: int, cell_x: int, centre: np.ndarray
) -> np.ndarray:
    ds = store.open_dataset(tile, decode=True)
    days = pd.DatetimeIndex(ds["time"].values).strftime("%Y-%m-%d")
    rows = np.flatnonzero(days == date)
    if not len(rows):
        raise ValueError(f"no acquisition of tile {tile} on {date}; see `streamembed status`")
    if not (0 <= cell_y < ds.sizes["y"] and 0 <= cell_x < ds.sizes["x"]):
        raise ValueError(f"cell ({cell_y}, {cell_x}) is outside tile {tile} "
                         f"({ds.sizes['y']} x {ds.sizes['x']} cells)")  # fmt: skip
    vec = ds["embedding"].isel(time=int(rows[0]), y=cell_y, x=cell_x).values
    return centred(vec[None], centre)[0]


def similar(
    layout: OutputLayout, tile: str, date: str, cell_y: int, cell_x: int, k: int = 20,
    tiles: list[str] | None = None, exact: bool = False, other_places: bool = False,
    min_clear: float = 0.9,
) -> list[Match]:  # fmt: skip
    """The ``k`` cells across the store (``tiles``: all) most similar to one cell's embedding
    on ``date``, nearest first; ``exact`` searches every vector instead of the index;
    ``other_places`` leaves out the query cell's own looks (its other dates)."""
    store = EmbeddingStore(layout.store)
    centre = store_centre(layout, store, min_clear)
    query = _query_vector(store, tile, date, cell_y, cell_x, centre)
    if not other_places:
        return _nearest(layout, store, query, k, tiles, exact, min_clear, centre)
    # ask for more, then drop the query cell's looks (at most one per acquisition)
    n_looks = len(store.acquisition_ids(tile))
    wider = _nearest(layout, store, query, k + n_looks, tiles, exact, min_clear, centre)
    return [m for m in wider if (m.tile, m.cell_y, m.cell_x) != (tile, cell_y, cell_x)][:k]


def _nearest(
    layout: OutputLayout, store: EmbeddingStore, query: np.ndarray, k: int,
    tiles: list[str] | None, exact: bool, min_clear: float, centre: np.ndarray,
) -> list[Match]:  # fmt: skip
    found: list[Match] = []
    for t in tiles or store.tiles():
        if exact:
            found += _exact_tile(store, t, query, k, min_clear, centre)
            continue
        idx, ds, _ = _updated(layout, t, min_clear, centre)
        if not len(idx):
            continue
        nx = ds.sizes["x"]
        days = pd.DatetimeIndex(ds["time"].values).strftime("%Y-%m-%d")
        ids = [str(v) for v in ds["acquisition_id"].values]
        for key, sim in idx.search(query, k):
            row, cell = divmod(key, idx.n_cells)
            found.append(Match(t, ids[row], days[row], cell // nx, cell % nx, float(sim)))
    return sorted(found, key=lambda m: -m.similarity)[:k]


def _exact_tile(
    store: EmbeddingStore, tile: str, query: np.ndarray, k: int, min_clear: float,
    centre: np.ndarray,
) -> list[Match]:  # fmt: skip
    """Every clear cell of every acquisition of ``tile`` against ``query``, one at a time."""
    ds = store.open_dataset(tile, decode=True)
    nx, dim = ds.sizes["x"], ds.sizes["dim"]
    days = pd.DatetimeIndex(ds["time"].values).strftime("%Y-%m-%d")
    best: list[Match] = []
    for row, acq in enumerate(str(v) for v in ds["acquisition_id"].values):
        emb = centred(ds["embedding"].isel(time=row).values.reshape(-1, dim), centre)
        clear = ds["clear"].isel(time=row).values.reshape(-1)
        sims = np.where(clear >= min_clear, emb @ query, -np.inf)
        top = np.argsort(-sims)[:k]
        best += [Match(tile, acq, days[row], int(c) // nx, int(c) % nx, float(sims[c]))
                 for c in top if np.isfinite(sims[c])]  # fmt: skip
        best = sorted(best, key=lambda m: -m.similarity)[:k]
    return best
