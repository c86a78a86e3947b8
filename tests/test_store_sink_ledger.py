"""Real Zarr and GeoParquet files on disk: idempotent, crash-safe, readable by the ecosystem."""

import dataclasses
import datetime as dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

from streamembed.config import StoreConfig
from streamembed.grid import TileGrid
from streamembed.indices import INDEX_NAMES
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.sink import AnomalyRecord, read_anomalies, write_anomalies
from streamembed.outputs.store import EmbeddingBatch, EmbeddingStore, Provenance, StoreMismatchError

GRID = TileGrid("33UWP", 32633, 499980.0, 5400000.0, 96, 128, 32)
# A float16 store: what the exact round-trip tests compare against (the default is int8)
FLOAT16 = StoreConfig(dtype="float16")
PROVENANCE = Provenance(
    "resnet18-12b-seed0", "seeded", True, "resnet18", ("B02",), "divide_10000", 256, 32, (0, 8, 9)
)


def _batch(i: int, grid: TileGrid = GRID) -> EmbeddingBatch:
    rng = np.random.default_rng(i)
    shape = (grid.n_cells_y, grid.n_cells_x)
    return EmbeddingBatch(
        acquisition_id=f"acq{i}",
        tile=grid.tile,
        time=dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc) + dt.timedelta(days=5 * i),
        grid=grid,
        embedding=rng.normal(size=(*shape, 8)).astype(np.float32),
        clear=rng.random(shape).astype(np.float32),
        snow=np.zeros(shape, np.float32),
        indices=rng.random((*shape, len(INDEX_NAMES))).astype(np.float32),
        provenance=PROVENANCE,
    )


def test_store_append_is_idempotent_and_readable(tmp_path):
    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    assert store.append(_batch(0)) and store.append(_batch(1))
    assert not store.append(_batch(1))  # already there: a no-op
    assert store.acquisition_ids("33UWP") == ["acq0", "acq1"]
    ds = xr.open_zarr(tmp_path / "embeddings.zarr", group="33UWP", consolidated=False)
    # the default store: int8 codes with a per-cell scale and offset
    assert ds.embedding.shape == (2, 3, 4, 8) and ds.embedding.dtype == np.int8
    assert ds.embedding_scale.shape == ds.embedding_offset.shape == (2, 3, 4)
    # chunks never reach past the tile (64-cell chunks by default, the tile has 3 x 4 cells)
    assert ds.embedding.encoding["chunks"] == (1, 3, 4, 8)
    assert ds.attrs["crs"] == "EPSG:32633" and ds.attrs["model_id"] == PROVENANCE.model_id
    assert ds.time.values[1] == np.datetime64("2024-01-06T10:00:00")
    assert ds.y.values[0] == 5400000.0 - 160.0 and ds.x.values[0] == 499980.0 + 160.0
    back = store.read("33UWP", "acq1")
    assert np.allclose(back.embedding, _batch(1).embedding, atol=1e-2)
    assert back.time == _batch(1).time


def test_store_repairs_an_interrupted_append(tmp_path):
    import zarr

    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    store.append(_batch(0))
    store.append(_batch(1))
    # Simulate a crash mid-append of an old writer: one array grew, no id, no reservation.
    g = zarr.open_group(tmp_path / "embeddings.zarr", path="33UWP", mode="r+")
    g["embedding"].resize((3, 3, 4, 8))
    assert store.repair("33UWP") == 1
    assert g["embedding"].shape[0] == 2
    assert store.append(_batch(2))
    assert store.acquisition_ids("33UWP") == ["acq0", "acq1", "acq2"]


