"""A tile's statistics state at the planet's size: the expected embeddings in float16 (computed
in float32), checkpointed in blocks so an acquisition reads the blocks it can see and writes
the blocks it changed, and a kill mid-checkpoint leaves the previous checkpoint whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from streamembed.config import StatsConfig
from streamembed.detection.state import block_location
from streamembed.detection.stats import TileState, update, usable_cells
from streamembed.indices import INDEX_NAMES

SHAPE = (150, 140)  # 3 x 3 blocks of 64 cells, the last row and column partial
DIM = 8
P = StatsConfig(min_obs=2, threshold=1.0, min_index_change=0.0, min_step=0.0, min_novelty=0.0)


def _look(rng: np.random.Generator, t: int, clear_box: tuple[slice, slice] | None = None):
    """One acquisition: noisy embeddings around a level that moves with ``t``; clear inside
    ``clear_box`` only (None: everywhere)."""
    emb = (rng.normal(0, 0.3, (*SHAPE, DIM)) + 0.1 * t).astype(np.float32)
    clear = np.ones(SHAPE, np.float32)
    if clear_box is not None:
        clear[:] = 0.0
        clear[clear_box] = 1.0
    idx = rng.uniform(-0.5, 0.5, (*SHAPE, len(INDEX_NAMES))).astype(np.float32)
    return emb, clear, np.zeros(SHAPE, np.float32), idx, 100.0 + 5 * t


def _equal_states(a: TileState, b: TileState) -> None:
    arrays_a, arrays_b = a.arrays(), b.arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for name, va in arrays_a.items():
        assert np.array_equal(va, arrays_b[name], equal_nan=va.dtype.kind == "f"), name


def _values_and_midpoints() -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = (1.0, 1e-5, 1e-7, 3e4)
    drawn = np.concatenate([rng.normal(0, s, 20000) for s in scales])
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (halves[:-1] + halves[1:]) / 2  # ties: round to even
    edges = [0.0, -0.0, 65504, 65519.99, 65520, 1e9, np.inf, -np.inf, 2.98e-8, 1e-45]
    values = np.concatenate([drawn, halves, mids, -mids, edges]).astype(np.float32)
    up, down = np.nextafter(values, np.float32(np.inf)), np.nextafter(values, np.float32(0))
    return np.concatenate([values, up, down, [np.nan]]).astype(np.float32)


@pytest.mark.parametrize("native", [True, False])
def test_float16_encode_rounds_like_numpy(native):
    import numba

    from streamembed.detection.kernels import _make_to_storage, _native_half

    if native and not _native_half():
        pytest.skip("this CPU has no float16 conversion instruction (the other case runs)")
    to_storage = _make_to_storage(native)

    @numba.njit
    def encode(values, out):
        for j in range(values.size):
            out[j] = to_storage(values[j], out[j])

    values = _values_and_midpoints()
    out = np.zeros(values.size, np.uint16)
    encode(values, out)
    with np.errstate(over="ignore"):
        ref = values.astype(np.float16)
    nan = np.isnan(values)
    assert np.array_equal(out[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(out.view(np.float16)[nan]).all()


def test_a_float16_state_updates_as_float32_rounded_after_each_look():
    """The float16 state's arithmetic is float32's: the only difference is the mean's rounding
    when it is stored."""
    rng = np.random.default_rng(4)
    half = TileState.empty(*SHAPE, DIM, "float16", 64)
    full = TileState.empty(*SHAPE, DIM, "float32", 64)
    flagged = 0
    for t in range(6):
        box = (slice(0, 100), slice(20, 140)) if t % 2 else None
        emb, clear, snow, idx, day = _look(rng, t, box)
        a = update(half, emb, clear, snow, idx, day, P)
        b = update(full, emb, clear, snow, idx, day, P)
        full.mean[...] = full.mean.astype(np.float16)
        assert np.array_equal(a.score, b.score, equal_nan=True)
        assert np.array_equal(a.anomaly, b.anomaly)
        flagged += int(a.anomaly.sum())
    assert half.mean.dtype == np.float16 and half.mean.nbytes * 2 == full.mean.nbytes
    assert np.array_equal(half.mean.astype(np.float32), full.mean)
    assert flagged > 0  # the clipped (anomalous) update ran too


def _block_files(path: Path) -> list[str]:
    return sorted(p.name for p in (path.parent / f"{path.stem}-mean").iterdir())


def test_a_checkpoint_writes_changed_blocks_and_a_reload_reads_visible_ones(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "T.npz"
    state = TileState.empty(*SHAPE, DIM, "float16", 64)
    assert state.blocks_y * state.blocks_x == 9
    block = 64 * 64 * DIM * 2
    update(state, *_look(rng, 0), P)
    state.save(path)
    assert _block_files(path) == sorted(f"{b}.g1.npy" for b in range(9))
    first = state.bytes_written
    assert state.mean.nbytes < first < state.mean.nbytes + 2 * (path.stat().st_size)

    # Clear over block 0 only: one block written, its old file gone, the others kept.
    box = (slice(0, 64), slice(0, 64))
    update(state, *_look(rng, 1, box), P)
    state.save(path)
    assert state.bytes_written == first + block + path.stat().st_size
    assert _block_files(path) == sorted(["0.g2.npy"] + [f"{b}.g1.npy" for b in range(1, 9)])

    # Read back for a look clear over block 0: that block only is read, and the look does to
    # the partly read state what it does to the whole one.
    emb, clear, snow, idx, day = _look(rng, 2, box)
    lazy = TileState.load(path, lazy=True)
    manifest = path.stat().st_size
    assert lazy.bytes_read == manifest and not lazy.loaded.any()
    lazy.ensure_loaded(lazy.blocks_of(usable_cells(clear, P)))
    assert lazy.bytes_read == manifest + block and lazy.loaded.sum() == 1
    assert (
        lazy.mean_block_bytes == block and lazy.nbytes == state.nbytes - state.mean.nbytes + block
    )
    whole = TileState.load(path)
    _equal_states(whole, state)
    a = update(lazy, emb, clear, snow, idx, day, P)
    b = update(whole, emb, clear, snow, idx, day, P)
    for name in ("score", "anomaly", "valid", "rows"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=name == "score")
    assert a.valid.sum() > 0
    lazy.save(path)
    assert lazy.bytes_written == block + path.stat().st_size
    _equal_states(TileState.load(path), whole)

    # A look with no clear cell reads and writes no block.
    cloudy = _look(rng, 3, (slice(0, 0), slice(0, 0)))
    none = TileState.load(path, lazy=True)
    none.ensure_loaded(none.blocks_of(usable_cells(cloudy[1], P)))
    update(none, *cloudy, P)
    none.save(path)
    assert none.bytes_read == manifest and none.bytes_written == path.stat().st_size


def test_a_checkpoint_from_before_the_blocks_is_read_whole_and_saved_as_blocks(tmp_path):
    rng = np.random.default_rng(8)
    state = TileState.empty(*SHAPE, DIM, "float32", 64)
    update(state, *_look(rng, 0, (slice(0, 70), slice(0, 140))), P)
    old = tmp_path / "old.npz"
    np.savez(old, **state.arrays())  # the mean inside, as checkpoints were written before
    back = TileState.load(old)
    _equal_states(back, state)
    back.save(tmp_path / "new.npz")
    with_looks = back.blocks_of(state.n > 0)  # the rows of blocks over the clear rows
    assert 0 < with_looks.sum() < with_looks.size
    assert len(_block_files(tmp_path / "new.npz")) == with_looks.sum()
    _equal_states(TileState.load(tmp_path / "new.npz"), state)


def test_a_damaged_block_is_named_with_the_fix(tmp_path):
    rng = np.random.default_rng(9)
    state = TileState.empty(*SHAPE, DIM, "float16", 64)
    update(state, *_look(rng, 0), P)
    path = tmp_path / "T.npz"
    state.save(path)
    np.save(block_location(path, 4, 1), np.zeros((3, 3), np.float16))
    with pytest.raises(ValueError, match=r"4\.g1\.npy.*remove"):
        TileState.load(path)


KILLED_SAVE = """
import numpy as np, sys
from streamembed.config import StatsConfig
from streamembed.indices import INDEX_NAMES
from streamembed.detection.stats import TileState, update
path, = sys.argv[1:]
state = TileState.load(path)
rng = np.random.default_rng(1)
shape, dim = state.shape, state.mean.shape[1]
emb = rng.normal(5, 1, (*shape, dim)).astype(np.float32)
ones = np.ones(shape, np.float32)
update(state, emb, ones, 0 * ones, np.zeros((*shape, len(INDEX_NAMES)), np.float32), 500.0, StatsConfig())
state.applied_ids.append("killed")
state.save(path)  # killed after the new blocks, before the manifest
"""


def test_a_kill_before_the_manifest_leaves_the_previous_checkpoint_whole(tmp_path):
    from streamembed.faults import KILL_AT, KILL_COUNT

    rng = np.random.default_rng(10)
    state = TileState.empty(*SHAPE, DIM, "float16", 64)
    update(state, *_look(rng, 0), P)
    state.applied_ids.append("first")
    path = tmp_path / "T.npz"
    state.save(path)
    env = {**os.environ, KILL_AT: "state.written:1", KILL_COUNT: str(tmp_path / "count")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SAVE), str(path)],
        env=env, start_new_session=True, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert any(name.endswith(".g2.npy") for name in _block_files(path))  # written, not in force
    back = TileState.load(path)
    assert back.applied_ids == ["first"]
    _equal_states(back, state)
