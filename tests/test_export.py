"""`streamembed export`: the store of a real backfill as Major-TOM-schema GeoParquet, read back
with geopandas, pyarrow and DuckDB and checked against the store it came from."""

from __future__ import annotations

import json

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from streamembed.cli import main
from streamembed.layout import OutputLayout
from streamembed.outputs.store import EmbeddingStore
from streamembed.products.export import ExportFilter, export
from streamembed.products.majortom import MajorTomGrid

MAJOR_TOM_COLUMNS = [
    "unique_id", "embedding", "timestamp", "product_id", "grid_cell", "grid_row_u",
    "grid_col_r", "geometry", "centre_lat", "centre_lon", "utm_footprint", "utm_crs",
    "pixel_bbox",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(kill_reference):
    out = kill_reference[0]
    store = EmbeddingStore(out / "embeddings.zarr")
    (tile,) = store.tiles()
    return out, store, tile


def test_cells_export_as_major_tom_geoparquet(run, tmp_path):
    out, store, tile = run
    dest = tmp_path / "cells"
    assert main(["export", str(dest), "--output", str(out), "--min-clear", "0.5",
                 "--no-progress"]) == 0  # fmt: skip
    path = dest / f"{tile}.parquet"
    ds = store.open_dataset(tile)
    clear = ds.clear.values
    rows = gpd.read_parquet(path)
    assert list(rows.columns[: len(MAJOR_TOM_COLUMNS)]) == MAJOR_TOM_COLUMNS
    assert len(rows) == int((clear >= 0.5).sum()) > 0
    assert rows.unique_id.is_unique and rows.crs.to_epsg() == 4326
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and "covering" in geo["columns"]["geometry"]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(len(rows),)]

    # One row against the store it came from: the embedding, the cell and its polygon.
    r = rows.iloc[len(rows) // 2]
    t = list(ds.acquisition_id.values).index(r.product_id)
    assert np.array_equal(np.asarray(r.embedding, np.float32),
                          ds.embedding.values[t, r.cell_y, r.cell_x].astype(np.float32))  # fmt: skip
    assert r.clear_fraction == clear[t, r.cell_y, r.cell_x]
    grid = store.grid(tile)
    (cell,) = grid.cell_polygons_wgs84(np.array([r.cell_y]), np.array([r.cell_x]))
    # the cell's corners reprojected (the anomaly polygons also follow the UTM edges between)
    assert r.geometry.symmetric_difference(cell).area < 1e-4 * cell.area
    s = grid.cell_size
    assert list(r.pixel_bbox) == [
        r.cell_x * s,
        r.cell_y * s,
        (r.cell_x + 1) * s,
        (r.cell_y + 1) * s,
    ]
    assert r.utm_crs == f"EPSG:{grid.epsg}"
    # The Major TOM cell named holds the cell's centre.
    mt = MajorTomGrid()
    assert MajorTomGrid.label(r.grid_row_u, r.grid_col_r) == r.grid_cell
    assert mt.outline(r.grid_row_u, r.grid_col_r).contains(
        shapely.Point(r.centre_lon, r.centre_lat)
    )

    # Filters: dates and tiles.
    days = sorted({str(d)[:10] for d in ds.time.values})
    some = export(OutputLayout(str(out)), tmp_path / "june", "cell",
                  ExportFilter(start=days[2], end=days[3], min_clear=0.5))  # fmt: skip
    assert some.acquisitions == 2 and some.rows == int((clear[2:4] >= 0.5).sum())
    none = export(OutputLayout(str(out)), tmp_path / "none", "cell", ExportFilter(tiles=("01ABC",)))
    assert none.rows == 0 and none.files == ()


def test_fragments_pool_seven_by_seven_cells(run, tmp_path):
    out, store, tile = run
    report = export(OutputLayout(str(out)), tmp_path / "frag", "fragment",
                    ExportFilter(min_clear=0.0))  # fmt: skip
    frags = gpd.read_parquet(report.files[0])
    assert len(frags) > 0 and set(frags.fragment_row) <= set(range(5))
    # min_clear 0 still needs a clear pixel: a clear-weighted mean of nothing is no embedding
    assert np.isfinite(np.stack(frags.embedding.to_numpy())).all()
    ds = store.open_dataset(tile)
    grid = store.grid(tile)
    for f in frags.iloc[:: max(1, len(frags) // 5)].itertuples():
        c0, r0, c1, r1 = (int(v) // grid.cell_size for v in f.pixel_bbox)
        assert (r1 - r0, c1 - c0) == (7, 7)
        t = list(ds.acquisition_id.values).index(f.product_id)
        w = ds.clear.values[t, r0:r1, c0:c1]
        cells = ds.embedding.values[t, r0:r1, c0:c1].astype(np.float32)
        expected = (cells * w[..., None]).sum((0, 1)) / w.sum()
        assert np.allclose(np.asarray(f.embedding), expected, rtol=1e-5, atol=1e-6)
        assert f.clear_fraction == pytest.approx(w.mean())


def test_major_tom_cells_match_the_reference_grid():
    """Our labels' outlines are majortom-eg's cells (the grid as a library)."""
    from majortom_eg import MajorTomGrid as Reference

    ref = Reference(d=10_000, overlap=False)
    mt = MajorTomGrid()
    for lon, lat in ((10.47, 52.34), (-3.7, 40.4), (151.2, -33.87), (-58.4, -34.6)):
        rows, cols = mt.locate(np.array([lat]), np.array([lon]))
        ours = mt.outline(int(rows[0]), int(cols[0]))
        theirs = [c.geom for c in ref.generate_grid_cells(shapely.Point(lon, lat).buffer(1e-6))
                  if c.geom.contains(shapely.Point(lon, lat))]  # fmt: skip
        assert len(theirs) == 1
        assert np.allclose(ours.bounds, theirs[0].bounds, atol=1e-9)
    assert MajorTomGrid.label(582, 71) == "582U_71R" and MajorTomGrid.label(-1, -3) == "1D_3L"


def test_a_backfill_indexes_its_acquisitions_when_asked(kill_series, kill_reference, tmp_path):
    """similarity.index_on_commit: the run ends with every stored acquisition in the index,
    and a query then adds nothing; the hits are those of exact search. The index is built
    around the store's centre (the first acquisition's mean, written once); an index built
    around another centre (or none, before centring) is built again, not mixed."""
    from streamembed.outputs.similar import (
        TileIndex,
        centre_key,
        centred,
        lists,
        similar,
        update_index,
    )
    from tests.kill_series import N_ACQUISITIONS, backfill

    out = tmp_path / "out"
    backfill(kill_series, out, extra_env={"STREAMEMBED__SIMILARITY__INDEX_ON_COMMIT": "true"})
    lay = OutputLayout(str(out))
    store = EmbeddingStore(out / "embeddings.zarr")
    (tile,) = store.tiles()
    ds = store.open_dataset(tile)
    idx = TileIndex(lay, tile, ds.sizes["dim"], ds.sizes["y"] * ds.sizes["x"])
    assert sorted(idx.ids) == sorted(store.acquisition_ids(tile)) and len(idx.ids) == N_ACQUISITIONS
    assert len(idx) == int((ds.clear.values >= 0.9).sum())
    assert update_index(lay, tile) == 0
    day = str(ds.time.values[4])[:10]
    ann = similar(lay, tile, day, 3, 5, k=10)
    exact = similar(lay, tile, day, 3, 5, k=10, exact=True)
    assert [(m.acquisition_id, m.cell_y, m.cell_x) for m in ann][:5] == [
        (m.acquisition_id, m.cell_y, m.cell_x) for m in exact
    ][:5]

    centre = np.load(out / "index" / "centre.npy")
    decoded = store.open_dataset(tile, decode=True)
    first = next(r for r in range(N_ACQUISITIONS) if (decoded.clear.values[r] >= 0.9).any())
    emb = decoded.embedding.values[first][decoded.clear.values[first] >= 0.9].astype(np.float64)
    mean = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).mean(axis=0)
    assert np.allclose(centre, mean, atol=1e-5)
    assert idx.centre_key == centre_key(centre)
    # cosines of centred vectors spread out: the raw ones of a tile are all near 1
    assert exact[0].similarity > 0.9 > exact[-1].similarity, [m.similarity for m in exact]

    meta_path = out / "index" / f"{tile}.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(
        json.dumps({"acquisition_ids": meta["acquisition_ids"]})
    )  # before centring
    assert update_index(lay, tile) == N_ACQUISITIONS
    again = TileIndex(lay, tile, ds.sizes["dim"], ds.sizes["y"] * ds.sizes["x"], centre_key(centre))
    assert len(again) == len(idx) and again.centre_key == centre_key(centre)
    assert [(m.acquisition_id, m.cell_y, m.cell_x) for m in similar(lay, tile, day, 3, 5, k=10)][
        :5
    ] == [(m.acquisition_id, m.cell_y, m.cell_x) for m in exact][:5]
    n_clear = int((decoded.clear.values >= 0.9).sum())
    assert again.index.nlist == lists(n_clear) > 1

    # an index one acquisition behind (a crash between saving the index and its ids) is opened
    # mapped and read whole to add the acquisition again: its keys appear twice, a hit once
    meta = json.loads(meta_path.read_text())
    last = meta["acquisition_ids"].pop()
    meta_path.write_text(json.dumps(meta))
    assert update_index(lay, tile) == 1
    row = [str(v) for v in decoded.acquisition_id.values].index(last)
    behind = TileIndex(lay, tile, ds.sizes["dim"], ds.sizes["y"] * ds.sizes["x"])
    assert behind.mapped and len(behind) == n_clear + int((decoded.clear.values[row] >= 0.9).sum())
    hits = [(m.acquisition_id, m.cell_y, m.cell_x) for m in similar(lay, tile, day, 3, 5, k=10)]
    assert (
        len(set(hits)) == len(hits)
        and hits[:5] == [(m.acquisition_id, m.cell_y, m.cell_x) for m in exact][:5]
    )

    # lists trained on a cloudy first look (39 clear cells: one list) are trained again once
    # the tile holds enough for twice as many
    for f in (out / "index").glob(f"{tile}.*"):
        f.unlink()
    small = TileIndex(lay, tile, ds.sizes["dim"], ds.sizes["y"] * ds.sizes["x"], centre_key(centre))
    cells = np.flatnonzero(decoded.clear.values[first].reshape(-1) >= 0.9)[:39]
    vecs = decoded.embedding.values[first].reshape(-1, ds.sizes["dim"])[cells]
    small.add(first * small.n_cells + cells, centred(vecs, centre))
    small.ids = [str(decoded.acquisition_id.values[first])]
    small.save()
    assert small.index.nlist == 1
    assert update_index(lay, tile) == N_ACQUISITIONS
    rebuilt = TileIndex(lay, tile, ds.sizes["dim"], ds.sizes["y"] * ds.sizes["x"])
    assert rebuilt.index.nlist == lists(n_clear) and len(rebuilt) == n_clear
