"""`streamembed backfill` as an operator's script runs it, in a subprocess: exit codes that tell
the truth, a source that yields nothing saying what it found instead, symlinked folders
followed, and the filter flags overriding config.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamembed.harness.synthetic import generate

ENV = {
    **os.environ,
    "STREAMEMBED__MODEL__ARCH": "resnet18",
    "STREAMEMBED__CLUSTER__N_WORKERS": "1",
    "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
}


def _backfill(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streamembed.cli", "backfill", "--no-progress", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Four looks of one 128 px tile, 10 days apart (2024-01-03 … 2024-02-02)."""
    items, _ = generate(
        tmp_path_factory.mktemp("cli"), days=40, revisit_days=10, tile_px=128, n_tiles=1
    )
    return items


def test_a_missing_folder_is_refused_before_any_cluster(tmp_path):
    run = _backfill("--source", tmp_path / "nowhere", "--output", tmp_path / "out", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "does not exist" in run.stderr and "Dask dashboard" not in run.stdout


def test_an_empty_folder_says_so_and_exits_4(tmp_path):
    (tmp_path / "empty").mkdir()
    run = _backfill("--source", tmp_path / "empty", "--output", tmp_path / "out", cwd=tmp_path)
    assert run.returncode == 4, run.stdout + run.stderr
    assert "no STAC item (*.json) or SAFE product" in run.stdout
    assert "the folder is empty" in run.stdout


def test_a_folder_of_other_files_names_what_it_found(tmp_path):
    other = tmp_path / "rasters"
    other.mkdir()
    for name in ("a.tif", "b.tif", "notes.txt"):
        (other / name).write_text("x")
    run = _backfill("--source", other, "--output", tmp_path / "out", cwd=tmp_path)
    assert run.returncode == 4
    assert "found instead: 2 .tif, 1 .txt file(s)" in run.stdout


def test_symlinked_acquisition_folders_are_followed_and_a_loop_ends(archive, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for folder in sorted((archive / "33UWP").iterdir()):
        (links / folder.name).symlink_to(folder, target_is_directory=True)
    (links / "loop").symlink_to(links, target_is_directory=True)
    run = _backfill("--source", links, "--output", tmp_path / "out", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 acquisitions in the source, 4 new this run." in run.stdout
    assert "applied 4" in run.stdout


def test_a_failed_look_exits_3_and_retry_after_mending_exits_0(archive, tmp_path):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(archive, data)
    item = sorted(data.rglob("*.json"))[2]
    doc = json.loads(item.read_text())
    band = item.parent / doc["assets"]["B04_10m"]["href"]
    good = band.read_bytes()
    band.write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    run = _backfill("--source", data, "--output", out, cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert "1 acquisition(s) failed (exit 3)" in last
    assert f"streamembed status --failed --output {out}" in last and "--retry-failed" in last
    band.write_bytes(good)
    again = _backfill("--source", data, "--output", out, "--retry-failed", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "failed 0" in again.stdout


@pytest.mark.parametrize(
    ("flags", "kept", "removed_by"),
    [
        (("--tiles", "32UPC"), 0, "source.tiles removed 4"),
        (("--start", "2024-01-10", "--end", "2024-01-25"), 2, None),
        (("--end", "2023-12-31"), 0, "source.start/end removed 4"),
        (("--bbox=-10,-10,-9,-9",), 0, "source.bbox removed 4"),
        (("--max-cloud-cover", "100"), 4, None),
    ],
)
def test_filter_flags_override_the_config(archive, tmp_path, flags, kept, removed_by):
    run = _backfill("--source", archive, "--output", tmp_path / "out", *flags, cwd=tmp_path)
    if kept:
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"{kept} acquisitions in the source" in run.stdout
    else:
        assert run.returncode == 4, run.stdout + run.stderr
        assert "4 acquisition(s), 0 unreadable" in run.stdout
        assert removed_by in run.stdout


def test_exit_codes_are_in_help(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "streamembed.cli", "backfill", "--help"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "3 some acquisitions failed" in text and "4 the source yielded nothing" in text


def test_dry_run_lists_the_work_and_writes_nothing(archive, tmp_path):
    out = tmp_path / "out"
    run = _backfill("--source", archive, "--output", out, "--dry-run", "--start", "2024-01-10",
                    cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        "3 acquisitions in the source (0 unreadable), 0 already done or failed, 3 to process"
        in (run.stdout)
    )
    assert "33UWP                3  2024-01-13 .. 2024-02-02" in run.stdout
    assert "GiB" in run.stdout and "core-seconds" in run.stdout
    assert "Dask dashboard" not in run.stdout and not out.exists()


def test_monitor_dry_run_says_what_the_next_poll_folds_in_late(archive, tmp_path):
    """After a backfill of the three later looks, one monitor poll would process the first
    look: older than the tile's newest applied one, so folded in by a rewind."""
    out = tmp_path / "out"
    done = _backfill("--source", archive, "--output", out, "--start", "2024-01-10", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    cmd = [sys.executable, "-m", "streamembed.cli", "monitor", "--dry-run", "--source",
           str(archive), "--output", str(out)]  # fmt: skip
    before = sorted(p.name for p in out.rglob("*"))
    run = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dry run of the next monitor poll: 4 acquisitions" in run.stdout
    assert "3 already done or failed, 1 to process" in run.stdout
    assert "1 of them older than their tile's newest applied look: folded in" in run.stdout
    assert "allowed_lateness_days (30) back" in run.stdout
    assert "33UWP                1  2024-01-03 .. 2024-01-03" in run.stdout
    assert "Dask dashboard" not in run.stdout
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written


def test_synth_tiles_is_a_count_not_the_backfill_filter(tmp_path):
    """`synth --tiles N` (how many tiles to write) is not read as the filter flag of the same
    name that backfill and monitor take."""
    cmd = [sys.executable, "-m", "streamembed.cli", "synth", str(tmp_path / "a"), "--tiles", "3",
           "--days", "5", "--tile-px", "128"]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len({p.parent.parent.name for p in (tmp_path / "a").rglob("*.json")}) == 3