def test_an_acquisition_is_invisible_until_committed_and_a_restart_reuses_its_row(tmp_path):
    """Blocks written, then a crash before the commit: readers see nothing of it, a restart
    writes it into the same row, and the committed store reads back whole."""
    store = EmbeddingStore(tmp_path / "embeddings.zarr", FLOAT16)
    store.append(_batch(0))
    b = _batch(1)
    res = store.begin(b.acquisition_id, GRID, 8, PROVENANCE)
    assert res is not None and res.row == 1 and res.chunk_cells == (3, 4)
    store.write_block(res, (0, 3), (0, 2), b.embedding[:, :2], b.clear[:, :2], b.snow[:, :2],
                      b.indices[:, :2])  # fmt: skip
    # "crash": no commit. Readers see one acquisition; the row is pending, not cut.
    assert store.acquisition_ids("33UWP") == ["acq0"]
    assert store.open_dataset("33UWP").embedding.shape[0] == 1
    assert store.repair("33UWP") == 0 and store.pending("33UWP") == {"acq1": 1}
    again = store.begin(b.acquisition_id, GRID, 8, PROVENANCE)
    assert again is not None and again.row == 1
    other = store.begin("acq2", GRID, 8, PROVENANCE)
    assert other is not None and other.row == 2
    store.write_block(again, (0, 3), (0, 4), b.embedding, b.clear, b.snow, b.indices)
    store.commit(again, b.time)
    assert store.acquisition_ids("33UWP") == ["acq0", "acq1"]
    assert store.pending("33UWP") == {"acq2": 2}
    assert store.begin(b.acquisition_id, GRID, 8, PROVENANCE) is None  # committed: nothing to do
    back = store.read("33UWP", "acq1")
    assert np.array_equal(back.embedding, b.embedding.astype(np.float16))
    assert np.array_equal(back.clear, b.clear)


def test_plain_readers_see_committed_acquisitions_only(tmp_path):
    """The readers' view (``xarray.open_zarr`` of the tile, consolidated) ends at the last
    commit: reserved rows, half-written blocks and later commits behind an acquisition still
    in flight are not in it; a failed acquisition's released row is never seen (no phantom
    step), and the compaction at the end of a run closes the gap."""
    store = EmbeddingStore(tmp_path / "embeddings.zarr", FLOAT16)
    store.append(_batch(0))

    def readers() -> list[str]:
        ds = xr.open_zarr(tmp_path / "embeddings.zarr" / "33UWP")  # no options: as anyone
        assert ds.embedding.shape[0] == ds.clear.shape[0] == ds.time.shape[0]
        assert (np.diff(ds.time.values) > np.timedelta64(0)).all()  # sorted, no 1970 step
        return [str(v) for v in ds.acquisition_id.values]

    b1, b2, b3 = _batch(1), _batch(2), _batch(3)
    r1 = store.begin(b1.acquisition_id, GRID, 8, PROVENANCE)
    r2 = store.begin(b2.acquisition_id, GRID, 8, PROVENANCE)
    assert r1 is not None and r2 is not None
    store.write_block(r1, (0, 3), (0, 2), b1.embedding[:, :2], b1.clear[:, :2], b1.snow[:, :2],
                      b1.indices[:, :2])  # fmt: skip
    assert readers() == ["acq0"]  # two rows reserved, one half written: neither visible
    store.write_block(r2, (0, 3), (0, 4), b2.embedding, b2.clear, b2.snow, b2.indices)
    store.commit(r2, b2.time)
    assert readers() == ["acq0"]  # acq2 is committed behind acq1, still in flight
    store.release(r1)  # acq1 failed: its row is a gap, and nothing past it is shown yet
    assert readers() == ["acq0"]
    assert store.append(b3) and readers() == ["acq0"]
    done = store.compact("33UWP")
    assert done is not None and (done.start, done.rows, done.moved, done.dropped) == (1, 3, 2, 1)
    assert readers() == ["acq0", "acq2", "acq3"]
    ds = xr.open_zarr(tmp_path / "embeddings.zarr" / "33UWP")
    assert np.array_equal(ds.embedding.values[2], b3.embedding.astype(np.float16))
    assert np.array_equal(ds.clear.values[1], b2.clear)
    assert store.compact("33UWP") is None  # in order: nothing to do


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_a_late_look_is_put_in_sensing_order_and_reads_back_whole(dtype, tmp_path):
    """Looks stored out of sensing order (a late product, a retry after a mend) land in order
    after the compaction: the rows from the late one on are rewritten, the rows before it not;
    every variable reads back the look's own values."""
    root = tmp_path / "embeddings.zarr"
    store = EmbeddingStore(root, StoreConfig(dtype=dtype))
    order = [0, 1, 3, 4, 2, 5]  # look 2 arrives after 3 and 4
    for i in order:
        assert store.append(_batch(i))
    ds = xr.open_zarr(root / "33UWP")
    assert ds.acquisition_id.values.tolist() == ["acq0", "acq1", "acq3", "acq4"]  # 2 not yet
    before = {n: (root / "33UWP" / "embedding" / "c" / "0" / "0" / "0" / "0").stat().st_ino
              for n in ["row0"]}  # fmt: skip
    done = store.compact("33UWP")
    assert done is not None and done.start == 2 and done.moved == 4 and done.dropped == 0
    ds = store.open_dataset("33UWP", decode=False)
    assert ds.acquisition_id.values.tolist() == [f"acq{i}" for i in range(6)]
    assert (np.diff(ds.time.values) > np.timedelta64(0)).all()
    fresh = EmbeddingStore(tmp_path / "clean.zarr", StoreConfig(dtype=dtype))
    for i in range(6):
        fresh.append(_batch(i))
    clean = fresh.open_dataset("33UWP", decode=False)
    for name in ds.data_vars:
        assert np.array_equal(ds[name].values, clean[name].values), name
    assert np.array_equal(ds.time.values, clean.time.values)
    # the rows before the late look were not rewritten
    assert (root / "33UWP" / "embedding" / "c" / "0" / "0" / "0" / "0").stat().st_ino == before[
        "row0"
    ]
    assert store.read("33UWP", "acq2").time == _batch(2).time
    # the next look appends after the compacted rows
    assert store.append(_batch(6))
    assert store.compact("33UWP") is None
    assert store.open_dataset("33UWP").acquisition_id.values.tolist()[-1] == "acq6"


