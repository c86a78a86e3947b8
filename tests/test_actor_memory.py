"""The statistics actor's memory is bounded by stats.max_state_mib, not by the tiles it owns:
evicted tiles come back from their checkpoint and the results do not change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from streamembed.config import StatsConfig, StoreConfig
from streamembed.detection.stats import TileState
from streamembed.grid import TileGrid
from streamembed.indices import INDEX_NAMES
from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingBatch, EmbeddingStore, Provenance
from streamembed.runtime.actor import ApplyStatus, StatsActor

TILES = ("33UWP", "32UPC", "31UFT")
PROVENANCE = Provenance(
    "test-model", "seeded", True, "resnet18", ("B02",), "divide_10000", 256, 32, (0, 8, 9)
)


def _fill_store(root: Path, n_dates: int) -> list[tuple[str, str]]:
    """Three 12 x 12-cell tiles of 64-d embeddings with a jump at cells [4:8, 4:8] late on."""
    store = EmbeddingStore(root / "embeddings.zarr")
    order = []
    for k in range(n_dates):
        for t, tile in enumerate(TILES):
            grid = TileGrid(tile, 32633, 500000.0 + t, 5400000.0, 384, 384, 32)
            rng = np.random.default_rng([k, t])
            emb = rng.normal(0, 0.05, (12, 12, 64)).astype(np.float32) + 1.0
            idx = np.full((12, 12, len(INDEX_NAMES)), 0.5, np.float32)
            if k >= n_dates - 2:
                emb[4:8, 4:8] += 2.0
                idx[4:8, 4:8] = -0.5
            acq_id = f"{tile}-{k:02d}"
            when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=5 * k)
            store.append(
                EmbeddingBatch(acq_id, tile, when, grid, emb, np.ones((12, 12), np.float32),
                               np.zeros((12, 12), np.float32), idx, PROVENANCE),
            )  # fmt: skip
            order.append((tile, acq_id))
    return order


def _apply_all(out: Path, order: list[tuple[str, str]], budget_mib: float) -> StatsActor:
    actor = StatsActor(str(out), StatsConfig(min_obs=3, max_state_mib=budget_mib), StoreConfig(),
                       "test-model")  # fmt: skip
    for tile, acq_id in order:
        assert actor.apply(tile, acq_id).status == ApplyStatus.APPLIED
        assert actor.cache.resident_bytes() == sum(s.nbytes for s in actor.cache.states.values())
        assert actor.cache.resident_bytes() <= max(
            budget_mib * 2**20, max(s.nbytes for s in actor.cache.states.values())
        )
    actor.checkpoint()
    return actor


def test_eviction_bounds_memory_and_changes_no_result(tmp_path):
    import shutil

    order = _fill_store(tmp_path / "a", 10)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    one_tile = TileState.empty(12, 12, 64, StatsConfig().state_dtype).nbytes / 2**20
    roomy = _apply_all(tmp_path / "a", order, 1024)
    tight = _apply_all(tmp_path / "b", order, 1.5 * one_tile)  # room for one tile only
    assert roomy.cache.evictions == 0 and len(roomy.cache.states) == 3
    assert tight.cache.evictions >= 20 and len(tight.cache.states) == 1
    # an evicted tile is read back from its checkpoint; a resident one never is
    assert tight.metrics().state_read_mib > 0 and roomy.metrics().state_read_mib == 0
    for tile in TILES:
        a = TileState.load(tmp_path / "a" / "state" / f"{tile}.npz")
        b = TileState.load(tmp_path / "b" / "state" / f"{tile}.npz")
        arrays_a, arrays_b = a.arrays(), b.arrays()
        assert arrays_a.keys() == arrays_b.keys()
        for name, va in arrays_a.items():
            assert np.array_equal(va, arrays_b[name], equal_nan=va.dtype.kind == "f"), name
    rows_a = read_anomalies(tmp_path / "a" / "anomalies")
    rows_b = read_anomalies(tmp_path / "b" / "anomalies")
    assert len(rows_a) > 0 and set(rows_a["mgrs_tile"]) == set(TILES)
    key = ["acquisition_id", "cell_y", "cell_x"]
    assert (
        rows_a.sort_values(key)[[*key, "score"]]
        .reset_index(drop=True)
        .equals(rows_b.sort_values(key)[[*key, "score"]].reset_index(drop=True))
    )
