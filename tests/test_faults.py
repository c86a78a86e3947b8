"""Faults a long-running daemon meets, on real HTTP and real files: reads that fail for a while
(retried, then succeed), reads that fail for good (failed at once, with their class), and what
``streamembed status`` tells the operator about them."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from streamembed.config import Config
from streamembed.harness.synthetic import generate
from streamembed.layout import OutputFullError
from streamembed.outputs.ledger import Failure, Ledger, State
from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.ingest import gdal_options
from streamembed.runtime.pipeline import Pipeline
from tests.stac_server import StacServer
from tests.test_stac import _served


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-archive")
    generate(root, days=40, revisit_days=10, tile_px=128, n_tiles=1, seed=5)
    return root


def _cfg(url: str, out, **extra) -> Config:
    return Config().with_overrides(
        **{
            "source.path": url,
            "source.kind": "stac",
            "output": str(out),
            "model.arch": "resnet18",
            # GDAL's own per-request retries off: the block-level retry is what is tested
            "ingest.http_retries": 0,
            "ingest.read_attempts": 3,
            "ingest.read_backoff_seconds": 0.2,
            **extra,
        }
    )


def _raster_path(item: dict, key: str, server: StacServer) -> str:
    return item["assets"][key]["href"][len(server.url) :]


def test_transient_read_errors_are_retried_and_permanent_ones_fail_at_once(
    server, archive, cluster_client, tmp_path
):
    items = _served(archive / "items", server)
    assert len(items) == 4
    server.publish(items)
    flaky_503, flaky_reset, down, corrupt = items
    # the first requests of a raster fail, then it is served: retried until it is read
    server.fail(_raster_path(flaky_503, "B04_10m", server), 503, times=2)
    server.fail(_raster_path(flaky_reset, "B8A_20m", server), 0, times=2)
    # a raster whose server keeps answering 503: transient, but past the retries
    server.fail(_raster_path(down, "B02_10m", server), 503, times=1000)
    # a raster that is not a raster: permanent, failed on the first attempt
    bad = archive / "items" / _raster_path(corrupt, "B03_10m", server).split("/items/", 1)[1]
    original = bad.read_bytes()
    bad.write_bytes(b"this is not a GeoTIFF" * 10)
    try:
        pipe = Pipeline(_cfg(server.url, tmp_path / "out"), cluster_client)
        try:
            report = pipe.run(progress=False)
        finally:
            pipe.close()
    except BaseException:
        bad.write_bytes(original)
        raise
    assert report.applied == 2, report.failed
    failed = dict(report.failed)
    assert set(failed) == {down["id"], corrupt["id"]}
    assert "still failing after 3 attempts" in failed[down["id"]]
    assert "503" in failed[down["id"]] and "B02" in failed[down["id"]]
    assert "B03" in failed[corrupt["id"]] and "\n" not in failed[corrupt["id"]]
    assert "not recognized as being in a supported file format" in failed[corrupt["id"]]
    # the corrupt raster was opened once, never retried: as many requests as one open makes
    corrupt_path = _raster_path(corrupt, "B03_10m", server)
    by_pipeline = server.hits(corrupt_path)
    bad.write_bytes(b"this is not a GeoTIFF" * 10)
    with (
        pytest.raises(rasterio.errors.RasterioIOError),
        rasterio.Env(**gdal_options([server.url], http_retries=0)),
    ):
        rasterio.open(server.url + corrupt_path)
    bad.write_bytes(original)
    assert by_pipeline == server.hits(corrupt_path) - by_pipeline > 0
    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        assert ledger.failure_counts() == {Failure.CORRUPT: 1, Failure.TRANSIENT: 1}
        assert ledger.state(flaky_503["id"]) == ledger.state(flaky_reset["id"]) == State.APPLIED

    # status names the classes; --retry-failed takes the transient one again once it is back
    status = subprocess.run(
        [sys.executable, "-m", "streamembed.cli", "status", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "failures by class: corrupt 1, transient 1" in status.stdout
    server.faults.clear()
    pipe = Pipeline(_cfg(server.url, tmp_path / "out"), cluster_client)
    try:
        again = pipe.run(progress=False, retry_failed=True)
    finally:
        pipe.close()
    assert again.applied == 2 and not again.failed
    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        assert ledger.failure_counts() == {}


@pytest.fixture
def small_volume(tmp_path):
    """A 32 MiB tmpfs the test can fill; skipped with the reason where none can be mounted."""
    mount = tmp_path / "volume"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited tmpfs needs root and mount(8); not available here")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(volume: Path, leave_kib: int) -> Path:
    """Fill ``volume`` until the disk is full, then free ``leave_kib`` KiB."""
    filler = volume / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave_kib * 1024))
    return filler


def _local_run(items: Path, out: Path, client) -> object:
    cfg = Config().with_overrides(
        **{"source.path": str(items), "output": str(out), "model.arch": "resnet18",
           "stats.min_obs": 2, "stats.threshold": 1.5, "stats.min_index_change": 0,
           "stats.min_step": 0, "stats.min_novelty": 0}
    )  # fmt: skip
    pipe = Pipeline(cfg, client)
    try:
        return pipe.run(progress=False)
    finally:
        pipe.close()


@pytest.mark.parametrize("leave_kib", [0, 16, 48])
def test_a_full_disk_stops_the_run_and_a_restart_loses_nothing(
    archive, cluster_client, small_volume, tmp_path, leave_kib
):
    """The output volume fills mid-run (store, anomaly file, checkpoint or ledger, wherever the
    last bytes go): the run stops with a clear error, what was written before is intact and
    readable, and once space is freed a restart ends as an uninterrupted run does."""
    items = tmp_path / "items"
    all_items = sorted((archive / "items").rglob("*.json"))
    reference = _local_run(archive / "items", tmp_path / "reference", cluster_client)
    assert reference.applied == len(all_items)
    # the first two acquisitions go through, then the disk fills
    for item in all_items[:2]:
        shutil.copytree(item.parent, items / item.parent.relative_to(archive / "items"))
    out = small_volume / "out"
    assert _local_run(items, out, cluster_client).applied == 2
    filler = _fill(small_volume, leave_kib)
    for item in all_items[2:]:
        shutil.copytree(item.parent, items / item.parent.relative_to(archive / "items"))
    with pytest.raises(OutputFullError, match="free space and run again"):
        _local_run(items, out, cluster_client)
    # every earlier output is intact and readable
    store = EmbeddingStore(out / "embeddings.zarr")
    assert len(store.acquisition_ids("33UWP")) >= 2
    assert np.isfinite(store.open_dataset("33UWP").embedding.values).all()
    read_anomalies(out / "anomalies")
    # SQLite cannot open a WAL database for writing on a full volume; read it as it is on disk
    db = sqlite3.connect(f"file:{out / 'ledger.sqlite'}?immutable=1", uri=True)
    states = dict(db.execute("SELECT id, state FROM acquisitions").fetchall())
    db.close()
    assert sum(s == State.APPLIED for s in states.values()) >= 2
    assert State.FAILED not in states.values()  # a full disk is nobody's failure
    filler.unlink()
    again = _local_run(items, out, cluster_client)
    assert not again.failed
    assert sorted(store.acquisition_ids("33UWP")) == sorted(
        EmbeddingStore(tmp_path / "reference" / "embeddings.zarr").acquisition_ids("33UWP")
    )
    with Ledger(out / "ledger.sqlite") as ledger:
        assert all(s == State.APPLIED for s in ledger.states().values())

    def rows(path: Path) -> pd.DataFrame:
        df = pd.DataFrame(read_anomalies(path).drop(columns="geometry"))
        return df.sort_values(["acquisition_id", "cell_y", "cell_x"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(
        rows(out / "anomalies"), rows(tmp_path / "reference" / "anomalies")
    )