def test_store_keeps_sensing_seconds_and_the_stored_dtype(tmp_path):
    """Sentinel-2 times carry milliseconds; the store keeps the sensing second (the id's)."""

    store = EmbeddingStore(tmp_path / "embeddings.zarr", FLOAT16)
    for i, ms in ((0, 24), (1, 987), (2, 0)):
        b = _batch(i)
        store.append(dataclasses.replace(b, time=b.time + dt.timedelta(milliseconds=ms)))
    ds = xr.open_zarr(tmp_path / "embeddings.zarr", group="33UWP", consolidated=False)
    assert [str(t)[:19] for t in ds.time.values] == [
        "2024-01-01T10:00:00",
        "2024-01-06T10:00:00",
        "2024-01-11T10:00:00",
    ]
    back = store.read("33UWP", "acq1")
    assert back.time == _batch(1).time and back.embedding.dtype == np.float16
    assert ds.acquisition_id.values.tolist() == ["acq0", "acq1", "acq2"]
    # xarray reads what the direct appends wrote exactly as it reads its own first write
    assert np.array_equal(ds.embedding.values[2], _batch(2).embedding.astype(np.float16))
    assert np.array_equal(ds.indices.values[1], _batch(1).indices)


def test_store_grid_is_unknown_while_a_first_write_is_under_way(tmp_path):
    """Ingest reads the grid without the tile lock; xarray creates the group before it sets
    the attributes, so a concurrent first write must read as "no grid yet", not fail."""
    import zarr

    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    zarr.open_group(tmp_path / "embeddings.zarr", mode="a").create_group("33UWP")
    assert store.grid("33UWP") is None
    store_b = EmbeddingStore(tmp_path / "b.zarr")
    store_b.append(_batch(0))
    assert store_b.grid("33UWP") == GRID


def test_store_refuses_another_model(tmp_path):
    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    store.append(_batch(0))
    with pytest.raises(StoreMismatchError, match="resnet50"):
        other_model = dataclasses.replace(PROVENANCE, model_id="resnet50-12b-seed0")
        store.append(dataclasses.replace(_batch(1), provenance=other_model))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("normalisation", "ssl4eo_minmax", r"model\.normalisation"),
        ("window_px", 512, r"ingest\.window"),
        ("bands", ("B03",), "band order"),
        ("checkpoint_sha256", "f" * 64, "checkpoint file"),
    ],
)
def test_store_refuses_the_same_model_encoding_otherwise(field, value, named, tmp_path):
    """The same weights with another normalisation, window or band order make other vectors:
    appending them to a tile is refused, naming what differs; the store records the sha256 of
    the checkpoint and the versions of what computed the vectors."""
    made = dataclasses.replace(PROVENANCE, checkpoint_sha256="a" * 64, software=("torch 2.13.0",))
    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    store.append(dataclasses.replace(_batch(0), provenance=made))
    attrs = store.open_dataset("33UWP").attrs
    assert attrs["checkpoint_sha256"] == "a" * 64 and attrs["software"] == ["torch 2.13.0"]
    other = dataclasses.replace(made, **{field: value})
    with pytest.raises(StoreMismatchError, match=named):
        store.append(dataclasses.replace(_batch(1), provenance=other))
    # Another software version alone is recorded, not refused.
    newer = dataclasses.replace(made, software=("torch 2.14.1",))
    assert store.append(dataclasses.replace(_batch(1), provenance=newer))


