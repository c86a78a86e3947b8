"""Folding a late look into a tile's statistics (``StatsActor`` without Dask): rewind to a kept
checkpoint, replay the looks after it; the state and the anomalies equal the in-order run's,
and the kept checkpoints stay within ``stats.allowed_lateness_days``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamembed.config import StatsConfig, StoreConfig
from streamembed.detection import history
from streamembed.detection.stats import TileState
from streamembed.outputs.sink import read_anomalies
from streamembed.runtime.actor import ApplyStatus, StatsActor
from tests.test_actor_memory import TILES, _fill_store


def _actor(out: Path, **stats: float) -> StatsActor:
    cfg = StatsConfig(min_obs=3, **stats)  # type: ignore[arg-type]
    return StatsActor(str(out), cfg, StoreConfig(), "test-model")


def _same_outputs(a: Path, b: Path) -> None:
    for tile in TILES:
        sa = TileState.load(a / "state" / f"{tile}.npz")
        sb = TileState.load(b / "state" / f"{tile}.npz")
        assert sa.applied_ids == sb.applied_ids
        for name, va in sa.arrays().items():
            assert np.array_equal(va, sb.arrays()[name], equal_nan=va.dtype.kind == "f"), name
    key = ["acquisition_id", "cell_y", "cell_x"]
    ra = pd.DataFrame(read_anomalies(a / "anomalies")).drop(columns="geometry")
    rb = pd.DataFrame(read_anomalies(b / "anomalies")).drop(columns="geometry")
    assert len(ra) > 0
    pd.testing.assert_frame_equal(ra.sort_values(key).reset_index(drop=True),
                                  rb.sort_values(key).reset_index(drop=True))  # fmt: skip


@pytest.mark.parametrize("budget_mib", [1024.0, 0.01])  # roomy; every tile evicted each apply
def test_a_late_look_within_the_lateness_equals_the_in_order_run(budget_mib, tmp_path):
    order = _fill_store(tmp_path / "in-order", 10)
    shutil.copytree(tmp_path / "in-order", tmp_path / "late")
    clean = _actor(tmp_path / "in-order", max_state_mib=budget_mib)
    for tile, acq in order:
        assert clean.apply(tile, acq).status == ApplyStatus.APPLIED
    clean.checkpoint()
    # 33UWP's look 8 (the jump's first look) comes after its look 9; look 3 after 6
    held = {("33UWP", "33UWP-08"), ("33UWP", "33UWP-03")}
    shuffled = [x for x in order if x not in held]
    shuffled.insert(shuffled.index(("33UWP", "33UWP-06")) + 1, ("33UWP", "33UWP-03"))
    shuffled.append(("33UWP", "33UWP-08"))
    late = _actor(tmp_path / "late", max_state_mib=budget_mib)
    results = {acq: late.apply(tile, acq, lateness_days=30.0) for tile, acq in shuffled}
    late.checkpoint()
    assert all(r.status == ApplyStatus.APPLIED for r in results.values())
    first, jump = results["33UWP-03"], results["33UWP-08"]
    assert first.rewind is not None and first.rewind.replayed == 4  # 3, then 4, 5, 6 again
    assert [r.acquisition_id for r in first.revised] == ["33UWP-04", "33UWP-05", "33UWP-06"]
    assert jump.rewind is not None and [r.acquisition_id for r in jump.revised] == ["33UWP-09"]
    assert jump.rewind.base_generation >= 0  # from a kept checkpoint, not the first look
    assert jump.n_anomalies > 0  # the jump's own rows belong to its own look again
    _same_outputs(tmp_path / "late", tmp_path / "in-order")


def test_a_look_older_than_the_lateness_is_late_and_changes_nothing(tmp_path):
    order = _fill_store(tmp_path / "out", 10)
    actor = _actor(tmp_path / "out")
    mine = [x for x in order if x[0] == "33UWP"]
    for tile, acq in mine[1:]:
        actor.apply(tile, acq, lateness_days=30.0)
    before = TileState.load(actor.layout.state("33UWP"))
    res = actor.apply("33UWP", "33UWP-00", lateness_days=30.0)  # 45 days before the newest
    assert res.status == ApplyStatus.LATE and res.rewind is None
    after = actor.cache.states["33UWP"]
    assert after.applied_ids == before.applied_ids
    folded = actor.apply("33UWP", "33UWP-00", lateness_days=None)  # a backfill's retry
    assert folded.status == ApplyStatus.APPLIED and folded.rewind is not None
    assert folded.rewind.base_generation == -1 and folded.rewind.replayed == 10


def test_kept_checkpoints_stay_within_the_lateness_and_name_every_block(tmp_path):
    order = _fill_store(tmp_path / "out", 12)
    actor = _actor(tmp_path / "out", allowed_lateness_days=12.0, state_block_cells=4)
    for tile, acq in order:
        actor.apply(tile, acq)
    path = actor.layout.state("33UWP")
    kept = history.entries(path, {})
    # looks every 5 days: the last 12 days hold 3 looks' checkpoints, plus the base before them
    assert len(kept) == 4
    state = TileState.load(path, lazy=True)
    assert kept[-1].generation == state.generation
    named = set().union(*(e.blocks for e in kept))
    on_disk = {
        (int(p.name.split(".")[0]), int(p.name.split(".g")[1].split(".")[0]))
        for p in Path(str(path).removesuffix(".npz") + "-mean").glob("*.npy")
    }
    assert on_disk == named  # nothing kept that no checkpoint names, nothing named missing
    for entry in kept:  # each is a state to go back to
        back = TileState.load(entry.path, blocks_at=path)
        assert len(back.applied_ids) == len(entry.applied)


def _entry(gen: int, looks: dict[str, float]) -> history.Entry:
    last = max(looks.values()) if looks else -math.inf
    return history.Entry(f"g{gen}", gen, last, looks, frozenset())


def test_the_base_is_the_newest_prefix_in_time_before_the_look():
    applied = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    kept = [_entry(1, {"a": 1.0}), _entry(2, {"a": 1.0, "b": 2.0}),
            _entry(3, {"a": 1.0, "b": 2.0, "c": 3.0})]  # fmt: skip
    assert history.base_for(kept, applied, 2.5).generation == 2  # type: ignore[union-attr]
    assert history.base_for(kept, applied, 1.0) is None  # before every kept one
    # a checkpoint of a timeline a rewind replaced (it lacks "x", which is older) is no base
    replaced = _entry(4, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    with_x = {**applied, "x": 2.2}
    assert history.base_for([*kept, replaced], with_x, 5.0).generation == 2  # type: ignore[union-attr]
    drop, _ = history.pruned([*kept, replaced], with_x, 4.0, window_days=1.5)
    assert {e.generation for e in drop} == {1, 3, 4}  # 3 and 4 lack x; 1 is older than base 2
    again = _entry(5, {"a": 1.0, "b": 2.0})  # a rebuild's checkpoint of the same looks
    drop, _ = history.pruned([*kept, again], applied, 4.0, window_days=10.0)
    assert {e.generation for e in drop} == {2}
