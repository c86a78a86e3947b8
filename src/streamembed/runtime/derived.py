"""What a run keeps current after its applies: the touched tiles' store rows put in sensing
order, the outputs' STAC catalogue and the similarity indexes. They read the store and never
delay a commit; a failure of one is logged, not the run's (a full volume still stops the run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config import Config
from ..layout import is_disk_full
from ..outputs.catalog import write_catalog
from ..outputs.ledger import Ledger
from ..outputs.store import EmbeddingStore
from .report import RunReport, one_line

log = logging.getLogger(__name__)


class DerivedOutputs:
    """The outputs derived from the store and the anomaly rows, for ``Pipeline``."""

    def __init__(self, cfg: Config, ledger: Ledger, store: EmbeddingStore, volume: Path):
        self.cfg = cfg
        self.ledger = ledger  # a compaction under way is in the ledger: a kill finishes it
        self.store = store
        self.volume = volume  # the volume whose filling stops the run

    def update(self, touched: list[str], report: RunReport) -> None:
        """After a run's applies: the touched tiles' rows, the catalogue, the indexes."""
        layout, sim, driver = self.cfg.layout, self.cfg.similarity, report.driver
        with driver.timed("store_compact"):
            for tile in touched:
                self.after_run(f"the store's rows of {tile}",
                               partial(self.compact_tile, tile, report))  # fmt: skip
        with driver.timed("catalog"):
            catalog = partial(write_catalog, layout, touched)
            self.after_run("the outputs' STAC catalogue", catalog)
        if sim.index_on_commit:
            from ..outputs.similar import update_index

            for tile in touched:
                step = partial(update_index, layout, tile, sim.min_clear)
                self.after_run(f"the similarity index of {tile}", step)

    def compact_tile(self, tile: str, report: RunReport | None = None) -> None:
        """Put the tile's stored looks in sensing order (a late or retried look, a failed
        one's row) once the run's applies are done: the actors read rows by id meanwhile."""
        if not self.store.out_of_order(tile):
            return
        self.ledger.mark_compacting(tile)
        t0 = time.perf_counter()
        done = self.store.compact(tile)
        self.ledger.mark_compacting(tile, done=True)
        if done is not None:
            if report is not None:
                report.compacted += 1
            log.info(
                "tile %s: store rows put in sensing order from row %d in %.2f s (%d moved, %d "
                "released rows removed, %.0f MiB of chunks copied)", tile, done.start,
                time.perf_counter() - t0, done.moved, done.dropped, done.bytes_copied / 2**20,
            )  # fmt: skip

    def after_run(self, what: str, step: Callable[[], object]) -> None:
        """A step that keeps a derived output current: its failure is logged, not the run's
        (a full volume still stops the run, as everywhere)."""
        try:
            step()
        except Exception as err:
            if is_disk_full(err, self.volume):
                raise
            log.error("%s was not updated: %s", what, one_line(err))
