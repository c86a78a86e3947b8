"""Shared fixtures: real files on disk, a real LocalCluster with worker processes."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMEMBED_SHARED", REPO.parent / "shared"))
TEST_DATA = Path(__file__).parent / "data"


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder ``make`` fills once per test run. Under pytest-xdist every worker has its own
    session, so a session fixture would be built once per worker: the workers share their
    basetemp's parent, the first to take the lock builds the folder there and the others wait
    for it and read it. The folder is read-only to the tests (as a session fixture already is
    to the modules that share it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on an error
        if not (folder / ".made").exists():  # a worker whose make failed left no marker
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


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

    def make(folder: Path) -> None:
        generate(folder, days=45, revisit_days=5, tile_px=512, n_tiles=1,
                 start=dt.date(2024, 4, 1))  # fmt: skip

    items = made_once(tmp_path_factory, "kill-series", make) / "items"
    assert len(list(items.rglob("*.json"))) == N_ACQUISITIONS
    return items


@pytest.fixture(scope="session")
def kill_reference(kill_series, tmp_path_factory):
    """The uninterrupted CLI backfill of ``kill_series`` to a local folder: (folder, sorted ids,
    embeddings in id order, anomaly rows)."""
    from streamembed.outputs.ledger import State
    from tests.kill_series import N_ACQUISITIONS, backfill, outputs

    made = made_once(tmp_path_factory, "uninterrupted", lambda f: backfill(kill_series, f / "out"))
    out = made / "out"
    ids, embedding, rows, states = outputs(out)
    assert len(ids) == N_ACQUISITIONS and len(rows) > 0
    assert set(states.values()) == {State.APPLIED}
    return out, ids, embedding, rows


@pytest.fixture(scope="session")
def failed_look(kill_series, tmp_path_factory):
    """The series with one look's B04 cut short, backfilled (exit 3): (data, output, the band
    file, its good bytes)."""
    from tests.kill_series import backfill, corrupt_band

    def make(base: Path) -> None:
        shutil.copytree(kill_series, base / "data")
        band, _ = corrupt_band(base / "data", 3)
        (base / "band").write_text(str(band.relative_to(base / "data")))
        code, log = backfill(base / "data", base / "out", check=False)
        assert code == 3, log

    base = made_once(tmp_path_factory, "failed-look", make)
    band = Path((base / "band").read_text())
    return base / "data", base / "out", band, (kill_series / band).read_bytes()  # the good bytes


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
