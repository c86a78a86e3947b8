"""Machines that share no disk: the scheduler and each worker in a mount namespace of their own
(a private tmpfs over the driver's folders), the source a STAC API over HTTP, the outputs on an
S3 API, the ledger on the driver. It passes only if nothing travels through a local path. And
workers added and removed during a backfill (dask's adaptive scaling) lose and double nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

from streamembed.config import ClusterConfig, Config
from streamembed.deployment.cluster import make_client
from streamembed.layout import OutputLayout
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline
from tests.drain import QUICK_ADAPT, draining
from tests.test_stac import _served

ORDER = ["acquisition_id", "cell_y", "cell_x"]
N_TILES, N_LOOKS = 3, 4


def _why_no_namespaces() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /mnt && umount /mnt"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode:
        return f"no private mount namespaces here (root needed): {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Three tiles in three UTM zones, four looks each (the STAC server serves its files)."""
    from streamembed.harness.synthetic import generate

    root = tmp_path_factory.mktemp("unshared-archive")
    generate(root, days=5 * N_LOOKS, revisit_days=5, tile_px=256, n_tiles=N_TILES, seed=5)
    return root


def _cfg(source: str, output: str, ledger: str | None = None) -> Config:
    return Config().with_overrides(
        **{
            "source.path": source,
            "output": output,
            "ledger": ledger,
            "model.arch": "resnet18",
            "stats.min_obs": 2,
            "stats.threshold": 1.5,  # noise gives anomaly rows to compare
            "stats.min_index_change": 0.0,
            "stats.min_step": 0.0,
            "stats.min_novelty": 0.0,
            "stats.shards": 2,
        }
    )


def _outputs(root: str) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    layout = OutputLayout(root)
    store = EmbeddingStore(layout.store)
    embeddings = {}
    for tile in store.tiles():
        ds = store.open_dataset(tile, decode=False).sortby("time")
        embeddings[tile] = ds["embedding"].values
    rows = read_anomalies(layout.anomalies)
    rows = pd.DataFrame(rows.drop(columns="geometry")).sort_values(ORDER).reset_index(drop=True)
    return embeddings, rows


def _run(cfg: Config, client) -> None:
    pipe = Pipeline(cfg, client)
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    assert report.applied == N_TILES * N_LOOKS and not report.failed, report.lines()


@pytest.fixture(scope="module")
def reference(archive, server_module, cluster_client, tmp_path_factory):
    """The same items over the same HTTP source, on the shared LocalCluster, to a folder."""
    out = tmp_path_factory.mktemp("unshared-reference") / "out"
    _run(_cfg(server_module.url, str(out)), cluster_client)
    return _outputs(str(out))


@pytest.fixture(scope="module")
def server_module(archive):
    from tests.stac_server import StacServer

    srv = StacServer(archive).start()
    srv.publish(_served(archive / "items", srv))
    yield srv
    srv.stop()


