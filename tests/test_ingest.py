"""Pure ingest cores against naive references, and windowed reads of real COGs."""

import numpy as np
import pytest

from streamembed.acquisition import Acquisition, BandAsset
from streamembed.config import IngestConfig
from streamembed.grid import TileGrid
from streamembed.harness.synthetic import write_cog
from streamembed.indices import INDEX_NAMES
from streamembed.runtime.ingest import open_bands, read_block
from streamembed.runtime.radiometry import (
    SCL_CLASSES,
    cell_summaries,
    fill_masked,
    normalise,
    scl_masks,
    to_reflectance,
)
from streamembed.runtime.windows import plan_blocks, plan_windows

EXPECTED_MASKED = {0: True, 1: True, 2: False, 3: True, 4: False, 5: False, 6: False,
                   7: False, 8: True, 9: True, 10: True, 11: True}  # fmt: skip


def test_scl_masking_table():
    scl = np.array(sorted(SCL_CLASSES), np.uint8)
    masked, snow = scl_masks(scl, IngestConfig().scl_mask_classes)
    assert dict(zip(scl.tolist(), masked.tolist(), strict=True)) == EXPECTED_MASKED
    assert snow.tolist() == [c == 11 for c in scl.tolist()]


def test_baseline_offset_harmonised():
    # The same surface (reflectance 0.05) before and after processing baseline 04.00.
    old = to_reflectance(np.array([500], np.uint16), 1e-4, 0.0)
    new = to_reflectance(np.array([1500], np.uint16), 1e-4, -0.1)
    assert np.allclose(old, new) and np.allclose(old, 0.05)


def test_normalisation_modes():
    refl = np.full((12, 2, 2), 0.1, np.float32)
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assert np.allclose(normalise(refl, bands, "divide_10000"), 0.1)
    mm = normalise(refl, bands, "ssl4eo_minmax")
    # B02: mean 1397.6, std 854.3 -> (1000 - (1397.6 - 1708.6)) / 3417.2 * 255, floored, /255
    expected = np.floor((1000 - (1397.6 - 2 * 854.3)) / (4 * 854.3) * 255) / 255
    assert mm[1, 0, 0] == pytest.approx(expected, abs=1e-6)
    assert mm.min() >= 0 and mm.max() <= 1


def test_cell_summaries_against_loop():
    rng = np.random.default_rng(0)
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    refl = rng.uniform(0.01, 0.5, (12, 8, 12)).astype(np.float32)
    masked = rng.random((8, 12)) < 0.3
    masked[:4, :4] = True  # one cell fully masked
    snow = masked & (rng.random((8, 12)) < 0.5)
    clear, snow_f, idx = cell_summaries(refl, masked, snow, bands, 4)
    assert clear.shape == (2, 3) and idx.shape == (2, 3, len(INDEX_NAMES))
    b = {name: i for i, name in enumerate(bands)}
    for cy in range(2):
        for cx in range(3):
            block = (slice(cy * 4, cy * 4 + 4), slice(cx * 4, cx * 4 + 4))
            ok = ~masked[block]
            assert clear[cy, cx] == pytest.approx(ok.mean())
            assert snow_f[cy, cx] == pytest.approx(snow[block].mean())
            if not ok.any():
                assert np.isnan(idx[cy, cx]).all()
                continue
            m = {k: refl[i][block][ok].mean() for k, i in b.items()}
            ndvi = (m["B08"] - m["B04"]) / (m["B08"] + m["B04"])
            nbr = (m["B08"] - m["B12"]) / (m["B08"] + m["B12"])
            assert idx[cy, cx, 0] == pytest.approx(ndvi, rel=1e-4)
            assert idx[cy, cx, 2] == pytest.approx(nbr, rel=1e-4)


def test_fill_masked_uses_clear_median():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    masked = np.zeros((3, 3), bool)
    masked[0, 0] = True
    out = fill_masked(x, masked)
    assert out[0, 0, 0] == np.median(x[0][~masked]) and out[1, 0, 0] == np.median(x[1][~masked])
    assert np.array_equal(out[:, 1:], x[:, 1:])


