"""The pipeline's three jobs, each on its own (runtime/blocks.py, lifecycle.py, shards.py with
applies.py): block
tasks under backpressure, each acquisition's lifecycle over the store and the ledger, the
statistics shards' placement, applies and catch-up. On a real LocalCluster, a real Zarr store
and a real SQLite ledger; ``test_pipeline.py`` and ``test_blocks.py`` run them together."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tqdm import tqdm

from streamembed.config import Config
from streamembed.harness.synthetic import generate
from streamembed.outputs.ledger import Failure, Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.actor import ApplyResult, ApplyStatus
from streamembed.runtime.applies import ShardApplies
from streamembed.runtime.blocks import BlockScheduler, EmbeddingJob
from streamembed.runtime.encoder import model_identity
from streamembed.runtime.lifecycle import AcquisitionLifecycle
from streamembed.runtime.plan import TileSequencer
from streamembed.runtime.report import RunReport
from streamembed.runtime.shards import StatsShards
from streamembed.runtime.tasks import provenance
from streamembed.sources import discover_for

BAR = tqdm(disable=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Three 10-day revisits of one 640 px tile: 9 blocks of 256 px each."""
    items, _ = generate(tmp_path_factory.mktemp("parts"), days=30, revisit_days=10, tile_px=640,
                        n_tiles=1)  # fmt: skip
    return items


def _cfg(items: Path, out: Path, **extra: object) -> Config:
    return Config().with_overrides(**{
        "source.path": str(items), "output": str(out), "model.arch": "resnet18",
        "store.chunk_cells": 8, "ingest.block_px": 256, "stats.min_obs": 2, **extra,
    })  # fmt: skip


def _model_id(cfg: Config) -> str:
    return model_identity(cfg.model).model_id


def _lifecycle(cfg: Config, ledger: Ledger) -> AcquisitionLifecycle:
    store = EmbeddingStore(cfg.layout.store, cfg.store)
    return AcquisitionLifecycle(cfg, ledger, store, provenance(model_identity(cfg.model), cfg))


@pytest.fixture(scope="module")
def embedded(archive, cluster_client, tmp_path_factory):
    """The archive's acquisitions embedded by the block scheduler and the lifecycle alone, at
    most 4 block tasks in flight: (cfg, acquisitions, the most in flight, the first fill's
    acquisitions, the order acquisitions ended, the report)."""
    cfg = _cfg(archive, tmp_path_factory.mktemp("embedded") / "out")
    cfg.layout.ledger.parent.mkdir(parents=True, exist_ok=True)
    acqs, failures = discover_for(cfg)
    assert len(acqs) == 3 and not failures
    report, states = RunReport(), {}
    with Ledger(cfg.layout.ledger) as ledger:
        ledger.record_seen(acqs)
        life = _lifecycle(cfg, ledger)
        blocks = BlockScheduler(cfg, cluster_client, "parts", cfg.layout.ledger.parent)
        active: list[EmbeddingJob] = []
        for a in acqs:
            job = life.begin(a, states, report, BAR)
            assert job is not None and job.n_blocks == 9
            active.append(job)
        most, first_fill, ended = 0, None, []
        while active:
            blocks.fill(active, 4, report)
            if first_fill is None:
                first_fill = {job.acq.id for job in blocks.futures.values()}
            most = max(most, len(blocks.futures))
            for job in blocks.finished(report, BAR, timeout=5.0):
                active.remove(job)
                ended.append(job.acq.id)
                life.commit(job, states, report, BAR)
        blocks.cancel_all()
    return cfg, acqs, most, first_fill, ended, report


def test_blocks_stay_under_the_queue_and_the_oldest_acquisition_goes_first(embedded):
    cfg, acqs, most, first_fill, ended, report = embedded
    assert most == 4  # the queue filled, never past it
    assert first_fill == {acqs[0].id}  # the oldest acquisition's blocks take the workers first
    assert sorted(ended) == sorted(a.id for a in acqs)  # each ended once
    assert report.blocks == 27 and report.stored == 3 and report.embedded == 3
    assert report.cells == 3 * 20 * 20
    with Ledger(cfg.layout.ledger) as ledger:
        assert set(ledger.states(a.id for a in acqs).values()) == {State.EMBEDDED}
    store = EmbeddingStore(cfg.layout.store, cfg.store)
    assert store.grid(acqs[0].tile) is not None


