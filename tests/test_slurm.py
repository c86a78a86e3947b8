"""dask-jobqueue on a real single-node SLURM cluster: workers are SLURM jobs.

Two worker groups, CPU and GPU-tagged (resources only; there is no device here): encode tasks
must run on the GPU-tagged worker, read/mask tasks on the CPU one, and the anomalies must be
the same rows as a LocalCluster run of the same archive.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
from distributed import get_task_stream

from streamembed.config import ClusterConfig, Config, WorkerGroup
from streamembed.deployment.cluster import make_client
from streamembed.harness.synthetic import generate
from streamembed.outputs.sink import read_anomalies
from streamembed.runtime.encoder import EncoderPlugin
from streamembed.runtime.pipeline import Pipeline
from tests.slurm_cluster import LocalSlurm, why_unavailable


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory):
    """The demo generator's tile with a flood and a clear-cut, a year at a 10-day revisit."""
    root = tmp_path_factory.mktemp("slurm-archive")
    items, _ = generate(root, days=365, revisit_days=10, tile_px=512, n_tiles=1, seed=42)
    return items


def _cfg(items, out) -> Config:
    return Config().with_overrides(
        **{"source.path": str(items), "output": str(out), "model.arch": "resnet18"}
    )


def _rows(out) -> pd.DataFrame:
    frame = read_anomalies(out / "anomalies")
    cols = ["acquisition_id", "mgrs_tile", "cell_y", "cell_x", "score", "distance", "label"]
    return frame[cols].sort_values(cols[:4]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_rows(demo_archive, cluster_client, tmp_path_factory) -> pd.DataFrame:
    """The same archive's anomaly rows from the session's LocalCluster."""
    out = tmp_path_factory.mktemp("slurm-reference") / "out"
    pipe = Pipeline(_cfg(demo_archive, out), cluster_client)
    try:
        pipe.run(progress=False)
    finally:
        pipe.close()
    rows = _rows(out)
    assert len(rows) > 0  # the flood / clear-cut give something to compare
    return rows


def test_slurm_backfill_gpu_tagged_workers_match_local_cluster(
    slurm, demo_archive, local_rows, tmp_path
):
    logs = tmp_path / "job-logs"
    group = {
        "cores": 1,
        "memory": "3GB",
        "queue": slurm.partition,
        "walltime": "00:30:00",
        "local_directory": str(tmp_path / "dask-tmp"),
        "log_directory": str(logs),
    }
    cluster_cfg = ClusterConfig(
        kind="slurm",
        dashboard_address=":0",
        groups=(WorkerGroup(name="cpu", **group), WorkerGroup(name="gpu", gpus=1, **group)),
    )
    cfg = _cfg(demo_archive, tmp_path / "slurm-out").with_overrides(
        cluster=cluster_cfg.model_dump()
    )
    with make_client(cfg.cluster) as client:
        client.wait_for_workers(2, timeout=180)
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(job_ids) == 2 and all(job_ids.values()), job_ids  # workers are SLURM jobs
        assert len(set(job_ids.values())) == 2
        resources = {a: w["resources"] for a, w in client.scheduler_info()["workers"].items()}
        gpu_workers = {a for a, r in resources.items() if r.get("GPU")}
        cpu_workers = {a for a, r in resources.items() if r.get("CPU")}
        assert len(gpu_workers) == 1 and len(cpu_workers) == 1, resources
        with get_task_stream(client) as stream:
            pipe = Pipeline(cfg, client)
            try:
                report = pipe.run(progress=False)
            finally:
                pipe.close()
        loads = client.run(lambda dask_worker: dask_worker.plugins[EncoderPlugin.name].loads)
    assert report.applied == report.discovered == 37 and not report.failed
    encode = [t["worker"] for t in stream.data if str(t["key"]).startswith("encode-")]
    ingest = [t["worker"] for t in stream.data if str(t["key"]).startswith("read-")]
    assert len(encode) == len(ingest) == 37
    assert set(encode) == gpu_workers  # every encode task on the GPU-tagged worker
    assert set(ingest) == cpu_workers  # no read/mask task there
    assert {loads[w] for w in gpu_workers} == {1}  # one model load across 37 encode tasks
    assert {loads[w] for w in cpu_workers} == {0}
    assert any(logs.glob("*.err")) or any(logs.glob("*.out"))

    pd.testing.assert_frame_equal(_rows(tmp_path / "slurm-out"), local_rows)


def test_slurm_adaptive_scaling_during_a_backfill_loses_and_doubles_nothing(
    slurm, demo_archive, local_rows, tmp_path
):
    """dask-jobqueue's adaptive scaling (1 to 2 SLURM jobs) while workers are drained away
    during the backfill, as a shrinking allocation would: the same anomaly rows as a
    LocalCluster run, every acquisition applied once."""
    import dask

    from streamembed.outputs.ledger import Ledger, State
    from tests.drain import QUICK_ADAPT, draining

    group = WorkerGroup(
        name="cpu", cores=1, memory="3GB", queue=slurm.partition, walltime="00:30:00",
        local_directory=str(tmp_path / "dask-tmp"), log_directory=str(tmp_path / "job-logs"),
    )  # fmt: skip
    cluster_cfg = ClusterConfig(
        kind="slurm", dashboard_address=":0", groups=(group,), adapt_minimum=1, adapt_maximum=2
    )
    cfg = _cfg(demo_archive, tmp_path / "slurm-out").with_overrides(
        cluster=cluster_cfg.model_dump()
    )
    with dask.config.set(QUICK_ADAPT), make_client(cfg.cluster) as client:
        client.wait_for_workers(1, timeout=180)
        with draining(client, every=1.0, each=5) as drained:
            pipe = Pipeline(cfg, client)
            try:
                report = pipe.run(progress=False)
            finally:
                pipe.close()
    assert report.applied == report.discovered == 37 and not report.failed
    assert max(drained.seen) == 2 and drained.retired, drained  # jobs came and went
    with Ledger(tmp_path / "slurm-out" / "ledger.sqlite") as ledger:
        assert len(ledger.rows(State.APPLIED)) == 37
    pd.testing.assert_frame_equal(_rows(tmp_path / "slurm-out"), local_rows)
