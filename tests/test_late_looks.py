"""Late and retried looks: the store's time axis stays real and sorted, and a look folded in
late (a retry after mending, a product published after newer ones) leaves the store, the
anomalies and the alert tables equal to a run that had every look in order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from streamembed.outputs.ledger import Ledger
from tests.daemon import Receiver, count_states, monitor_process, stop, wait_until
from tests.kill_series import N_ACQUISITIONS, SERIES_ENV, backfill, outputs


def _looks(items: Path) -> list[Path]:
    """The series' acquisition folders in sensing order."""
    return sorted(p.parent for p in items.rglob("*.json"))


def _plain_reader_times(out: Path) -> np.ndarray:
    """The tile as anyone opens it: no options, no streamembed."""
    (tile,) = [p for p in (out / "embeddings.zarr").iterdir() if p.is_dir()]
    ds = xr.open_zarr(tile)
    return ds.time.values


def _alerts(out: Path) -> pd.DataFrame:
    (table,) = (out / "alerts").rglob("alerts.parquet")
    return pd.read_parquet(table).drop(columns="geometry")


def _assert_equal_outputs(out: Path, reference: Path, ref_ids, ref_embedding, ref_rows) -> None:
    ids, embedding, rows, _ = outputs(out)
    assert ids == ref_ids, "each look stored exactly once"
    assert np.array_equal(embedding, ref_embedding), "embeddings bit for bit"
    pd.testing.assert_frame_equal(rows, ref_rows, check_exact=True)  # every row, any status
    pd.testing.assert_frame_equal(_alerts(out), _alerts(reference), check_exact=True)
    times = _plain_reader_times(out)
    assert len(times) == N_ACQUISITIONS and (np.diff(times) > np.timedelta64(0)).all()
    assert np.array_equal(times, _plain_reader_times(reference))
    assert times.min() > np.datetime64("2000-01-01")  # no phantom 1970 step


def test_a_retry_after_mending_equals_a_clean_run(failed_look, kill_reference, tmp_path):
    """A corrupt band fails its look (exit 3): the plain reader sees the other looks in order
    and no phantom step; after mending, --retry-failed folds the look in where it belongs (its
    tile rewound and the looks after it replayed) and every output equals the clean run's."""
    data0, out0, band, good = failed_look
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(data0, data)
    shutil.copytree(out0, out)
    band = data / band
    times = _plain_reader_times(out)
    assert len(times) == N_ACQUISITIONS - 1 and (np.diff(times) > np.timedelta64(0)).all()
    assert times.min() > np.datetime64("2000-01-01")
    with Ledger(out / "ledger.sqlite") as ledger:
        (failed,) = [r.id for r in ledger.rows("failed")]
    band.write_bytes(good)
    code, log = backfill(data, out, args=("--retry-failed",))
    assert code == 0 and "failed 0" in log, log
    assert f"revised: {N_ACQUISITIONS - 4} applied acquisitions replayed" in log, log
    reference, ref_ids, ref_embedding, ref_rows = kill_reference
    _assert_equal_outputs(out, reference, ref_ids, ref_embedding, ref_rows)
    with Ledger(out / "ledger.sqlite") as ledger:
        revised = ledger.revisions()
        counts = {r.id: r.n_anomalies for r in ledger.rows("applied")}
    assert len(revised) == N_ACQUISITIONS - 4
    assert {r[1] for r in revised} == {failed}
    with Ledger(reference / "ledger.sqlite") as ledger:
        ref_counts = {r.id: r.n_anomalies for r in ledger.rows("applied")}
    assert counts == ref_counts  # the ledger's row counts revised


