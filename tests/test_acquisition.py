"""The three STAC dialects parse to the same Acquisition fields."""

import datetime as dt
import json
from pathlib import Path

import pytest

from streamembed.acquisition import SourceError, candidate_keys, parse_item
from streamembed.sources import discover

TEST_DATA = Path(__file__).parent / "data"

CDSE = (
    TEST_DATA
    / "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914_cdse_stac_v110.trimmed.json"
)


def test_cdse_item():
    acq = parse_item(json.loads(CDSE.read_text()), str(CDSE))
    assert acq.tile == "33UWP"
    assert acq.epsg == 32633
    assert acq.datetime == dt.datetime(2025, 3, 30, 10, 0, 51, 25000, tzinfo=dt.timezone.utc)
    assert acq.processing_baseline == "05.11"
    assert acq.assets["B02"].key == "B02_10m" and acq.assets["B05"].key == "B05_20m"
    assert acq.assets["B01"].key == "B01_60m" and acq.assets["SCL"].key == "SCL_20m"
    assert acq.assets["B02"].href.startswith("s3://eodata/Sentinel-2/MSI/L2A/2025/03/30/")
    assert acq.scale_offset("B04") == (0.0001, -0.1)
    assert acq.assets["B8A"].transform == (20.0, 0.0, 499980.0, 0.0, -20.0, 5400000.0)
    assert acq.assets["B08"].shape == (10980, 10980)
    assert acq.missing_bands(["B01", "B02", "B11", "B12"]) == []


def test_earth_search_v0_item(shared_data):
    path = shared_data / "stac" / "S2A_28QCH_20200714_0_L2A.json"
    acq = parse_item(json.loads(path.read_text()), str(path))
    assert acq.tile == "28QCH"
    assert acq.epsg == 32628
    assert acq.datetime.date() == dt.date(2020, 7, 14)
    assert acq.processing_baseline == "02.14"  # from sentinel:product_id
    assert acq.assets["B02"].href.endswith("B02.tif") and acq.assets["SCL"].key == "SCL"
    # Pre-04.00 baseline and no raster:offset: no offset to remove.
    assert acq.scale_offset("B02") == (0.0001, 0.0)


def test_planetary_computer_item(shared_data):
    path = shared_data / "stac" / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
    acq = parse_item(json.loads(path.read_text()), str(path))
    assert acq.tile == "06VVN"
    assert acq.epsg == 32606
    assert acq.processing_baseline == "02.12"
    assert acq.assets["B8A"].transform == (20.0, 0.0, 399960.0, 0.0, -20.0, 6800040.0)
    assert acq.assets["B02"].href.startswith("https://sentinel2l2a01.blob.core.windows.net/")


def test_planetary_computer_item_collection(shared_data):
    path = (
        shared_data
        / "s2"
        / "stac_items"
        / "planetary_computer_sentinel-2-l2a_20190101_itemcollection.json"
    )
    acqs, failures = discover(path)
    assert len(acqs) == 33 and not failures
    assert all(a.datetime.date() == dt.date(2019, 1, 1) for a in acqs)
    assert all(
        len(a.tile) == 5 and a.epsg and not a.missing_bands(["B02", "B8A", "B12"]) for a in acqs
    )


def test_same_fields_across_dialects(shared_data):
    paths = [
        CDSE,
        shared_data / "stac" / "S2A_28QCH_20200714_0_L2A.json",
        shared_data / "stac" / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
    ]
    for path in paths:
        acq = parse_item(json.loads(path.read_text()), str(path))
        bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
        assert acq.missing_bands([*bands, "SCL"]) == [], path.name
        assert acq.epsg and acq.tile and acq.processing_baseline


def test_earth_search_v1_names_and_explicit_mapping():
    item = {
        "type": "Feature",
        "id": "S2B_T10SEG_20230101_0_L2A",
        "properties": {
            "datetime": "2023-01-01T00:00:00Z",
            "mgrs:utm_zone": 10,
            "mgrs:latitude_band": "S",
            "mgrs:grid_square": "EG",
            "proj:epsg": 32610,
        },
        "assets": {
            "blue": {"href": "b.tif"},
            "nir08": {"href": "n.tif"},
            "scl": {"href": "s.tif"},
            "mine": {"href": "m.tif"},
        },
    }
    acq = parse_item(item, "/data/x.json", "earth-search", ["B02", "B8A"])
    assert acq.tile == "10SEG" and acq.assets["B8A"].href == "/data/n.tif" and "SCL" in acq.assets
    acq2 = parse_item(item, "/data/x.json", {"B02": "mine", "SCL": "scl"}, ["B02"])
    assert acq2.assets["B02"].href == "/data/m.tif"
    assert candidate_keys("B05", "cdse")[0] == "B05_20m"


def test_missing_band_reason_names_file_and_fix():
    item = json.loads(CDSE.read_text())
    del item["assets"]["B8A_20m"], item["assets"]["B8A_60m"]
    acq = parse_item(item, "/items/x.json")
    reason = acq.missing_reason(["B02", "B8A"])
    assert reason and "/items/x.json" in reason and "B8A" in reason and "band_mapping" in reason


def test_not_an_item_is_a_clear_error():
    with pytest.raises(SourceError, match="no MGRS tile"):
        parse_item(
            {"type": "Feature", "id": "x", "properties": {"datetime": "2020-01-01T00:00:00Z"}},
            "f.json",
        )


def test_scihub_stac_beta_l1c_item(shared_data):
    """A real SciHub STAC 1.0.0-beta.2 L1C item: tile, level and baseline from its product id."""
    path = (
        shared_data
        / "s2"
        / "ukis_t32upc_l1c"
        / "S2A_MSIL1C_20200221T102041_N0209_R065_T32UPC_20200221T110731.stac_beta.json"
    )
    acq = parse_item(json.loads(path.read_text()), str(path))
    assert acq.tile == "32UPC" and acq.level == "L1C" and acq.processing_baseline == "02.09"
    assert acq.cloud_cover == pytest.approx(90.64)
    reason = acq.missing_reason(["B02"])
    assert reason and "band_mapping" in reason  # a metadata-only record: no band assets


def test_one_product_in_cdse_and_earth_search_shapes_parses_alike(shared_data):
    """The recorded CDSE item rewritten in the recorded Earth Search v0 shape: same fields."""
    from tests.test_stac import _earth_search

    cdse_doc = json.loads(CDSE.read_text())
    template = json.loads((shared_data / "stac" / "S2A_28QCH_20200714_0_L2A.json").read_text())
    cdse_doc.setdefault("properties", {}).setdefault("platform", "sentinel-2c")
    es_doc = _earth_search(cdse_doc, template)
    a = parse_item(cdse_doc, str(CDSE))
    b = parse_item(es_doc, str(CDSE), "earth-search")
    assert (a.tile, a.datetime, a.epsg, a.processing_baseline) == (
        b.tile,
        b.datetime,
        b.epsg,
        b.processing_baseline,
    )
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    for band in [*bands, "SCL"]:
        assert a.assets[band].href == b.assets[band].href, band
        assert a.assets[band].transform == b.assets[band].transform, band
    for band in bands:
        # CDSE states the offset per asset; Earth Search v0 leaves it to the baseline rule.
        assert a.scale_offset(band) == b.scale_offset(band) == (0.0001, -0.1), band
