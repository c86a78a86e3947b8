"""The daemon as operators run it: a real `streamembed monitor` process on a real scheduler and
workers (their own processes), scraped over HTTP; a real HTTP receiver for its webhook.

The numbers /metrics serves are checked against the ledger the daemon wrote; /readyz must flip
when the scheduler and workers are killed, and back once they are started again (the daemon
must outlive them, reconnect and re-place its actor, applying nothing twice); the webhook receiver answers 500 twice to every file
and must still get each new anomaly file exactly once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamembed.acquisition import Acquisition
from streamembed.operations.logs import JsonFormatter
from streamembed.operations.webhook import url_key
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.outbox import Outbox
from tests.daemon import Receiver, count_states, free_port, wait_until
from tests.kill_series import SERIES_ENV


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class LocalDask:
    """`dask scheduler` and `dask worker` (two processes, one thread each) on 127.0.0.1, as
    their own processes: killed and started again at the same address, as an orchestrator
    restarts them."""

    def __init__(self, scratch: Path):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.scratch = scratch
        self.procs: list[subprocess.Popen] = []
        self.start()

    def start(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        sched = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", port, "--no-dashboard"]  # fmt: skip
        workers = [sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                   "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                   "--local-directory", str(self.scratch)]  # fmt: skip
        self.procs = [
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cmd in (sched, workers)
        ]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def local_dask(tmp_path):
    dask = LocalDask(tmp_path / "dask")
    try:
        yield dask
    finally:
        dask.kill()


def test_monitor_metrics_probes_and_webhook(kill_series, kill_reference, local_dask, tmp_path):
    address = local_dask.address
    receiver = Receiver(failures=2)
    port = free_port()
    out = tmp_path / "out"
    env = {
        **os.environ,
        **SERIES_ENV,  # the kill suite's settings, so its reference run says which files to expect
        "STREAMEMBED__CLUSTER__KIND": "address",
        "STREAMEMBED__CLUSTER__ADDRESS": address,
        "STREAMEMBED__DAEMON__METRICS_PORT": str(port),
        "STREAMEMBED__DAEMON__METRICS_HOST": "127.0.0.1",
        "STREAMEMBED__DAEMON__WEBHOOK__URL": receiver.url,
        "STREAMEMBED__DAEMON__WEBHOOK__BACKOFF_SECONDS": "0.2",
    }
    cmd = [sys.executable, "-m", "streamembed.cli", "monitor", "--source", str(kill_series),
           "--output", str(out), "--poll-seconds", "2", "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    ledger = out / "ledger.sqlite"
    ref_files = kill_reference[3].groupby("acquisition_id").size()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get_or_none(f"{base}/healthz") == 200, 120, proc)

        wait_until(lambda: count_states(ledger, "applied") == 9, 300, proc)
        wait_until(lambda: len(receiver.delivered()) == len(ref_files), 60, proc)
        time.sleep(3)  # a poll after the last apply: counters and gauges settled

        # /metrics against the ledger the daemon wrote.
        code, text = get(f"{base}/metrics")
        assert code == 200
        m = samples(text)
        with Ledger(ledger) as led:
            rows = led.rows()
            by_state = Counter(r.state for r in rows)
            n_rows = sum(r.n_anomalies or 0 for r in rows)
        assert by_state[State.APPLIED] == 9
        assert m[("streamembed_ledger_acquisitions", (("state", "applied"),))] == 9
        assert m[("streamembed_ledger_acquisitions", (("state", "failed"),))] == 0
        assert m[("streamembed_acquisitions_applied_total", ())] == 9
        assert m[("streamembed_acquisitions_embedded_total", ())] == 9
        assert m[("streamembed_anomaly_rows_written_total", ())] == n_rows == ref_files.sum()
        assert m[("streamembed_anomaly_files_written_total", ())] == len(ref_files)
        (tile,) = {r.tile for r in rows}
        assert m[("streamembed_ledger_anomaly_rows", (("tile", tile),))] == n_rows
        assert m[("streamembed_tile_lag_seconds", (("tile", tile),))] == 0
        # 9 acquisitions x 4 blocks encoded, each an observation of its encode seconds
        assert m[("streamembed_stage_seconds_count", (("stage", "encode"),))] == 36
        assert m[("streamembed_stage_seconds_count", (("stage", "stats_apply"),))] == 9
        assert m[("streamembed_workers", ())] == 2
        assert m[("streamembed_gpu_workers", ())] == 0
        assert m[("streamembed_poll_duration_seconds_count", ())] >= 1
        assert m[("streamembed_webhook_sent_total", ())] == len(ref_files)
        assert m[("streamembed_webhook_errors_total", ())] == 2 * len(ref_files)

        # `streamembed status --json`: the same numbers, once.
        status = subprocess.run(
            [sys.executable, "-m", "streamembed.cli", "status", "--output", str(out), "--json"],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        numbers = json.loads(status.stdout)
        assert numbers["acquisitions"]["applied"] == 9
        assert numbers["tiles"][tile]["anomaly_rows"] == n_rows

        # The webhook: every new file once (after two 500s each), a GeoJSON summary of it.
        assert receiver.delivered() == Counter({k: 1 for k in ref_files.index})
        assert len(receiver.posts) == 3 * len(ref_files)
        for key, code, body in receiver.posts:
            if code != 200:
                continue
            (feature,) = body["features"]
            props = feature["properties"]
            assert body["type"] == "FeatureCollection" and props["acquisition_id"] == key
            assert props["rows"] == ref_files[key] == sum(props["labels"].values())
            assert props["href"].endswith(f"{key}.parquet") and Path(props["href"]).exists()
            west, south, east, north = body["bbox"]
            assert -180 <= west < east <= 180 and -90 <= south < north <= 90

        # /readyz answers while the scheduler does; it flips when the scheduler and its
        # workers go away, while /healthz (the loop still turns) stays up.
        code, body = get(f"{base}/readyz")
        assert code == 200, body
        local_dask.kill()
        wait_until(lambda: get_or_none(f"{base}/readyz") == 503, 60, proc)
        code, body = get(f"{base}/readyz")
        assert "does not answer" in json.loads(body)["scheduler"]
        assert get_or_none(f"{base}/healthz") == 200
        # The daemon waits the loss out: a poll fails on the lost cluster (the actors died with
        # their workers) and is counted, the process stays up.
        wait_until(lambda: cluster_errors(base) >= 1, 60, proc)
        assert get_or_none(f"{base}/healthz") == 200

        # Scheduler and workers back at the same address: the daemon connects again, places
        # its statistics actor anew from the checkpoint, and a poll goes through (ready again).
        local_dask.start()
        wait_until(lambda: get_or_none(f"{base}/readyz") == 200, 180, proc)
        code, text = get(f"{base}/metrics")
        m = samples(text)
        assert m[("streamembed_workers", ())] == 2
        assert m[("streamembed_ledger_acquisitions", (("state", "applied"),))] == 9
        # nothing applied twice, no anomaly file written or announced again
        assert m[("streamembed_acquisitions_applied_total", ())] == 9
        assert m[("streamembed_anomaly_files_written_total", ())] == len(ref_files)
        assert receiver.delivered() == Counter({k: 1 for k in ref_files.index})
    finally:
        proc.kill()
        output, _ = proc.communicate(timeout=60)
        receiver.close()
    # --log-format json: every line the loggers wrote is one JSON object; applies carry
    # their acquisition, tile, stage and seconds. The URL's token is in no line.
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    applies = [r for r in records if r.get("stage") == "stats_apply"]
    assert len(applies) == 9 and all({"acquisition_id", "tile", "seconds"} <= r.keys()
                                      for r in applies)  # fmt: skip
    assert "s3cret" not in output
    (back,) = [r for r in records if "answers again" in r["message"]]
    assert "1 statistics shards placed anew" in back["message"]


def cluster_errors(base: str) -> float:
    got = get_or_none(f"{base}/metrics")
    if got != 200:
        return 0.0
    return samples(get(f"{base}/metrics")[1]).get(("streamembed_cluster_errors_total", ()), 0.0)


def get_or_none(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


def _acq(i: int) -> Acquisition:
    return Acquisition(
        id=f"S2A_T{i}", tile="32UPC", datetime=dt.datetime(2024, 5, i + 1, tzinfo=dt.timezone.utc),
        epsg=32632, assets={},
    )  # fmt: skip


def test_a_new_webhook_announces_only_what_comes_after_it(tmp_path):
    """Files applied before the webhook was configured are not news; later ones are due until
    recorded, and a restart (a second Outbox.start) changes nothing."""
    key = url_key("http://example.invalid/hook")
    with Ledger(tmp_path / "ledger.sqlite") as led:
        led.record_seen([_acq(1), _acq(2), _acq(3)])
        led.set_state("S2A_T1", State.APPLIED, n_anomalies=4)
        led.set_state("S2A_T2", State.APPLIED, n_anomalies=0)
        box = Outbox(led, key)
        box.start()
        assert box.unannounced() == []
        led.set_state("S2A_T3", State.APPLIED, n_anomalies=2)
        Outbox(led, key).start()
        assert [r.id for r in box.unannounced()] == ["S2A_T3"]
        box.record("S2A_T3", "sent", 3)
        assert box.unannounced() == []
        assert box.announcements() == {"S2A_T1": "before", "S2A_T3": "sent"}
        other = Outbox(led, url_key("http://example.invalid/other"))
        other.start()
        assert other.unannounced() == []
        # a late look folded in before T3 rewrote its rows: due again as a revision, for the
        # webhook told of it only (T1 was "before" it, so nothing is said of it)
        led.record_revision("S2A_T3", "S2A_T0", 2, 0)
        led.record_revision("S2A_T1", "S2A_T0", 4, 5)
        assert [r.id for r in box.revisions_due()] == ["S2A_T3"]
        assert other.revisions_due() == [] and box.unannounced() == []
        assert led.rows(State.APPLIED)[0].n_anomalies == 5
        box.record("S2A_T3", "revised", 1)
        assert box.revisions_due() == [] and box.revised_at("S2A_T3")
        assert (
            led.revisions(tile="32UPC") == [("S2A_T3", "S2A_T0", 2, 0), ("S2A_T1", "S2A_T0", 4, 5)]
            or len(led.revisions()) == 2
        )


def test_json_log_lines_carry_the_event_fields():
    record = logging.LogRecord("streamembed.events", logging.INFO, __file__, 1,
                               "applied %s", ("S2A_X",), None)  # fmt: skip
    record.acquisition_id, record.tile, record.stage, record.seconds = "S2A_X", "32UPC", "x", 1.5
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "applied S2A_X" and line["level"] == "info"
    assert (line["acquisition_id"], line["tile"], line["stage"], line["seconds"]) == (
        "S2A_X", "32UPC", "x", 1.5,
    )  # fmt: skip
