"""The bad-input corpus (tests/data/bad/cases.yaml) through one real backfill: every case gives
its ledger row with a one-line reason naming the file and the problem, and every good
acquisition of the same run is processed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from streamembed.config import Config
from streamembed.harness.synthetic import generate, write_cog
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline

CASES = yaml.safe_load((Path(__file__).parent / "data" / "bad" / "cases.yaml").read_text())


def _rewrite(path: Path, data: np.ndarray) -> None:
    """The raster at ``path`` replaced by ``data`` (bands, y, x) on the same grid."""
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], dtype=data.dtype.name, driver="GTiff")
    profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _band_file(item: Path, doc: dict, band: str) -> Path:
    (key,) = [k for k in doc["assets"] if k.split("_")[0] == band]
    return item.parent / doc["assets"][key]["href"]


def _mutate(case: str, item: Path, spare: Path) -> str:
    """Apply one case to the item at ``item``; returns the key its ledger row is filed under."""
    doc = json.loads(item.read_text())
    key = doc["id"]
    if case == "truncated_cog":
        f = _band_file(item, doc, "B04")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif case == "zero_byte_file":
        _band_file(item, doc, "B03").write_bytes(b"")
    elif case == "wrong_band_count":
        f = _band_file(item, doc, "B05")
        with rasterio.open(f) as src:
            one = src.read(1)
        _rewrite(f, np.stack([one, one]))
    elif case == "wrong_data_type":
        f = _band_file(item, doc, "B06")
        with rasterio.open(f) as src:
            _rewrite(f, src.read().astype(np.float32) / 10000)
    elif case == "missing_band_asset":
        del doc["assets"]["B8A_20m"]
    elif case == "other_utm_zone":
        for asset in doc["assets"].values():
            asset["proj:code"] = "EPSG:32632"
    elif case in ("all_cloud", "all_nodata"):
        for asset in doc["assets"].values():
            f = item.parent / asset["href"]
            with rasterio.open(f) as src:
                t = src.transform
                shape, epsg = (src.height, src.width), src.crs.to_epsg()
            is_scl = "_SCL_" in asset["href"]
            if is_scl:  # all cloud (high probability), or no data
                value = 9 if case == "all_cloud" else 0
                write_cog(f, np.full(shape, value, np.uint8), epsg, t.c, t.f, t.a)
            elif case == "all_nodata":
                write_cog(f, np.zeros(shape, np.uint16), epsg, t.c, t.f, t.a)
    elif case == "malformed_json":
        item.write_text(item.read_text()[:200])
        return str(item)
    elif case == "no_tile_code":
        # neither a grid code nor a product id carrying the tile (…_T33UWP_…)
        del doc["properties"]["grid:code"]
        doc["id"] = key = "scene-without-a-tile"
    elif case == "future_date":
        doc["properties"]["datetime"] = "2031-06-01T10:00:31.024000Z"
    elif case == "duplicate_id":
        # the same item again in another file: the first read wins, the copy is reported
        copy = spare / "copies" / item.name
        copy.parent.mkdir(parents=True)
        for asset in doc["assets"].values():
            asset["href"] = str(item.parent / asset["href"])
        copy.write_text(json.dumps(doc))
        return str(copy)
    else:
        raise AssertionError(f"no mutation for corpus case {case}")
    item.write_text(json.dumps(doc))
    return key


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, cluster_client):
    root = tmp_path_factory.mktemp("bad-inputs")
    items, _ = generate(root / "archive", days=100, revisit_days=5, tile_px=128, n_tiles=1)
    files = sorted(items.rglob("*.json"))
    assert len(files) >= len(CASES) + 4
    keys = {case: _mutate(case, files[2 + i], items) for i, case in enumerate(CASES)}
    out = root / "out"
    cfg = Config().with_overrides(
        **{"source.path": str(items), "output": str(out), "model.arch": "resnet18"}
    )
    pipe = Pipeline(cfg, cluster_client)
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    return out, keys, report, len(files)


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_gives_its_ledger_row(corpus_run, case):
    out, keys, _, _ = corpus_run
    want = CASES[case]
    key = keys[case]
    with Ledger(out / "ledger.sqlite") as ledger:
        if want.get("failure") == "source":
            rows = {k: (href, reason) for k, href, reason in ledger.source_failures()}
            assert key in rows, f"{case}: no source-failure row for {key}"
            href, reason = rows[key]
            assert Path(href).name in reason  # the reason names the file
        else:
            row = next(r for r in ledger.rows() if r.id == key)
            assert row.state == want["state"], (case, row)
            reason = row.reason or ""
            if want["state"] == State.FAILED:
                assert row.failure_class == want["failure"], (case, row)
    assert "\n" not in reason
    for words in want.get("reason", []):
        assert words in reason, (case, reason)
    if "clear_cells" in want:
        store = EmbeddingStore(out / "embeddings.zarr")
        stored = store.read("33UWP", key)
        assert int((stored.clear >= 0.9).sum()) == want["clear_cells"]


def test_every_good_acquisition_of_the_run_is_processed(corpus_run):
    out, keys, report, n_files = corpus_run
    n_failed = sum(1 for c in CASES.values() if c["state"] == "failed" and c["failure"] != "source")
    n_unreadable = sum(1 for c in CASES.values() if c.get("failure") == "source")
    # the duplicate is an extra file: its acquisition (the original) is good
    n_acquisitions = n_files - (n_unreadable - 1)
    with Ledger(out / "ledger.sqlite") as ledger:
        states = ledger.states()
    assert len(states) == n_acquisitions
    assert sum(s == State.FAILED for s in states.values()) == n_failed
    assert sum(s == State.APPLIED for s in states.values()) == n_acquisitions - n_failed
    assert report.applied == n_acquisitions - n_failed
