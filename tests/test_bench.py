"""`streamembed bench` on a tiny profile produces a valid record, a RESULTS.md row and a plot
(not timed: the numbers are only checked for being measured and consistent)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from streamembed.harness.bench import BenchRecord, table_row, update_results_md
from streamembed.harness.bench.measure import stats_bandwidth
from streamembed.harness.bench.records import Hardware, PipelineRun


def test_bench_command_on_a_tiny_profile(tmp_path):
    profile = {
        "model": {"arch": "resnet18", "device": "cpu", "torch_threads": 1},
        "bench": {
            "label": "tiny",
            "data": str(tmp_path / "data"),
            "tile_px": 128,
            "acquisitions": 3,
            "workers": [1],
            "long_acquisitions": 8,
            "long_tile_px": 64,
            "stats_dims": [16],
            "stats_cells": 256,
            "memory_sample_seconds": 0.2,
            "read_paths_scenes": 2,
            "results_md": str(tmp_path / "RESULTS.md"),
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "results"
    env = {**os.environ, "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0"}
    cmd = [
        sys.executable,
        "-m",
        "streamembed.cli",
        "bench",
        "--config",
        str(tmp_path / "tiny.yaml"),
    ]
    cmd += ["--output", str(out), "--plot"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("tiny-*.json")
    rec = json.loads(path.read_text())
    assert BenchRecord.read(path).top_run.workers == 1  # the typed reader reads what was written
    assert rec["schema"] == "streamembed-bench/1" and rec["label"] == "tiny"
    assert rec["hardware"]["cores"] >= 1 and rec["software"]["torch"]
    assert rec["config"]["model"]["arch"] == "resnet18"
    (run,) = rec["runs"]
    assert run["workers"] == 1 and run["acquisitions"] == 3 and run["failed"] == 0
    assert run["acquisitions_per_s"] > 0 and run["cells_per_s"] > 0 and run["km2_per_s"] > 0
    assert math.isclose(
        run["acquisitions_per_s"] / run["raw_bound_acquisitions_per_s"],
        run["share_of_raw_encoder"],
    )
    assert rec["pipeline_share_of_raw_encoder"] == run["share_of_raw_encoder"]
    for stage in ("read_decode_resample", "mask_normalise", "encode", "store_write",
                  "stats_apply", "sink_write"):  # fmt: skip
        assert run["stage_seconds"][stage] > 0, stage
    assert run["task_compute_seconds"]["read"] > 0 and run["task_compute_seconds"]["encode"] > 0
    assert run["peak_worker_memory_mib"] > 50
    assert rec["raw_encoder"]["acquisitions"] == 3 and rec["raw_encoder"]["seconds"] > 0
    long = rec["long_backfill"]
    assert long["acquisitions"] == 8 and len(long["worker_memory_quarter_peaks_mib"]) == 4
    assert {(s["dim"], s["embedding_dtype"]) for s in rec["stats_core"]} == {
        (16, "float32"),
        (16, "float16"),
    }
    assert all(s["cell_updates_per_s_per_core"] > 0 for s in rec["stats_core"])
    if not rec["hardware"]["gpus"]:
        assert rec["gpu_measured"] is False and "not measured" in rec["gpu_note"]
        assert run["gpu_utilisation_percent"] is None
    # odc-stac (a dev dependency) reads the same scenes to the same values
    assert rec["read_paths"]["scenes"] == 2 and rec["read_paths"]["values_equal"] is True
    assert rec["read_paths"]["ours_seconds"] > 0 and rec["read_paths"]["odc_stac_seconds"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.count("| tiny |") == 1
    assert (out / "benchmarks.png").stat().st_size > 10_000


def _run(**kw) -> PipelineRun:
    base = dict(
        workers=2, acquisitions=4, failed=0, wall_seconds=4.0, acquisitions_per_s=1.0,
        km2_per_s=26.2, cells_per_s=256.0, stage_seconds={}, task_compute_seconds={},
        peak_worker_memory_mib=900.0, worker_memory_quarter_peaks_mib=[], anomaly_rows=0,
        gpu_utilisation_percent=None, stats_cell_updates=0, stats_cell_updates_per_busy_s=None,
        raw_bound_acquisitions_per_s=1.1, share_of_raw_encoder=0.91,
    )  # fmt: skip
    return PipelineRun(**{**base, **kw})


def test_results_table_keeps_one_row_per_profile(tmp_path):
    rec = BenchRecord(
        label="p",
        time="2026-11-25T00:00:00+00:00",
        hardware=Hardware("x", 2, 8.0, ()),
        software={},
        config={},
        gpu_measured=False,
        runs=(_run(),),
        stats_core=(
            stats_bandwidth(8, 64, repeats=2),
            stats_bandwidth(8, 64, repeats=2, dtype="float16"),
        ),
        bottleneck_stage="read_decode_resample",
        long_backfill=_run(memory_first_to_last_quarter_change=0.01),
    )
    path = tmp_path / "R.md"
    update_results_md(path, rec)
    update_results_md(path, dataclasses.replace(rec, label="q"))
    update_results_md(path, rec)
    text = path.read_text()
    assert text.count("| p |") == 1 and text.count("| q |") == 1
    assert table_row(rec) in text and "91%" in table_row(rec) and "+1.0%" in table_row(rec)
    half = rec.stats_core[1]
    assert f"{half.cell_updates_per_s_per_core:.3g} ({half.share_of_copy:.0%})" in text
    assert BenchRecord.from_json(rec.to_json()) == rec  # JSON round trip keeps every field


def test_committed_records_still_read():
    """Every record in benchmarks/results (older ones lack later fields) reads as a record."""
    from streamembed.harness.bench.many_tiles import SCHEMA as MANY_TILES
    from streamembed.harness.bench.many_tiles import from_record

    results = Path(__file__).parents[1] / "benchmarks" / "results"
    paths = sorted(results.glob("*.json"))
    scale = [p for p in paths if json.loads(p.read_text()).get("schema") == MANY_TILES]
    assert scale and all(s.acquisitions > 0 for p in scale for s in from_record(p))
    records = [BenchRecord.read(p) for p in paths if p not in scale]
    assert records and all(r.schema == "streamembed-bench/1" for r in records)
    measured = [r for r in records if r.runs]
    assert measured and all(r.top_run.acquisitions_per_s > 0 for r in measured)
    assert all(isinstance(r.hardware, Hardware) for r in records)
