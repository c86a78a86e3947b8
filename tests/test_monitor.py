"""The monitoring daemon as a user runs it: a real process polling a folder, stopped by SIGTERM."""

from __future__ import annotations

import shutil

from streamembed.harness.synthetic import generate
from tests.daemon import count_states, monitor_process, stop, wait_until


def test_monitor_picks_up_new_items_and_stops_cleanly(tmp_path):
    archive = tmp_path / "archive"
    items, _ = generate(archive, days=60, revisit_days=10, tile_px=256, n_tiles=1, seed=3)
    folders = sorted(p for p in (items / "33UWP").iterdir() if p.is_dir())
    watched = tmp_path / "watched"
    watched.mkdir()
    for f in folders[:3]:
        shutil.copytree(f, watched / f.name)
    out = tmp_path / "out"
    ledger = out / "ledger.sqlite"
    with monitor_process(str(watched), out) as proc:
        wait_until(lambda: count_states(ledger, "applied") == 3, 120, proc)
        for f in folders[3:]:  # a later publication batch
            shutil.copytree(f, watched / f.name)
        wait_until(lambda: count_states(ledger, "applied") == len(folders), 120, proc)
        output = stop(proc)
    assert proc.returncode == 0, output
    assert "monitor stopped; state checkpointed." in output
    assert (out / "state" / "33UWP.npz").exists()
    assert count_states(ledger, "applied") == len(folders) == 6
