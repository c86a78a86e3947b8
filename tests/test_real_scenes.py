"""Real Sentinel-2 L1C scenes (eo-learn's Slovenia patch, shared/data/s2) through the whole pipeline.

Five real 13-band L1C acquisitions (July-September 2015) with their s2cloudless cloud masks go
in as COGs + STAC items, are encoded by a 13-band (L1C) encoder and appended to the store; the
per-cell clear fraction and NDVI the pipeline stores are checked against the source arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamembed.acquisition import BANDS_L1C
from streamembed.config import Config
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline
from tests.scene_items import load_eolearn_example, write_scene_items


@pytest.fixture(scope="module")
def real_items(shared_data, tmp_path_factory):
    folder = shared_data / "s2" / "eolearn_slovenia_2015_2017"
    scenes, times, clm, ndvi, x0, y0 = load_eolearn_example(folder)
    root = tmp_path_factory.mktemp("real")
    write_scene_items(
        root / "items",
        scenes,
        times,
        BANDS_L1C,
        tile="33TVL",
        epsg=32633,
        x0=x0,
        y0=y0,
        cloud_masks=clm,
        id_prefix="EOLEARN_S2",
    )
    return root / "items", scenes, times, clm, ndvi


def test_real_l1c_scenes_end_to_end(real_items, cluster_client, tmp_path):
    items, scenes, times, clm, ndvi = real_items
    cfg = Config().with_overrides(
        **{
            "source.path": str(items),
            "output": str(tmp_path / "out"),
            "model.arch": "resnet18",
            "model.bands": list(BANDS_L1C),
            "ingest.cloud_mask": "asset",
            "ingest.cloud_mask_asset": "CLM",
        }
    )
    pipe = Pipeline(cfg, cluster_client)
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    assert not report.failed, report.failed
    assert report.applied == len(times) == 5
    with Ledger(cfg.layout.ledger) as ledger:
        assert {r.state for r in ledger.rows()} == {State.APPLIED}
    ds = EmbeddingStore(cfg.layout.store).open_dataset("33TVL").sortby("time")
    assert ds["embedding"].shape == (5, 3, 3, 512)  # 101 x 100 px: 3 x 3 cells of 320 m
    assert ds.attrs["bands"] == list(BANDS_L1C)
    assert np.isfinite(ds["embedding"].values.astype(np.float32)).all()
    order = np.argsort([t.timestamp() for t in times])
    cell = 32
    for k, t in enumerate(order):
        blocks = clm[t, : 3 * cell, : 3 * cell].reshape(3, cell, 3, cell)
        expected_clear = 1.0 - blocks.mean(axis=(1, 3))
        np.testing.assert_allclose(ds["clear"].values[k], expected_clear, atol=1e-6)
        if expected_clear.min() < 1:
            continue
        # Clear date: the stored per-cell NDVI is the real scene's, read back through the COGs.
        red = scenes[t, : 3 * cell, : 3 * cell, 3].reshape(3, cell, 3, cell).mean(axis=(1, 3))
        nir = scenes[t, : 3 * cell, : 3 * cell, 7].reshape(3, cell, 3, cell).mean(axis=(1, 3))
        got = ds["indices"].sel(index="ndvi").values[k]
        np.testing.assert_allclose(got, (nir - red) / (nir + red), atol=2e-3)
        # ... and agrees with eo-learn's own per-pixel NDVI of that date.
        theirs = ndvi[t, : 3 * cell, : 3 * cell].reshape(3, cell, 3, cell).mean(axis=(1, 3))
        np.testing.assert_allclose(got, theirs, atol=0.05)
    # Fewer clear dates than stats.min_obs: the detector learns and stays quiet.
    assert report.anomaly_rows == 0


def test_real_l1c_scenes_masked_by_their_own_bands(real_items, cluster_client, tmp_path):
    """The same real scenes with no mask asset: the mask computed from the L1C bands
    (s2cloudless clouds, shadows, snow) gives each cell the clear fraction eo-learn's cloud
    mask gives it (two overcast dates, three clear)."""
    items, scenes, times, clm, _ = real_items
    cfg = Config().with_overrides(
        **{
            "source.path": str(items),
            "output": str(tmp_path / "out"),
            "model.arch": "resnet18",
            "model.bands": list(BANDS_L1C),
            "ingest.cloud_mask": "computed",
        }
    )
    pipe = Pipeline(cfg, cluster_client)
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    assert report.applied == 5 and not report.failed
    ds = EmbeddingStore(cfg.layout.store).open_dataset("33TVL").sortby("time")
    order = np.argsort([t.timestamp() for t in times])
    cell = 32
    for k, t in enumerate(order):
        theirs = 1.0 - clm[t, : 3 * cell, : 3 * cell].reshape(3, cell, 3, cell).mean(axis=(1, 3))
        np.testing.assert_allclose(ds["clear"].values[k], theirs, atol=0.1)