def _scheduler_address(log: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    """The address the scheduler (started on port 0: no port picked here that another process
    may take first) says it listens at."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Scheduler at:\s+(tcp://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the scheduler did not start:\n{log.read_text(errors='replace')}")


def _isolated(
    cmd: list[str], hidden: list[Path], env: dict[str, str], log: Path
) -> subprocess.Popen:
    """``cmd`` in a mount namespace of its own: a fresh tmpfs over each of ``hidden`` (the
    driver's folders), so it sees none of the driver's files. Its output goes to ``log``
    (opened by the driver, written through the inherited descriptor)."""
    mounts = " && ".join(f"mount -t tmpfs tmpfs '{p}'" for p in map(str, hidden))
    script = f'{mounts} && exec "$@"'
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_workers_that_share_no_disk_with_the_driver(
    archive, server_module, reference, s3, tmp_path, tmp_path_factory
):
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp().resolve()
    hidden = [base] + [p for p in [archive.resolve()] if base not in p.parents]
    # never the interpreter's or the checkout's own folder (a clone may live under /tmp)
    code = {Path(sys.prefix).resolve(), Path(__file__).resolve()}
    assert not any(h == c or h in c.parents for h in hidden for c in code), hidden
    env = {**os.environ, **s3.env}
    logs = tmp_path_factory.mktemp("unshared-logs")
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", "0", "--dashboard-address", ":0"]  # fmt: skip
    procs = [_isolated(scheduler, hidden, env, logs / "scheduler.log")]
    try:
        address = _scheduler_address(logs / "scheduler.log", procs[0])
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", address,
                  "--nthreads", "1", "--memory-limit", "3GB", "--no-dashboard"]  # fmt: skip
        procs += [_isolated(worker, hidden, env, logs / f"worker-{i}.log") for i in range(2)]
        # As a user connects to a running scheduler: cluster.kind address
        with make_client(ClusterConfig(kind="address", address=address)) as client:
            client.wait_for_workers(2, timeout=60)
            probe = str(tmp_path)
            # The workers and the scheduler cannot see the driver's folders at all.
            assert set(client.run(os.path.exists, probe).values()) == {False}
            assert client.run_on_scheduler(os.path.exists, probe) is False
            url = s3.make_bucket("unshared") + "/run"
            ledger = tmp_path / "ledger.sqlite"
            _run(_cfg(server_module.url, url, str(ledger)), client)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in sorted(logs.iterdir()):  # pytest shows these when the test fails
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
    # The driver's folder holds the ledger only; every output is on the bucket.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ledger")) == []
    with Ledger(ledger) as led:
        summary = led.summary()
    assert len(summary) == N_TILES
    assert all(states == {State.APPLIED.value: N_LOOKS} for states in summary.values())
    # read back here, not on the session's LocalCluster (its workers predate the S3 keys)
    with dask.config.set(scheduler="threads"):
        embeddings, rows = _outputs(url)
    ref_embeddings, ref_rows = reference
    assert sorted(embeddings) == sorted(ref_embeddings) and len(embeddings) == N_TILES
    for tile, values in ref_embeddings.items():
        assert np.array_equal(embeddings[tile], values), tile
    assert len(rows) > 0
    pd.testing.assert_frame_equal(rows, ref_rows)


def test_workers_added_and_removed_during_a_backfill_lose_and_double_nothing(
    server_module, reference, tmp_path
):
    """dask's adaptive scaling on a LocalCluster (one worker to start, up to three), while
    workers are drained away during the run as a shrinking allocation would: the outputs
    equal the fixed cluster's, nothing applied twice."""
    cluster_cfg = ClusterConfig(
        kind="local", n_workers=1, adapt_minimum=1, adapt_maximum=3, dashboard_address=":0"
    )
    out = tmp_path / "out"
    cfg = _cfg(server_module.url, str(out)).with_overrides(
        **{"cluster.adapt_minimum": 1, "cluster.adapt_maximum": 3}
    )
    with (
        dask.config.set(QUICK_ADAPT),
        make_client(cluster_cfg) as client,
        draining(client, every=0.5, each=6) as drained,
    ):
        _run(cfg, client)
    assert max(drained.seen) > 1, drained.seen  # workers were added
    assert drained.retired, drained.seen  # and removed while the backfill ran
    with Ledger(out / "ledger.sqlite") as led:
        assert all(states == {State.APPLIED.value: N_LOOKS} for states in led.summary().values())
    embeddings, rows = _outputs(str(out))
    ref_embeddings, ref_rows = reference
    assert sorted(embeddings) == sorted(ref_embeddings)
    for tile, values in ref_embeddings.items():
        assert np.array_equal(embeddings[tile], values), tile
    pd.testing.assert_frame_equal(rows, ref_rows)


def test_statistics_shards_go_round_the_workers(cluster_client, tmp_path):
    """Shards are placed one per worker in turn, not wherever dask first finds room: many
    tiles' state spreads over many workers."""
    cfg = _cfg(str(tmp_path / "no-items"), str(tmp_path / "out")).with_overrides(
        **{"stats.shards": 4}
    )
    pipe = Pipeline(cfg, cluster_client)
    try:
        keys = [f.key for f in pipe.shards.futures]
        where = cluster_client.who_has(pipe.shards.futures)
        workers = [where[k][0] for k in keys]
    finally:
        pipe.close()
    addresses = sorted(cluster_client.scheduler_info()["workers"])
    assert workers == [addresses[k % len(addresses)] for k in range(4)]
