"""The L1C mask computed from the bands: s2cloudless's model on real L1C scenes against the
cloud probabilities and masks eo-learn ships with them, against SCL on synthetic L1C/L2A pairs
of the same scene, independent of the block read, and an L1C SAFE product through a real
backfill with the default config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamembed.config import Config, IngestConfig, ModelConfig
from streamembed.harness.fullsize import generate_fullsize
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime import cloudmask
from streamembed.runtime.ingest import IngestError, grid_for, mask_mode, read_masked, scene_bands
from streamembed.runtime.pipeline import Pipeline
from streamembed.sources.local import discover

# The order of REFERENCE_SCENES_L1C_13band.npy (shared/data/s2/PROVENANCE.md).
SCENE_DATES = ("2015-08-20", "2015-07-31", "2015-09-09", "2015-08-30", "2015-07-11")


@pytest.fixture(scope="module")
def real_l1c(shared_data):
    root = shared_data / "s2" / "eolearn_slovenia_2015_2017"
    scenes = np.load(root / "REFERENCE_SCENES_L1C_13band.npy")  # TOA reflectance, 13 bands
    stamps = json.loads((root / "timestamps.json").read_text())
    at = [next(i for i, t in enumerate(stamps) if t.startswith(d)) for d in SCENE_DATES]
    return scenes, np.load(root / "CLP.npy")[at, ..., 0], np.load(root / "CLM.npy")[at, ..., 0]


def test_cloud_probability_of_real_l1c_scenes_matches_eolearn(real_l1c):
    """The classifier as loaded here gives, per real scene, the mean cloud probability that
    eo-learn's s2cloudless run stored beside it."""
    scenes, clp, _ = real_l1c
    predict = cloudmask._classifier()
    l1c = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
           "B12")  # fmt: skip
    cols = [l1c.index(b) for b in cloudmask.MODEL_BANDS]
    for scene, stored in zip(scenes, clp, strict=True):
        prob = predict(scene[..., cols].reshape(-1, len(cols)).astype(np.float64))
        assert abs(float(prob.mean()) - float(stored.mean())) < 0.01


def test_mask_of_real_l1c_scenes_agrees_with_eolearn_cloud_mask(real_l1c):
    scenes, _, clm = real_l1c
    l1c = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
           "B12")  # fmt: skip
    agree = []
    for scene, reference in zip(scenes, clm, strict=True):
        area = scene[:96, :96]  # on the 160 m lattice
        nodata = np.zeros(area.shape[:2], bool)
        cloud, _, _ = cloudmask.computed_masks(
            lambda b, a=area: a[..., l1c.index(b)], nodata, 150.0
        )
        agree.append(float((cloud == reference[:96, :96].astype(bool)).mean()))
    # two overcast dates (eo-learn: all cloud) and three clear ones (no cloud): all agree
    assert min(agree) >= 0.95, agree


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Four looks of one 512 px scene written as L1C and as L2A (the same clouds)."""
    root = tmp_path_factory.mktemp("pairs")
    found = {}
    for level in ("L1C", "L2A"):
        generate_fullsize(root / level, acquisitions=4, tile_px=512, fmt="safe", level=level,
                          seed=3)  # fmt: skip
        acqs, failures = discover(root / level / "items")
        assert not failures and len(acqs) == 4
        found[level] = acqs
    return root, found


def test_computed_mask_against_scl_of_the_same_scene(pairs):
    _, found = pairs
    ingest, model = IngestConfig(), ModelConfig()
    seen_cloud = 0
    for l1c, l2a in zip(found["L1C"], found["L2A"], strict=True):
        assert mask_mode(l1c, ingest) == "computed" and mask_mode(l2a, ingest) == "scl"
        grid = grid_for(l1c, 32)
        full = ((0, 512), (0, 512))
        _, computed, _, _ = read_masked(l1c, grid, *full, scene_bands(l1c, model), ingest)
        _, scl, _, _ = read_masked(l2a, grid, *full, scene_bands(l2a, model), ingest)
        seen_cloud += int(scl.sum())
        recall = (computed & scl).sum() / max(1, scl.sum())
        over = (computed & ~scl).sum() / max(1, (~scl).sum())
        assert scl.sum() == 0 or recall >= 0.85, recall
        assert over <= 0.2, over
    assert seen_cloud > 0


def test_computed_mask_does_not_depend_on_the_block(pairs):
    _, found = pairs
    ingest, model = IngestConfig(), ModelConfig()
    acq = next(a for a in found["L1C"] if (a.cloud_cover or 0) > 5)
    grid = grid_for(acq, 32)
    bands = scene_bands(acq, model)
    whole_dn, whole, whole_snow, _ = read_masked(acq, grid, (-32, 544), (-32, 544), bands, ingest)
    for rows, cols in (((96, 352), (224, 480)), ((-32, 160), (288, 544))):
        dn, masked, snow, _ = read_masked(acq, grid, rows, cols, bands, ingest)
        keep = (slice(rows[0] + 32, rows[1] + 32), slice(cols[0] + 32, cols[1] + 32))
        assert np.array_equal(masked, whole[keep])
        assert np.array_equal(dn, whole_dn[:, keep[0], keep[1]])
        assert np.array_equal(snow, whole_snow[keep])
    assert 0 < whole.mean() < 1


def test_scl_mode_refuses_l1c_with_the_fix(pairs):
    _, found = pairs
    with pytest.raises(IngestError, match="cloud_mask: auto"):
        mask_mode(found["L1C"][0], IngestConfig(cloud_mask="scl"))


def test_l1c_safe_zips_through_backfill_with_the_default_config(tmp_path, cluster_client):
    items = generate_fullsize(tmp_path / "l1c", acquisitions=2, tile_px=256, fmt="safe",
                              level="L1C", zipped=True, seed=3)  # fmt: skip
    out = tmp_path / "out"
    cfg = Config().with_overrides(
        **{"source.path": str(items), "output": str(out), "model.arch": "resnet18"}
    )
    pipe = Pipeline(cfg, cluster_client)
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    assert report.applied == 2 and not report.failed
    with Ledger(out / "ledger.sqlite") as ledger:
        assert set(ledger.states().values()) == {State.APPLIED}
    store = EmbeddingStore(out / "embeddings.zarr")
    clear = [float(store.read(a.tile, a.id).clear.mean()) for a in discover(items)[0]]
    assert all(0 < c <= 1 for c in clear) and min(clear) < 1  # a cloudy look is masked
