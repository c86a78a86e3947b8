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
    from streamembed.cluster import make_client
    from streamembed.config import ClusterConfig

    with make_client(
        ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    ) as client:
        yield client


@pytest.fixture
def server(archive):
    """A STAC API on 127.0.0.1 serving the test module's ``archive`` (items and rasters)."""
    from .stac_server import StacServer

    srv = StacServer(archive).start()
    yield srv
    srv.stop()


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
