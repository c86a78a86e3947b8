"""A tile state's checkpoint on disk or in object storage: the changed mean blocks under new
names, then a manifest (the small arrays whole, and which save wrote each block) published
atomically; read back whole or lazily, and from every earlier format the project wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..storage import atomic_writer, open_input, remove_tree
from .alerts import ALERT_ARRAYS, AlertState
from .change import CHANGE_ARRAYS, ChangeState
from .seasonal import INDEX_MODEL_ARRAYS, IndexModel
from .state import BLOCK_CELLS, STATE_DTYPES, TileState, block_location


def save_checkpoint(state: TileState, path: str | Path, keep_replaced: bool = False) -> None:
    """Atomic checkpoint to a local path or a URL: the changed mean blocks under new
    names, then the manifest (small arrays and which save wrote each block) published
    whole. A kill before the manifest leaves the previous checkpoint whole.

    ``keep_replaced``: the blocks this save supersedes stay (earlier checkpoints kept for
    rewinds still name them; ``history`` removes them with the last one that does)."""
    path = str(path)
    if path != state.source:  # a new place: every block with a look goes there
        state.ensure_loaded()
        state.mark_changed(state.n > 0)
    gen = state.generation + 1
    grid = state.mean_grid()
    block_gen = state.block_gen.copy()  # this save's, in force once the manifest is
    written = 0
    for block in np.flatnonzero(state.dirty):
        ys, xs = state.block_window(int(block))
        with atomic_writer(block_location(path, int(block), gen)) as f:
            values = np.ascontiguousarray(grid[ys, xs])
            np.save(f, values)
            written += values.nbytes
        block_gen[block] = gen
    with atomic_writer(path, crash="state.written") as f:
        manifest = {
            **state.small_arrays(),
            "mean_dim": np.array(state.mean.shape[1]),
            "mean_dtype": np.array(state.mean.dtype.name),
            "block_cells": np.array(state.block_cells),
            "block_gen": block_gen,
            "generation": np.array(gen),
        }
        np.savez(f, **manifest)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
        written += f.tell()
    if path == state.source and not keep_replaced:  # the replaced blocks are no one's now
        for block in np.flatnonzero(state.dirty & (state.block_gen >= 0)):
            remove_tree(block_location(path, int(block), int(state.block_gen[block])))
    state.block_gen = block_gen
    state.generation = gen
    state.source = path
    state.dirty[:] = False
    state.bytes_written += written


def load_checkpoint(
    path: str | Path, lazy: bool = False, blocks_at: str | None = None
) -> TileState:
    """The checkpoint at ``path``; ``lazy``: no mean block read yet (``ensure_loaded``
    reads those asked for), else all. ``blocks_at``: the checkpoint whose block folder
    holds the blocks (an earlier manifest kept for rewinds names the tile's blocks)."""
    with open_input(path) as f, np.load(f) as z:
        manifest_bytes = f.seek(0, 2)  # every array in it is read
        # A checkpoint from before the alert lifecycle starts its cells with no alert.
        alerts = (
            AlertState.from_arrays(
                {name: z[f"alert_{name}"] for name in ALERT_ARRAYS if f"alert_{name}" in z}
            )
            if "alert_status" in z
            else AlertState.empty(int(z["n"].size))
        )
        # One from before the change memories starts them empty (change.py).
        change = ChangeState.from_arrays(
            {name: z[f"change_{name}"] for name in CHANGE_ARRAYS if f"change_{name}" in z},
            int(z["n"].size),
        )
        # One from before the seasonal index model starts it from the rolling index mean.
        index_model = (
            IndexModel(**{name: z[f"index_{name}"] for name in INDEX_MODEL_ARRAYS})
            if "index_level" in z
            else IndexModel.from_rolling_mean(z["idx_mean"], z["n"], z["last_day"])
        )
        whole = "mean" in z  # from before the blocks: the mean inside, read whole
        n = z["n"]
        mean = (
            z["mean"]
            if whole
            else np.zeros((n.size, int(z["mean_dim"])), STATE_DTYPES[str(z["mean_dtype"])])
        )
        state = TileState(
            n=n,
            mean=mean,
            dist_mean=z["dist_mean"],
            dist_var=z["dist_var"],
            last_day=z["last_day"],
            shape=(int(z["shape"][0]), int(z["shape"][1])),
            index_model=index_model,
            alerts=alerts,
            change=change,
            last_time_day=float(z["last_time_day"]),
            applied_ids=[str(s) for s in z["applied_ids"]],
            applied_days=(
                [float(d) for d in z["applied_days"]]
                if "applied_days" in z
                else [float("nan")] * int(z["applied_ids"].size)
            ),
            block_cells=BLOCK_CELLS if whole else int(z["block_cells"]),
            block_gen=np.zeros(0, np.int64) if whole else z["block_gen"].astype(np.int64),
            loaded=np.zeros(0 if whole else z["block_gen"].size, bool),
            generation=0 if whole else int(z["generation"]),
            source=None if whole else str(blocks_at or path),
            bytes_read=manifest_bytes,
        )
        if whole:  # its next save writes the mean as blocks
            state.mark_changed(state.n > 0)
    if not lazy:
        state.ensure_loaded()
    return state
