"""Acquisitions as blocks on a real LocalCluster: no wall-clock limit on a task, outputs that do
not depend on the block size, and a statistics actor that survives the death of its worker."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamembed.config import Config
from streamembed.detection.stats import TileState
from streamembed.harness.synthetic import generate
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """Twenty 10-day revisits of one 640 px tile (20 x 20 cells) with a flood and a clear-cut."""
    items, _ = generate(
        tmp_path_factory.mktemp("series"), days=200, revisit_days=10, tile_px=640, n_tiles=1
    )
    return items


def _cfg(items: Path, out: Path, **extra: object) -> Config:
    return Config().with_overrides(
        **{
            "source.path": str(items),
            "output": str(out),
            "model.arch": "resnet18",
            "store.chunk_cells": 8,
            "stats.min_obs": 4,
            **extra,
        }
    )


def _run(cfg: Config, client, **kw):
    pipe = Pipeline(cfg, client)
    try:
        return pipe.run(progress=False, **kw)
    finally:
        pipe.close()


def _rows(out: Path) -> pd.DataFrame:
    df = pd.DataFrame(read_anomalies(out / "anomalies").drop(columns="geometry"))
    return df.sort_values(["acquisition_id", "cell_y", "cell_x"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def whole_tile_blocks(series, cluster_client, tmp_path_factory):
    """The reference: one block per acquisition (block_px past the tile)."""
    out = tmp_path_factory.mktemp("one-block")
    report = _run(_cfg(series, out, **{"ingest.block_px": 2048}), cluster_client)
    return out, report


def test_acquisitions_longer_than_the_driver_wait_run_through(series, cluster_client, tmp_path):
    """Every acquisition takes far longer than the loop's wait: the loop waits, never raises."""
    cfg = _cfg(series, tmp_path, **{"pipeline.wait_seconds": 0.01, "pipeline.max_in_flight": 1})
    report = _run(cfg, cluster_client)
    assert report.applied == 20 and not report.failed
    per_acq = (report.stage_seconds.encode + report.stage_seconds.read_decode_resample) / 20
    assert per_acq > 0.01  # each one took longer than the wait interval


def test_blocks_of_a_broken_acquisition_failing_together(series, cluster_client, tmp_path):
    """Every block of two acquisitions fails at once (a band emptied): the loop skips the
    blocks it cancelled, fails those two with their reason and applies the other 18."""
    items = tmp_path / "items"
    shutil.copytree(series, items)
    broken = sorted(items.rglob("*.json"))[3:5]
    for item in broken:
        (b04,) = item.parent.glob("*B04*.tif")
        b04.write_bytes(b"")
    # all nine blocks of an acquisition in flight at once, so several fail in one wait
    cfg = _cfg(
        items, tmp_path / "out", **{"ingest.block_px": 256, "pipeline.max_blocks_in_flight": 18}
    )
    report = _run(cfg, cluster_client)
    assert report.applied == 18 and len(report.failed) == 2
    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        failed = ledger.rows(State.FAILED)
    assert {r.id for r in failed} == {p.stem for p in broken}
    assert all("B04" in r.reason for r in failed)


