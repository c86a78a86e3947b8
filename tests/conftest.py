"""Shared fixtures: real files on disk, a real LocalCluster with worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMEMBED_SHARED", REPO.parent / "shared"))
TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    assert data.is_dir(), (
        f"real Sentinel-2 samples expected in {data} (the shared/ folder beside the clone); "
        "set STREAMEMBED_SHARED to its location"
    )
    return data


@pytest.fixture(scope="session")
def cluster_client():
    from streamembed.config import ClusterConfig
    from streamembed.deployment.cluster import make_client

    with make_client(
        ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    ) as client:
        yield client


@pytest.fixture
def browser():
    """A real headless Chromium through Selenium (skipped, with the reason, without Debian's
    chromium and chromium-driver)."""
    from tests.browser import chromium, why_no_browser

    reason = why_no_browser()
    if reason:
        pytest.skip(reason)
    with chromium() as driver:
        yield driver


@pytest.fixture
def server(archive):
    """A STAC API on 127.0.0.1 serving the test module's ``archive`` (items and rasters)."""
    from tests.stac_server import StacServer

    srv = StacServer(archive).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def s3_server():
    """An S3 API on 127.0.0.1 (moto's server) with this process's AWS_* environment pointing
    at it; ``.env`` for subprocesses."""
    from tests.s3_server import S3Server, set_environ

    srv = S3Server().start()
    old = set_environ(dict(srv.env))
    yield srv
    set_environ(old)
    srv.stop()


@pytest.fixture(scope="module")
def s3(s3_server):
    """The S3 server, and dask's threads for what a test module reads back from the bucket:
    the session's LocalCluster workers were started before the keys were set."""
    import dask

    with dask.config.set(scheduler="threads"):
        yield s3_server


@pytest.fixture(scope="session")
def kill_series(tmp_path_factory) -> Path:
    """Nine acquisitions of one 512 px tile through the demo's planted flood (anomaly rows)."""
    import datetime as dt

    from streamembed.harness.synthetic import generate
    from tests.kill_series import N_ACQUISITIONS

    items, _ = generate(
        tmp_path_factory.mktemp("kill-series"), days=45, revisit_days=5, tile_px=512,
        n_tiles=1, start=dt.date(2024, 4, 1),
    )  # fmt: skip
    assert len(list(items.rglob("*.json"))) == N_ACQUISITIONS
    return items


@pytest.fixture(scope="session")
def kill_reference(kill_series, tmp_path_factory):
    """The uninterrupted CLI backfill of ``kill_series`` to a local folder: (folder, sorted ids,
    embeddings in id order, anomaly rows)."""
    from streamembed.outputs.ledger import State
    from tests.kill_series import N_ACQUISITIONS, backfill, outputs

    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    backfill(kill_series, out)
    ids, embedding, rows, states = outputs(out)
    assert len(ids) == N_ACQUISITIONS and len(rows) > 0
    assert set(states.values()) == {State.APPLIED}
    return out, ids, embedding, rows


@pytest.fixture(scope="session")
def failed_look(kill_series, tmp_path_factory):
    """The series with one look's B04 cut short, backfilled (exit 3): (data, output, the band
    file, its good bytes)."""
    import shutil

    from tests.kill_series import backfill, corrupt_band

    base = tmp_path_factory.mktemp("failed-look")
    data = base / "data"
    shutil.copytree(kill_series, data)
    band, good = corrupt_band(data, 3)
    out = base / "out"
    code, log = backfill(data, out, check=False)
    assert code == 3, log
    return data, out, band.relative_to(data), good


def pytest_terminal_summary(terminalreporter):
    """Say how many kill points/timings the kill suite ran (issue: the number is printed)."""
    ran = [
        r
        for r in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
        if "test_killed_at_a_crash_point_then_restarted" in r.nodeid and r.when == "call"
    ]
    if ran:
        passed = sum(r.passed for r in ran)
        terminalreporter.write_line(
            f"kill suite: {passed} of {len(ran)} kill points/timings passed"
        )
