"""The monitoring daemon as a user runs it: a real process polling a folder, stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from streamembed.sources.synthetic import generate


def _applied(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM acquisitions WHERE state='applied'").fetchone()[0]
        )


def _wait(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the monitor")


def test_monitor_picks_up_new_items_and_stops_cleanly(tmp_path):
    archive = tmp_path / "archive"
    items, _ = generate(archive, days=60, revisit_days=10, tile_px=256, n_tiles=1, seed=3)
    folders = sorted(p for p in (items / "33UWP").iterdir() if p.is_dir())
    watched = tmp_path / "watched"
    watched.mkdir()
    for f in folders[:3]:
        shutil.copytree(f, watched / f.name)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "STREAMEMBED__MODEL__ARCH": "resnet18",
        "STREAMEMBED__CLUSTER__N_WORKERS": "1",
        "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
    }
    cmd = [
        sys.executable,
        "-m",
        "streamembed.cli",
        "monitor",
        "--source",
        str(watched),
        "--output",
        str(out),
        "--poll-seconds",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        ledger = out / "ledger.sqlite"
        _wait(lambda: _applied(ledger) == 3, 120, proc)
        for f in folders[3:]:  # a later publication batch
            shutil.copytree(f, watched / f.name)
        _wait(lambda: _applied(ledger) == len(folders), 120, proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "monitor stopped; state checkpointed." in output
    assert (out / "state" / "33UWP.npz").exists()
    assert _applied(out / "ledger.sqlite") == len(folders) == 6
