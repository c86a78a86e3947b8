"""Nothing lost, nothing twice: the real `streamembed backfill` SIGKILLed (driver, workers and
actor together, as a pre-empted node) at every named crash point, then restarted; its outputs
must equal an uninterrupted run's: each acquisition stored once, embeddings bit for bit, the
same anomaly rows, every acquisition applied.

The points are `streamembed.faults.POINTS`, reached deterministically through
STREAMEMBED_KILL_AT=point:n. Most runs are marked `faults` (`make test-faults`, CI); a few
run in `make test`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamembed.faults import KILL_AT, KILL_COUNT, POINTS
from streamembed.ledger import Ledger, State
from streamembed.sink import read_anomalies
from streamembed.sources.synthetic import generate
from streamembed.store import EmbeddingStore

# (point, n-th arrival): early and late in the series, on the driver, a worker and the actor.
FAST = [("store.commit", 2), ("actor.sunk", 3), ("read", 4)]
SLOW = [
    ("read", 1),
    ("encode", 1),
    ("encode", 5),
    ("store.write_block", 1),
    ("store.write_block", 6),
    ("store.reserved", 1),
    ("store.reserved", 4),
    ("store.commit", 1),
    ("store.commit", 7),
    ("pipeline.committed", 1),
    ("pipeline.committed", 5),
    ("pipeline.embedded", 2),
    ("pipeline.embedded", 8),
    ("sink.written", 1),
    ("sink.written", 2),
    ("actor.sunk", 1),
    ("actor.sunk", 7),
    ("state.written", 2),
    ("state.written", 6),
    ("actor.checkpointed", 1),
    ("actor.checkpointed", 8),
]
CASES = [pytest.param(p, n, id=f"{p}:{n}") for p, n in FAST] + [
    pytest.param(p, n, id=f"{p}:{n}", marks=pytest.mark.faults) for p, n in SLOW
]
N_ACQUISITIONS = 9


def test_the_suite_covers_every_point():
    covered = {p for p, _ in FAST + SLOW}
    assert covered == set(POINTS)
    print(f"kill suite: {len(FAST) + len(SLOW)} kill points/timings over {len(POINTS)} points")
    assert len(FAST) + len(SLOW) >= 20


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """Nine acquisitions of one 512 px tile through the demo's planted flood (anomaly rows)."""
    items, _ = generate(
        tmp_path_factory.mktemp("kill-series"), days=45, revisit_days=5, tile_px=512,
        n_tiles=1, start=dt.date(2024, 4, 1),
    )  # fmt: skip
    assert len(list(items.rglob("*.json"))) == N_ACQUISITIONS
    return items


def _backfill(
    items: Path, out: Path, kill: str | None = None, timeout: float = 300
) -> tuple[int, str]:
    """`streamembed backfill` in its own process group; its exit code (-9: killed), its log."""
    env = {
        **os.environ,
        "STREAMEMBED__MODEL__ARCH": "resnet18",
        "STREAMEMBED__CLUSTER__N_WORKERS": "2",
        "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
        "STREAMEMBED__STATS__MIN_OBS": "3",
        # a low threshold without the index gate: noise gives anomaly rows to compare
        "STREAMEMBED__STATS__THRESHOLD": "1.5",
        "STREAMEMBED__STATS__MIN_INDEX_CHANGE": "0",
        "STREAMEMBED__STORE__CHUNK_CELLS": "4",
        "STREAMEMBED__INGEST__BLOCK_PX": "256",  # four blocks per acquisition
    }
    env.pop(KILL_AT, None)
    if kill:
        env[KILL_AT] = kill
        env[KILL_COUNT] = str(out.parent / f"{out.name}.arrivals")
    cmd = [sys.executable, "-m", "streamembed.cli", "backfill", "--source", str(items)]
    cmd += ["--output", str(out), "--no-progress"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _reap(proc.pid)
    if kill is None:
        assert proc.returncode == 0, log
    return proc.returncode, log


def _reap(pgid: int) -> None:
    """No process of a killed run may outlive it (a worker still writing would race the
    restart)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _outputs(out: Path) -> tuple[list[str], np.ndarray, pd.DataFrame, dict[str, str]]:
    store = EmbeddingStore(out / "embeddings.zarr")
    (tile,) = store.tiles()
    ds = store.open_dataset(tile)
    ids = [str(i) for i in ds.acquisition_id.values]
    order = np.argsort(ids)
    embedding = ds.embedding.values[order]
    rows = pd.DataFrame(read_anomalies(out / "anomalies").drop(columns="geometry"))
    rows = rows.sort_values(["acquisition_id", "cell_y", "cell_x"]).reset_index(drop=True)
    with Ledger(out / "ledger.sqlite") as ledger:
        states = {k: str(v) for k, v in ledger.states().items()}
    return sorted(ids), embedding, rows, states


@pytest.fixture(scope="module")
def reference(series, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    _backfill(series, out)
    ids, embedding, rows, states = _outputs(out)
    assert len(ids) == N_ACQUISITIONS and len(rows) > 0
    assert set(states.values()) == {State.APPLIED}
    return ids, embedding, rows


@pytest.mark.parametrize(("point", "nth"), CASES)
def test_killed_at_a_crash_point_then_restarted(series, reference, tmp_path, point, nth):
    out = tmp_path / "out"
    code, log = _backfill(series, out, kill=f"{point}:{nth}")
    assert code == -signal.SIGKILL, f"the run was not killed at {point}:{nth} (exit {code}):\n{log}"
    _backfill(series, out)  # the restart, uninterrupted
    ids, embedding, rows, states = _outputs(out)
    ref_ids, ref_embedding, ref_rows = reference
    assert ids == ref_ids, "each acquisition stored exactly once"
    assert np.array_equal(embedding, ref_embedding), "embeddings bit for bit"
    pd.testing.assert_frame_equal(rows, ref_rows, check_exact=True)
    assert set(states.values()) == {State.APPLIED} and len(states) == N_ACQUISITIONS
