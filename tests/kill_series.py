"""The kill suite's series and its runs of the real `streamembed backfill` CLI (its own
process group, SIGKILLable), shared by tests/test_kill.py and tests/test_object_storage.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from streamembed.faults import KILL_AT, KILL_COUNT
from streamembed.outputs.ledger import Ledger
from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingStore

N_ACQUISITIONS = 9
# The series' config: a low threshold and no index evidence asked for (noise gives anomaly
# rows to compare), small chunks and four blocks per acquisition. The forward pass in PyTorch:
# the default OpenVINO runtime converts the network in every worker process of every CLI run
# (a 9-look backfill: 60 s with it, 37 s without), and these runs check what a crash or a late
# look does to the outputs, not the runtime (tests/test_encoder.py checks OpenVINO and ONNX
# Runtime against PyTorch; the in-process pipeline tests and `make demo` run the default).
SERIES_ENV = {
    "STREAMEMBED__MODEL__ARCH": "resnet18",
    "STREAMEMBED__MODEL__RUNTIME": "torch",
    "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
    "STREAMEMBED__STATS__MIN_OBS": "3",
    "STREAMEMBED__STATS__THRESHOLD": "1.5",
    "STREAMEMBED__STATS__MIN_INDEX_CHANGE": "0",
    "STREAMEMBED__STATS__MIN_STEP": "0",
    "STREAMEMBED__STATS__MIN_NOVELTY": "0",
    "STREAMEMBED__STORE__CHUNK_CELLS": "4",
    "STREAMEMBED__INGEST__BLOCK_PX": "256",
}


def backfill(
    items: Path,
    out: Path,
    kill: str | None = None,
    timeout: float = 300,
    url: str | None = None,
    s3_env: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    check: bool = True,
) -> tuple[int, str]:
    """`streamembed backfill` in its own process group; its exit code (-9: killed), its log.

    With ``url`` the outputs go to the object store there and the ledger to ``out``.
    """
    env = {
        **os.environ,
        **(s3_env or {}),
        **SERIES_ENV,
        "STREAMEMBED__CLUSTER__N_WORKERS": "2",
        **(extra_env or {}),
    }
    env.pop(KILL_AT, None)
    if kill:
        env[KILL_AT] = kill
        env[KILL_COUNT] = str(out.parent / f"{out.name}.arrivals")
    cmd = [sys.executable, "-m", "streamembed.cli", "backfill", "--source", str(items)]
    if url:
        out.mkdir(parents=True, exist_ok=True)
        cmd += ["--output", url, "--ledger", str(out / "ledger.sqlite"), "--no-progress"]
    else:
        cmd += ["--output", str(out), "--no-progress"]
    cmd += list(args)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reap(proc.pid)
    if kill is None and check:
        assert proc.returncode == 0, log
    return proc.returncode, log


def reap(pgid: int) -> None:
    """No process of a killed run may outlive it (a worker still writing would race the
    restart)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def outputs(
    out: Path, url: str | None = None
) -> tuple[list[str], np.ndarray, pd.DataFrame, dict[str, str]]:
    root = url or str(out)
    store = EmbeddingStore(f"{root}/embeddings.zarr")
    (tile,) = store.tiles()
    ds = store.open_dataset(tile)
    ids = [str(i) for i in ds.acquisition_id.values]
    order = np.argsort(ids)
    embedding = ds.embedding.values[order]
    rows = pd.DataFrame(read_anomalies(f"{root}/anomalies").drop(columns="geometry"))
    rows = rows.sort_values(["acquisition_id", "cell_y", "cell_x"]).reset_index(drop=True)
    with Ledger(out / "ledger.sqlite") as ledger:
        states = {k: str(v) for k, v in ledger.states().items()}
    return sorted(ids), embedding, rows, states


def corrupt_band(data: Path, look: int) -> tuple[Path, bytes]:
    """Cut the B04 file of the series' ``look``-th acquisition (sensing order) to a third;
    returns the file and its good bytes (to mend it)."""
    import json

    folder = sorted(p.parent for p in data.rglob("*.json"))[look]
    (item,) = folder.glob("*.json")
    band = folder / json.loads(item.read_text())["assets"]["B04_10m"]["href"]
    good = band.read_bytes()
    band.write_bytes(good[: len(good) // 3])
    return band, good


def assert_like_reference(out: Path, reference: tuple, url: str | None = None) -> None:
    """The outputs at ``out`` (or ``url``) equal the uninterrupted run's: each acquisition
    stored once, embeddings bit for bit, the same anomaly rows, every acquisition applied."""
    from streamembed.outputs.ledger import State

    ids, embedding, rows, states = outputs(out, url)
    _, ref_ids, ref_embedding, ref_rows = reference
    assert ids == ref_ids, "each acquisition stored exactly once"
    assert np.array_equal(embedding, ref_embedding), "embeddings bit for bit"
    pd.testing.assert_frame_equal(rows, ref_rows, check_exact=True)
    assert set(states.values()) == {State.APPLIED} and len(states) == N_ACQUISITIONS