def test_the_daemon_fed_a_shuffled_publication_order_equals_the_in_order_backfill(
    kill_series, kill_reference, tmp_path
):
    """Products published out of order (late looks within the allowed lateness, one of them
    the first look with anomaly rows): the daemon folds each in when it comes, and ends with
    the in-order backfill's outputs."""
    reference, ref_ids, ref_embedding, ref_rows = kill_reference
    looks = _looks(kill_series)
    first_rows = sorted(set(ref_rows.acquisition_id))[0]
    with Ledger(reference / "ledger.sqlite") as ledger:
        ids = [r.id for r in sorted(ledger.rows(), key=lambda r: r.datetime)]
    event = ids.index(first_rows)
    assert 3 <= event < N_ACQUISITIONS - 2, event
    order = [i for i in range(N_ACQUISITIONS) if i not in (event, N_ACQUISITIONS - 2)]
    # the event's first look after the (up to two) looks that follow it; the next-to-last
    # after the last
    at = sum(1 for i in order if i <= event + 2)
    batches = [order[:at], [event], order[at:], [N_ACQUISITIONS - 2]]
    watched = tmp_path / "watched"
    watched.mkdir()
    out = tmp_path / "out"
    receiver = Receiver(failures=0)
    env = {
        **SERIES_ENV,
        "STREAMEMBED__CLUSTER__N_WORKERS": "2",
        "STREAMEMBED__DAEMON__WEBHOOK__URL": receiver.url,
    }
    with monitor_process(str(watched), out, extra_env=env) as proc:
        done = 0
        for batch in batches:
            for i in batch:
                shutil.copytree(looks[i], watched / looks[i].name)
            done += len(batch)
            wait_until(lambda n=done: count_states(out / "ledger.sqlite", "applied") == n,
                       180, proc)  # fmt: skip
        per_look = ref_rows.groupby("acquisition_id").size().to_dict()
        wait_until(lambda: _webhook_view(receiver) == per_look, 60, proc)
        output = stop(proc)
    receiver.close()
    assert proc.returncode == 0, output
    _assert_equal_outputs(out, reference, ref_ids, ref_embedding, ref_rows)
    # a receiver that keeps each acquisition's latest payload holds the current rows: the
    # looks the late ones were folded in before were announced again as "revised"
    events = [body["event"] for _, _, body in receiver.posts]
    assert "revised" in events and set(events) == {"new", "revised"}
    with Ledger(out / "ledger.sqlite") as ledger:
        assert {by for _, by, _, _ in ledger.revisions()} == {ids[event], ids[N_ACQUISITIONS - 2]}


def _webhook_view(receiver: Receiver) -> dict[str, int]:
    """Each acquisition's rows by the latest payload the webhook received (none left: gone)."""
    latest: dict[str, int] = {}
    for key, code, body in receiver.posts:
        if code == 200:
            feats = body["features"]
            latest[key.split(":")[0]] = feats[0]["properties"]["rows"] if feats else 0
    return {k: v for k, v in latest.items() if v}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streamembed.cli", *args]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_a_look_past_the_lateness_stays_late_until_rebuild(kill_series, kill_reference, tmp_path):
    """The daemon with no lateness allowed leaves a look published after newer ones `late`
    (stored, sorted into the time axis, not in the statistics); `streamembed rebuild --tile`
    folds it in and the outputs equal the in-order backfill's; `--from` replays a date on."""
    reference, ref_ids, ref_embedding, ref_rows = kill_reference
    looks = _looks(kill_series)
    watched, out = tmp_path / "watched", tmp_path / "out"
    watched.mkdir()
    env = {**SERIES_ENV, "STREAMEMBED__CLUSTER__N_WORKERS": "1",
           "STREAMEMBED__DAEMON__METRICS_PORT": "null",
           "STREAMEMBED__STATS__ALLOWED_LATENESS_DAYS": "0"}  # fmt: skip
    for i, f in enumerate(looks):
        if i != 4:
            shutil.copytree(f, watched / f.name)
    poll = ("monitor", "--source", str(watched), "--output", str(out), "--cycles", "1",
            "--poll-seconds", "0.1")  # fmt: skip
    assert _cli(*poll, env=env).returncode == 0
    shutil.copytree(looks[4], watched / looks[4].name)
    run = _cli(*poll, env=env)
    assert run.returncode == 0 and "late 1" in run.stdout, run.stdout + run.stderr
    with Ledger(out / "ledger.sqlite") as ledger:
        (late,) = ledger.rows("late")
    assert "streamembed rebuild --tile 33UWP" in (late.reason or "")
    times = _plain_reader_times(out)  # stored and in order, though not in the statistics
    assert len(times) == N_ACQUISITIONS and (np.diff(times) > np.timedelta64(0)).all()
    ids, _, rows, _ = outputs(out)
    assert late.id not in set(rows.acquisition_id)
    done = _cli("rebuild", "--tile", "33UWP", "--output", str(out), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 folded in" in done.stdout and "looks replayed" in done.stdout, done.stdout
    _assert_equal_outputs(out, reference, ref_ids, ref_embedding, ref_rows)
    with Ledger(out / "ledger.sqlite") as ledger:
        assert set(ledger.states().values()) == {"applied"}
    again = _cli("rebuild", "--tile", "33UWP", "--output", str(out), env=env)
    assert "nothing late to fold in" in again.stdout, again.stdout
    campaign = _cli("rebuild", "--tile", "33UWP", "--from", "2024-04-20", "--output", str(out),
                    env=env)  # fmt: skip
    assert campaign.returncode == 0 and "0 folded in" in campaign.stdout, campaign.stdout
    _assert_equal_outputs(out, reference, ref_ids, ref_embedding, ref_rows)  # same looks: same
    status = _cli("status", "--output", str(out), "--revisions", env=env)
    assert "revised" in status.stdout and "(by rebuild)" in status.stdout, status.stdout
    bad = _cli("rebuild", "--tile", "31UFU", "--output", str(out), env=env)
    assert bad.returncode == 2 and "has no stored looks" in bad.stderr