def test_store_refuses_indices_of_an_older_version(tmp_path):
    import zarr

    store = EmbeddingStore(tmp_path / "embeddings.zarr")
    store.append(_batch(0))
    # What a store of the four-index version held: the index coordinate without MNDWI and
    # brightness (its arrays then had 4 values per cell, which this version cannot append to).
    g = zarr.open_group(tmp_path / "embeddings.zarr", mode="r+", path=GRID.tile)
    old = np.array(["ndvi", "ndwi", "nbr", "ndbi"])
    g.create_array("index", shape=old.shape, dtype=old.dtype, overwrite=True)[:] = old
    with pytest.raises(StoreMismatchError, match="new --output"):
        EmbeddingStore(tmp_path / "embeddings.zarr").append(_batch(1))  # a run of this version


def _record(cell_x: int, acq: str = "acq0") -> AnomalyRecord:
    return AnomalyRecord(
        acq,
        "33UWP",
        dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc),
        1,
        cell_x,
        7.5,
        1.2,
        12,
        1.0,
        "water_gain",
        "provisional",
        "resnet18-12b-seed0",
        32633,
    )


def test_geoparquet_partitioned_and_readable(tmp_path):
    root = tmp_path / "anomalies"
    path = write_anomalies(root, [_record(0), _record(2)], GRID, "2024-05-01", "acq0")
    assert path == str(root / "tile=33UWP" / "date=2024-05-01" / "acq0.parquet")
    again = write_anomalies(root, [_record(0), _record(2)], GRID, "2024-05-01", "acq0")
    assert again == path and len(list(root.rglob("*.parquet"))) == 1  # rewrite, not a second file
    assert not list(root.rglob("*.tmp"))
    assert write_anomalies(root, [], GRID, "2024-05-02", "acq1") is None

    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    gdf = read_anomalies(root)
    assert len(gdf) == 2 and set(gdf["tile"].astype(str)) == {"33UWP"}
    assert gdf.crs.to_epsg() == 4326
    lon, lat = gdf.geometry.iloc[0].centroid.coords[0]
    assert 14.9 < lon < 15.1 and 48.6 < lat < 48.8  # 33UWP's corner, reprojected from UTM 33N

    import dask_geopandas
    import duckdb

    assert len(dask_geopandas.read_parquet(root).compute()) == 2
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert n == (2,)


def test_ledger_states_and_summary(tmp_path):
    from streamembed.acquisition import Acquisition

    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    acqs = [
        Acquisition(f"a{i}", "33UWP", t + dt.timedelta(days=i), 32633, {}, "x.json")
        for i in range(3)
    ]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.record_seen(acqs) == 3 and ledger.record_seen(acqs) == 0
        ledger.set_state("a0", State.EMBEDDED)
        ledger.set_state("a0", State.APPLIED, n_anomalies=4)
        ledger.set_state("a1", State.FAILED, "acquisition a1 (x.json): band B8A missing")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:  # persisted
        assert ledger.summary() == {"33UWP": {"applied": 1, "failed": 1, "seen": 1}}
        assert ledger.rows(State.FAILED)[0].reason.endswith("band B8A missing")
        assert ledger.rows(State.APPLIED)[0].n_anomalies == 4


def test_unparseable_source_entries_are_filed_apart_from_acquisitions(tmp_path):
    """An entry with no tile or time is a source failure, reported once and again only when
    its reason changes; an old ledger's tile-"?" rows are moved over on open."""
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        assert ledger.record_source_failure("a.json", "/x/a.json", "a.json: not readable JSON")
        assert not ledger.record_source_failure("a.json", "/x/a.json", "a.json: not readable JSON")
        assert ledger.record_source_failure("a.json", "/x/a.json", "a.json: no tile code")
        assert ledger.source_failures() == [("a.json", "/x/a.json", "a.json: no tile code")]
        assert ledger.count() == 0 and ledger.summary() == {}
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO acquisitions (id, tile, datetime, item_href, state, reason, first_seen,"
        " updated) VALUES ('b.json', '?', '', '/x/b.json', 'failed', 'bad', 't', 't')"
    )
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        assert ledger.count() == 0
        assert ("b.json", "/x/b.json", "bad") in ledger.source_failures()


