"""Radiometric harmonisation across the processing baseline 04.00 change (January 2022).

Products of baseline >= 04.00 add +1000 to every DN; an unharmonised time series jumps there.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from streamembed.acquisition import BANDS_L1C, Acquisition, BandAsset, parse_item
from streamembed.grid import TileGrid
from streamembed.harness.synthetic import write_cog
from streamembed.runtime.ingest import open_bands, read_block

X0, Y0 = 600000.0, 5700000.0


def _item(item_id: str, assets: dict, props: dict) -> dict:
    return {
        "type": "Feature",
        "id": item_id,
        "properties": {"datetime": "2022-06-15T10:15:59Z", "proj:epsg": 32632, **props},
        "assets": assets,
    }


def test_same_surface_same_reflectance_before_and_after_baseline_0400(tmp_path):
    rng = np.random.default_rng(3)
    surface = rng.uniform(0.01, 0.6, (3, 64, 64)).astype(np.float32)  # B02, B03, SCL dummy
    dn_old = np.round(surface * 10000).astype(np.uint16)
    dn_new = dn_old + 1000  # baseline 04.00: BOA_ADD_OFFSET -1000
    scl = np.full((64, 64), 4, np.uint8)
    for name, dn in (("old", dn_old), ("new", dn_new)):
        for b, band in enumerate(("B02", "B03")):
            write_cog(tmp_path / f"{name}_{band}.tif", dn[b], 32632, X0, Y0, 10.0)
    write_cog(tmp_path / "scl.tif", scl, 32632, X0, Y0, 20.0)

    def assets(name: str, keys: dict[str, str], extra: dict) -> dict:
        out = {keys[b]: {"href": str(tmp_path / f"{name}_{b}.tif"), **extra} for b in keys}
        out[keys.get("SCL", "SCL")] = {"href": str(tmp_path / "scl.tif")}
        return out

    items = [
        # Earth Search v0 shape, baseline 02.09 (from the product id), no raster:offset.
        _item(
            "S2B_32UPC_20200406_0_L2A",
            assets("old", {"B02": "B02", "B03": "B03"}, {}),
            {"sentinel:product_id": "S2B_MSIL2A_20200406T101559_N0209_R065_T32UPC_20200406T1"},
        ),
        # Planetary Computer shape, baseline 04.00 in s2:processing_baseline, no raster:offset.
        _item(
            "S2B_MSIL2A_20220615T101559_R065_T32UPC_20220615T122549",
            assets("new", {"B02": "B02", "B03": "B03"}, {}),
            {"s2:mgrs_tile": "32UPC", "s2:processing_baseline": "04.00"},
        ),
        # CDSE shape, baseline 05.11, the offset stated per asset.
        _item(
            "S2B_MSIL2A_20240615T101559_N0511_R065_T32UPC_20240615T122549",
            assets(
                "new",
                {"B02": "B02_10m", "B03": "B03_10m", "SCL": "SCL_20m"},
                {"raster:scale": 0.0001, "raster:offset": -0.1},
            ),
            {"grid:code": "MGRS-32UPC", "processing:version": "05.11"},
        ),
    ]
    grid = TileGrid("32UPC", 32632, X0, Y0, 64, 64, 32)
    got = []
    for item in items:
        acq = parse_item(item, str(tmp_path / "item.json"), "auto", ["B02", "B03"])
        with open_bands(acq, ["B02", "B03"]) as opened:
            refl, _, nodata = read_block(
                acq, opened, grid, (0, 64), (0, 64), ["B02", "B03"], "nearest"
            )
        assert not nodata.any()
        got.append(refl)
    for refl in got:
        np.testing.assert_allclose(refl, surface[:2], atol=6e-5)  # DN rounding only
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    np.testing.assert_allclose(got[1], got[2], atol=1e-6)
    # Without harmonisation the same surface would jump by 0.1 reflectance in 2022.
    assert abs(float((dn_new[:2] / 1e4 - dn_old[:2] / 1e4).mean()) - 0.1) < 1e-6


def _mtd(path) -> tuple[str, float, float]:
    text = path.read_text()
    baseline = re.search(r"<PROCESSING_BASELINE>([^<]+)<", text).group(1)
    quant = float(re.search(r"<QUANTIFICATION_VALUE[^>]*>([^<]+)<", text).group(1))
    offsets = [float(v) for v in re.findall(r"<RADIO_ADD_OFFSET[^>]*>([^<]+)<", text)]
    return baseline, quant, (offsets[0] if offsets else 0.0)


def test_real_l1c_products_either_side_of_0400(shared_data):
    """Real T32UPC L1C chips (02.09 and 04.00): the rule matches each product's own metadata,
    and the near-zero cirrus band B10 shows no jump once harmonised."""
    folder = shared_data / "s2" / "ukis_t32upc_l1c"
    b10 = {}
    for tif in sorted(folder.glob("*.tif")):
        baseline, quant, offset = _mtd(tif.with_name(tif.stem + "_MTD.xml"))
        import rasterio

        with rasterio.open(tif) as src:
            epsg = src.crs.to_epsg()
            t = src.transform
            height, width, nodata = src.height, src.width, src.nodata
        pid = tif.stem
        assets = {
            band: BandAsset(band, band, str(tif), nodata=nodata, epsg=epsg, index=i + 1)
            for i, band in enumerate(BANDS_L1C)
        }
        when = dt.datetime.strptime(pid.split("_")[2], "%Y%m%dT%H%M%S").replace(
            tzinfo=dt.timezone.utc
        )
        baseline_from_id = re.search(r"_N(\d\d)(\d\d)_", pid)
        acq = Acquisition(
            pid,
            "32UPC",
            when,
            epsg,
            assets,
            processing_baseline=f"{baseline_from_id.group(1)}.{baseline_from_id.group(2)}",
            level="L1C",
        )
        assert acq.processing_baseline == baseline
        # Our conversion equals the product's own: reflectance = (DN + RADIO_ADD_OFFSET) / Q.
        assert acq.scale_offset("B02") == (1 / quant, offset / quant)
        res = t.a
        grid = TileGrid(
            "32UPC", epsg, t.c, t.f, round(height * res / 10), round(width * res / 10), 1
        )
        with open_bands(acq, ["B10"], None) as opened:
            refl, _, nd = read_block(
                acq, opened, grid, (0, grid.height), (0, grid.width), ["B10"], "nearest", None
            )
        with rasterio.open(tif) as src:
            raw = src.read(11).astype(np.float64)
        valid = raw != (nodata if nodata is not None else 0)
        b10[baseline] = (float(refl[0][~nd].mean()), float((raw[valid] / quant).mean()))
    (h_old, raw_old), (h_new, raw_new) = b10["02.09"], b10["04.00"]
    assert abs(h_new - h_old) < 0.005  # cirrus over land stays near zero in both
    assert raw_new - raw_old > 0.09  # the jump an unharmonised series would show