def test_windows_cover_every_cell_with_equal_shapes():
    grid = TileGrid("33UWP", 32633, 0.0, 0.0, 32 * 11, 32 * 7, 32)
    wins = plan_windows(grid, 128, 32)
    covered = np.zeros((11, 7), int)
    for w in wins:
        covered[w.cell_y : w.cell_y + w.n_cells_y, w.cell_x : w.cell_x + w.n_cells_x] += 1
        assert (w.n_cells_y, w.n_cells_x) == (4, 4)
    assert (covered >= 1).all()


def _cog(path, data, res, x0=500000.0, y0=5400000.0):
    write_cog(path, data, 32633, x0, y0, float(res))


def test_read_block_resamples_20m_and_60m_to_10m(tmp_path):
    rng = np.random.default_rng(1)
    b10 = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    b20 = rng.integers(1000, 3000, (32, 32)).astype(np.uint16)
    b60 = rng.integers(1000, 3000, (11, 11)).astype(np.uint16)
    scl = np.full((32, 32), 4, np.uint8)
    scl[0, 2] = 9  # covers 10 m columns 4-5
    for name, data, res in (("b10", b10, 10), ("b20", b20, 20), ("b60", b60, 60), ("scl", scl, 20)):
        _cog(tmp_path / f"{name}.tif", data, res)
    assets = {
        "B02": BandAsset("B02", "B02", str(tmp_path / "b10.tif"), 1e-4, -0.1, 0),
        "B05": BandAsset("B05", "B05", str(tmp_path / "b20.tif"), 1e-4, -0.1, 0),
        "B01": BandAsset("B01", "B01", str(tmp_path / "b60.tif"), 1e-4, -0.1, 0),
        "SCL": BandAsset("SCL", "SCL", str(tmp_path / "scl.tif")),
    }
    import datetime as dt

    acq = Acquisition("a", "33UWP", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), 32633, assets)
    grid = TileGrid("33UWP", 32633, 500000.0, 5400000.0, 64, 64, 32)
    with open_bands(acq, ["B02", "B05", "B01"]) as opened:
        refl, got_scl, nodata = read_block(
            acq, opened, grid, (-8, 40), (3, 51), ["B02", "B05", "B01"], "nearest"
        )
    up20 = np.repeat(np.repeat(b20, 2, 0), 2, 1)
    up60 = np.repeat(np.repeat(b60, 6, 0), 6, 1)
    # Rows -8..-1 lie outside the tile: nodata.
    assert nodata[:8].all() and not nodata[8:].any()
    inside = (slice(8, 48), slice(0, 48))
    assert np.allclose(refl[0][inside], b10[0:40, 3:51] * 1e-4 - 0.1, atol=1e-6)
    assert np.allclose(refl[1][inside], up20[0:40, 3:51] * 1e-4 - 0.1, atol=1e-6)
    assert np.allclose(refl[2][inside], up60[0:40, 3:51] * 1e-4 - 0.1, atol=1e-6)
    assert got_scl[8, :4].tolist() == [4, 9, 9, 4]  # block starts at 10 m column 3


def test_reader_matches_odc_stac(tmp_path):
    """Our windowed reader gives odc-stac's values for the same items on the same 10 m grid."""
    import json

    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    from streamembed.acquisition import BANDS_L2A, parse_item
    from streamembed.harness.synthetic import generate
    from streamembed.runtime.ingest import grid_for

    items, _ = generate(tmp_path, days=10, revisit_days=5, tile_px=256, n_tiles=1, seed=2)
    for path in sorted(items.rglob("*.json")):
        doc = json.loads(path.read_text())
        acq = parse_item(doc, str(path))
        grid = grid_for(acq, 32)
        bands = list(BANDS_L2A)
        with open_bands(acq, bands) as opened:
            # A block reaching past the tile's edge: both readers fill it as nodata.
            refl, scl, nodata = read_block(
                acq, opened, grid, (-32, 224), (32, 288), bands, "nearest"
            )
        item = pystac.Item.from_dict(doc)
        item.set_self_href(str(path))
        item.make_asset_hrefs_absolute()
        x0, y0 = grid.x0 + 32 * 10.0, grid.y0 + 32 * 10.0
        geobox = GeoBox.from_bbox(
            (x0, y0 - 2560.0, x0 + 2560.0, y0), crs="EPSG:32633", resolution=10
        )
        keys = [acq.assets[b].key for b in [*bands, "SCL"]]
        ds = odc.stac.load([item], bands=keys, geobox=geobox, resampling="nearest")
        for i, band in enumerate(bands):
            scale, offset = acq.scale_offset(band)
            dn = ds[acq.assets[band].key].values[0]
            np.testing.assert_allclose(refl[i][~nodata], (dn * scale + offset)[~nodata], atol=1e-6)
        assert (ds[acq.assets["SCL"].key].values[0][~nodata] == scl[~nodata]).all()
        zero_any = np.any([ds[acq.assets[b].key].values[0] == 0 for b in bands], axis=0)
        assert (zero_any == nodata).all()
        assert nodata[:32].all() and nodata[:, -32:].all()


