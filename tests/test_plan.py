"""The planning step and the per-tile sequencer: plain values in, plain values out, no Dask."""

from __future__ import annotations

import datetime as dt

from streamembed.acquisition import Acquisition
from streamembed.outputs.ledger import LedgerRow, State
from streamembed.runtime.plan import Decision, TileSequencer, plan_run

T0 = dt.datetime(2024, 5, 1, 10, 0, 31, tzinfo=dt.timezone.utc)


def _acq(name: str, tile: str = "33UWP", day: int = 0, baseline: str = "05.10") -> Acquisition:
    return Acquisition(name, tile, T0 + dt.timedelta(days=day), 32633, {},
                       processing_baseline=baseline)  # fmt: skip


def _nothing_processed(tile: str, when: dt.datetime) -> LedgerRow | None:
    return None


def _all_assets(a: Acquisition) -> str | None:
    return None


def test_new_products_are_embedded_and_applied_and_final_ones_left_alone():
    a, b, c, d = _acq("a", day=0), _acq("b", day=5), _acq("c", day=10), _acq("d", day=15)
    states = {"a": State.APPLIED, "b": State.EMBEDDED, "c": State.SEEN, "d": State.FAILED}
    plan = plan_run([a, b, c, d], states, _nothing_processed, _all_assets)
    assert plan.embed == (c,) and plan.apply == (b, c) and plan.decisions == ()
    assert plan.already_done == 2  # a applied, d failed and not retried
    retried = plan_run([a, b, c, d], states, _nothing_processed, _all_assets, retry_failed=True)
    assert retried.embed == (c, d) and retried.apply == (b, c, d)


def test_the_reprocessing_rule_skips_older_and_later_baselines():
    old, new = _acq("old", baseline="04.00"), _acq("new", baseline="05.10")
    states = {"old": State.SEEN, "new": State.SEEN}
    plan = plan_run([old, new], states, _nothing_processed, _all_assets)
    assert plan.embed == (new,)
    (skip,) = plan.decisions
    assert skip.acquisition_id == "old" and skip.state == State.SKIPPED
    assert "superseded by new" in skip.reason
    # A newer baseline of an acquisition embedded by an earlier run keeps the first product.
    first = LedgerRow("first", "33UWP", T0.isoformat(), "", "applied", None, 0, 0, 0, 0)
    plan = plan_run([_acq("again", baseline="06.00")], {"again": State.SEEN},
                    lambda tile, when: first, _all_assets)  # fmt: skip
    assert plan.embed == () and plan.already_done == 0
    assert plan.decisions[0].state == State.SKIPPED and "of first, already applied" in (
        plan.decisions[0].reason
    )


def test_a_missing_band_fails_before_any_task_and_only_once():
    a = _acq("a")
    reason = "acquisition a: asset B8A missing"
    plan = plan_run([a], {"a": State.SEEN}, _nothing_processed, lambda _: reason)
    assert plan.embed == () and plan.decisions == (Decision("a", State.FAILED, reason),)
    again = plan_run([a], {"a": State.FAILED}, _nothing_processed, lambda _: reason, True)
    assert again.embed == () and again.decisions == ()


def test_the_sequencer_hands_out_each_tile_in_sensing_order():
    x1, x2, x3 = _acq("x1", day=0), _acq("x2", day=5), _acq("x3", day=10)
    y1 = _acq("y1", tile="32UPC", day=3)
    seq = TileSequencer([x3, y1, x1, x2])
    states = {"x1": State.SEEN, "x2": State.EMBEDDED, "x3": State.EMBEDDED, "y1": State.EMBEDDED}
    assert [a.id for a in seq.ready(states)] == ["y1"]  # x2 waits for x1
    states["x1"] = State.FAILED  # a failed acquisition does not block its tile
    # one per tile at a time: x3 waits for x2's apply, and a busy tile gets nothing
    assert [a.id for a in seq.ready(states, busy={"33UWP"})] == []
    assert [a.id for a in seq.ready(states)] == ["x2"]
    assert [a.id for a in seq.ready(states, busy={"33UWP"})] == []
    states["x2"] = State.APPLIED
    assert [a.id for a in seq.ready(states)] == ["x3"]
    assert not seq.pending