def test_int8_quantisation_is_within_half_a_level_of_each_cell():
    from streamembed.outputs.store import dequantise, quantise

    rng = np.random.default_rng(3)
    # ReLU-like features (non-negative, a few large), one constant cell, one NaN cell
    e = np.maximum(rng.normal(0.2, 1.0, size=(5, 7, 64)), 0).astype(np.float32)
    e[0, 0] = 0.5
    e[1, 1] = np.nan
    q, scale, offset = quantise(e)
    assert q.dtype == np.int8 and scale.shape == offset.shape == (5, 7)
    back = dequantise(q, scale, offset, np.float32)
    ok = np.isfinite(e)
    err = np.abs(back - e)[ok].reshape(-1)
    bound = np.broadcast_to(scale[..., None] / 2 + 1e-6, e.shape)[ok].reshape(-1)
    assert (err <= bound).all()
    assert np.all(back[0, 0] == 0.5) and np.isnan(back[1, 1]).all()
    # both ends of a cell's range are levels: -128 and 127 are used
    assert q[2, 2].min() == -128 and q[2, 2].max() == 127


def test_an_int8_store_reads_back_decoded_and_refuses_another_dtype(tmp_path):
    from streamembed.config import StoreConfig

    root = tmp_path / "embeddings.zarr"
    store = EmbeddingStore(root, StoreConfig(dtype="int8", compression="blosc-zstd-shuffle"))
    b = _batch(0)
    assert store.append(b) and store.append(_batch(1))
    raw = xr.open_zarr(root / "33UWP")
    assert raw.embedding.dtype == np.int8 and "embedding_scale" in raw
    back = store.read("33UWP", "acq0")
    assert back.embedding.dtype == np.float16
    level = (b.embedding.max(-1) - b.embedding.min(-1)) / 255
    assert (
        np.abs(back.embedding.astype(np.float32) - b.embedding) <= level[..., None] * 0.51 + 2e-3
    ).all()
    ds = store.open_dataset("33UWP")
    assert ds.embedding.dtype == np.float32 and "embedding_scale" not in ds
    assert np.allclose(ds.embedding.values[0], back.embedding, atol=2e-3)
    with pytest.raises(StoreMismatchError, match=r"store\.dtype"):
        EmbeddingStore(root, StoreConfig(dtype="float16")).append(_batch(2))


def test_the_store_is_georeferenced_for_rioxarray_and_odc_geo(tmp_path):
    """CF grid mapping (spatial_ref: WKT, GeoTransform) on every gridded variable: plain
    xarray opens a tile's group by its path without a warning, and rioxarray and odc-geo find
    the tile's CRS and cell grid. No store-wide object is written by a commit."""
    import warnings

    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import rioxarray  # noqa: F401  (the .rio accessor)
    from affine import Affine

    root = tmp_path / "embeddings.zarr"
    store = EmbeddingStore(root)
    store.append(_batch(0))
    root_meta = (root / "zarr.json").read_bytes()
    store.append(_batch(1))
    assert (root / "zarr.json").read_bytes() == root_meta  # a commit touches its tile only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(root / GRID.tile)
    with pytest.warns(RuntimeWarning, match="consolidated"):  # xarray's own note, same view
        by_group = xr.open_zarr(root, group=GRID.tile)
    assert (
        list(ds.acquisition_id.values) == list(by_group.acquisition_id.values) == ["acq0", "acq1"]
    )
    expected = Affine(GRID.cell_m, 0.0, GRID.x0, 0.0, -GRID.cell_m, GRID.y0)
    for name in ("clear", "embedding", "indices"):
        assert ds[name].attrs["grid_mapping"] == "spatial_ref"
    assert ds.rio.crs.to_epsg() == GRID.epsg
    assert ds.rio.transform() == expected
    assert (ds.rio.height, ds.rio.width) == (GRID.n_cells_y, GRID.n_cells_x)
    geobox = ds.clear.odc.geobox
    assert geobox.crs.epsg == GRID.epsg and geobox.affine == expected
    assert geobox.shape == (GRID.n_cells_y, GRID.n_cells_x)
    assert ds.x.attrs["units"] == "m" and ds.y.attrs["standard_name"] == "projection_y_coordinate"