def test_blocks_give_every_cell_to_the_last_window_covering_it():
    """Each cell is kept exactly once, from the window written last in plan order (the one
    whose margins surround it), whatever the block size; blocks lie on chunk edges."""
    grid = TileGrid("33UWP", 32633, 0.0, 0.0, 32 * 21, 32 * 13, 32)
    wins = plan_windows(grid, 256, 32)
    owner = {}
    for i, w in enumerate(wins):
        for cy in range(w.cell_y, w.cell_y + w.n_cells_y):
            for cx in range(w.cell_x, w.cell_x + w.n_cells_x):
                owner[cy, cx] = i
    for block_px in (256, 512, 4096):
        kept = {}
        for block in plan_blocks(grid, IngestConfig(window=256, margin=32, block_px=block_px)):
            side = block_px // 32
            assert block.cells_y[0] % side == 0 and block.cells_x[0] % side == 0
            for part in block.parts:
                assert block.cells_y[0] <= part.cells_y[0] < part.cells_y[1] <= block.cells_y[1]
                assert block.cells_x[0] <= part.cells_x[0] < part.cells_x[1] <= block.cells_x[1]
                for cy in range(*part.cells_y):
                    for cx in range(*part.cells_x):
                        assert (cy, cx) not in kept
                        kept[cy, cx] = wins.index(part.window)
        assert kept == owner


@pytest.mark.parametrize("resampling", ["bilinear", "nearest"])
def test_block_reads_are_the_same_whatever_the_block_size(tmp_path, resampling):
    """A window's encoder input and a cell's summaries do not depend on the block they were
    read in (20/60 m bands and the SCL included), so outputs are bitwise block-size free."""
    import json

    from streamembed.acquisition import parse_item
    from streamembed.config import ModelConfig
    from streamembed.harness.synthetic import generate
    from streamembed.runtime.ingest import grid_for, read_block_pixels
    from streamembed.runtime.windows import window_inputs

    items, _ = generate(tmp_path, days=5, revisit_days=5, tile_px=704, n_tiles=1, seed=4)
    path = sorted(items.rglob("*.json"))[0]
    acq = parse_item(json.loads(path.read_text()), str(path))
    grid = grid_for(acq, 32)
    model = ModelConfig()
    results = []
    for block_px in (256, 2048):
        cfg = IngestConfig(window=128, margin=32, resampling=resampling, block_px=block_px)
        inputs, clear, indices = {}, np.zeros((22, 22)), np.zeros((22, 22, len(INDEX_NAMES)))
        for block in plan_blocks(grid, cfg):
            px = read_block_pixels(acq, grid, block, cfg, model)
            x = window_inputs(
                px.dn, px.masked, px.origin, [p.window for p in block.parts], px.scale_offset,
                px.bands, model.normalisation, 32,
            )  # fmt: skip
            for part, xi in zip(block.parts, x, strict=True):
                inputs.setdefault(part.window, xi)
                assert np.array_equal(inputs[part.window], xi)
            ys, xs = slice(*block.cells_y), slice(*block.cells_x)
            clear[ys, xs], indices[ys, xs] = px.clear, px.indices
            assert px.dn.dtype == np.uint16
        results.append((inputs, clear, indices))
    (a, ca, ia), (b, cb, ib) = results
    assert len(plan_blocks(grid, IngestConfig(window=128, margin=32, block_px=256))) == 9
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(ca, cb) and np.array_equal(ia, ib, equal_nan=True)
