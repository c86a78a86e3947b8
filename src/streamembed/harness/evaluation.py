"""``streamembed evaluate --scenarios``: every detector on every synthetic scenario, side by side.

For each scenario (harness/scenarios.py): write its archive once (real COGs + STAC items +
truth), backfill it with the runtime's configuration on one local cluster (the real pipeline:
encoder, Zarr store, statistics actor, GeoParquet), then replay the stored acquisitions
through each detector (replay.py) and score the confirmed alerts (evaluate.score_replay).
The encoding is done once per scenario; the detectors differ only in what they do with it.
``make evaluate`` writes docs/evaluation.md and one map per scenario from this.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np

from ..config import Config
from ..outputs.sink import read_anomalies
from ..outputs.store import EmbeddingStore
from .alert_scores import AlertScore, score_alerts
from .evaluate import DetectorScore, score_replay
from .replay import DETECTORS, Replay, replay_tile
from .scenarios import SCENARIOS, scenario

EVENT_ORDER = ("flood", "burn", "clear-cut", "construction")


def known_scenario(name: str) -> None:
    """Raise a clear error for a name that is neither a scenario of the set nor
    ``fieldsim-<seed>``."""
    from . import fieldsim

    if fieldsim.seed_of(name) is None:
        scenario(name)


@dataclass(frozen=True)
class ScenarioRun:
    name: str
    replays: dict[str, Replay]
    scores: dict[str, DetectorScore]
    reproduces_backfill: bool  # the configured detector's replay has the backfill's anomalies
    seconds: float
    archive_written: bool  # False: the archive of an earlier run was reused
    alerts: dict[str, AlertScore] = field(default_factory=dict)  # user's/producer's accuracy

    @property
    def split(self) -> str:
        """``tuning``, ``held-out`` or ``extra`` (fieldsim seeds), or ``set`` (the scenario set)."""
        from . import fieldsim

        seed = fieldsim.seed_of(self.name)
        return "set" if seed is None else fieldsim.split_of(seed)


def _write_archive(args: tuple[str, str, int, int, int]) -> str:
    from . import fieldsim
    from .synthetic import generate

    name, out, tile_px, revisit, seed = args
    world_seed = fieldsim.seed_of(name)
    if world_seed is not None:  # the second generator: the name carries its seed
        fieldsim.generate(out, world_seed, size=tile_px, revisit_days=revisit)
    else:
        generate(out, revisit_days=revisit, tile_px=tile_px, seed=seed, scenario=scenario(name))
    (Path(out) / "complete").write_text(dt.datetime.now(dt.timezone.utc).isoformat())
    return name


def write_archives(
    names: Sequence[str], data: Path, tile_px: int, revisit: int, seed: int, workers: int
) -> list[str]:
    """The scenarios' archives that are missing, written side by side (one process each);
    returns the names written."""
    todo = [n for n in names if not (data / n / "complete").exists()]
    if not todo:
        return []
    print(f"writing {len(todo)} scenario archive(s) to {data} …", flush=True)
    jobs = [(n, str(data / n), tile_px, revisit, seed) for n in todo]
    with concurrent.futures.ProcessPoolExecutor(max(1, min(workers, len(jobs)))) as pool:
        for name in pool.map(_write_archive, jobs):
            print(f"  {name}: written", flush=True)
    return todo


def run_scenarios(
    cfg: Config,
    work: Path,
    names: Sequence[str] = tuple(SCENARIOS),
    detectors: Sequence[str] = DETECTORS,
    tile_px: int = 512,
    revisit: int = 5,
    seed: int = 42,
    progress: bool = True,
    runs_dir: str = "runs",
) -> list[ScenarioRun]:
    """Archives, one backfill each, replays and scores; the archives are reused next time."""
    from ..deployment.cluster import make_client
    from ..runtime.pipeline import Pipeline

    for n in names:
        known_scenario(n)  # an unknown name fails here, before anything runs
    data, runs = work / "data", work / runs_dir
    fresh = set(write_archives(names, data, tile_px, revisit, seed, workers=2))
    out: list[ScenarioRun] = []
    with make_client(cfg.cluster) as client:
        for name in names:
            t0 = time.perf_counter()
            run_cfg = cfg.with_overrides(
                **{"source.path": str(data / name / "items"), "output": str(runs / name)}
            )
            # A fresh run each time: a run left by an earlier evaluation would resume with
            # nothing to do, and its embeddings would be another encoder's or runtime's.
            shutil.rmtree(runs / name, ignore_errors=True)
            print(f"{name}: backfill {data / name / 'items'} -> {runs / name}", flush=True)
            pipe = Pipeline(run_cfg, client)
            try:
                pipe.run(progress=progress)
            finally:
                pipe.close()
            seconds = time.perf_counter() - t0
            out.append(_score(name, run_cfg, data / name, detectors, seconds, name in fresh))
            print("  " + _summary(out[-1]), flush=True)
    return out


def _score(
    name: str, cfg: Config, data: Path, detectors: Sequence[str], seconds: float, written: bool
) -> ScenarioRun:
    truth = gpd.read_parquet(data / "truth.parquet")
    store = EmbeddingStore(cfg.layout.store, cfg.store)
    tiles = store.tiles()
    if len(tiles) != 1:  # the scenario set is one tile each (harness/scenarios.py)
        raise ValueError(f"scenario {name}: expected one tile in {store.root}, found {tiles}")
    replays = replay_tile(store, tiles[0], detectors, cfg.stats)
    scores = {det: score_replay(rep, truth, name) for det, rep in replays.items()}
    alerts = {det: score_alerts(rep, truth, name) for det, rep in replays.items()}
    rows = read_anomalies(cfg.layout.anomalies)
    default = replays.get(cfg.stats.detector)
    same = default is not None and _same_rows(default, rows)
    return ScenarioRun(name, replays, scores, same, seconds, written, alerts)


def _same_rows(replay: Replay, rows: gpd.GeoDataFrame) -> bool:
    """Whether the replay has exactly the backfill's rows: (acquisition, cell, kind, status)."""
    from ..detection.alerts import STATUS_NAMES

    nx = replay.shape[1]
    t, c = np.nonzero(replay.row)
    mine = {
        (replay.acquisition_ids[i], int(j // nx), int(j % nx), "sudden",
         STATUS_NAMES[replay.status[i, j]])
        for i, j in zip(t, c, strict=True)
    }  # fmt: skip
    t, c = np.nonzero(replay.gradual_row)
    mine |= {
        (replay.acquisition_ids[i], int(j // nx), int(j % nx), "gradual",
         "confirmed" if replay.gradual[i, j] else "recovered")
        for i, j in zip(t, c, strict=True)
    }  # fmt: skip
    kinds = rows["kind"].fillna("sudden") if "kind" in rows else ["sudden"] * len(rows)
    written = set(
        zip(rows["acquisition_id"], rows["cell_y"].astype(int), rows["cell_x"].astype(int),
            kinds, rows["status"], strict=True)
    )  # fmt: skip
    return mine == written


def _summary(run: ScenarioRun) -> str:
    parts = []
    for det, s in run.scores.items():
        f1 = " ".join(f"{e}:{s.events[e].f1:.2f}" for e in EVENT_ORDER if e in s.events)
        parts.append(f"{det}: F1 {f1}, false looks {100 * s.false_look_rate:.3f}%")
    return "; ".join(parts)


@dataclass(frozen=True)
class EncoderRuns:
    """The scenario set run again with another (seeded) encoder, for the per-encoder table."""

    arch: str
    dim: int
    runs: list[ScenarioRun]


def run_encoders(
    cfg: Config, work: Path, archs: Sequence[str], names: Sequence[str], progress: bool = True,
    configured: list[ScenarioRun] | None = None,
) -> list[EncoderRuns]:  # fmt: skip
    """The embedding detectors on every scenario once per encoder in ``archs`` (the configured
    one's runs reused); the index detector does not depend on the encoder."""
    from ..runtime.backbones import EMBEDDING_DIM

    dets = [d for d in DETECTORS if d != "index"]
    out = []
    for arch in archs:
        if arch == cfg.model.arch and configured is not None:
            runs = configured
        else:
            print(f"encoder {arch}: the scenario set again", flush=True)
            runs = run_scenarios(cfg.with_overrides(**{"model.arch": arch}), work, names, dets,
                                 progress=progress, runs_dir=f"runs-{arch}")  # fmt: skip
        out.append(EncoderRuns(arch, EMBEDDING_DIM[arch], runs))
    return out
