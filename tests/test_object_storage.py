"""Outputs on object storage: a real S3 API (moto's server on 127.0.0.1), a real LocalCluster.

The real `streamembed backfill --output s3://bucket/run` must equal the same backfill to a local
folder (the kill suite's reference run): the same acquisitions and embeddings bit for bit (read
back with plain xarray from the bucket), the same anomaly rows (geopandas and dask-geopandas
reading the bucket), the same alert tables; the ledger stays on local disk.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from streamembed import storage
from streamembed.config import Config
from streamembed.layout import LedgerLocationError, OutputLayout
from streamembed.outputs.ledger import State
from streamembed.outputs.sink import read_alerts, read_anomalies
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline
from tests.kill_series import N_ACQUISITIONS, backfill, outputs

ORDER = ["acquisition_id", "cell_y", "cell_x"]


@pytest.fixture(scope="module")
def runs(kill_series, kill_reference, s3, tmp_path_factory):
    """`streamembed backfill --output s3://…/run --ledger …` of the kill suite's series; the
    same backfill into a local folder is the kill suite's reference."""
    local = kill_reference[0]
    url = s3.make_bucket("streamembed-run") + "/run"
    out = tmp_path_factory.mktemp("bucket-run")
    backfill(kill_series, out, url=url, s3_env=s3.env)
    return local, url, out / "ledger.sqlite"


def test_backfill_to_a_bucket_equals_the_backfill_to_a_folder(runs, kill_reference):
    local, url, ledger = runs
    ids, embedding, rows, states = outputs(ledger.parent, url)
    _, ref_ids, ref_embedding, ref_rows = kill_reference
    assert ids == ref_ids and len(ids) == N_ACQUISITIONS
    assert np.array_equal(embedding, ref_embedding), "embeddings bit for bit"
    pd.testing.assert_frame_equal(rows, ref_rows, check_exact=True)
    assert set(states.values()) == {State.APPLIED}

    # Plain xarray from the bucket, as any reader would: every variable equal.
    (tile,) = EmbeddingStore(local / "embeddings.zarr").tiles()
    remote = xr.open_zarr(f"{url}/embeddings.zarr/{tile}")
    here = xr.open_zarr(local / "embeddings.zarr" / tile)
    assert list(remote.acquisition_id.values) == list(here.acquisition_id.values)
    for name in ("embedding", "clear", "snow", "indices", "time"):
        # NaN where a cell had no clear pixel: equal as missing
        assert np.array_equal(remote[name].values, here[name].values, equal_nan=name != "time")

    # geopandas and dask-geopandas read the anomalies straight from the bucket.
    rows_here = read_anomalies(local / "anomalies").sort_values(ORDER).reset_index(drop=True)
    rows_remote = gpd.read_parquet(f"{url}/anomalies").sort_values(ORDER).reset_index(drop=True)
    assert len(rows_remote) == len(rows_here) > 0
    assert rows_remote.geometry.equals(rows_here.geometry) and rows_remote.crs.to_epsg() == 4326
    assert (rows_remote["score"].to_numpy() == rows_here["score"].to_numpy()).all()
    import dask_geopandas

    assert len(dask_geopandas.read_parquet(f"{url}/anomalies").compute()) == len(rows_here)

    alerts_here = read_alerts(local / "alerts").sort_values(["cell_y", "cell_x"])
    alerts_remote = read_alerts(f"{url}/alerts").sort_values(["cell_y", "cell_x"])
    assert len(alerts_remote) == len(alerts_here) > 0
    assert (alerts_remote["status"].to_numpy() == alerts_here["status"].to_numpy()).all()


def test_the_bucket_holds_the_outputs_and_the_ledger_stays_local(runs, s3):
    local, url, ledger = runs
    keys = {
        o["Key"]
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket="streamembed-run")
        for o in page.get("Contents", [])
    }
    assert any(k.startswith("run/embeddings.zarr/") for k in keys)
    assert any(k.startswith("run/state/") and k.endswith(".npz") for k in keys)
    assert any(k.startswith("run/anomalies/tile=") for k in keys)
    assert not any("ledger" in k or k.endswith(".tmp") for k in keys), "nothing local or half"
    assert ledger.exists() and not (local / "ledger.sqlite").samefile(ledger)
    # The checkpoint reads back from the bucket as it does from disk.
    (state,) = storage.glob(f"{url}/state", "*.npz")
    assert state.startswith("s3://streamembed-run/run/state/")
    from streamembed.detection.stats import TileState

    here = TileState.load(local / "state" / Path(state).name)
    there = TileState.load(state)
    assert there.applied_ids == here.applied_ids and np.array_equal(there.mean, here.mean)


def test_status_reads_the_bucket(runs, capsys):
    from streamembed.cli import main

    local, url, ledger = runs
    assert main(["status", "--output", url, "--ledger", str(ledger)]) == 0
    out = capsys.readouterr().out
    assert "applied" in out and "warming up" in out


def test_a_url_output_needs_a_local_ledger():
    with pytest.raises(LedgerLocationError, match="--ledger"):
        _ = OutputLayout("s3://bucket/run").ledger
    with pytest.raises(ValueError, match="must be a local path"):
        Config().with_overrides(output="s3://bucket/run", ledger="s3://bucket/ledger.sqlite")
    assert OutputLayout("out").ledger == Path("out/ledger.sqlite")
    assert OutputLayout("file:///data/run").ledger == Path("/data/run/ledger.sqlite")


def test_a_missing_bucket_is_named_before_any_work(s3, cluster_client, kill_series, tmp_path):
    cfg = Config().with_overrides(
        **{
            "source.path": str(kill_series),
            "output": "s3://no-such-bucket/run",
            "ledger": str(tmp_path / "ledger.sqlite"),
        }
    )
    with pytest.raises(storage.StorageError, match="no-such-bucket does not exist"):
        Pipeline(cfg, cluster_client)


def test_a_published_object_is_whole_or_absent(s3):
    url = s3.make_bucket("streamembed-atomic") + "/x/state.npz"
    with pytest.raises(RuntimeError), storage.atomic_writer(url) as f:
        f.write(b"x" * (12 * 2**20))  # past one multipart part
        raise RuntimeError("the writer dies before publishing")
    assert not storage.exists(url)
    storage.publish(url, b"whole")
    assert storage.read_bytes(url) == b"whole"


def test_a_late_look_is_put_in_order_in_a_bucket(s3):
    """The compaction's row copies are the object store's own (server-side), and the kept
    checkpoint manifests too: the store in a bucket ends sorted, each row its own values."""
    from tests.test_store_sink_ledger import FLOAT16, GRID, _batch

    url = s3.make_bucket("streamembed-late") + "/run/embeddings.zarr"
    store = EmbeddingStore(url, FLOAT16)
    for i in (0, 2, 3, 1):
        assert store.append(_batch(i))
    done = store.compact(GRID.tile)
    assert done is not None and done.start == 1 and done.moved == 3 and done.bytes_copied > 0
    ds = xr.open_zarr(f"{url}/{GRID.tile}")
    assert ds.acquisition_id.values.tolist() == [f"acq{i}" for i in range(4)]
    for i in range(4):
        assert np.array_equal(ds.embedding.values[i], _batch(i).embedding.astype(np.float16))
    assert not storage.exists(f"{url}/{GRID.tile}/embedding/c/4")  # scratch rows gone
    storage.publish(f"{url}/a.npz", b"manifest")
    storage.copy_file(f"{url}/a.npz", f"{url}/history/g1.npz")
    assert storage.read_bytes(f"{url}/history/g1.npz") == b"manifest"