def test_a_root_view_left_by_an_older_version_is_dropped(tmp_path):
    """Stores written before 0.23 carried a store-root consolidated view of every tile; it
    would go stale now that commits no longer rewrite it, so a run drops it once."""
    root = tmp_path / "embeddings.zarr"
    store = EmbeddingStore(root, FLOAT16)
    store.append(_batch(0))
    meta = json.loads((root / "zarr.json").read_text())
    meta["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
    (root / "zarr.json").write_text(json.dumps(meta))
    assert store.drop_root_view() and not store.drop_root_view()
    assert "consolidated_metadata" not in json.loads((root / "zarr.json").read_text())
    store.append(_batch(1))
    with pytest.warns(RuntimeWarning, match="consolidated"):
        by_group = xr.open_zarr(root, group=GRID.tile)
    assert list(by_group.acquisition_id.values) == ["acq0", "acq1"]


def test_a_run_writes_the_catalogue_of_the_tiles_it_changed(tmp_path):
    """write_catalog(tiles) rewrites those tiles' Items only and folds them into the
    Collection: new links, a wider extent, the other tiles' Items left as they were."""
    from streamembed.acquisition import Acquisition
    from streamembed.layout import OutputLayout
    from streamembed.outputs.catalog import write_catalog

    layout = OutputLayout(str(tmp_path))
    store = EmbeddingStore(layout.store)
    other = TileGrid("32UPC", 32632, 600000.0, 5800020.0, 96, 128, 32)
    batches = [_batch(0), _batch(1, other)]
    with Ledger(layout.ledger) as ledger:
        for b in batches:
            store.append(b)
            ledger.record_seen([Acquisition(b.acquisition_id, b.tile, b.time, None, {})])
            ledger.set_state(b.acquisition_id, State.APPLIED, n_anomalies=0)
    where = write_catalog(layout, ["33UWP"])
    assert where is not None
    first = json.loads((tmp_path / "stac" / "collection.json").read_text())
    assert [lk["href"] for lk in first["links"] if lk["rel"] == "item"] == ["./33UWP/33UWP.json"]
    item_a = tmp_path / "stac" / "33UWP" / "33UWP.json"
    before = item_a.stat().st_mtime_ns
    write_catalog(layout, ["32UPC"])
    assert item_a.stat().st_mtime_ns == before  # not rewritten
    coll = json.loads((tmp_path / "stac" / "collection.json").read_text())
    assert [lk["href"] for lk in coll["links"] if lk["rel"] == "item"] == [
        "./33UWP/33UWP.json", "./32UPC/32UPC.json",
    ]  # fmt: skip
    west_a = first["extent"]["spatial"]["bbox"][0][0]
    assert coll["extent"]["spatial"]["bbox"][0][0] < west_a  # 32UPC lies west of 33UWP
    full = json.loads(json.dumps(coll))
    write_catalog(layout)  # every tile: the same Collection
    assert json.loads((tmp_path / "stac" / "collection.json").read_text()) == full
    assert coll["extent"]["temporal"]["interval"][0][0].startswith("2024-01-01")


class _Killed(BaseException):
    """A kill at a crash point, in process: nothing after it runs, no cleanup."""


@pytest.mark.parametrize(
    "point", ["store.compaction_copied", "store.compaction_placed", "store.compaction_cut"]
)
def test_a_compaction_killed_part_way_is_finished_by_the_next_open(point, tmp_path, monkeypatch):
    import streamembed.outputs.compaction as compaction_module

    root = tmp_path / "embeddings.zarr"
    store = EmbeddingStore(root, FLOAT16)
    for i in [0, 2, 3, 1]:
        store.append(_batch(i))
    failed = store.begin("acq9", GRID, 8, PROVENANCE)
    assert failed is not None
    store.release(failed)

    def crash(name: str) -> None:
        if name == point:
            raise _Killed(name)

    monkeypatch.setattr(compaction_module, "crash_point", crash)
    with pytest.raises(_Killed):
        store.compact("33UWP")
    ids = xr.open_zarr(root / "33UWP").acquisition_id.values.tolist()
    assert ids == ["acq0"]  # mid-compaction: the rows before the first moved one only
    monkeypatch.undo()
    again = EmbeddingStore(root, FLOAT16)  # a restart: opening the tile finishes the job
    assert sorted(again.acquisition_ids("33UWP")) == ["acq0", "acq1", "acq2", "acq3"]
    assert again.compact("33UWP") is None
    ds = again.open_dataset("33UWP")
    assert ds.acquisition_id.values.tolist() == ["acq0", "acq1", "acq2", "acq3"]
    for i in range(4):
        assert np.array_equal(ds.embedding.values[i], _batch(i).embedding.astype(np.float16))
    assert not (root / "33UWP" / "embedding" / "c" / "4").exists()  # scratch rows gone
