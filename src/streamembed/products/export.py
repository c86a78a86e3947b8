"""`streamembed export`: the store's embeddings as GeoParquet rows in the Major TOM schema.

One row per embedding: per store cell (``mode="cell"``, 320 m) or per Major TOM fragment
(``mode="fragment"``: 224 px = 7 x 7 cells, pooled). The columns are Major TOM's embedding
columns (``unique_id``, ``embedding``, ``timestamp``, ``product_id``, ``grid_cell``,
``grid_row_u``, ``grid_col_r``, ``geometry``, ``centre_lat``, ``centre_lon``,
``utm_footprint``, ``utm_crs``, ``pixel_bbox``) plus ours (``mgrs_tile``, ``cell_y``/``cell_x``
or ``fragment_row``/``fragment_col``, ``clear_fraction``, ``model_id``, ``bbox``), written as
GeoParquet 1.1 (WKB geometry in EPSG:4326, a bbox covering column).

Memory is bounded by a slab of cell rows of one acquisition (``slab_rows``, default one store
chunk), never by the tile or the archive: a slab is read, its rows written as a row group,
and dropped. Major TOM grid geometry comes from majortom-eg (the reference grid as a library),
in ``majortom.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer

from ..grid import PIXEL_M, TileGrid
from ..layout import OutputLayout
from ..outputs.store import EmbeddingStore
from .majortom import FRAGMENT_PX, MajorTomGrid, fragment_origins

if TYPE_CHECKING:
    from ..config import Config
    from ..runtime.encoder import Encoder

Mode = Literal["cell", "fragment"]
FragmentEmbedding = Literal["cells", "encoder"]


@dataclass(frozen=True)
class ExportFilter:
    """What to export: tiles (empty: all), a sensing-date range, a minimum clear fraction."""

    tiles: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    min_clear: float = 0.9


@dataclass(frozen=True)
class ExportReport:
    rows: int
    acquisitions: int
    files: tuple[str, ...]


def _geo_metadata(extra_columns: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": CRS.from_epsg(4326).to_json_dict(),
                "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
                **(extra_columns or {}),
            }
        },
    }
    return {b"geo": json.dumps(geo).encode()}


def schema(dim: int, mode: Mode) -> pa.Schema:
    """The export's Arrow schema (Major TOM columns first)."""
    where = (
        [("cell_y", pa.int32()), ("cell_x", pa.int32())]
        if mode == "cell"
        else [("fragment_row", pa.int32()), ("fragment_col", pa.int32())]
    )
    bbox = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
    fields = [
        ("unique_id", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("product_id", pa.string()),
        ("grid_cell", pa.string()),
        ("grid_row_u", pa.int32()),
        ("grid_col_r", pa.int32()),
        ("geometry", pa.binary()),
        ("centre_lat", pa.float64()),
        ("centre_lon", pa.float64()),
        ("utm_footprint", pa.string()),
        ("utm_crs", pa.string()),
        ("pixel_bbox", pa.list_(pa.int32(), 4)),
        ("mgrs_tile", pa.string()),
        *where,
        ("clear_fraction", pa.float32()),
        ("model_id", pa.string()),
        ("bbox", bbox),
    ]
    return pa.schema(fields, metadata=_geo_metadata())


@dataclass(frozen=True)
class _Footprints:
    """Rows to write: their UTM boxes in pixels of the tile, embeddings and clear fractions."""

    boxes_px: np.ndarray  # (n, 4) col0, row0, col1, row1
    where: np.ndarray  # (n, 2) cell_y/cell_x or fragment_row/fragment_col
    embedding: np.ndarray  # (n, dim) float32
    clear: np.ndarray  # (n,)


def _cells(
    emb: np.ndarray, clear: np.ndarray, y0: int, grid: TileGrid, min_clear: float
) -> _Footprints:
    """The cells of a slab of rows (starting at cell row ``y0``) clear enough to export."""
    ny, nx = clear.shape
    yy, xx = np.nonzero(clear >= min_clear)
    s = grid.cell_size
    rows, cols = yy + y0, xx
    boxes = np.stack([cols * s, rows * s, (cols + 1) * s, (rows + 1) * s], axis=1)
    return _Footprints(boxes, np.stack([rows, cols], axis=1), emb[yy, xx].astype(np.float32),
                       clear[yy, xx])  # fmt: skip


def _fragments(
    emb: np.ndarray, clear: np.ndarray, y_off: int, frags: list[tuple[str, int, int, int, int]],
    grid: TileGrid, min_clear: float,
) -> tuple[_Footprints, list[str]]:  # fmt: skip
    """Clear-weighted means of each fragment's 7 x 7 cells (emb: cell rows from ``y_off``)."""
    k = FRAGMENT_PX // grid.cell_size
    boxes, where, vecs, clears, labels = [], [], [], [], []
    for label, fr, fc, r0, c0 in frags:
        cy, cx = r0 // grid.cell_size - y_off, c0 // grid.cell_size
        w = clear[cy : cy + k, cx : cx + k]
        if w.sum() <= 0 or w.mean() < min_clear:
            continue  # a fragment with no clear pixel has no clear-weighted mean
        block = emb[cy : cy + k, cx : cx + k].astype(np.float32)
        vecs.append((block * w[..., None]).sum((0, 1)) / w.sum())
        boxes.append((c0, r0, c0 + FRAGMENT_PX, r0 + FRAGMENT_PX))
        where.append((fr, fc))
        clears.append(w.mean())
        labels.append(label)
    dim = emb.shape[-1]
    return (
        _Footprints(
            np.array(boxes, int).reshape(-1, 4),
            np.array(where, int).reshape(-1, 2),
            np.array(vecs, np.float32).reshape(-1, dim),
            np.array(clears, np.float32),
        ),
        labels,
    )


def _table(
    fp: _Footprints, grid: TileGrid, when: dt.datetime, product: str, model_id: str,
    mode: Mode, mt: MajorTomGrid, labels: list[str] | None, dim: int,
) -> pa.Table:  # fmt: skip
    """Arrow rows of ``fp`` in the export schema."""
    to_wgs = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    c0, r0, c1, r1 = fp.boxes_px.T
    x0, x1 = grid.x0 + c0 * PIXEL_M, grid.x0 + c1 * PIXEL_M
    y0, y1 = grid.y0 - r0 * PIXEL_M, grid.y0 - r1 * PIXEL_M
    utm = shapely.box(x0, y1, x1, y0)
    lon_c, lat_c = to_wgs.transform((x0 + x1) / 2, (y0 + y1) / 2)
    wgs = shapely.transform(utm, lambda xy: np.column_stack(to_wgs.transform(xy[:, 0], xy[:, 1])))
    wkb = shapely.to_wkb(wgs)
    bounds = shapely.bounds(wgs)
    rows, cols = mt.locate(np.asarray(lat_c), np.asarray(lon_c))
    if labels is None:
        labels = [mt.label(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    stamp = pd.Timestamp(when)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    ts_bytes = stamp.isoformat().encode()
    ids = [
        hashlib.sha256(g + ts_bytes + product.encode() + e.tobytes()).hexdigest()
        for g, e in zip(wkb, fp.embedding, strict=True)
    ]
    n = len(ids)
    where_names = ("cell_y", "cell_x") if mode == "cell" else ("fragment_row", "fragment_col")
    columns = {
        "unique_id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(fp.embedding.reshape(-1), pa.float32()), dim
        ),
        "timestamp": pa.array([stamp.to_pydatetime()] * n, pa.timestamp("us", tz="UTC")),
        "product_id": pa.array([product] * n, pa.string()),
        "grid_cell": pa.array(labels, pa.string()),
        "grid_row_u": pa.array(rows, pa.int32()),
        "grid_col_r": pa.array(cols, pa.int32()),
        "geometry": pa.array(wkb, pa.binary()),
        "centre_lat": pa.array(lat_c, pa.float64()),
        "centre_lon": pa.array(lon_c, pa.float64()),
        "utm_footprint": pa.array(shapely.to_wkt(utm, rounding_precision=2), pa.string()),
        "utm_crs": pa.array([f"EPSG:{grid.epsg}"] * n, pa.string()),
        "pixel_bbox": pa.FixedSizeListArray.from_arrays(
            pa.array(fp.boxes_px.reshape(-1), pa.int32()), 4
        ),
        "mgrs_tile": pa.array([grid.tile] * n, pa.string()),
        where_names[0]: pa.array(fp.where[:, 0], pa.int32()),
        where_names[1]: pa.array(fp.where[:, 1], pa.int32()),
        "clear_fraction": pa.array(fp.clear, pa.float32()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "bbox": pa.StructArray.from_arrays(
            [pa.array(bounds[:, i], pa.float64()) for i in range(4)],
            names=["xmin", "ymin", "xmax", "ymax"],
        ),
    }
    return pa.table(columns, schema=schema(dim, mode))


def _acquisitions(store: EmbeddingStore, tile: str, flt: ExportFilter) -> Iterator[tuple[int, Any]]:
    """(row, time) of the tile's committed acquisitions within the filter's dates."""
    ds = store.open_dataset(tile, decode=False)
    times = pd.DatetimeIndex(ds["time"].values)
    for i, t in enumerate(times):
        day = t.strftime("%Y-%m-%d")
        if (flt.start and day < flt.start) or (flt.end and day > flt.end):
            continue
        yield i, t


def export(
    layout: OutputLayout,
    dest: str | Path,
    mode: Mode = "cell",
    flt: ExportFilter | None = None,
    slab_rows: int = 64,
    progress: bool = False,
    fragment_embedding: FragmentEmbedding = "cells",
    cfg: Config | None = None,
) -> ExportReport:
    """Write the store's embeddings under ``dest`` (a folder): one GeoParquet file per tile,
    ``<dest>/<tile>.parquet``, row groups of one slab (cell) or one acquisition (fragment).

    ``fragment_embedding="encoder"`` (with ``cfg``, the config that made the store): each
    fragment re-read from its product and embedded as Major TOM's embedder does
    (fragments.py) instead of pooled from the stored cells.
    """
    from tqdm import tqdm

    flt = flt or ExportFilter()
    store = EmbeddingStore(layout.store)
    tiles = [t for t in store.tiles() if not flt.tiles or t in flt.tiles]
    if mode == "fragment" and fragment_embedding == "encoder":
        if cfg is None:
            raise ValueError("fragment_embedding='encoder' needs the config that made the store")
        return _export_encoder_fragments(store, tiles, Path(dest), flt, cfg, progress)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    mt = MajorTomGrid()
    files, n_rows, n_acq = [], 0, 0
    for tile in tiles:
        grid = store.grid(tile)
        assert grid is not None
        ds = store.open_dataset(tile, decode=True)
        dim = int(ds.sizes["dim"])
        model_id = str(ds.attrs.get("model_id", ""))
        frags = fragment_origins(grid, mt) if mode == "fragment" else []
        path = out / f"{tile}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        acqs = list(_acquisitions(store, tile, flt))
        with pq.ParquetWriter(tmp, schema(dim, mode), compression="zstd") as writer:
            for i, when in tqdm(acqs, desc=f"export {tile}", unit="acq", disable=not progress):
                product = str(ds["acquisition_id"].values[i])
                n_acq += 1
                if mode == "cell":
                    for y0 in range(0, grid.n_cells_y, slab_rows):
                        sl = ds.isel(time=i, y=slice(y0, y0 + slab_rows))
                        fp = _cells(sl["embedding"].values, sl["clear"].values, y0, grid,
                                    flt.min_clear)  # fmt: skip
                        if len(fp.clear):
                            table = _table(fp, grid, when, product, model_id, mode, mt, None, dim)
                            writer.write_table(table)
                            n_rows += table.num_rows
                else:
                    # Fragments by bands of their top cell row; a band reads its rows plus the
                    # 7 a fragment spans, so memory stays a slab's, not the tile's.
                    k = FRAGMENT_PX // grid.cell_size
                    for y0 in range(0, grid.n_cells_y, slab_rows):
                        band = [f for f in frags if y0 <= f[3] // grid.cell_size < y0 + slab_rows]
                        if not band:
                            continue
                        sl = ds.isel(time=i, y=slice(y0, y0 + slab_rows + k))
                        fp, labels = _fragments(sl["embedding"].values, sl["clear"].values, y0,
                                                band, grid, flt.min_clear)  # fmt: skip
                        if len(fp.clear):
                            table = _table(fp, grid, when, product, model_id, mode, mt, labels,
                                           dim)  # fmt: skip
                            writer.write_table(table)
                            n_rows += table.num_rows
        tmp.replace(path)
        files.append(str(path))
    return ExportReport(n_rows, n_acq, tuple(files))


def _source_acquisitions(cfg: Config, ids: set[str]) -> dict[str, Any]:
    """The Acquisitions of ``ids``, re-read from the items the ledger recorded."""
    from ..acquisition import parse_item
    from ..outputs.ledger import Ledger
    from ..sources.items import features
    from ..sources.stac import load_item_document

    out: dict[str, Any] = {}
    with Ledger(cfg.layout.ledger) as ledger:
        hrefs = {r.id: r.item_href for r in ledger.rows() if r.id in ids}
    missing = sorted(ids - set(hrefs))
    if missing:
        raise ValueError(
            f"the ledger {cfg.layout.ledger} has no item for {missing[:3]}: the products must be "
            "re-read for --fragment-embedding encoder; give the --ledger of the run that made "
            "the store"
        )
    for href in sorted(set(hrefs.values())):
        for feature in features(load_item_document(href)):
            acq = parse_item(feature, href, cfg.source.band_mapping, cfg.model.bands)
            if acq.id in ids:
                out[acq.id] = acq
    return out


def _export_encoder_fragments(
    store: EmbeddingStore, tiles: list[str], out: Path, flt: ExportFilter, cfg: Config,
    progress: bool,
) -> ExportReport:  # fmt: skip
    from tqdm import tqdm

    from ..runtime.encoder import Encoder, model_identity
    from .fragments import embed_fragments, majortom_fragments

    identity = model_identity(cfg.model)
    encoder: Encoder | None = None
    out.mkdir(parents=True, exist_ok=True)
    mt = MajorTomGrid()
    files, n_rows, n_acq = [], 0, 0
    for tile in tiles:
        grid = store.grid(tile)
        assert grid is not None
        ds = store.open_dataset(tile, decode=False)
        stored_model = str(ds.attrs.get("model_id", ""))
        if stored_model != identity.model_id:
            raise ValueError(
                f"tile {tile} was embedded by {stored_model}, the config names "
                f"{identity.model_id}: --fragment-embedding encoder runs the config's model; "
                "give the --config of the run that made the store"
            )
        frags = majortom_fragments(grid, mt)
        acqs = list(_acquisitions(store, tile, flt))
        ids = {str(ds["acquisition_id"].values[i]) for i, _ in acqs}
        sources = _source_acquisitions(cfg, ids)
        if encoder is None:
            encoder = Encoder(cfg.model)
        dim = encoder.dim
        path = out / f"{tile}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        with pq.ParquetWriter(tmp, schema(dim, "fragment"), compression="zstd") as writer:
            for i, when in tqdm(acqs, desc=f"export {tile}", unit="acq", disable=not progress):
                product = str(ds["acquisition_id"].values[i])
                n_acq += 1
                got = embed_fragments(sources[product], grid, frags, encoder, cfg.ingest,
                                      cfg.model, flt.min_clear)  # fmt: skip
                if not got.fragments:
                    continue
                fp = _Footprints(
                    np.array([(f.col0, f.row0, f.col0 + FRAGMENT_PX, f.row0 + FRAGMENT_PX)
                              for f in got.fragments], int).reshape(-1, 4),
                    np.array([(f.fragment_row, f.fragment_col) for f in got.fragments],
                             int).reshape(-1, 2),
                    got.embedding,
                    got.clear,
                )  # fmt: skip
                labels = [f.label for f in got.fragments]
                table = _table(fp, grid, when, product, f"{identity.model_id}-majortom",
                               "fragment", mt, labels, dim)  # fmt: skip
                writer.write_table(table)
                n_rows += table.num_rows
        tmp.replace(path)
        files.append(str(path))
    return ExportReport(n_rows, n_acq, tuple(files))
