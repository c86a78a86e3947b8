"""Fuzzed items and rasters (Hypothesis, tests/fuzz.py): every case is applied or ends as a
ledger row with a one-line reason; never a traceback, a hang or a lost good acquisition.

`make test` runs a bounded, repeatable number of cases; `make test-faults` (FUZZ_SCALE=4)
more, drawn afresh. Each suite prints how many cases it ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamembed.harness.synthetic import generate
from streamembed.outputs.ledger import Ledger, State
from streamembed.sources.items import Discovery
from streamembed.sources.reach import Reach
from tests.fuzz import (
    ItemCase,
    RasterCase,
    collect_settings,
    dumps,
    fuzz_settings,
    fuzzed_items,
    fuzzed_rasters,
    write_raster,
)

PARSE_SECONDS = 2.0  # the bound on one item's parse
RUN_SECONDS_PER_CASE = 20.0  # ... and on one case's share of a backfill


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-archive")
    generate(root, days=40, revisit_days=10, tile_px=128, n_tiles=1, seed=21)
    return root


def _template(archive: Path) -> tuple[Path, dict[str, Any]]:
    path = sorted((archive / "items").rglob("*.json"))[0]
    doc = json.loads(path.read_text())
    for asset in doc["assets"].values():  # absolute, so a copy may live anywhere
        asset["href"] = str((path.parent / asset["href"]).resolve())
    return path, doc


def _one_line(reason: str) -> bool:
    return bool(reason.strip()) and "\n" not in reason and "Traceback" not in reason


def test_fuzzed_items_parse_or_fail_with_one_line(archive, capsys):
    """Each fuzzed item through discovery, as a remote catalogue's (reach checked) and as a
    local file: an acquisition or a source failure with a one-line reason, in bounded time."""
    _, template = _template(archive)
    counter = iter(range(10**6))
    ran = []

    @given(st.data())
    @fuzz_settings(300, deadline_ms=int(PARSE_SECONDS * 1000))
    def check(data: st.DataObject) -> None:
        case: ItemCase = data.draw(fuzzed_items(template, f"fuzz-{next(counter)}"))
        ran.append(case)
        for reach in (None, Reach.for_source("https://stac.example.com", True, ("*",))):
            found = Discovery("auto", ("B02", "B03", "B04", "B08"), None, reach)
            t0 = time.perf_counter()
            acq = found.parse(case.doc, "https://stac.example.com/items/x")
            assert time.perf_counter() - t0 < PARSE_SECONDS
            if acq is None:
                (failure,) = found.failures
                assert _one_line(failure.reason), (case.mutations, failure.reason)
            elif reach is not None:  # a remote item's assets were all checked
                assert all(reach.refusal(a.href) is None for a in acq.assets.values())

    check()
    with capsys.disabled():
        print(f"\nfuzzed items through discovery: {len(ran)} cases")
    assert len(ran) >= 100


@pytest.mark.parametrize(
    "bad_id", ["../../../tmp/escape", "a/b", "x\ny", "", " S2A", "é", "a" * 201]
)
def test_ids_that_would_name_files_outside_the_output_are_refused(archive, bad_id):
    _, template = _template(archive)
    doc = {**template, "id": bad_id}
    found = Discovery("auto", ("B02",))
    assert found.parse(doc, "https://stac.example.com/items/x") is None
    (failure,) = found.failures
    assert _one_line(failure.reason)
    assert "product id" in failure.reason or "not a STAC Item" in failure.reason


RASTER_BANDS = ("B02_10m", "B04_10m", "B08_10m", "B11_20m", "SCL_20m", "B01_60m")


def test_fuzzed_items_and_rasters_through_one_backfill(archive, tmp_path, capsys):
    """Good acquisitions beside fuzzed items and items whose band rasters are fuzzed, in one
    `streamembed backfill`: the good ones applied, each fuzzed one applied or a ledger row
    with a one-line reason, no traceback, within a time bound."""
    _, template = _template(archive)
    source = tmp_path / "items"
    good = []
    for path in sorted((archive / "items").rglob("*.json")):
        doc = json.loads(path.read_text())
        for asset in doc["assets"].values():
            asset["href"] = str((path.parent / asset["href"]).resolve())
        (source / "good").mkdir(parents=True, exist_ok=True)
        (source / "good" / path.name).write_text(json.dumps(doc))
        good.append(doc["id"])
    fuzz = source / "fuzz"
    fuzz.mkdir()
    item_cases: list[tuple[Path, ItemCase]] = []
    raster_cases: list[tuple[str, str, RasterCase]] = []

    def when(i: int) -> str:  # a sensing time no good acquisition has
        return f"2024-06-{1 + i // 600:02d}T{(i // 60) % 10:02d}:{i % 60:02d}:00Z"

    @given(st.data())
    @collect_settings(24)
    def draw_items(data: st.DataObject) -> None:
        i = len(item_cases)
        base = {**template, "properties": {**template["properties"], "datetime": when(i)}}
        case = data.draw(fuzzed_items(base, f"S2B_MSIL2A_FUZZITEM{i:04d}_T33UWP"))
        path = fuzz / f"item-{i:04d}.json"
        path.write_text(dumps(case.doc))
        item_cases.append((path, case))

    @given(fuzzed_rasters(), st.sampled_from(RASTER_BANDS))
    @collect_settings(16)
    def draw_rasters(case: RasterCase, key: str) -> None:
        i = len(raster_cases)
        doc = json.loads(json.dumps(template))
        doc["id"] = f"S2B_MSIL2A_FUZZRASTER{i:04d}_T33UWP"
        doc["properties"]["datetime"] = when(1000 + i)
        raster = fuzz / f"raster-{i:04d}-{key}.tif"
        write_raster(case, raster, seed=i)
        doc["assets"][key]["href"] = str(raster)
        (fuzz / f"raster-{i:04d}.json").write_text(json.dumps(doc))
        raster_cases.append((doc["id"], key, case))

    draw_items()
    draw_rasters()
    n_cases = len(item_cases) + len(raster_cases)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "streamembed.cli", "backfill", "--no-progress", "--source",
           str(source), "--output", str(out)]  # fmt: skip
    env = {**os.environ, "STREAMEMBED__MODEL__ARCH": "resnet18",
           "STREAMEMBED__CLUSTER__N_WORKERS": "2", "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0"}  # fmt: skip
    bound = 120 + RUN_SECONDS_PER_CASE * n_cases
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=bound)
    seconds = time.perf_counter() - t0
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    # (Dask's worker logs each failed task with its frames: that is a log line, not a crash)
    assert "Traceback (most recent call last)" not in proc.stdout + proc.stderr, proc.stderr[-3000:]

    with Ledger(out / "ledger.sqlite") as ledger:
        rows = {r.id: r for r in ledger.rows()}
        source_failures = {href: (key, reason) for key, href, reason in ledger.source_failures()}
    assert all(rows[i].state == State.APPLIED for i in good), "a good acquisition was lost"

    def settled(row_id: str | None, path: Path) -> str:
        if row_id in rows:
            row = rows[row_id]
            if row.state == State.APPLIED:
                return "applied"
            assert row.state == State.FAILED and row.failure_class, row
            assert _one_line(row.reason or ""), row
            return f"failed:{row.failure_class}"
        assert str(path) in source_failures, f"{path} left no ledger row"
        assert _one_line(source_failures[str(path)][1]), source_failures[str(path)]
        return "source"

    outcomes: dict[str, int] = {}
    for path, case in item_cases:
        doc_id = case.doc.get("id") if isinstance(case.doc.get("id"), str) else None
        try:
            outcome = settled(doc_id, path)
        except AssertionError as err:
            raise AssertionError(f"{case.mutations}: {err}") from None
        outcomes[f"item {outcome}"] = outcomes.get(f"item {outcome}", 0) + 1
    for row_id, key, case in raster_cases:
        try:
            outcome = settled(row_id, fuzz / "unused")
        except AssertionError as err:
            raise AssertionError(f"{key} {case.describe()}: {err}") from None
        outcomes[f"raster {outcome}"] = outcomes.get(f"raster {outcome}", 0) + 1
    # An unclassified failure means an error no check anticipated: name it, so it gets one.
    other = [r.reason for r in rows.values() if r.failure_class == "other"]
    assert not other, other[:5]
    with capsys.disabled():
        print(f"\nfuzzed backfill: {len(item_cases)} item cases, {len(raster_cases)} raster "
              f"cases beside {len(good)} good acquisitions in {seconds:.0f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))  # fmt: skip