def test_block_size_does_not_change_a_bit(series, cluster_client, whole_tile_blocks, tmp_path):
    ref_out, ref = whole_tile_blocks
    report = _run(_cfg(series, tmp_path, **{"ingest.block_px": 256}), cluster_client)
    assert ref.applied == report.applied == 20 and not ref.failed and not report.failed
    # 20 x 20 cells: one block, or 3 x 3 blocks of 8 cells; windows of 8 cells start at 0, 8
    # and 12, so the last window's cells straddle two blocks.
    assert ref.blocks == 20 and report.blocks == 9 * 20
    a = EmbeddingStore(ref_out / "embeddings.zarr").open_dataset("33UWP")
    b = EmbeddingStore(tmp_path / "embeddings.zarr").open_dataset("33UWP")
    assert list(a.acquisition_id.values) == list(b.acquisition_id.values)
    for name in ("embedding", "clear", "snow", "indices"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    assert np.isfinite(a.embedding.values).all() and a.embedding.values.std() > 0
    rows_a, rows_b = _rows(ref_out), _rows(tmp_path)
    assert len(rows_a) > 0
    pd.testing.assert_frame_equal(rows_a, rows_b)


def test_losing_the_actor_worker_loses_nothing(series, whole_tile_blocks, tmp_path):
    """SIGKILL the worker holding the statistics actor after 5 applies: the actor is recreated
    from its checkpoint and every acquisition is applied exactly once (same rows as a run that
    was never interrupted)."""
    from streamembed.config import ClusterConfig
    from streamembed.deployment.cluster import make_client

    ref_out, _ = whole_tile_blocks
    cfg = _cfg(series, tmp_path, **{"ingest.block_px": 2048})
    with make_client(ClusterConfig(n_workers=2, dashboard_address=":0")) as client:
        pipe = Pipeline(cfg, client)
        killed: list[int] = []

        def kill_after_five() -> bool:
            if not killed and len(pipe.ledger.rows(State.APPLIED)) >= 5:
                (addr,) = client.who_has(pipe.shards.futures[0])[pipe.shards.futures[0].key]
                pid = client.run(os.getpid, workers=[addr])[addr]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return False

        try:
            report = pipe.run(progress=False, stop=kill_after_five)
        finally:
            pipe.close()
    assert killed and report.actors_recreated >= 1
    assert report.applied == 20 and not report.failed
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert len(ledger.rows(State.APPLIED)) == 20
    state = TileState.load(tmp_path / "state" / "33UWP.npz")
    assert len(state.applied_ids) == len(set(state.applied_ids)) == 20
    assert sorted(EmbeddingStore(tmp_path / "embeddings.zarr").acquisition_ids("33UWP")) == sorted(
        state.applied_ids
    )
    pd.testing.assert_frame_equal(_rows(ref_out), _rows(tmp_path))


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("read", marks=pytest.mark.faults),
        "encode",
        pytest.param("store.write_block", marks=pytest.mark.faults),
    ],
)
def test_a_worker_killed_mid_block_loses_nothing(
    series, whole_tile_blocks, tmp_path, monkeypatch, point
):
    """SIGKILL the worker running a block (not the driver, not the actor's) in the middle of
    its task: distributed reruns the block on a live worker and the run ends with every
    acquisition stored and applied once, the same rows as an uninterrupted run."""
    from streamembed.config import ClusterConfig
    from streamembed.deployment.cluster import make_client
    from streamembed.faults import KILL_AT, KILL_COUNT, KILL_SCOPE

    ref_out, _ = whole_tile_blocks
    # the 7th arrival: well into the run, after the actor's worker is settled
    monkeypatch.setenv(KILL_AT, f"{point}:7")
    monkeypatch.setenv(KILL_COUNT, str(tmp_path / "arrivals"))
    monkeypatch.setenv(KILL_SCOPE, "process")
    out = tmp_path / "out"
    cfg = _cfg(series, out, **{"ingest.block_px": 2048})
    with make_client(ClusterConfig(n_workers=2, dashboard_address=":0")) as client:
        report = _run(cfg, client)
    assert (tmp_path / "arrivals").stat().st_size >= 7  # the kill point was reached
    assert report.applied + report.replayed >= 20 and not report.failed
    with Ledger(out / "ledger.sqlite") as ledger:
        assert len(ledger.rows(State.APPLIED)) == 20
    ids = EmbeddingStore(out / "embeddings.zarr").acquisition_ids("33UWP")
    assert len(ids) == len(set(ids)) == 20
    pd.testing.assert_frame_equal(_rows(ref_out), _rows(out))


@pytest.mark.parametrize("arch", ["resnet50", "vit_small_patch16_224"])
def test_block_size_does_not_change_a_bit_for_every_backbone(arch, cluster_client, tmp_path):
    """The invariance above for the other backbones (a ViT attends across its whole window: its
    cells stay the same only because windows are laid on the tile, not on the block)."""
    items, _ = generate(tmp_path / "data", days=20, revisit_days=10, tile_px=640, n_tiles=1)
    stores = []
    for block_px in (2048, 256):
        out = tmp_path / f"out-{block_px}"
        overrides = {"model.arch": arch, "ingest.block_px": block_px, "store.dtype": "float32"}
        report = _run(_cfg(items, out, **overrides), cluster_client)
        assert report.applied == 2 and not report.failed
        stores.append(EmbeddingStore(out / "embeddings.zarr").open_dataset("33UWP"))
    a, b = (s.embedding.values for s in stores)
    assert a.shape[-1] == {"resnet50": 2048, "vit_small_patch16_224": 384}[arch]
    assert np.isfinite(a).all() and a.std() > 0
    assert np.array_equal(a, b)