def test_an_acquisition_stored_before_the_ledger_heard_of_it_is_only_recorded(embedded, tmp_path):
    cfg, acqs, *_ = embedded
    with Ledger(cfg.layout.ledger) as ledger:
        # a crash between the store's commit and the ledger: the ledger still says seen
        ledger.set_state(acqs[1].id, State.SEEN)
        report, states = RunReport(), {}
        assert _lifecycle(cfg, ledger).begin(acqs[1], states, report, BAR) is None
        assert ledger.states([acqs[1].id])[acqs[1].id] == State.EMBEDDED
        assert states[acqs[1].id] == State.EMBEDDED and report.embedded == 1
        assert report.stored == 0  # nothing written again


def test_a_failed_block_fails_its_acquisition_and_gives_its_row_up(archive, cluster_client,
                                                                   tmp_path):  # fmt: skip
    cfg = _cfg(archive, tmp_path / "out")
    cfg.layout.ledger.parent.mkdir(parents=True)
    acqs, _ = discover_for(cfg)
    with Ledger(cfg.layout.ledger) as ledger:
        ledger.record_seen(acqs[:1])
        life = _lifecycle(cfg, ledger)
        report, states = RunReport(), {}
        job = life.begin(acqs[0], states, report, BAR)
        assert job is not None
        job.failed, job.failure = "block 3 of 9: band B04 truncated", Failure.CORRUPT
        life.commit(job, states, report, BAR)
        row = ledger.rows(State.FAILED)[0]
        assert row.id == acqs[0].id and "B04 truncated" in row.reason
        assert ledger.failure_counts() == {"corrupt": 1}
        assert report.failed == [(acqs[0].id, "block 3 of 9: band B04 truncated")]
    # the row was released: a retry takes a new one and the tile holds no visible look
    assert EmbeddingStore(cfg.layout.store, cfg.store).acquisition_ids(acqs[0].tile) == []


def test_shards_apply_each_tile_in_order_and_a_new_shard_catches_up_from_the_ledger(
    embedded, cluster_client
):
    cfg, acqs, *_ = embedded
    cfg = cfg.with_overrides(**{"stats.shards": 2})
    with Ledger(cfg.layout.ledger) as ledger:
        life = _lifecycle(cfg, ledger)
        shards = StatsShards(cfg, cluster_client, "parts-a", _model_id(cfg), ledger)
        try:
            # placed round the workers: two shards, two workers
            where = cluster_client.who_has(shards.futures)
            assert len({w for f in shards.futures for w in where[f.key]}) == 2
            states = ledger.states(a.id for a in acqs)
            report, order, in_flight = RunReport(), [], []

            def record(a, res: ApplyResult) -> None:
                order.append(a.id)
                life.applied(a, res, states, set(), report, BAR)

            sequencer, applies = TileSequencer(acqs), ShardApplies(shards)
            while sequencer.pending or applies.applying:
                applies.send_ready(sequencer, states, report)
                in_flight.append(len(applies.applying))
                applies.collect(report, record, block=True)
            assert order == [a.id for a in sorted(acqs, key=lambda a: a.datetime)]
            assert max(in_flight) == 1  # one tile: one apply at a time
            assert report.applied == 3 and shards.missing_from_state() == []
            assert set(ledger.states(a.id for a in acqs).values()) == {State.APPLIED}
        finally:
            shards.release()
        # the tiles' state lost (a volume restored from before the run): new shards load
        # nothing and lack what the ledger has as applied
        shutil.rmtree(cfg.layout.state_dir)
        fresh = StatsShards(cfg, cluster_client, "parts-b", _model_id(cfg), ledger)
        try:
            states = {}
            replay = fresh.replay_plan(states)
            assert [a.id for a in replay] == [a.id for a in acqs]
            assert set(states.values()) == {State.EMBEDDED}
            report = RunReport()
            fresh.heal(report)  # every shard answers: none recreated
            assert report.actors_recreated == 0
            res = fresh.actor_for(acqs[0].tile).apply(acqs[0].tile, acqs[0].id).result()
            assert res.status == ApplyStatus.APPLIED
            assert [a.id for a in fresh.missing_from_state()] == [a.id for a in acqs[1:]]
        finally:
            fresh.release()
