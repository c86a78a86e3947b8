"""Earlier checkpoints of a tile's statistics, kept so that a look published late can be folded
in where it belongs: the tile is rewound to a checkpoint from before it and the looks after it
are replayed (``actor.StatsActor``).

Each checkpoint's manifest is also kept as ``state/<tile>-history/g<generation>.npz`` (a hard
link locally, the server's copy on an object store: no bytes written twice), and the mean
blocks it names stay until the last kept manifest naming them goes. What is kept: the
checkpoints of the last ``stats.allowed_lateness_days`` of the tile's looks, and the newest one
before them, so that any look within the lateness has a checkpoint to go back to. A rewind
costs what it replays, whatever the tile holds. The functions here are pure but for the reads
of manifests and the deletes the caller asks for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .. import storage
from .state import block_location


@dataclass(frozen=True)
class Entry:
    """One kept checkpoint: what it holds, read from its manifest."""

    path: str
    generation: int
    last_day: float  # its newest look's day (-inf: no look)
    applied: dict[str, float]  # look -> day
    blocks: frozenset[tuple[int, int]]  # the (block, generation) files it names


def history_dir(state_path: str) -> str:
    return (state_path[: -len(".npz")] if state_path.endswith(".npz") else state_path) + "-history"


def entry_path(state_path: str, generation: int) -> str:
    return storage.join(history_dir(state_path), f"g{generation:08d}.npz")


def read_entry(path: str) -> Entry:
    """The parts of a kept manifest a rewind decides on (NumPy reads only these members)."""
    with storage.open_input(path) as f, np.load(f) as z:
        ids = [str(s) for s in z["applied_ids"]]
        days = (
            [float(d) for d in z["applied_days"]] if "applied_days" in z else [math.nan] * len(ids)
        )
        gen = z["block_gen"].astype(np.int64)
        last = float(z["last_time_day"])
        generation = int(z["generation"])
    blocks = frozenset((int(b), int(g)) for b, g in enumerate(gen) if g >= 0)
    return Entry(path, generation, last if ids else -math.inf, dict(zip(ids, days, strict=True)),
                 blocks)  # fmt: skip


def entries(state_path: str, cache: dict[str, Entry]) -> list[Entry]:
    """The tile's kept checkpoints, oldest first (``cache``: manifests read before; a kept
    manifest never changes)."""
    found = storage.glob(history_dir(state_path), "g*.npz")
    out = []
    for path in found:
        if path not in cache:
            cache[path] = read_entry(path)
        out.append(cache[path])
    return sorted(out, key=lambda e: e.generation)


def is_prefix(entry: Entry, applied: Mapping[str, float]) -> bool:
    """Whether ``entry`` is the state of ``applied`` (look -> day) up to its own last look:
    every look it holds is in ``applied``, and every look of ``applied`` it lacks is newer.
    A checkpoint of a timeline a rewind replaced is not."""
    if not set(entry.applied) <= set(applied):
        return False
    return all(day > entry.last_day for i, day in applied.items() if i not in entry.applied)


def base_for(entries_: list[Entry], applied: Mapping[str, float], day: float) -> Entry | None:
    """The newest kept checkpoint a look of ``day`` can be folded in after; None: none is
    (the tile is replayed from its first look)."""
    for entry in sorted(entries_, key=lambda e: e.generation, reverse=True):
        if entry.last_day < day and is_prefix(entry, applied):
            return entry
    return None


def pruned(
    entries_: list[Entry], applied: Mapping[str, float], newest_day: float, window_days: float
) -> tuple[list[Entry], set[tuple[int, int]]]:
    """The checkpoints to drop and the block files only they name: those of another timeline,
    those a newer checkpoint of the same looks replaced, and those older than the window but
    for the newest of them (the window's base)."""
    valid = [e for e in entries_ if is_prefix(e, applied)]
    # a rebuild makes checkpoints of the same looks again: the newest of each set stands
    newest: dict[frozenset[str], Entry] = {}
    for e in valid:
        key = frozenset(e.applied)
        if key not in newest or e.generation > newest[key].generation:
            newest[key] = e
    valid = [e for e in valid if newest[frozenset(e.applied)] is e]
    inside = [e for e in valid if e.last_day >= newest_day - window_days]
    older = [e for e in valid if e.last_day < newest_day - window_days]
    keep = inside + ([max(older, key=lambda e: e.generation)] if older else [])
    drop = [e for e in entries_ if e not in keep]
    kept_blocks = set().union(*(e.blocks for e in keep)) if keep else set()
    gone = set().union(*(e.blocks for e in drop)) - kept_blocks if drop else set()
    return drop, gone


def remove(state_path: str, drop: list[Entry], blocks: set[tuple[int, int]]) -> None:
    """Delete dropped manifests, then the blocks only they named (a kill in between leaves
    blocks no manifest names: bytes, never a wrong state)."""
    for entry in drop:
        storage.remove_tree(entry.path)
    for block, generation in sorted(blocks):
        storage.remove_tree(block_location(state_path, block, generation))
