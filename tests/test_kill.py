"""Nothing lost, nothing twice: the real `streamembed backfill` SIGKILLed (driver, workers and
actor together, as a pre-empted node) at every named crash point, then restarted; its outputs
must equal an uninterrupted run's: each acquisition stored once, embeddings bit for bit, the
same anomaly rows, every acquisition applied.

The points are `streamembed.faults.POINTS`, reached deterministically through
STREAMEMBED_KILL_AT=point:n. A few run in `make test`; every other point once in `make
test-faults` (CI); the remaining timings in `make test-faults-all`.
"""

from __future__ import annotations

import signal
from collections import Counter

import numpy as np
import pytest
import xarray as xr

from streamembed.faults import POINTS
from streamembed.outputs.store import EmbeddingStore
from tests.kill_series import N_ACQUISITIONS, assert_like_reference, backfill

# (point, n-th arrival): early and late in the series, on the driver, a worker and the actor.
# FAST runs in `make test`; SLOW (`make test-faults`, CI) reaches every other point once;
# MORE (`make test-faults-all`) the other timings, which keep CI near its time budget.
FAST = [("store.commit", 2), ("actor.sunk", 3), ("read", 4)]
SLOW = [
    ("encode", 5),
    ("store.write_block", 1),
    ("store.reserved", 4),
    ("store.commit", 1),
    ("pipeline.committed", 5),
    ("pipeline.embedded", 8),
    ("sink.written", 1),
    ("state.written", 2),
    ("actor.checkpointed", 8),
]
MORE = [
    ("read", 1),
    ("encode", 1),
    ("store.write_block", 6),
    ("store.reserved", 1),
    ("store.commit", 7),
    ("pipeline.committed", 1),
    ("pipeline.embedded", 2),
    ("sink.written", 2),
    ("actor.sunk", 1),
    ("actor.sunk", 7),
    ("state.written", 6),
    ("actor.checkpointed", 1),
]
# A retry after mending folds its look in late (tests/test_late_looks.py): killed while the tile
# is rewound and replayed (``actor.sunk:2`` is the first look replayed after the late one) and
# while the store puts its rows back in sensing order, then the retry run again.
REWIND = [
    ("actor.rewound", 1),
    ("actor.sunk", 2),
    ("store.compaction_copied", 1),
    ("store.compaction_placed", 1),
    ("store.compaction_cut", 1),
]
REWIND_CASES = [pytest.param(*REWIND[0], id="rewind-actor.rewound:1")] + [
    pytest.param(p, n, id=f"rewind-{p}:{n}", marks=pytest.mark.faults) for p, n in REWIND[1:]
]
# reached once a rewinding run: one timing each
ONCE_A_RUN = {"actor.rewound", "store.compaction_copied", "store.compaction_placed",
              "store.compaction_cut"}  # fmt: skip

CASES = (
    [pytest.param(p, n, id=f"{p}:{n}") for p, n in FAST]
    + [pytest.param(p, n, id=f"{p}:{n}", marks=pytest.mark.faults) for p, n in SLOW]
    + [
        pytest.param(p, n, id=f"{p}:{n}", marks=[pytest.mark.faults, pytest.mark.soak])
        for p, n in MORE
    ]
)


def test_the_suite_covers_every_point():
    # CI (FAST + SLOW) kills at every point; with MORE, every point at two timings or more
    assert {p for p, _ in FAST + SLOW + REWIND} == set(POINTS)
    every = Counter(p for p, _ in FAST + SLOW + MORE + REWIND)
    assert set(every) == set(POINTS)
    assert min(n for p, n in every.items() if p not in ONCE_A_RUN) >= 2
    assert len(set(FAST + SLOW + MORE)) == len(FAST + SLOW + MORE)
    cases = len(FAST + SLOW + MORE + REWIND)
    print(f"kill suite: {cases} kill points/timings over {len(POINTS)} points")


@pytest.mark.parametrize(("point", "nth"), CASES)
def test_killed_at_a_crash_point_then_restarted(kill_series, kill_reference, tmp_path, point, nth):
    out = tmp_path / "out"
    code, log = backfill(kill_series, out, kill=f"{point}:{nth}")
    assert code == -signal.SIGKILL, f"the run was not killed at {point}:{nth} (exit {code}):\n{log}"
    backfill(kill_series, out)  # the restart, uninterrupted
    assert_like_reference(out, kill_reference)


# On a bucket (moto's S3 server, outside the killed process group): mid-commit, and an anomaly
# file killed before its upload completes (a checkpoint's upload is the same atomic_writer,
# tests/test_object_storage.py). Every other point behaves as on disk: the store's steps are the
# same code over another filesystem.
S3_CASES = [
    pytest.param("store.commit", 2, id="store.commit:2"),
    pytest.param("sink.written", 1, id="sink.written:1", marks=pytest.mark.faults),
]


@pytest.mark.parametrize(("point", "nth"), S3_CASES)
def test_killed_writing_to_a_bucket_then_restarted(
    kill_series, kill_reference, s3, tmp_path, point, nth
):
    url = s3.make_bucket(f"kill-{point.replace('.', '-').replace('_', '-')}-{nth}") + "/run"
    out = tmp_path / "local"
    code, log = backfill(kill_series, out, kill=f"{point}:{nth}", url=url, s3_env=s3.env)
    assert code == -signal.SIGKILL, f"the run was not killed at {point}:{nth} (exit {code}):\n{log}"
    # Nothing half-visible in the bucket: a plain reader sees whole committed acquisitions.
    for tile in EmbeddingStore(f"{url}/embeddings.zarr").tiles():
        ds = xr.open_zarr(f"{url}/embeddings.zarr/{tile}")
        assert (ds.acquisition_id.values != "").all()
        assert len(set(ds.acquisition_id.values)) == ds.sizes["time"] < N_ACQUISITIONS
        assert np.isfinite(ds.embedding.values).all()
    backfill(kill_series, out, url=url, s3_env=s3.env)
    assert_like_reference(out, kill_reference, url)  # local or on S3, the same


@pytest.mark.parametrize(("point", "nth"), REWIND_CASES)
def test_killed_while_a_late_look_is_folded_in_then_restarted(
    failed_look, kill_reference, tmp_path, point, nth
):
    import shutil

    data0, out0, band, good = failed_look
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(data0, data)
    shutil.copytree(out0, out)
    (data / band).write_bytes(good)  # mended
    code, log = backfill(data, out, kill=f"{point}:{nth}", args=("--retry-failed",))
    assert code == -signal.SIGKILL, f"the run was not killed at {point}:{nth} (exit {code}):\n{log}"
    backfill(data, out, args=("--retry-failed",))  # the operator runs it again
    assert_like_reference(out, kill_reference)
    times = xr.open_zarr(out / "embeddings.zarr" / "33UWP").time.values
    assert len(times) == N_ACQUISITIONS and (np.diff(times) > np.timedelta64(0)).all()
