"""``streamembed rebuild``: a tile's statistics and anomalies made again from its stored looks.

For the looks the daemon left ``late`` (older than ``stats.allowed_lateness_days`` behind the
tile's newest look when they came), and for a reprocessing campaign (``--from DATE``: every
look from that day on, e.g. after CDSE reprocessed a year). The tile goes back to the newest
kept checkpoint before the first look to fold in (none: its first look) and replays every
stored look after it in sensing order, as the actor folds a late look in; the anomaly files of
the replayed looks are rewritten (removed where no row is left), the ledger says what changed.
The cost is the looks replayed, never the rest of the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial

from ..outputs.catalog import write_catalog
from ..outputs.ledger import State
from .actor import ApplyResult, day_number
from .pipeline import Pipeline

# ledger states of a stored look that belongs in the tile's statistics
IN_STATISTICS = (State.APPLIED, State.LATE, State.EMBEDDED)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did to one tile."""

    tile: str
    folded_in: int  # looks that were late (or embedded) and are applied now
    replayed: int
    changed: int  # replayed looks whose anomaly row count changed
    result: ApplyResult | None  # None: nothing to do

    def lines(self) -> list[str]:
        if self.result is None:
            return [f"tile {self.tile}: nothing late to fold in (give --from DATE to replay)"]
        rw = self.result.rewind
        assert rw is not None
        base = "its first look" if rw.base_generation < 0 else f"checkpoint {rw.base_generation}"
        return [
            f"tile {self.tile}: {self.replayed} looks replayed from {base} in {rw.seconds:.1f} s "
            f"({rw.bytes_read / 2**20:.0f} MiB read, {rw.bytes_written / 2**20:.0f} MiB of "
            f"state written); {self.folded_in} folded in, {self.changed} with other anomaly "
            "row counts (streamembed status --revisions)."
        ]


def rebuild(pipe: Pipeline, tile: str, since: dt.datetime | None = None) -> Rebuilt:
    """Fold the tile's late looks in (``since`` None), or replay it from ``since`` on."""
    days = pipe.store.days(tile)
    if not days:
        raise ValueError(
            f"tile {tile} has no stored looks in {pipe.store.root}; check --tile and --output "
            "(streamembed status lists the tiles)"
        )
    states = pipe.ledger.states(days)
    looks = [i for i in days if states.get(i) in IN_STATISTICS]
    waiting = [i for i in looks if states.get(i) != State.APPLIED]
    if since is None:
        if not waiting:
            return Rebuilt(tile, 0, 0, 0, None)
        from_day = min(days[i] for i in waiting)
    else:
        from_day = day_number(since)
    res = pipe.actor_for(tile).rebuild(tile, from_day, looks).result()
    folded = changed = 0
    for rev in res.revised:
        if states.get(rev.acquisition_id) == State.APPLIED:
            pipe.ledger.record_revision(rev.acquisition_id, "rebuild", rev.rows_before,
                                        rev.rows_after)  # fmt: skip
            changed += rev.rows_before != rev.rows_after
        else:
            pipe.ledger.set_state(rev.acquisition_id, State.APPLIED, n_anomalies=rev.rows_after)
            folded += 1
    pipe.derived.compact_tile(tile)
    pipe.derived.after_run(
        "the outputs' STAC catalogue", partial(write_catalog, pipe.cfg.layout, [tile])
    )
    replayed = res.rewind.replayed if res.rewind else 0
    return Rebuilt(tile, folded, replayed, changed, res)
