"""A statistics shard's tile states in memory, bounded by ``stats.max_state_mib``.

The states are kept least recently applied first; past the budget the oldest are checkpointed
and dropped, and read back (lazily, the blocks an acquisition can see) when their next look
comes. Each checkpoint keeps its manifest for rewinds (``detection.history``) and prunes the
kept ones that fell out of ``stats.allowed_lateness_days``. The resident bytes are kept as they
change: the budget check after every apply must not walk every tile the shard holds.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import storage
from ..config import StatsConfig
from ..detection import history
from ..detection.state import checkpoint_applied_ids
from ..detection.stats import TileState
from ..layout import OutputLayout


class TileStateCache:
    """The resident tile states of one shard, their budget and their checkpoints."""

    def __init__(self, layout: OutputLayout, stats: StatsConfig):
        self.layout = layout
        self.cfg = stats
        self.states: OrderedDict[str, TileState] = OrderedDict()  # least recently used first
        self._nbytes: dict[str, int] = {}  # each resident state's bytes, and their sum
        self._resident = 0
        self.max_state_bytes = int(stats.max_state_mib * 2**20)
        self.evictions = 0
        self._dirty: dict[str, int] = {}  # looks applied since the tile's last checkpoint
        # checkpoint bytes of states no longer resident (a resident state counts its own)
        self._gone_read = 0
        self._gone_written = 0
        self._history: dict[str, history.Entry] = {}  # kept manifests read (they never change)

    def path(self, tile: str) -> str:
        return self.layout.state(tile)

    def empty(self, shape: tuple[int, int], dim: int) -> TileState:
        return TileState.empty(*shape, dim, self.cfg.state_dtype, self.cfg.state_block_cells)

    def get(self, tile: str, shape: tuple[int, int], dim: int, usable: np.ndarray) -> TileState:
        """The tile's state with the mean blocks of its ``usable`` cells in memory: a state
        read back from its checkpoint reads those blocks only."""
        if tile not in self.states:
            path = self.path(tile)
            self.states[tile] = (
                TileState.load(path, lazy=True) if storage.exists(path) else self.empty(shape, dim)
            )
        self.states.move_to_end(tile)
        state = self.states[tile]
        self.load_blocks(tile, state, usable)
        return state

    def load_blocks(self, tile: str, state: TileState, usable: np.ndarray) -> None:
        """Read the mean blocks of ``usable`` cells and count the state's bytes anew."""
        state.ensure_loaded(state.blocks_of(usable))
        nbytes = state.nbytes
        self._resident += nbytes - self._nbytes.get(tile, 0)
        self._nbytes[tile] = nbytes

    def put(self, tile: str, state: TileState) -> None:
        """``state`` is the tile's now (a rewind's base; its bytes count at its first look)."""
        self.states[tile] = state
        self._nbytes[tile] = 0

    def resident_bytes(self) -> int:
        return self._resident

    def applied(self, tile: str) -> int:
        """One more look applied to the tile; returns how many since its last checkpoint."""
        self._dirty[tile] = self._dirty.get(tile, 0) + 1
        return self._dirty[tile]

    def changed(self, tile: str) -> bool:
        return bool(self._dirty.get(tile))

    def evict(self, keep: str) -> None:
        """Checkpoint and drop the least recently applied tiles while past the budget."""
        while len(self.states) > 1 and self.resident_bytes() > self.max_state_bytes:
            tile = next(t for t in self.states if t != keep)
            if self._dirty.get(tile):
                self.checkpoint(tile)
            self.drop(tile)
            self.evictions += 1

    def drop(self, tile: str) -> None:
        """Forget the tile's state in memory (checkpointed first where it changed)."""
        gone = self.states.pop(tile, None)
        self._resident -= self._nbytes.pop(tile, 0)
        if gone is not None:
            self._gone_read += gone.bytes_read
            self._gone_written += gone.bytes_written
        self._dirty.pop(tile, None)

    def applied_ids(self, tile: str) -> list[str]:
        """Acquisitions folded into the tile's state (in memory, else its last checkpoint)."""
        if tile in self.states:
            return list(self.states[tile].applied_ids)
        path = self.path(tile)
        return checkpoint_applied_ids(path) if storage.exists(path) else []

    def checkpoint(self, tile: str | None = None) -> int:
        """Write dirty tile states (one tile, or all); returns how many were written."""
        tiles = [tile] if tile else [t for t, n in self._dirty.items() if n and t in self.states]
        for t in tiles:
            self._save(t, self.states[t])
            self._dirty[t] = 0
        return len(tiles)

    def _save(self, tile: str, state: TileState) -> None:
        """Checkpoint, keep the manifest for rewinds, and drop the kept checkpoints (and the
        blocks only they name) that fell out of ``stats.allowed_lateness_days``."""
        path = self.path(tile)
        state.save(path, keep_replaced=True)
        storage.copy_file(path, history.entry_path(path, state.generation))
        applied = dict(zip(state.applied_ids, state.applied_days, strict=True))
        kept = history.entries(path, self._history)
        drop, blocks = history.pruned(
            kept, applied, state.last_time_day, self.cfg.allowed_lateness_days
        )
        history.remove(path, drop, blocks)
        for entry in drop:
            self._history.pop(entry.path, None)

    def base_before(self, tile: str, known: dict[str, float], day: float) -> history.Entry | None:
        """The newest kept checkpoint of the tile holding only looks of ``known`` before
        ``day`` (``history.base_for``); None: none, go back to the tile's first look."""
        return history.base_for(history.entries(self.path(tile), self._history), known, day)

    def state_bytes(self) -> tuple[int, int]:
        """Checkpoint bytes read and written so far, by every state resident or gone."""
        read = self._gone_read + sum(s.bytes_read for s in self.states.values())
        written = self._gone_written + sum(s.bytes_written for s in self.states.values())
        return read, written
